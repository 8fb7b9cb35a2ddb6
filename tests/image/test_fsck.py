"""fsck on good images, and the corruption matrix: damage each structure in turn."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nvramfs.image import CorruptImage, FsError, Image, NotAnImage
from nvramfs.image import format as F
from nvramfs.image.fsck import fsck

from . import damage as D

BS = F.BLOCK_SIZE


def assert_clean(path: Path) -> None:
    rep = fsck(str(path))
    assert rep.exit_code == 0, rep.errors


def test_fresh_images_are_clean(image: Path, empty_image: Path) -> None:
    assert_clean(image)
    assert_clean(empty_image)


def test_clean_after_every_kind_of_update(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        d = img.mkdir(1, b"d", 0o755, 0, 0)
        files = [img.create(d, b"f%d" % i, 0o644, 0, 0) for i in range(40)]
        for i, f in enumerate(files):
            img.write_pages(f, np.arange(i % 5), [bytes([i]) * BS] * (i % 5))
            img.setattr(f, size=(i % 5) * BS)
        img.symlink(d, b"s", b"t" * 300, 0, 0)
        img.link(files[0], 1, b"hard")
        img.setxattr(files[1], b"user.x", b"y")
        img.rename(d, b"f2", 1, b"moved")
        img.unlink(d, b"f3")
        img.setattr(files[4], size=1)
        e = img.mkdir(d, b"e", 0o755, 0, 0)
        img.rename(1, b"d", 1, b"d2")
        img.rmdir(d, b"e")
        assert e
        img.unlink(d, b"f5", still_open=True)
    assert_clean(empty_image)


def test_fsck_notes_pending_orphan_and_repair(empty_image: Path) -> None:
    img = Image.open(empty_image)
    f = img.create(1, b"f", 0o644, 0, 0)
    img.write_pages(f, np.arange(2), [b"x" * BS] * 2)
    img.unlink(1, b"f", still_open=True)
    img.close(clean=False)
    rep = fsck(str(empty_image))
    assert rep.exit_code == 0, rep.errors
    assert any("orphan" in n for n in rep.notes)
    rep = fsck(str(empty_image), repair=True)  # the old spelling of -p
    assert rep.exit_code == 1 and any("reclaimed 1 orphan" in n for n in rep.fixed)
    assert not any("orphan" in n for n in rep.notes)
    assert fsck(str(empty_image)).exit_code == 0


def test_repair_refuses_an_image_in_use(empty_image: Path) -> None:
    import fcntl
    import os

    D.patch_sb(empty_image, free_blocks=7)  # something preen would repair
    before = empty_image.read_bytes()
    fd = os.open(empty_image, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the mount does
        for mode in ("p", "y"):
            rep = fsck(str(empty_image), mode=mode)
            assert rep.exit_code == 8
            assert rep.errors[0][1].endswith("is in use by a mount; cannot continue, aborting")
        rep = fsck(str(empty_image))  # -n warns and checks
        assert rep.exit_code == 4 and "in use by a mount" in rep.warnings[0]
    finally:
        os.close(fd)
    assert empty_image.read_bytes() == before


# --------------------------------------------------------------- the matrix
# Each case damages one structure of a copy of the tree image. `serve` is what
# a mount would do that must then refuse with CorruptImage (None: opening
# itself refuses). fsck must exit 4, or 8 where nothing recognisable remains.


def _sb_both_crc(p: Path) -> None:
    D.flip(p, 40)
    D.flip(p, BS + 40)


def _sb_magic(p: Path) -> None:
    D.write(p, 0, bytes(8))
    D.write(p, BS, bytes(8))


def _sb_absurd(p: Path) -> None:
    D.patch_sb(p, nr_inodes=3)


def _sb_too_big(p: Path) -> None:
    D.patch_sb(p, nr_blocks=1 << 40)


def _truncate(p: Path) -> None:
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 2)


def _journal(p: Path) -> None:
    D.flip(p, D.layout(p).journal_start * BS + 20)


def test_journal_header_damage_is_harmless_on_a_clean_image(tmp_path: Path, image: Path) -> None:
    p = tmp_path / "j.img"
    shutil.copy(image, p)
    _journal(p)
    rep = fsck(str(p))
    assert rep.exit_code == 0 and any("journal header" in n for n in rep.notes)
    with Image.open(p) as img:
        img.create(1, b"new", 0o644, 0, 0)
    assert_clean(p)


def _bbitmap(p: Path) -> None:
    D.flip(p, D.layout(p).bbitmap_start * BS + 100)


def _bbitmap_sealed(p: Path) -> None:
    # A used data block marked free, checksum recomputed: only the meaning is wrong.
    b = D.blocks_of(p, D.find(p, b"usr", b"lib", b"libbig.so"))[3]
    L = D.layout(p)
    D.flip(p, L.bbitmap_start * BS + b // 8, 1 << (b % 8))
    D.reseal(p, L.bbitmap_start)


def _ibitmap(p: Path) -> None:
    D.flip(p, D.layout(p).ibitmap_start * BS)


def _inode_crc(p: Path) -> None:
    D.flip(p, D.inode_offset(p, D.find(p, b"etc", b"hostname")) + 17)


def _root(p: Path) -> None:
    D.flip(p, D.inode_offset(p, 1) + 3)


def _extent_past_device(p: Path) -> None:
    ino = D.find(p, b"usr", b"lib", b"libbig.so")
    ext = np.zeros(8, F.EXTENT_DTYPE)
    ext[0] = (0, 74, D.layout(p).nr_blocks - 10)
    D.patch_inode(p, ino, inline=ext.tobytes())


def _extent_overlap(p: Path) -> None:
    a = D.find(p, b"usr", b"lib", b"libbig.so")
    b = D.find(p, b"etc", b"conf.d", b"a.conf")
    ext = np.zeros(8, F.EXTENT_DTYPE)
    ext[0] = (0, 1, D.blocks_of(p, a)[0])
    D.patch_inode(p, b, inline=ext.tobytes())


def _dir_block(p: Path) -> None:
    D.flip(p, D.blocks_of(p, D.find(p, b"etc"))[0] * BS + 5)


def _dir_name_len(p: Path) -> None:
    b = D.blocks_of(p, D.find(p, b"etc"))[0]
    D.write(p, b * BS + 10, bytes([250]))
    D.reseal(p, b)


def _dir_loop(p: Path) -> None:
    # etc/conf.d's entry is pointed at the root directory.
    etc = D.find(p, b"etc")
    b = D.blocks_of(p, etc)[0]
    data = p.read_bytes()[b * BS : (b + 1) * BS]
    off = 0
    while True:
        rl = int.from_bytes(data[off + 8 : off + 10], "little")
        nl = data[off + 10]
        if data[off + 12 : off + 12 + nl] == b"conf.d":
            break
        off += rl
    D.write(p, b * BS + off, (1).to_bytes(8, "little"))
    D.reseal(p, b)


def _dirent_free_inode(p: Path) -> None:
    ino = D.find(p, b"etc", b"hostname")
    D.write(p, D.inode_offset(p, ino), bytes(256))


def _nlink(p: Path) -> None:
    D.patch_inode(p, D.find(p, b"zero"), nlink=5)


def _orphan_loop(p: Path) -> None:
    ino = D.find(p, b"zero")
    D.patch_inode(p, ino, orphan_next=ino, flags=F.IFLAG_ORPHAN)
    D.patch_sb(p, orphan_head=ino, orphan_count=1)


def _symlink_block(p: Path) -> None:
    D.patch_inode(p, D.find(p, b"long.link"), size=5000)


def _free_count(p: Path) -> None:
    D.patch_sb(p, free_blocks=7)


def _sb_copy_a(p: Path) -> None:
    D.flip(p, 50)


def _serve_walk(img: Image) -> None:
    def walk(ino: int) -> None:
        for _, name, child in img.readdir(ino):
            a = img.getattr(img.lookup(ino, name))
            if a.mode & 0o170000 == 0o040000:
                walk(child)
            elif a.mode & 0o170000 == 0o120000:
                img.readlink(child)
            else:
                img.bmap(child, 0, max(1, -(-a.size // BS)))

    walk(1)


def _serve_alloc(img: Image) -> None:
    f = img.create(1, b"new", 0o644, 0, 0)
    img.write_pages(f, np.arange(40), [b"z" * BS] * 40)


CASES: list[tuple[str, Callable[[Path], None], int, Callable[[Image], None] | None]] = [
    ("superblock both copies checksum", _sb_both_crc, 4, None),
    ("superblock magic gone", _sb_magic, 8, None),
    ("superblock absurd inode count", _sb_absurd, 4, None),
    ("superblock larger than the file", _sb_too_big, 4, None),
    ("truncated image", _truncate, 4, None),
    ("block bitmap checksum", _bbitmap, 4, _serve_alloc),
    ("block bitmap says used block is free", _bbitmap_sealed, 4, None),
    ("inode bitmap checksum", _ibitmap, 4, _serve_alloc),
    ("inode checksum", _inode_crc, 4, _serve_walk),
    ("root inode", _root, 4, None),
    ("extent past the device", _extent_past_device, 4, _serve_walk),
    ("extents of two files overlap", _extent_overlap, 4, None),
    ("directory block checksum", _dir_block, 4, _serve_walk),
    ("directory entry name length", _dir_name_len, 4, _serve_walk),
    ("directory loop", _dir_loop, 4, _serve_walk),
    ("entry names a free inode", _dirent_free_inode, 4, _serve_walk),
    ("link count", _nlink, 4, None),
    ("orphan list loop", _orphan_loop, 4, None),
    ("symlink length", _symlink_block, 4, _serve_walk),
    ("superblock free count", _free_count, 4, None),
]


@pytest.mark.parametrize("name,hurt,code,serve", CASES, ids=[c[0] for c in CASES])
def test_corruption_matrix(
    tmp_path: Path,
    image: Path,
    name: str,
    hurt: Callable[[Path], None],
    code: int,
    serve: Callable[[Image], None] | None,
) -> None:
    p = tmp_path / "hurt.img"
    shutil.copy(image, p)
    hurt(p)
    before = p.read_bytes()
    rep = fsck(str(p))
    assert rep.exit_code == code, (rep.errors, rep.notes)
    assert rep.errors and all("\n" not in w + m for w, m in rep.errors)
    if serve is None:
        if code == 4 and name in (
            "extents of two files overlap",
            "link count",
            "block bitmap says used block is free",
            "superblock free count",
        ):
            return  # only fsck sees these (serving reads need no cross-inode checks)
        with pytest.raises(CorruptImage) as e:
            Image.open(p)
        assert "\n" not in str(e.value)
        if code == 8:
            assert isinstance(e.value, NotAnImage)
        assert p.read_bytes() == before, "a damaged image was written to"
        return
    if serve is not _serve_alloc:  # what a read-only mount does: refuse, write nothing
        with Image.open(p, readonly=True) as img, pytest.raises(CorruptImage) as e:
            serve(img)
        assert "\n" not in str(e.value)
        assert p.read_bytes() == before, "a damaged image was written to"
    # Writable: the damage is found lazily; from then on nothing more is written.
    img = Image.open(p)
    with pytest.raises(CorruptImage):
        serve(img)
    after = p.read_bytes()
    with pytest.raises(CorruptImage):
        img.mkdir(1, b"more", 0o755, 0, 0)
    img.close()
    assert p.read_bytes() == after
    assert not Image.open(p, readonly=True).was_clean
    assert fsck(str(p)).exit_code == 4


def test_one_bad_superblock_copy_is_repaired(tmp_path: Path, image: Path) -> None:
    p = tmp_path / "a.img"
    shutil.copy(image, p)
    _sb_copy_a(p)
    assert fsck(str(p)).exit_code == 4
    with Image.open(p, readonly=True) as img:  # served from copy B
        assert img.lookup(1, b"etc")
    # Cleanly closed: a bad copy is damage, not a crash; a writable open refuses.
    before = p.read_bytes()
    with pytest.raises(CorruptImage, match="cleanly closed image: run fsck"):
        Image.open(p)
    assert p.read_bytes() == before
    rep = fsck(str(p), mode="p")
    assert rep.exit_code == 1 and any("rewrote both copies" in f for f in rep.fixed)
    assert_clean(p)
    with Image.open(p) as img:
        assert img.lookup(1, b"etc")


def test_bad_copy_after_a_crash_is_recovery(tmp_path: Path, image: Path) -> None:
    p = tmp_path / "a.img"
    shutil.copy(image, p)
    Image.open(p).close(clean=False)  # in use when it ended
    _sb_copy_a(p)
    with Image.open(p) as img:
        assert any("rewrote superblock copy A" in r for r in img.recovery)
    assert_clean(p)


def test_errors_never_escape_as_other_types(tmp_path: Path, image: Path) -> None:
    p = tmp_path / "x.img"
    shutil.copy(image, p)
    _inode_crc(p)
    with Image.open(p, readonly=True) as img:
        with pytest.raises(
            CorruptImage, match=r"inode \d+ \(inode table block \d+\): bad checksum"
        ):
            img.getattr(D.find(image, b"etc", b"hostname"))
        with pytest.raises(FsError):
            img.getattr(10**12)


# ------------------------------------------------------------------ repairs
# Every damage of the matrix that leaves something to repair from: fsck -y
# exits 1, a second fsck -n is clean, the image opens writable (as a mount
# does), and every file the damage did not touch reads back intact (at its
# path, or under /lost+found when the directory naming it was lost). `touched`
# lists the source paths the damage hit; `preen` says whether -p may repair it.

REPAIRS: dict[str, tuple[set[str], bool]] = {
    "block bitmap checksum": (set(), True),
    "block bitmap says used block is free": (set(), True),
    "inode bitmap checksum": (set(), True),
    "inode checksum": ({"etc/hostname", "usr/hostname.hard"}, True),
    "root inode": ({"zero", "sparse", "long.link"}, False),
    "extent past the device": ({"usr/lib/libbig.so"}, False),
    "extents of two files overlap": ({"etc/conf.d/a.conf"}, False),
    "directory block checksum": (set(), False),
    "directory entry name length": (set(), False),
    "directory loop": (set(), False),
    "entry names a free inode": ({"etc/hostname", "usr/hostname.hard"}, False),
    "link count": (set(), False),
    "orphan list loop": (set(), True),
    "symlink length": ({"long.link"}, False),
    "superblock free count": (set(), True),
}
UNREPAIRABLE = {c[0] for c in CASES} - set(REPAIRS)


def image_files(img: Image) -> dict[str, bytes]:
    """Every regular file's bytes and every symlink's target, by path (no leading /)."""
    out: dict[str, bytes] = {}

    def walk(d: int, prefix: str) -> None:
        for _, name, ino in img.readdir(d):
            path = prefix + name.decode()
            a = img.getattr(ino)
            if a.mode & 0o170000 == 0o040000:
                walk(ino, path + "/")
            elif a.mode & 0o170000 == 0o120000:
                out[path] = img.readlink(ino)
            else:
                n = -(-a.size // BS)
                data = b"".join(
                    bytes(img.block_view(int(b))) if b else bytes(BS) for b in img.bmap(ino, 0, n)
                )
                out[path] = data[: a.size]

    walk(1, "")
    return out


def source_files(tree: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree).as_posix()
        if p.is_symlink():
            out[rel] = str(p.readlink()).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def found_intact(rel: str, data: bytes, files: dict[str, bytes]) -> bool:
    if files.get(rel) == data:
        return True
    parts = rel.split("/")
    for k in range(1, len(parts)):  # /lost+found/#N/<the path below a lost directory>
        tail = "/".join(parts[k:])
        for path, got in files.items():
            if path.startswith("lost+found/#") and path.endswith("/" + tail) and got == data:
                if path.count("/") == tail.count("/") + 2:
                    return True
    return False


@pytest.mark.parametrize("name", sorted(REPAIRS))
def test_fsck_y_repairs_the_matrix(tmp_path: Path, image: Path, tree: Path, name: str) -> None:
    touched, preen = REPAIRS[name]
    hurt = next(c[1] for c in CASES if c[0] == name)
    p = tmp_path / "hurt.img"
    shutil.copy(image, p)
    hurt(p)
    before = p.read_bytes()
    rp = fsck(str(p), mode="p")
    if preen:
        assert rp.exit_code == 1, (rp.errors, rp.remaining)
    else:  # preen stops and writes nothing
        assert rp.exit_code == 4 and rp.unexpected and not rp.fixed
        assert p.read_bytes() == before
        rep = fsck(str(p), mode="y")
        assert rep.exit_code == 1, (rep.errors, rep.fixed, rep.remaining)
        assert rep.fixed and not rep.remaining
    assert_clean(p)
    with Image.open(p) as img:  # what a read-write mount does first
        assert img.recovery == []
        files = image_files(img)
        img.create(1, b"after-repair", 0o644, 0, 0)
    assert_clean(p)
    for rel, data in source_files(tree).items():
        if rel not in touched:
            assert found_intact(rel, data, files), f"{rel} lost or changed by the repair of {name}"


@pytest.mark.parametrize("name", sorted(UNREPAIRABLE))
def test_fsck_y_cannot_repair_without_a_superblock(tmp_path: Path, image: Path, name: str) -> None:
    hurt, code = next((c[1], c[2]) for c in CASES if c[0] == name)
    p = tmp_path / "hurt.img"
    shutil.copy(image, p)
    hurt(p)
    before = p.read_bytes()
    assert code in (4, 8)
    assert fsck(str(p), mode="y").exit_code == code
    assert p.read_bytes() == before


def test_repair_reports_block_ranges(tmp_path: Path, image: Path) -> None:
    # 60 blocks of one file marked free: one line for the run, not one per block.
    p = tmp_path / "r.img"
    shutil.copy(image, p)
    ino = D.find(p, b"usr", b"lib", b"libbig.so")
    blocks = D.blocks_of(p, ino)[:60]
    assert blocks == list(range(blocks[0], blocks[0] + 60))
    L = D.layout(p)
    data = bytearray(p.read_bytes()[L.bbitmap_start * BS : (L.bbitmap_start + 1) * BS])
    for b in blocks:
        data[b // 8] &= ~(1 << (b % 8))
    D.write(p, L.bbitmap_start * BS, bytes(data))
    D.reseal(p, L.bbitmap_start)
    rep = fsck(str(p))
    lines = [(w, m) for w, m in rep.errors if "marked free" in m]
    assert lines == [
        (f"blocks {blocks[0]}-{blocks[-1]} (60)", f"used by inode {ino} but marked free")
    ]
    assert fsck(str(p), mode="p").exit_code == 1
    assert_clean(p)


def test_blocks_claimed_twice_are_cloned(tmp_path: Path, image: Path) -> None:
    p = tmp_path / "d.img"
    shutil.copy(image, p)
    a = D.find(p, b"usr", b"lib", b"libbig.so")
    b = D.find(p, b"etc", b"conf.d", b"a.conf")
    shared = D.blocks_of(p, a)[:3]
    ext = np.zeros(8, F.EXTENT_DTYPE)
    ext[0] = (0, 3, shared[0])
    D.patch_inode(p, b, inline=ext.tobytes(), size=3 * BS, nextents=1, ninline=1, blocks=3)
    with Image.open(p, readonly=True) as img:
        want_a = image_files(img)["usr/lib/libbig.so"]
    rep = fsck(str(p), mode="y")
    assert rep.exit_code == 1 and any("3 blocks claimed twice cloned" in f for f in rep.fixed)
    assert_clean(p)
    with Image.open(p, readonly=True) as img:
        files = image_files(img)
        assert files["usr/lib/libbig.so"] == want_a
        assert files["etc/conf.d/a.conf"] == want_a[: 3 * BS]  # its own copy of what it claimed
        mine = set(img.bmap(b, 0, 3).tolist())
        theirs = set(img.bmap(a, 0, len(want_a) // BS).tolist())
        assert len(mine) == 3 and mine.isdisjoint(theirs)  # one of the two got a copy


def test_lost_files_go_to_lost_and_found(tmp_path: Path, image: Path) -> None:
    p = tmp_path / "l.img"
    shutil.copy(image, p)
    with Image.open(p) as img:  # a file no directory names (nlink 1, no entry)
        f = img.create(1, b"gone", 0o644, 0, 0)
        img.write_pages(f, np.arange(1), [b"kept" + bytes(BS - 4)])
        img.setattr(f, size=4)
    b = D.blocks_of(p, 1)[0]
    data = p.read_bytes()[b * BS : (b + 1) * BS]
    off = data.index(b"gone") - 12
    D.write(p, b * BS + off, bytes(8))  # the entry freed, the inode kept
    D.reseal(p, b)
    rep = fsck(str(p))
    assert any("not reachable" in m for _, m in rep.errors)
    rep = fsck(str(p), mode="y")
    assert rep.exit_code == 1 and "/lost+found created" in rep.fixed
    assert_clean(p)
    with Image.open(p, readonly=True) as img:
        lf = img.lookup(1, b"lost+found")
        assert img.getattr(lf).mode & 0o777 == 0o700
        assert image_files(img)[f"lost+found/#{f}"] == b"kept"


def test_free_slots_and_file_types_are_repaired(tmp_path: Path, image: Path) -> None:
    p = tmp_path / "s.img"
    shutil.copy(image, p)
    with Image.open(p, readonly=True) as img:
        nr = img.L.nr_inodes
    for ino in (nr - 3, nr - 2):  # two free slots with stray bytes
        D.write(p, D.inode_offset(p, ino) + 40, b"junk")
    etc = D.find(p, b"etc")
    b = D.blocks_of(p, etc)[0]
    data = p.read_bytes()[b * BS : (b + 1) * BS]
    off = data.index(b"hostname") - F.DIRENT_HDR
    D.write(p, b * BS + off + 11, bytes([F.DT_DIR]))  # a regular file's entry says directory
    D.reseal(p, b)
    rep = fsck(str(p))
    assert (f"inodes {nr - 3}-{nr - 2} (2)", "free (mode 0) but not zeroed") in rep.errors
    assert any("file type 4 does not match" in m for _, m in rep.errors)
    rep = fsck(str(p), mode="y")
    assert rep.exit_code == 1 and f"inodes {nr - 3}-{nr - 2} (2): slot zeroed" in rep.fixed
    assert_clean(p)


def test_check_of_a_sparse_image_reads_holes_without_backing_them(tmp_path: Path) -> None:
    """fsck -n scans the whole inode table; on a sparse image that must not allocate it.

    A read fault on a hole of a tmpfs file allocates a page: a check through
    the mapping took 128 MiB of host memory for an empty 8 GiB image (and
    would SIGBUS on a full host filesystem). The check reads holes as zeros.
    """
    from nvramfs.image.mkfs import mkfs

    where = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    path = where / f"sparse-{tmp_path.name}.img"
    try:
        mkfs(str(path), size=8 << 30)
        before = path.stat().st_blocks
        rep = fsck(str(path))
        assert rep.exit_code == 0, rep.errors
        grown = (path.stat().st_blocks - before) * 512
        assert grown < 1 << 20, f"fsck -n backed {grown} bytes of holes"
    finally:
        path.unlink(missing_ok=True)
