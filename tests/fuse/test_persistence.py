"""Power cuts under a write workload driven through the FUSE request handlers.

The image is opened with the image layer's persistence test mode
(`RecordingPersist`), and a workload of creates, writes, fsyncs, renames,
unlink-while-open, truncates and DRAM-pressure writebacks runs through
`Operations` and a real `MemoryManager`, exactly as the mount would run it.
Then, for a power cut right after every fence: fsck is clean, and every file
whose fsync had returned before that fence holds exactly its fsync'ed bytes
after recovery.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pyfuse3
import pytest
import trio

from nvramfs.fuse.operations import Operations
from nvramfs.image import Image
from nvramfs.image.fsck import fsck
from nvramfs.image.mkfs import mkfs
from nvramfs.image.persist import RecordingPersist
from nvramfs.mm import MemoryManager


class Ctx:
    uid = 0
    gid = 0
    pid = os.getpid()
    umask = 0o022


CTX = Ctx()
ROOT = pyfuse3.ROOT_INODE


def call(fn, *args):
    return trio.run(fn, *args)


class _Fields:
    def __init__(self, **kw: bool) -> None:
        for name in ("atime", "mtime", "ctime", "mode", "uid", "gid", "size"):
            setattr(self, f"update_{name}", kw.get(name, False))


def data(seed: int, n: int) -> bytes:
    return bytes((seed * 7 + i * 13) & 0xFF for i in range(n))


@pytest.fixture
def work():
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = Path(tempfile.mkdtemp(prefix="nvramfs-persist-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_workload(ops: Operations, rec: RecordingPersist) -> list[tuple[int, int, str, bytes]]:
    """The workload; returns (fences before the call, fences when it returned, path,
    the bytes the path must hold once it returned): between the two a power cut may
    show the old or the new state."""
    acked: list[tuple[int, int, str, bytes]] = []

    def create(parent: int, name: bytes) -> tuple[int, int]:
        fi, attr = call(ops.create, parent, name, stat.S_IFREG | 0o644, os.O_RDWR, CTX)
        return fi.fh, attr.st_ino

    def fsync(fh: int, path: str, content: bytes) -> None:
        start = rec.fences()
        call(ops.fsync, fh, False)
        acked.append((start, rec.fences(), path, content))

    a, _ = create(ROOT, b"a")
    call(ops.write, a, 0, data(1, 20_000))
    fsync(a, "a", data(1, 20_000))

    b, _ = create(ROOT, b"b")
    call(ops.write, b, 0, data(2, 50_000))  # not fsync'ed yet

    c, _ = create(ROOT, b"c")
    call(ops.write, c, 0, data(3, 8192))
    call(ops.fsync, c, False)
    call(ops.unlink, ROOT, b"c", CTX)  # open: an orphan until release
    call(ops.write, c, 8192, data(4, 4096))
    call(ops.release, c)

    d = call(ops.mkdir, ROOT, b"d", 0o755, CTX).st_ino
    e, _ = create(d, b"e")
    call(ops.write, e, 100, data(5, 12_000))  # a hole in front
    fsync(e, "d/e", bytes(100) + data(5, 12_000))

    call(ops.rename, ROOT, b"b", d, b"b2", 0, CTX)
    fsync(b, "d/b2", data(2, 50_000))

    # More pages than the DRAM budget: reclaim writes frames back on its own.
    f, _ = create(ROOT, b"f")
    big = data(6, 40 * 4096 + 5)
    for off in range(0, len(big), 8192):
        call(ops.write, f, off, big[off : off + 8192])
    call(ops.write, f, 3 * 4096, b"overwrite")
    big = big[: 3 * 4096] + b"overwrite" + big[3 * 4096 + 9 :]
    fsync(f, "f", big)

    # Shrink an fsync'ed file: a truncate is durable when setattr returns.
    start = rec.fences()
    call(ops.setattr, _ino(ops, "a"), _size(5000), _Fields(size=True), a, CTX)
    acked.append((start, rec.fences(), "a", data(1, 5000)))
    call(ops.write, a, 5000, data(7, 3000))
    fsync(a, "a", data(1, 5000) + data(7, 3000))

    for fh in (a, b, e, f):
        call(ops.release, fh)
    return acked


def _ino(ops: Operations, path: str) -> int:
    ino = ROOT
    for part in path.split("/"):
        ino = ops.img.lookup(ino, part.encode())
    return ino


def _size(n: int) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    attr.st_size = n
    return attr


def read_file(img: Image, path: str) -> bytes:
    ino = ROOT
    for part in path.split("/"):
        ino = img.lookup(ino, part.encode())
    size = img.getattr(ino).size
    out = bytearray()
    for index in range((size + 4095) // 4096):
        block = int(img.bmap(ino, index, 1)[0])
        out += bytes(img.block_view(block, 1)) if block else bytes(4096)
    return bytes(out[:size])


def test_power_cut_at_every_fence_keeps_fsynced_data(work):
    base = work / "base.img"
    mkfs(base, size=4 << 20)
    base_bytes = base.read_bytes()
    rec = RecordingPersist()
    img = Image.open(base, persist=rec)
    mm = MemoryManager(img, 16)  # 16 frames: the workload needs more
    ops = Operations(img, mm, None)
    acked = run_workload(ops, rec)
    ops.shutdown()
    mm.close()
    img.close()
    assert sum(mm.stats()["writebacks"].values()) > 40
    crash = work / "crash.img"
    checked = 0
    for nfence, image in rec.crash_images(base_bytes):
        crash.write_bytes(image)
        rep = fsck(str(crash))
        assert rep.exit_code == 0, (nfence, rep.errors)
        want: dict[str, list[bytes] | None] = {}
        for start, end, path, content in acked:
            if end <= nfence:
                want[path] = [content]  # a later call on the same path supersedes
            elif start <= nfence:
                # Cut inside the call: the state before it (if known) or after it.
                before = want.get(path)
                want[path] = None if before is None else [*before, content]
        with Image.open(crash) as cimg:  # recovery, as the next mount does
            for path, contents in want.items():
                if contents is not None:
                    assert read_file(cimg, path) in contents, (nfence, path)
            names = {n for _, n, _ in cimg.readdir(ROOT)}
            assert b"c" not in names or nfence < acked[1][0]
        assert fsck(str(crash)).exit_code == 0
        checked += 1
    assert checked == rec.fences() + 1 and checked > 50
