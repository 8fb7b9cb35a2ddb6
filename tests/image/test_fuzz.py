"""Property tests: random bytes and random damage never escape as anything but our errors.

Three feeds: arbitrary bytes as an image; random byte changes in the metadata
of a real image; and the same with every checksum recomputed afterwards, so
the damage reaches the parsers behind the checksums (counts, lengths, block
numbers, names, links). Opening, walking the whole tree, reading every file,
writing to it, and fsck may raise only CorruptImage (NotAnImage) or FsError.
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvramfs.image import CorruptImage, FsError, Image
from nvramfs.image import format as F
from nvramfs.image.fsck import fsck
from nvramfs.image.mkfs import mkfs

from .conftest import make_tree

BS = F.BLOCK_SIZE
SETTINGS = settings(
    max_examples=int(os.environ.get("NVRAMFS_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@functools.cache
def base_image() -> tuple[bytes, int]:
    """A small image with a tree in it (built once), and where its data area starts."""
    tmp = Path(tempfile.mkdtemp(prefix="nvramfs-fuzz-"))
    make_tree(tmp / "src")
    mkfs(tmp / "base.img", src=tmp / "src", size=2 << 20)
    with Image.open(tmp / "base.img") as img:  # some chained extents and xattrs too
        f = img.create(1, b"frag", 0o644, 0, 0)
        img.write_pages(f, np.arange(0, 40, 2), [bytes([i]) * BS for i in range(20)])
        img.setattr(f, size=40 * BS)
        img.setxattr(f, b"user.a", b"b" * 40)
        img.unlink(1, b"zero", still_open=True)
        img.close(clean=False)
    data = (tmp / "base.img").read_bytes()
    return data, int(np.frombuffer(data[: F.SB_SIZE], F.SB_DTYPE)[0]["data_start"])


def reseal_all(buf: bytearray, data_start: int) -> None:
    """Recompute every checksum, so damage is judged by meaning, not by crc."""
    nblocks = len(buf) // BS
    sb = np.frombuffer(bytes(buf[: F.SB_SIZE]), F.SB_DTYPE)[0]
    first = int(sb["bbitmap_start"]) if 2 <= int(sb["bbitmap_start"]) < nblocks else 2
    for b in range(first, nblocks):  # not the journal: its images are sealed for their homes
        kind = int.from_bytes(buf[b * BS + F.TAIL_OFF : b * BS + F.TAIL_OFF + 4], "little")
        if kind in F.KIND_NAMES and kind != F.KIND_JOURNAL:
            blk = bytearray(buf[b * BS : (b + 1) * BS])
            owner = int.from_bytes(blk[F.TAIL_OFF + 4 : F.TAIL_OFF + 12], "little")
            F.seal_block(blk, kind, owner, b)
            buf[b * BS : (b + 1) * BS] = blk
    it, ni = int(sb["itable_start"]), int(sb["nr_inodes"])
    if 0 < it < nblocks and 0 < ni < 1 << 20:
        for ino in range(1, min(ni, (nblocks - it) * F.INODES_PER_BLOCK)):
            off = it * BS + ino * F.INODE_SIZE
            rec = buf[off : off + F.INODE_SIZE]
            if int.from_bytes(rec[:4], "little"):
                buf[off + 252 : off + 256] = F.inode_crc(rec, ino).to_bytes(4, "little")
    for c in (0, 1):
        raw = buf[c * BS : c * BS + F.SB_SIZE]
        buf[c * BS + F.SB_SIZE - 4 : c * BS + F.SB_SIZE] = F.sb_crc(raw).to_bytes(4, "little")


def walk(img: Image, ino: int, seen: set[int]) -> None:
    """Read everything reachable, as a mount's readdir/lookup/getattr/read would."""
    if ino in seen:
        return
    seen.add(ino)
    for _c, name, child in img.readdir(ino):
        try:
            img.lookup(ino, name)
            a = img.getattr(child)
            if stat.S_ISDIR(a.mode):
                walk(img, child, seen)
            elif stat.S_ISLNK(a.mode):
                img.readlink(child)
            else:
                for b in img.bmap(child, 0, min(64, -(-a.size // BS))):
                    if b:
                        bytes(img.block_view(int(b)))
                img.listxattr(child)
        except (FsError, CorruptImage):
            pass


def exercise(path: Path) -> None:
    """Everything a mount and fsck would do; only our error types may come out."""
    rep = fsck(str(path))
    assert rep.exit_code in (0, 4, 8)
    for readonly in (True, False):
        before = path.read_bytes()
        try:
            img = Image.open(path, readonly=readonly)
        except CorruptImage:
            assert path.read_bytes() == before, "a refused image was written to"
            continue
        try:
            try:
                img.statfs()
                walk(img, 1, set())
                if not readonly:
                    f = img.create(1, b"new-file", 0o644, 0, 0)
                    img.write_pages(f, np.arange(3), [b"q" * BS] * 3)
                    img.rename(1, b"new-file", 1, b"etc")
                    img.setattr(f, size=10)
            except (FsError, CorruptImage):
                pass
        finally:
            img.close(clean=False)


def write_image(where: Path, data: bytes) -> Path:
    p = where / "fuzz.img"
    p.write_bytes(data)
    return p


@SETTINGS
@given(st.binary(max_size=3 * BS))
def test_random_bytes(fast_dir: Path, data: bytes) -> None:
    exercise(write_image(fast_dir, data))


@SETTINGS
@given(st.binary(min_size=0, max_size=64))
def test_random_bytes_behind_a_valid_magic(fast_dir: Path, data: bytes) -> None:
    base, _ = base_image()
    buf = bytearray(base[: 4 * BS])
    buf[8 : 8 + len(data)] = data
    exercise(write_image(fast_dir, bytes(buf)))


mutations = st.lists(
    st.tuples(st.integers(0, 5), st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
    min_size=1,
    max_size=12,
)


def regions() -> list[tuple[int, int]]:
    """(start, length) of each structure worth damaging, in bytes."""
    base, data_start = base_image()
    sb = np.frombuffer(base[: F.SB_SIZE], F.SB_DTYPE)[0]
    it = int(sb["itable_start"])
    return [
        (0, F.SB_SIZE),  # superblock A
        (BS, F.SB_SIZE),  # superblock B
        (int(sb["bbitmap_start"]) * BS, 2 * BS),  # both bitmaps
        (it * BS, 2 * BS),  # the inode-table blocks that hold the used inodes
        (data_start * BS, 8 * BS),  # directory, extent, xattr, symlink blocks
        (int(sb["journal_start"]) * BS, 4 * BS),  # the journal header and first images
    ]


def mutate(muts: list[tuple[int, float, int]], reseal: bool) -> bytes:
    base, data_start = base_image()
    buf = bytearray(base)
    regs = regions()
    for region, where, value in muts:
        start, length = regs[region]
        buf[start + int(where * length)] = value
    if reseal:
        reseal_all(buf, data_start)
    return bytes(buf)


@SETTINGS
@given(mutations)
def test_random_damage(fast_dir: Path, muts: list[tuple[int, float, int]]) -> None:
    exercise(write_image(fast_dir, mutate(muts, reseal=False)))


@SETTINGS
@given(mutations)
def test_random_damage_behind_good_checksums(
    fast_dir: Path, muts: list[tuple[int, float, int]]
) -> None:
    exercise(write_image(fast_dir, mutate(muts, reseal=True)))


def test_base_image_is_clean_and_fuzz_targets_exist(tmp_path: Path) -> None:
    base, _ = base_image()
    p = write_image(tmp_path, base)
    rep = fsck(str(p))
    assert rep.exit_code == 0, rep.errors
    buf = bytearray(base)
    reseal_all(buf, 0)
    assert buf == bytearray(base)  # resealing an intact image changes nothing


def repair_and_serve(path: Path) -> None:
    """fsck -y never fails with a traceback; what it calls repaired checks clean and serves."""
    rep = fsck(str(path), mode="y")
    assert rep.exit_code in (0, 1, 4, 5, 8), rep.exit_code
    if rep.exit_code in (0, 1):
        again = fsck(str(path))
        assert again.exit_code == 0, (rep.errors, rep.fixed, again.errors)
        with Image.open(path) as img:  # a read-write mount
            walk(img, 1, set())
            img.create(1, b"after-repair", 0o644, 0, 0)
        assert fsck(str(path)).exit_code == 0


@SETTINGS
@given(mutations, st.booleans())
def test_fsck_y_repairs_random_damage(
    fast_dir: Path, muts: list[tuple[int, float, int]], reseal: bool
) -> None:
    repair_and_serve(write_image(fast_dir, mutate(muts, reseal=reseal)))
