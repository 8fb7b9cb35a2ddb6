"""The request handlers without a mount: errors, lookup counts, orphans, control files.

These drive `nvramfs.fuse.operations.Operations` directly (pyfuse3's objects
work without a session) over a real image and a real MemoryManager, so each
rule is checked where it lives; the mounted tests check the same end to end.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pyfuse3
import pytest
import trio

from nvramfs.events.writer import EventWriter
from nvramfs.fuse.control import Control
from nvramfs.fuse.operations import Operations
from nvramfs.image import FsError, Image
from nvramfs.image.mkfs import mkfs
from nvramfs.mm import MemoryManager, MMBug


class Ctx:
    uid = 0
    gid = 0
    pid = os.getpid()
    umask = 0o022


CTX = Ctx()


@pytest.fixture
def fs(tmp_path):
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    base = Path(tempfile.mkdtemp(prefix="nvramfs-ops-", dir=shm))
    path = base / "img"
    mkfs(path, size=16 << 20)
    img = Image.open(path)
    events = EventWriter(base / "log.jsonl")
    mm = MemoryManager(img, 8192, events=events)
    control = Control(mm, events, {"log": str(base / "log.jsonl"), "pid": os.getpid()})
    ops = Operations(img, mm, events, control=control)
    control.ops = ops
    yield ops
    try:
        ops.shutdown()
        mm.close()
    finally:
        events.close()
        img.close()
        shutil.rmtree(base, ignore_errors=True)


def call(fn, *args):
    return trio.run(fn, *args)


def read_log(ops) -> list[dict]:
    ops.events.flush()
    return [json.loads(line) for line in open(ops.events.path)]


def test_image_errors_become_their_errno(fs):
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(fs.lookup, pyfuse3.ROOT_INODE, b"missing", CTX)
    assert ei.value.errno == errno.ENOENT
    call(fs.mkdir, pyfuse3.ROOT_INODE, b"d", 0o755, CTX)
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(fs.mkdir, pyfuse3.ROOT_INODE, b"d", 0o755, CTX)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(fs.lookup, pyfuse3.ROOT_INODE, b"x" * 256, CTX)
    assert ei.value.errno == errno.ENAMETOOLONG
    assert fs.errors == 0


def test_unexpected_exception_is_eio_logged_and_the_daemon_goes_on(fs, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fs.img, "statfs", boom)
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(fs.statfs, CTX)
    assert ei.value.errno == errno.EIO
    assert fs.errors == 1 and not fs.readonly
    errs = [e for e in read_log(fs) if e["ev"] == "error"]
    assert errs and "disk on fire" in errs[-1]["what"] and errs[-1]["fatal"] is False
    monkeypatch.undo()
    assert call(fs.statfs, CTX).f_namemax == 255


def test_mm_bug_turns_the_mount_read_only(fs, monkeypatch):
    fi, attr = call(fs.create, pyfuse3.ROOT_INODE, b"f", stat.S_IFREG | 0o644, os.O_RDWR, CTX)

    def bug(*a, **k):
        raise MMBug("pte points nowhere")

    monkeypatch.setattr(fs.mm, "write", bug)
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(fs.write, fi.fh, 0, b"data")
    assert ei.value.errno == errno.EIO
    assert fs.readonly
    errs = [e for e in read_log(fs) if e["ev"] == "error"]
    assert errs[-1]["fatal"] is True
    monkeypatch.undo()
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(fs.write, fi.fh, 0, b"data")
    assert ei.value.errno == errno.EROFS
    with pytest.raises(pyfuse3.FUSEError) as ei:
        call(fs.mkdir, pyfuse3.ROOT_INODE, b"d", 0o755, CTX)
    assert ei.value.errno == errno.EROFS
    assert call(fs.read, fi.fh, 0, 10) == b""


def test_forget_never_raises(fs):
    call(fs.forget, [(123456, 1), (pyfuse3.ROOT_INODE, 5)])


def test_unlinked_open_file_lives_until_last_forget_and_release(fs):
    fi, attr = call(fs.create, pyfuse3.ROOT_INODE, b"f", stat.S_IFREG | 0o644, os.O_RDWR, CTX)
    ino = attr.st_ino
    assert call(fs.write, fi.fh, 0, b"x" * 10000) == 10000
    free0 = fs.img.statfs().bfree
    call(fs.unlink, pyfuse3.ROOT_INODE, b"f", CTX)
    assert bytes(call(fs.read, fi.fh, 0, 5)) == b"xxxxx"
    assert call(fs.getattr, ino, CTX).st_nlink == 0
    call(fs.release, fi.fh)  # still known to the kernel (lookup count 1)
    assert fs.img.getattr(ino).nlink == 0
    call(fs.forget, [(ino, 1)])
    with pytest.raises(FsError):
        fs.img.getattr(ino)
    assert fs.img.statfs().bfree >= free0


def test_reservations_make_enospc_happen_at_write(fs):
    fi, attr = call(fs.create, pyfuse3.ROOT_INODE, b"big", stat.S_IFREG | 0o644, os.O_RDWR, CTX)
    chunk = b"z" * (1 << 20)
    written = 0
    with pytest.raises(pyfuse3.FUSEError) as ei:
        for i in range(32):
            written += call(fs.write, fi.fh, i << 20, chunk)
    assert ei.value.errno == errno.ENOSPC
    assert 8 << 20 < written < 16 << 20
    call(fs.fsync, fi.fh, False)  # writeback of everything reserved cannot fail
    assert fs.img.statfs().bfree < 256  # less than the one write that was refused
    call(fs.setattr, attr.st_ino, _size(4096), _fields(size=True), fi.fh, CTX)
    assert fs.img.statfs().bfree > 2000  # the truncate freed the blocks
    call(fs.release, fi.fh)


def test_space_freed_after_enospc_can_be_written_again(fs):
    fi, attr = call(fs.create, pyfuse3.ROOT_INODE, b"big", stat.S_IFREG | 0o644, os.O_RDWR, CTX)
    chunk = b"z" * (1 << 20)
    with pytest.raises(pyfuse3.FUSEError):
        for i in range(32):
            call(fs.write, fi.fh, i << 20, chunk)
    call(fs.fsync, fi.fh, False)
    call(fs.setattr, attr.st_ino, _size(0), _fields(size=True), fi.fh, CTX)
    assert call(fs.write, fi.fh, 0, chunk) == len(chunk)
    call(fs.fsync, fi.fh, False)
    assert bytes(call(fs.read, fi.fh, 0, 10)) == b"z" * 10
    call(fs.release, fi.fh)


def _size(n: int) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_size = n
    return e


class _Fields:
    """What setattr reads of pyfuse3's SetattrFields (whose attributes are read-only)."""

    def __init__(self, **kw: bool) -> None:
        for name in ("atime", "mtime", "ctime", "mode", "uid", "gid", "size"):
            setattr(self, f"update_{name}", kw.get(name, False))


def _fields(**kw: bool) -> _Fields:
    return _Fields(**kw)


def test_control_files(fs):
    attr = call(fs.lookup, pyfuse3.ROOT_INODE, b".nvramfs", CTX)
    assert stat.S_ISDIR(attr.st_mode)
    st = call(fs.lookup, attr.st_ino, b"stats", CTX)
    fi = call(fs.open, st.st_ino, os.O_RDONLY, CTX)
    assert fi.direct_io
    stats = json.loads(call(fs.read, fi.fh, 0, 1 << 20))
    assert stats["counters"]["dram_pages"] == 8192
    assert "bytes_used" in stats["struct_page"]
    ctl = call(fs.lookup, attr.st_ino, b"ctl", CTX)
    fi = call(fs.open, ctl.st_ino, os.O_WRONLY, CTX)
    assert call(fs.write, fi.fh, 0, b"sync\n") == 5
    assert call(fs.write, fi.fh, 0, b"policy clock\n") == 13
    assert fs.mm.policy.name == "clock"
    for bad in (b"bogus\n", b"policy nope\n", b"\n"):
        with pytest.raises(pyfuse3.FUSEError) as ei:
            call(fs.write, fi.fh, 0, bad)
        assert ei.value.errno == errno.EINVAL
    with pytest.raises(pyfuse3.FUSEError):
        call(fs.open, st.st_ino, os.O_WRONLY, CTX)


def test_create_on_an_existing_name_is_eexist_and_leaves_the_file(fs):
    """CREATE comes only after LOOKUP said ENOENT; were the name there, the answer is
    EEXIST whatever the flags, and the existing file is neither opened nor truncated."""
    fi, attr = call(fs.create, pyfuse3.ROOT_INODE, b"f", stat.S_IFREG | 0o644, os.O_RDWR, CTX)
    call(fs.write, fi.fh, 0, b"keep")
    call(fs.release, fi.fh)
    for flags in (os.O_RDWR | os.O_TRUNC, os.O_RDWR | os.O_EXCL | os.O_TRUNC, os.O_RDONLY):
        with pytest.raises(pyfuse3.FUSEError) as ei:
            call(fs.create, pyfuse3.ROOT_INODE, b"f", stat.S_IFREG | 0o644, flags, CTX)
        assert ei.value.errno == errno.EEXIST
    assert call(fs.getattr, attr.st_ino, CTX).st_size == 4
    fi = call(fs.open, attr.st_ino, os.O_RDONLY, CTX)
    assert bytes(call(fs.read, fi.fh, 0, 100)) == b"keep"
    call(fs.release, fi.fh)


def test_open_o_trunc_on_a_mount_turned_read_only_is_erofs(fs):
    """After a fatal error the daemon is read-only while the kernel still thinks the
    mount is writable: O_TRUNC (even with O_RDONLY) must refuse, not truncate."""
    fi, attr = call(fs.create, pyfuse3.ROOT_INODE, b"f", stat.S_IFREG | 0o644, os.O_RDWR, CTX)
    call(fs.write, fi.fh, 0, b"precious")
    call(fs.release, fi.fh)
    fs.readonly = True
    for flags in (os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(pyfuse3.FUSEError) as ei:
            call(fs.open, attr.st_ino, flags, CTX)
        assert ei.value.errno == errno.EROFS
    fi = call(fs.open, attr.st_ino, os.O_RDONLY, CTX)
    assert bytes(call(fs.read, fi.fh, 0, 100)) == b"precious"
    call(fs.release, fi.fh)


def test_open_o_trunc_frees_blocks_and_reservations_through_the_truncate_path(fs):
    """O_TRUNC takes setattr's path: dirty frames dropped, reservations of holes never
    written back returned, blocks freed, and the image's size 0 at once."""
    fi, attr = call(fs.create, pyfuse3.ROOT_INODE, b"f", stat.S_IFREG | 0o644, os.O_RDWR, CTX)
    ino = attr.st_ino
    free0 = fs.img.statfs().bfree
    call(fs.write, fi.fh, 0, b"x" * (64 * 4096))
    fs.mm.fsync(ino)
    call(fs.write, fi.fh, 64 * 4096, b"y" * (32 * 4096))  # reserved, not written back
    call(fs.release, fi.fh)
    assert fs.mm.residency(ino)["dirty"] == 32
    assert fs.img.statfs().bfree < free0 - 90
    fi = call(fs.open, ino, os.O_WRONLY | os.O_TRUNC, CTX)
    assert fs.mm.residency(ino)["dirty"] == 0
    assert fs.img.getattr(ino).size == 0
    assert fs.img.statfs().bfree == free0
    assert ino not in fs._reserved
    call(fs.release, fi.fh)
