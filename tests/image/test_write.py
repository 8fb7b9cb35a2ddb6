"""The write API: every namespace call, setattr/truncate, xattrs, writeback, orphans."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import numpy as np
import pytest

from nvramfs.image import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, FsError, Image

PAGE = 4096
BS_ = 4096


def page(fill: int) -> bytes:
    return bytes([fill]) * PAGE


def names(img: Image, ino: int) -> list[bytes]:
    return sorted(n for _, n, _ in img.readdir(ino))


def read(img: Image, ino: int) -> bytes:
    a = img.getattr(ino)
    n = -(-a.size // PAGE)
    return b"".join(
        bytes(img.block_view(int(b))) if b else bytes(PAGE) for b in img.bmap(ino, 0, n)
    )[: a.size]


def errno_of(fn, *a, **kw) -> int:
    with pytest.raises(FsError) as e:
        fn(*a, **kw)
    return e.value.errno


def test_create_mkdir_symlink_link_persist(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        assert not img.recovery
        d = img.mkdir(1, b"d", 0o750, 10, 20)
        f = img.create(d, b"f", stat.S_IFREG | 0o644, 10, 20)
        fifo = img.create(d, b"p", stat.S_IFIFO | 0o600, 0, 0)
        dev = img.create(d, b"c", stat.S_IFCHR | 0o600, 0, 0, rdev=0x0501)
        s = img.symlink(1, b"s", b"d/f", 0, 0)
        long_target = b"/x" * 1000
        s2 = img.symlink(1, b"s2", long_target, 0, 0)
        img.link(f, 1, b"hard")
        assert errno_of(img.create, d, b"f", 0o644, 0, 0) == errno.EEXIST
        assert errno_of(img.mkdir, f, b"x", 0o755, 0, 0) == errno.ENOTDIR
        assert errno_of(img.link, d, 1, b"dl") == errno.EPERM
        assert errno_of(img.create, 1, b"a/b", 0o644, 0, 0) == errno.EINVAL
        assert errno_of(img.create, 1, b"n" * 256, 0o644, 0, 0) == errno.ENAMETOOLONG
        img.create(1, b"n" * 255, 0o644, 0, 0)
    with Image.open(empty_image, readonly=True) as img:
        assert img.was_clean
        assert img.getattr(1).nlink == 3
        assert img.getattr(d).mode == stat.S_IFDIR | 0o750
        assert (img.getattr(d).uid, img.getattr(d).gid) == (10, 20)
        assert img.getattr(f).nlink == 2 and img.lookup(1, b"hard") == f
        assert stat.S_ISFIFO(img.getattr(fifo).mode)
        assert img.getattr(dev).rdev == 0x0501
        assert img.readlink(s) == b"d/f" and img.readlink(s2) == long_target
        assert names(img, d) == [b"c", b"f", b"p"]


def test_unlink_rmdir(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        free0 = img.statfs().bfree
        d = img.mkdir(1, b"d", 0o755, 0, 0)
        f = img.create(d, b"f", 0o644, 0, 0)
        img.write_pages(f, np.arange(10), [page(i) for i in range(10)])
        img.setattr(f, size=10 * PAGE)
        assert errno_of(img.rmdir, 1, b"d") == errno.ENOTEMPTY
        assert errno_of(img.unlink, 1, b"d") == errno.EISDIR
        assert errno_of(img.rmdir, d, b"f") == errno.ENOTDIR
        assert img.unlink(d, b"f") == f
        assert errno_of(img.getattr, f) == errno.ENOENT
        img.rmdir(1, b"d")
        assert img.getattr(1).nlink == 2
        assert names(img, 1) == []
        assert img.statfs().bfree == free0 - 1  # the root keeps its new directory block


def test_rename_variants(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        a = img.mkdir(1, b"a", 0o755, 0, 0)
        b = img.mkdir(1, b"b", 0o755, 0, 0)
        x = img.create(a, b"x", 0o644, 0, 0)
        y = img.create(b, b"y", 0o644, 0, 0)
        img.rename(a, b"x", b, b"x2")
        assert names(img, a) == [] and names(img, b) == [b"x2", b"y"]
        assert errno_of(img.rename, b, b"x2", b, b"y", RENAME_NOREPLACE) == errno.EEXIST
        img.rename(b, b"x2", b, b"y", RENAME_EXCHANGE)
        assert img.lookup(b, b"y") == x and img.lookup(b, b"x2") == y
        img.rename(b, b"x2", b, b"y")  # replaces x, which is freed
        assert img.lookup(b, b"y") == y and errno_of(img.getattr, x) == errno.ENOENT
        # directories: into itself is EINVAL; moving updates nlinks and ".."
        assert errno_of(img.rename, 1, b"a", a, b"z") == errno.EINVAL
        img.rename(1, b"a", b, b"a")
        assert img.lookup(a, b"..") == b
        assert img.getattr(1).nlink == 3 and img.getattr(b).nlink == 3
        assert errno_of(img.rename, 1, b"b", a, b"b") == errno.EINVAL
        c = img.mkdir(1, b"c", 0o755, 0, 0)
        img.rename(1, b"c", b, b"a")  # replaces the empty dir a
        assert img.lookup(b, b"a") == c and errno_of(img.getattr, a) == errno.ENOENT
        assert img.getattr(1).nlink == 3 and img.getattr(b).nlink == 3
        assert errno_of(img.rename, b, b"y", b, b"a") == errno.EISDIR
        assert errno_of(img.rename, b, b"a", b, b"y") == errno.ENOTDIR
        img.rename(b, b"y", b, b"y")
        d = img.mkdir(1, b"d", 0o755, 0, 0)
        img.rename(1, b"d", b, b"y", RENAME_EXCHANGE)  # dir <-> file across parents
        assert img.lookup(1, b"d") == y and img.lookup(b, b"y") == d
        assert img.lookup(d, b"..") == b
        assert img.getattr(1).nlink == 3 and img.getattr(b).nlink == 4


def test_write_pages_bmap_and_truncate(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        f = img.create(1, b"f", 0o644, 0, 0)
        blocks = img.write_pages(f, np.array([0, 1, 2, 7]), [page(1), page(2), page(3), page(8)])
        assert (blocks > 0).all() and blocks[1] == blocks[0] + 1
        assert img.bmap(f, 0, 8).tolist()[3:7] == [0, 0, 0, 0]
        again = img.write_pages(f, np.array([1]), [page(9)])  # in place: same block
        assert again[0] == blocks[1]
        img.setattr(f, size=7 * PAGE + 10)
        data = read(img, f)
        assert data[:PAGE] == page(1) and data[PAGE : 2 * PAGE] == page(9)
        assert data[3 * PAGE : 7 * PAGE] == bytes(4 * PAGE)
        img.setattr(f, size=PAGE + 100)
        assert img.bmap(f, 0, 8).tolist()[2:] == [0] * 6
        img.setattr(f, size=2 * PAGE)  # grow: the old tail was zeroed on shrink
        assert read(img, f)[PAGE + 100 :] == bytes(PAGE - 100)
        assert img.getattr(f).blocks == 2 * 8
    with Image.open(empty_image) as img:
        assert read(img, f)[:PAGE] == page(1)


def test_fragmented_file_uses_extent_chain(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        f = img.create(1, b"frag", 0o644, 0, 0)
        g = img.create(1, b"other", 0o644, 0, 0)
        n = 700
        # Every other page: each page is its own extent (one call, one batch) ...
        img.write_pages(f, np.arange(0, 2 * n, 2), [page(i % 251) for i in range(n)])
        # ... and a few interleaved with another file, one transaction each.
        for i in range(20):
            img.write_pages(g, np.array([i]), [page(0)])
            img.write_pages(f, np.array([2 * n + 1 + 2 * i]), [page(1)])
        img.setattr(f, size=2 * n * PAGE)
        assert len(img._ext(f).chain) >= 2
    with Image.open(empty_image) as img:
        b = img.bmap(f, 0, 2 * n)
        assert (b[::2] > 0).all() and not b[1::2].any()
        # the 20 pages past the end went with the size change
        assert img.getattr(f).blocks == (n + len(img._ext(f).chain)) * 8
        assert bytes(img.block_view(int(b[2 * 300]))) == page(300 % 251)
        free0 = img.statfs().bfree
        img.setattr(f, size=0)
        assert img.getattr(f).blocks == 0 and img._ext(f).chain == []
        assert img.statfs().bfree >= free0 + n


def test_xattrs(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        f = img.create(1, b"f", 0o644, 0, 0)
        assert img.listxattr(f) == []
        img.setxattr(f, b"user.a", b"1")
        img.setxattr(f, b"user.b", b"x" * 100)
        assert errno_of(img.setxattr, f, b"user.a", b"2", XATTR_CREATE) == errno.EEXIST
        assert errno_of(img.getxattr, f, b"user.c") == errno.ENODATA
        assert errno_of(img.setxattr, f, b"user.big", b"x" * 5000) == errno.ENOSPC
    with Image.open(empty_image) as img:
        assert sorted(img.listxattr(f)) == [b"user.a", b"user.b"]
        assert img.getxattr(f, b"user.b") == b"x" * 100
        img.removexattr(f, b"user.a")
        img.removexattr(f, b"user.b")
        assert img.getattr(f).blocks == 0


def test_setattr_fields(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        f = img.create(1, b"f", 0o644, 0, 0)
        a = img.setattr(f, mode=0o4711, uid=5, gid=6, atime_ns=1, mtime_ns=2)
        assert a.mode == stat.S_IFREG | 0o4711 and (a.uid, a.gid) == (5, 6)
        assert (a.atime_ns, a.mtime_ns) == (1, 2)
        assert errno_of(img.setattr, 1, size=0) == errno.EISDIR


def test_orphans_released_and_reclaimed_after_crash(empty_image: Path) -> None:
    img = Image.open(empty_image)
    free0 = img.statfs()
    f = img.create(1, b"f", 0o644, 0, 0)
    img.write_pages(f, np.arange(4), [page(5)] * 4)
    g = img.create(1, b"g", 0o644, 0, 0)
    img.write_pages(g, np.arange(3), [page(6)] * 3)
    img.unlink(1, b"f", still_open=True)
    img.unlink(1, b"g", still_open=lambda ino: ino == g)
    assert img.getattr(f).nlink == 0  # still readable while open
    assert bytes(img.block_view(int(img.bmap(f, 0, 1)[0]))) == page(5)
    img.release(f)
    assert errno_of(img.getattr, f) == errno.ENOENT
    img.close(clean=False)  # power cut with g still open
    img = Image.open(empty_image)
    assert not img.was_clean
    assert img.recovery == ["reclaimed 1 orphan inode"]
    assert errno_of(img.getattr, g) == errno.ENOENT
    now = img.statfs()
    assert now.ffree == free0.ffree and now.bfree == free0.bfree - 1  # root's dir block
    img.close()


def test_reserve_enospc(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        free = img.statfs().bfree
        img.reserve(free)
        assert img.statfs().bfree == 0
        assert errno_of(img.reserve, 1) == errno.ENOSPC
        f = img.create(1, b"f", 0o644, 0, 0)
        img.write_pages(f, np.arange(3), [page(1)] * 3)  # writeback uses the reservation
        assert img.reserved == free - 3
        img.unreserve(free)
        assert img.reserved == 0 and img.statfs().bfree == free - 4  # + root dir block


def test_readonly_refuses_writes(image: Path) -> None:
    with Image.open(image, readonly=True) as img:
        assert errno_of(img.create, 1, b"x", 0o644, 0, 0) == errno.EROFS
        assert errno_of(img.write_pages, img.lookup(1, b"zero"), [0], [page(1)]) == errno.EROFS


def test_readdir_cookies_stable_across_changes(empty_image: Path) -> None:
    with Image.open(empty_image) as img:
        d = img.mkdir(1, b"d", 0o755, 0, 0)
        for i in range(200):
            img.create(d, b"f%03d" % i, 0o644, 0, 0)
        before = {n: c for c, n, _ in img.readdir(d)}
        for i in range(0, 200, 3):
            img.unlink(d, b"f%03d" % i)
        after = {n: c for c, n, _ in img.readdir(d)}
        assert all(before[n] == c for n, c in after.items())
        mid = sorted(after.values())[50]
        assert [c for c, _, _ in img.readdir(d, mid)] == sorted(
            c for c in after.values() if c > mid
        )


def test_extent_chain_changes_stay_local(fast_dir: Path, monkeypatch) -> None:
    """With a journal of 12 blocks, a 3000-extent file is built and edited anywhere.

    Chain blocks are not kept full, so mapping a hole at the front touches a
    couple of chain blocks, not all of them; big batches are split to fit.
    """
    from nvramfs.image import journal
    from nvramfs.image.fsck import fsck
    from nvramfs.image.mkfs import mkfs
    from nvramfs.image.persist import RecordingPersist

    monkeypatch.setattr(journal, "max_txn_blocks", lambda jblocks: 12)
    path = fast_dir / "chain.img"
    mkfs(path, size=32 << 20)
    rec = RecordingPersist()
    with Image.open(path, persist=rec) as img:
        f = img.create(1, b"f", 0o644, 0, 0)
        n = 3000
        img.write_pages(f, np.arange(2, 2 * n + 2, 2), [page(i % 200) for i in range(n)])
        assert len(img._ext(f).chain) >= 11
        for idx in (1, 2 * n - 1, n + 1, 3):  # front, back, middle: new single-page extents
            before = len(rec.log)
            img.write_pages(f, np.array([idx]), [page(7)])
            stores = [op for op in rec.log[before:] if op.kind == "store"]
            journal_store = max(stores, key=lambda op: len(op.data))
            assert len(journal_store.data) <= 8 * BS_  # header + a few images
        img.setattr(f, size=(2 * n + 2) * PAGE)
        b = img.bmap(f, 0, 2 * n + 2)
        assert (b[2::2] > 0).all() and b[1] and b[3] and b[n + 1]
        assert bytes(img.block_view(int(b[3]))) == page(7)
        img.setattr(f, size=10 * PAGE)
    assert fsck(str(path)).exit_code == 0


def test_big_truncate_of_an_unlinked_open_file_keeps_it_until_release(
    empty_image: Path, monkeypatch
) -> None:
    with Image.open(empty_image) as img:
        free0 = img.statfs().bfree
        f = img.create(1, b"f", 0o644, 0, 0)
        img.write_pages(f, np.arange(0, 60, 2), [page(i + 1) for i in range(30)])
        img.setattr(f, size=60 * PAGE)
        img.unlink(1, b"f", still_open=True)
        monkeypatch.setattr(Image, "_txn_room", lambda self: 1)  # one run per transaction
        img.setattr(f, size=5 * PAGE)
        monkeypatch.undo()
        assert img.getattr(f).nlink == 0 and img.getattr(f).blocks == 3 * 8
        assert read(img, f)[4 * PAGE :] == page(3)
        img.release(f)
        assert errno_of(img.getattr, f) == errno.ENOENT
        assert img.statfs().bfree == free0 - 1  # the root's directory block


def test_extent_map_random_edits_match_a_reference(fast_dir: Path, monkeypatch) -> None:
    """Hundreds of extents, random hole fills, overwrites and truncates, small journal:
    after every step the map re-read from the image equals a page -> block reference."""
    import random

    from nvramfs.image import journal
    from nvramfs.image.fsck import fsck
    from nvramfs.image.mkfs import mkfs

    monkeypatch.setattr(journal, "max_txn_blocks", lambda jblocks: 16)
    path = fast_dir / "edits.img"
    mkfs(path, size=48 << 20)
    rnd = random.Random(11)
    ref: dict[int, int] = {}
    with Image.open(path) as img:
        f = img.create(1, b"f", 0o644, 0, 0)
        g = img.create(1, b"g", 0o644, 0, 0)
        gpage = 0
        for _step in range(150):
            if rnd.random() < 0.75:
                idx = rnd.sample(range(4000), rnd.randint(1, 60))
                got = img.write_pages(f, np.array(idx), [page(i % 256) for i in idx])
                for i, b in zip(idx, got.tolist(), strict=True):
                    assert ref.get(i, b) == b  # an existing page is rewritten in place
                    ref[i] = b
                img.write_pages(g, np.array([gpage]), [page(0)])  # fragment f's free space
                gpage += 1
            else:
                n = rnd.randint(0, 4000)
                img.setattr(f, size=n * PAGE)
                ref = {i: b for i, b in ref.items() if i < n}
            img._exts.pop(f, None)  # re-read the map from the image
            want = np.zeros(4000, np.int64)
            for i, b in ref.items():
                want[i] = b
            assert (img.bmap(f, 0, 4000) == want).all()
        assert len(img._ext(f).chain) > 2
        img.setattr(f, size=4000 * PAGE)
    assert fsck(str(path)).exit_code == 0


def test_write_pages_of_an_array_is_the_list_of_its_pages(fast_dir: Path) -> None:
    """write_pages given one (n, 4096) array (mm's batches, sim=off's writes) does what
    it does given the list of those pages: the same blocks returned, the same extent
    map, the same bytes at every block, the same sizes and msyncs; duplicates (the
    last write of an index wins), unsorted indices, holes and in-place rewrites."""
    from nvramfs.image.mkfs import mkfs

    rng = np.random.default_rng(4)
    imgs = []
    for name in ("list", "array"):
        mkfs(fast_dir / name, size=8 << 20)
        imgs.append(Image.open(fast_dir / name))
    files = [img.create(1, b"f", 0o644, 0, 0) for img in imgs]
    assert files[0] == files[1]
    for img in imgs:
        img.reserve(1000)
    for step in range(40):
        n = int(rng.integers(1, 40))
        idx = rng.integers(0, 300, n)
        if step % 3 == 0:
            idx = np.sort(np.unique(idx))
        rows = rng.integers(0, 256, (len(idx), PAGE), dtype=np.uint8)
        size = int(rng.integers(1, 300 * PAGE)) if step % 2 else None
        kw = {} if size is None else {"size": size, "still_dirty": np.array([150, 151])}
        got = [
            imgs[0].write_pages(files[0], idx, [r.tobytes() for r in rows], **kw),
            imgs[1].write_pages(files[1], idx, rows, **kw),
        ]
        assert np.array_equal(got[0], got[1])
    a, b = imgs
    assert np.array_equal(a.bmap(files[0], 0, 300), b.bmap(files[1], 0, 300))
    assert a.getattr(files[0]).size == b.getattr(files[1]).size
    assert read(a, files[0]) == read(b, files[1])
    assert a.persist.msyncs == b.persist.msyncs
    with pytest.raises(ValueError):
        b.write_pages(files[1], np.arange(2), np.zeros((2, 100), dtype=np.uint8))
    for img in imgs:
        img.close()
