"""mkfs from a tree, then everything read back through the Image API matches it."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from nvramfs.image import FsError, Image
from nvramfs.image.mkfs import mkfs


def walk(img: Image, ino: int = 1, prefix: str = "") -> dict[str, int]:
    out = {}
    for _cookie, name, child in img.readdir(ino):
        path = prefix + name.decode()
        out[path] = child
        if stat.S_ISDIR(img.getattr(child).mode):
            out.update(walk(img, child, path + "/"))
    return out


def read_file(img: Image, ino: int) -> bytes:
    a = img.getattr(ino)
    n = -(-a.size // 4096)
    blocks = img.bmap(ino, 0, n)
    parts = [bytes(img.block_view(int(b))) if b else bytes(4096) for b in blocks]
    return b"".join(parts)[: a.size]


def test_tree_round_trip(image: Path, tree: Path) -> None:
    img = Image.open(image, readonly=True)
    try:
        assert img.was_clean and img.recovery == []
        found = walk(img)
        want = {str(p.relative_to(tree)) for p in tree.rglob("*")}
        assert set(found) == want
        for rel, ino in found.items():
            st = os.lstat(tree / rel)
            a = img.getattr(ino)
            assert a.mode == st.st_mode, rel
            assert (a.uid, a.gid) == (st.st_uid, st.st_gid)
            assert a.mtime_ns == st.st_mtime_ns, rel
            assert a.ctime_ns == st.st_ctime_ns or rel == "etc/hostname", rel
            if stat.S_ISREG(a.mode):
                assert a.size == st.st_size
                assert read_file(img, ino) == (tree / rel).read_bytes(), rel
                assert a.nlink == st.st_nlink
            elif stat.S_ISLNK(a.mode):
                assert img.readlink(ino) == os.fsencode(os.readlink(tree / rel))
            else:
                assert a.nlink == 2 + sum(
                    1 for p in (tree / rel).iterdir() if p.is_dir() and not p.is_symlink()
                )
        assert found["etc/hostname"] == found["usr/hostname.hard"]
        hn = img.getattr(found["etc/hostname"])
        assert (hn.atime_ns, hn.mtime_ns) == (1_600_000_000_123_456_789, 1_500_000_000_987_654_321)
        # the sparse file's middle pages are holes (block 0)
        blocks = img.bmap(found["sparse"], 0, 6)
        assert blocks[0] and blocks[5] and not blocks[1:5].any()
    finally:
        img.close()


def test_lookup_and_errors(image: Path) -> None:
    with Image.open(image, readonly=True) as img:
        etc = img.lookup(1, b"etc")
        assert img.lookup(etc, b"..") == 1 and img.lookup(etc, b".") == etc
        assert img.lookup(1, b"..") == 1
        with pytest.raises(FsError) as e:
            img.lookup(1, b"nope")
        assert e.value.errno == errno.ENOENT
        with pytest.raises(FsError) as e:
            img.lookup(img.lookup(etc, b"hostname"), b"x")
        assert e.value.errno == errno.ENOTDIR
        with pytest.raises(FsError) as e:
            img.lookup(1, b"x" * 256)
        assert e.value.errno == errno.ENAMETOOLONG
        with pytest.raises(FsError):
            img.getattr(10**9)
        with pytest.raises(FsError) as e:
            img.readlink(etc)
        assert e.value.errno == errno.EINVAL


def test_readdir_cookies_resume(image: Path) -> None:
    with Image.open(image, readonly=True) as img:
        all_ = list(img.readdir(1))
        assert all(c > 0 for c, _, _ in all_)
        assert [c for c, _, _ in all_] == sorted(c for c, _, _ in all_)
        for k in range(len(all_)):
            assert list(img.readdir(1, all_[k][0])) == all_[k + 1 :]


def test_block_view_zero_copy_readonly(image: Path) -> None:
    with Image.open(image, readonly=True) as img:
        ino = img.lookup(img.lookup(img.lookup(1, b"usr"), b"lib"), b"libbig.so")
        b = img.bmap(ino, 0, 74)
        assert b.dtype == np.int64 and (b > 0).all()
        v = img.block_view(int(b[0]), 2)
        assert v.readonly and len(v) == 8192
        assert img.bmap(ino, 73, 1)[0] == b[73]
        assert img.bmap(ino, 74, 3).tolist() == [0, 0, 0]
        with pytest.raises(ValueError):
            img.block_view(img.nr_blocks)
        with pytest.raises(ValueError):
            img.block_view(0)
        del v


def test_statfs_counts(image: Path) -> None:
    with Image.open(image, readonly=True) as img:
        s = img.statfs()
        assert s.bsize == 4096 and s.blocks == img.nr_blocks and s.namemax == 255
        assert 0 < s.bfree < s.blocks and 0 < s.ffree < s.files


def test_mkfs_empty_16g_is_sparse_and_fast(tmp_path: Path) -> None:
    import time

    t0 = time.monotonic()
    r = mkfs(tmp_path / "big.img", size=16 << 30)
    assert time.monotonic() - t0 < 1.0
    assert r.size == 16 << 30
    assert os.stat(tmp_path / "big.img").st_blocks * 512 < 8 << 20
    t0 = time.monotonic()
    with Image.open(tmp_path / "big.img") as img:  # O(1): no scan of 4 Mi blocks
        assert time.monotonic() - t0 < 0.2
        assert list(img.readdir(1)) == []
        assert img.statfs().blocks == 4 << 20
