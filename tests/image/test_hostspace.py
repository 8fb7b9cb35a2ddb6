"""Host space: every block the image layer stores into is backed on the host first.

Images are sparse; a store into a page the host filesystem has not allocated
is SIGBUS on a full host. `FakeHost` is a host filesystem of a fixed number
of pages under the image: `allocate` (posix_fallocate) and stores take pages,
and a store into a page nobody allocated fails the test whether or not the
host still has room (the strict form of "it would have been SIGBUS"). A real
size-limited tmpfs checks the same in a child process (a SIGBUS there must not
take pytest down with it).
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from nvramfs.errors import NvramfsError
from nvramfs.image import FsError, HostFull, Image
from nvramfs.image import alloc as A
from nvramfs.image import format as F
from nvramfs.image.fsck import fsck
from nvramfs.image.mkfs import mkfs
from nvramfs.image.persist import Persist

BS = F.BLOCK_SIZE
ROOT = Path(__file__).resolve().parents[2]


class FakeHost(Persist):
    """A host filesystem with room for `extra` more pages than the image holds now."""

    def __init__(self, path: Path, extra: int) -> None:
        super().__init__()
        raw = np.fromfile(path, np.uint8).reshape(-1, BS)
        with Image.open(path, readonly=True) as img:
            fixed = img.L.itable_start + 1  # what mkfs allocated (zeros included)
        self.backed = set(np.flatnonzero(raw.any(axis=1)).tolist()) | set(range(fixed))
        self.capacity = len(self.backed) + extra
        self.refused = 0

    def allocate(self, offset: int, length: int) -> None:
        pages = range(offset // BS, -(-(offset + length) // BS))
        new = [p for p in pages if p not in self.backed]
        if len(self.backed) + len(new) > self.capacity:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.backed.update(new)

    def store(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        first, last = offset // BS, (offset + len(data) - 1) // BS
        bad = [p for p in range(first, last + 1) if p not in self.backed]
        assert not bad, f"store into block(s) {bad[:4]} the host never allocated (SIGBUS)"
        super().store(offset, data)


def true_pool(img: Image) -> int:
    """Free blocks inside backed units, counted from the bitmap (what `_pool_free` tracks)."""
    L = img.L
    bits = np.concatenate(
        [
            np.unpackbits(
                np.frombuffer(img._block(L.bbitmap_start + i)[: F.PAYLOAD], np.uint8),
                bitorder="little",
            )
            for i in range(L.bbitmap_blocks)
        ]
    )[: L.nr_blocks]
    free = np.flatnonzero(bits == 0)
    return int(img._hbacked[free // A.HOST_UNIT].sum())


def read_file(img: Image, ino: int, npages: int) -> dict[int, bytes]:
    blocks = img.bmap(ino, 0, npages)
    return {i: bytes(img.block_view(int(b))) for i, b in enumerate(blocks) if b}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_full_host_refuses_at_reserve_and_never_stores_unbacked(fast_dir: Path, seed: int) -> None:
    """A random workload on a host with room for ~2.5 MiB: reservations and namespace
    calls get HostFull, writeback of reserved pages never does, no store lands on an
    unallocated page, the pool never overcounts, and everything written back is there."""
    path = fast_dir / "h.img"
    mkfs(path, size=32 << 20)
    host = FakeHost(path, extra=640)
    rng = random.Random(seed)
    files: dict[bytes, int] = {}
    pending: dict[int, dict[int, bytes]] = {}  # written, not yet written back (reserved holes)
    reserved_holes: dict[int, set[int]] = {}
    done: dict[bytes, dict[int, bytes]] = {}
    refused = {"reserve": 0, "namespace": 0}

    def writeback(img: Image, ino: int) -> None:
        pages = pending.pop(ino, {})
        if pages:
            idx = sorted(pages)
            img.write_pages(ino, np.array(idx), [pages[i] for i in idx])  # never HostFull
            reserved_holes.pop(ino, None)
            name = next(n for n, i in files.items() if i == ino)
            done.setdefault(name, {}).update(pages)

    img = Image.open(path, persist=host)
    try:
        for step in range(900):
            op = rng.random()
            if op < 0.15 or not files:
                name = b"f%d" % step
                try:
                    files[name] = img.create(1, name, 0o644, 0, 0)
                except HostFull:
                    refused["namespace"] += 1
            elif op < 0.6:
                name = rng.choice(sorted(files))
                ino = files[name]
                first, n = rng.randrange(0, 400), rng.randrange(1, 24)
                blocks = img.bmap(ino, first, n)
                mine = reserved_holes.setdefault(ino, set())
                holes = [first + k for k in range(n) if not blocks[k] and first + k not in mine]
                try:
                    img.reserve(len(holes))  # write(): ENOSPC here or never
                except HostFull:
                    refused["reserve"] += 1
                    continue
                mine.update(holes)
                for k in range(n):
                    pending.setdefault(ino, {})[first + k] = rng.randbytes(BS)
            elif op < 0.75:
                writeback(img, files[rng.choice(sorted(files))])
            elif op < 0.85:
                name = rng.choice(sorted(files))
                ino = files.pop(name)
                pending.pop(ino, None)
                img.unreserve(len(reserved_holes.pop(ino, ())))
                img.unlink(1, name)
                done.pop(name, None)
            else:
                try:
                    if op < 0.9:
                        img.mkdir(1, b"d%d" % step, 0o755, 0, 0)
                    elif op < 0.95:
                        img.symlink(1, b"s%d" % step, b"/t" * 300, 0, 0)  # a target block
                    else:
                        ino = files[rng.choice(sorted(files))]
                        img.setxattr(ino, b"user.x%d" % step, b"v" * 200)  # an xattr block
                except HostFull:
                    refused["namespace"] += 1
            assert img._pool_free <= true_pool(img)
            assert img._pool_free >= img.reserved, "reservations not backed"
        for ino in list(pending):
            writeback(img, ino)
        for name, pages in done.items():
            img.setattr(files[name], size=(max(pages) + 1) * BS)
        assert img.reserved == 0
    finally:
        img.close()
    assert refused["reserve"] > 0 and host.refused > 0, refused  # the host did fill up
    rep = fsck(str(path))
    assert not rep.errors, rep.errors
    with Image.open(path, readonly=True) as img:
        for name, pages in done.items():
            ino = img.lookup(1, name)
            assert read_file(img, ino, max(pages) + 1) == pages


def test_namespace_calls_get_hostfull_on_a_full_host(fast_dir: Path) -> None:
    """mkdir/create/symlink/setxattr on a host with no room: ENOSPC, and the image is
    unchanged (fsck clean, nothing half-made)."""
    path = fast_dir / "n.img"
    mkfs(path, size=16 << 20)
    host = FakeHost(path, extra=0)
    with Image.open(path, persist=host) as img:
        with pytest.raises(HostFull) as e:
            img.mkdir(1, b"d", 0o755, 0, 0)  # a directory block for the root
        assert e.value.errno == errno.ENOSPC
        with pytest.raises(FsError):
            img.reserve(1)
        assert list(img.readdir(1)) == []
        assert img._pool_free == true_pool(img)
    assert not fsck(str(path)).errors


def test_reservations_are_backed_and_survive_a_full_host(fast_dir: Path) -> None:
    """What reserve() promised is written back after the host filled up."""
    path = fast_dir / "r.img"
    mkfs(path, size=16 << 20)
    host = FakeHost(path, extra=600)
    data = [os.urandom(BS) for _ in range(200)]
    with Image.open(path, persist=host) as img:
        ino = img.create(1, b"f", 0o644, 0, 0)
        img.reserve(200)
        host.capacity = len(host.backed)  # the host is full from here on
        with pytest.raises(HostFull):
            while True:
                img.reserve(16)
        img.write_pages(ino, np.arange(200), data)
        img.setattr(ino, size=200 * BS)
        got = read_file(img, ino, 200)
    assert [got[i] for i in range(200)] == data
    assert not fsck(str(path)).errors


def test_pool_rollback_on_abort(fast_dir: Path) -> None:
    """An aborted transaction gives back the blocks it took; what it backed stays backed."""
    path = fast_dir / "a.img"
    mkfs(path, size=16 << 20)
    with Image.open(path, persist=FakeHost(path, extra=4096)) as img:
        img.create(1, b"f", 0o644, 0, 0)
        with pytest.raises(RuntimeError), img._transaction():
            img._host_grow(0, 4 * A.HOST_CHUNK, img.L.data_start)
            img._alloc_blocks(700, img.L.data_start, meta=True)
            raise RuntimeError("abort")
        assert img._pool_free == true_pool(img) > 700


def test_a_pool_that_overcounts_is_counted_again_not_corruption(fast_dir: Path) -> None:
    """Should the pool's count ever run ahead of the bitmap, an allocation counts
    again (and answers HostFull if the host has no room), never CorruptImage."""
    path = fast_dir / "o.img"
    mkfs(path, size=16 << 20)
    host = FakeHost(path, extra=3 * A.HOST_CHUNK)
    with Image.open(path, persist=host) as img:
        ino = img.create(1, b"f", 0o644, 0, 0)
        img.reserve(100)
        img.write_pages(ino, np.arange(100), [b"\1" * BS] * 100)
        real = true_pool(img)
        assert img._pool_recount() == real
        img._pool_free = real + 5000  # a bug's overcount: reserve() grows nothing
        n = real + 100
        img.reserve(n)
        img.write_pages(ino, np.arange(100, 100 + n), [b"\2" * BS] * n)  # finds fewer: recounts
        assert img._pool_free == true_pool(img)
        assert img.corrupt is None
    assert not fsck(str(path)).errors


def test_reserve_grows_the_pool_in_chunks_ahead(fast_dir: Path) -> None:
    """One write's reservation backs a chunk, not a block: fallocate is rare."""
    path = fast_dir / "c.img"
    mkfs(path, size=64 << 20)
    host = FakeHost(path, extra=1 << 20)
    calls = []
    real = host.allocate

    def counting(offset: int, length: int) -> None:
        calls.append(length)
        real(offset, length)

    host.allocate = counting  # type: ignore[method-assign]
    with Image.open(path, persist=host) as img:
        ino = img.create(1, b"f", 0o644, 0, 0)
        n0 = len(calls)
        for k in range(0, 1024, 4):  # 4 MiB in 16 KiB writes, written back as it goes
            img.reserve(4)
            img.write_pages(ino, np.arange(k, k + 4), [bytes([k % 251 + 1]) * BS] * 4)
        assert len(calls) - n0 <= 1024 // A.HOST_CHUNK + 2
        assert len(img._ext(ino).lblk) <= 4  # the pool grows at the goal: long extents


def test_preallocated_image_needs_no_pool(fast_dir: Path) -> None:
    path = fast_dir / "p.img"
    mkfs(path, size=16 << 20, preallocate=True)
    st = os.stat(path)
    assert st.st_blocks * 512 >= st.st_size
    with Image.open(path) as img:
        assert img._hbacked is None
        ino = img.create(1, b"f", 0o644, 0, 0)
        img.reserve(10)
        img.write_pages(ino, np.arange(10), [b"\1" * BS] * 10)


def test_sparse_image_backs_only_its_metadata(fast_dir: Path) -> None:
    """mkfs allocates superblocks, journal and bitmaps (and the root's inode block);
    the inode table and data area stay holes."""
    path = fast_dir / "s.img"
    mkfs(path, size=256 << 20)
    st = os.stat(path)
    with Image.open(path, readonly=True) as img:
        fixed = (img.L.itable_start + 1) * BS
    assert fixed <= st.st_blocks * 512 < fixed + (1 << 20)


@pytest.fixture
def small_tmpfs():
    """A real tmpfs of 8 MiB (always unmounted), or skip when we may not mount one.
    Outside the test's tmp_path: the mount fixtures take mounts there as leftovers."""
    d = Path(tempfile.mkdtemp(prefix="nvramfs-hostfs-"))
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(d)], capture_output=True
    )
    if out.returncode != 0:
        d.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {out.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
        d.rmdir()


CHILD = """
import os, sys, numpy as np
from nvramfs.image import Image, FsError, HostFull
path, out = sys.argv[1], sys.argv[2]
img = Image.open(path)
ino = img.create(1, b"f", 0o644, 0, 0)
n = 0
try:
    while True:
        img.reserve(64)  # write(): the host may refuse here, and only here
        img.write_pages(ino, np.arange(n, n + 64), [bytes([(n + k) % 251 + 1]) * 4096 for k in range(64)])
        n += 64
except HostFull:
    pass
img.setattr(ino, size=n * 4096)
made = 0
try:
    for i in range(100000):
        img.mkdir(1, b"d%d" % i, 0o755, 0, 0)
        made += 1
except HostFull:
    pass
img.close()
open(out, "w").write(f"{n} {made}")
"""


def test_real_tmpfs_fills_without_sigbus(small_tmpfs: Path, tmp_path: Path) -> None:
    """A 64 MiB sparse image on an 8 MiB tmpfs: writes until the host is full end in
    HostFull, not SIGBUS; everything written is there and fsck is clean."""
    path = small_tmpfs / "t.img"
    mkfs(path, size=64 << 20)
    out = tmp_path / "child.out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(out)], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, f"child died ({res.returncode}): {res.stderr[-2000:]}"
    n, made = map(int, out.read_text().split())
    assert n >= 1024 and made > 0  # most of the 8 MiB went to data
    # fsck reads the inode table through the mapping, which on tmpfs allocates its
    # holes: give it room (the image is what is checked, not the host).
    subprocess.run(["mount", "-o", "remount,size=64M", str(small_tmpfs)], check=True)
    assert not fsck(str(path)).errors
    with Image.open(path, readonly=True) as img:
        got = read_file(img, img.lookup(1, b"f"), n)
    assert all(got[i] == bytes([i % 251 + 1]) * BS for i in range(n))


def test_mkfs_on_a_host_too_small(small_tmpfs: Path) -> None:
    """--preallocate that does not fit: one clear error, no file left behind."""
    path = small_tmpfs / "big.img"
    with pytest.raises(NvramfsError, match="cannot preallocate"):
        mkfs(path, size=64 << 20, preallocate=True)
    assert list(small_tmpfs.iterdir()) == []


def test_mkfs_cli_preallocate_and_warning(small_tmpfs: Path) -> None:
    """`mkfs --preallocate` allocates the whole file (no warning then); one that does
    not fit is one line and exit 1; a sparse image bigger than the host warns once."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nvramfs", "mkfs", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )

    ok = run(str(small_tmpfs / "p.img"), "--size", "4M", "--preallocate", "-q")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    st = os.stat(small_tmpfs / "p.img")
    assert st.st_blocks * 512 >= st.st_size == 4 << 20
    big = run(str(small_tmpfs / "big.img"), "--size", "64M", "--preallocate")
    assert big.returncode == 1
    assert big.stderr.count("\n") == 1 and "cannot preallocate" in big.stderr, big.stderr
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["p.img"]
    sparse = run(str(small_tmpfs / "s.img"), "--size", "64M", "-q")
    assert sparse.returncode == 0
    assert sparse.stderr.count("\n") == 1 and "can grow by" in sparse.stderr, sparse.stderr
