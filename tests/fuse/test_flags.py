"""Every flag and field the kernel passes, through a real mount: honoured, or refused
with the errno a Linux filesystem gives, never silently dropped (docs/POSIX.md's
table names these tests). Requests pyfuse3 3.5 has no handler for are checked
for what the kernel then answers the program."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import re
import select
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
from mounthelp import as_nobody

pytestmark = pytest.mark.fuse

CACHES = ["cache=direct", "cache=kernel"]
libc = ctypes.CDLL(None, use_errno=True)
RENAME_WHITEOUT = 4
FS_IOC_GETFLAGS = 0x80086601
FICLONE = 0x40049409
FIBMAP = 1


def dirty_pages(path) -> int:
    return json.loads(os.getxattr(path, "user.nvramfs.residency"))["dirty"]


@pytest.mark.parametrize("cache", CACHES)
def test_o_append_writes_land_at_the_end(mounter, cache):
    m = mounter(mounter.image(), cache)
    p = m.p("log")
    p.write_bytes(b"start\n")
    a = os.open(p, os.O_WRONLY | os.O_APPEND)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(20):
            os.write(a if i % 2 else b, b"line %02d\n" % i)
        os.lseek(a, 0, os.SEEK_SET)  # O_APPEND ignores the offset
        os.write(a, b"end\n")
    finally:
        os.close(a)
        os.close(b)
    assert p.read_bytes() == b"start\n" + b"".join(b"line %02d\n" % i for i in range(20)) + b"end\n"


@pytest.mark.parametrize("cache", CACHES)
def test_o_direct_reads_and_writes_aligned_buffers(mounter, cache):
    m = mounter(mounter.image(), cache)
    p = m.p("d")
    buf = mmap.mmap(-1, 8192)
    buf[:] = os.urandom(8192)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert os.pwrite(fd, buf, 4096) == 8192
        back = mmap.mmap(-1, 8192)
        assert os.preadv(fd, [back], 4096) == 8192
        assert back[:] == buf[:]
    finally:
        os.close(fd)
    assert p.read_bytes() == bytes(4096) + buf[:]


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("flag", ["O_SYNC", "O_DSYNC"])
def test_o_sync_write_is_durable_when_it_returns(mounter, cache, flag):
    img = mounter.image()
    m = mounter(img, cache + ",writeback=3600")
    p = m.p("f")
    p.write_bytes(b"")
    data = os.urandom(3 * 4096 + 5)
    fd = os.open(p, os.O_WRONLY | getattr(os, flag))
    try:
        assert os.write(fd, data) == len(data)
        assert dirty_pages(p) == 0
        m.kill9()  # the descriptor is still open: no flush, no release
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    m = mounter(img)
    assert m.p("f").read_bytes() == data


@pytest.mark.parametrize("call", ["fsync", "fdatasync"])
def test_fsync_and_fdatasync_make_data_and_size_durable(mounter, call):
    img = mounter.image()
    m = mounter(img, "writeback=3600")
    p = m.p("f")
    data = os.urandom(5 * 4096 + 1)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        if m.stats()["sim"]:  # sim=off writes straight to the image
            assert dirty_pages(p) > 0
        getattr(os, call)(fd)
        assert dirty_pages(p) == 0
        d = os.open(m.path, os.O_RDONLY)  # fsyncdir: namespace calls are durable already
        os.fsync(d)
        os.close(d)
        m.kill9()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    m = mounter(img)
    assert m.p("f").read_bytes() == data


def test_o_noatime_leaves_atime_alone(mnt):
    p = mnt.p("f")
    p.write_bytes(b"data")
    old = 1_000_000_000 * 10**9
    os.utime(p, ns=(old, old + 5))  # atime older than mtime: relatime would update it
    fd = os.open(p, os.O_RDONLY | os.O_NOATIME)
    try:
        assert os.read(fd, 10) == b"data"
    finally:
        os.close(fd)
    assert os.stat(p).st_atime_ns == old
    assert p.read_bytes() == b"data"
    assert os.stat(p).st_atime_ns > old


def test_o_excl_o_path_and_o_tmpfile(mnt):
    p = mnt.p("f")
    p.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(mnt.p("new"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    assert stat.S_IMODE(os.stat(mnt.p("new")).st_mode) == 0o600
    fd = os.open(p, os.O_PATH)  # never reaches the daemon
    try:
        assert os.fstat(fd).st_size == 1
        with pytest.raises(OSError) as ei:
            os.read(fd, 1)
        assert ei.value.errno == errno.EBADF
    finally:
        os.close(fd)
    with pytest.raises(OSError) as ei:
        os.open(mnt.path, os.O_TMPFILE | os.O_RDWR, 0o600)
    assert ei.value.errno == errno.EOPNOTSUPP


@pytest.mark.parametrize("cache", CACHES)
def test_write_truncate_chown_drop_setuid_setgid_as_tmpfs_does(
    mounter, public_dir, tmpfs_dir, cache
):
    m = mounter(mounter.image(), "allow_other," + cache, mountpoint=public_dir / "mnt")
    os.chmod(m.path, 0o777)
    os.chmod(tmpfs_dir, 0o777)
    cases = {
        # name: (mode, what happens to it)
        "write-suid": (0o6777, "append"),
        "write-sgid-noexec": (0o2766, "append"),
        "truncate-suid": (0o6777, "truncate"),
        "chown-root": (0o6755, "chown-root"),
        "chown-root-sgid-noexec": (0o2745, "chown-root"),
        "write-root": (0o6777, "append-root"),
        "truncate-root": (0o6777, "truncate-root"),
        "chmod-sgid-nonmember": (0o644, "chmod-nobody"),
    }
    seen: dict[tuple[str, str], int] = {}
    for root in (m.path, tmpfs_dir):
        where = "nvramfs" if root == m.path else "tmpfs"
        for name, (mode, what) in cases.items():
            p = root / name
            p.write_bytes(b"abc")
            os.chmod(p, mode)
            if what == "append":
                out = as_nobody(f"open({str(p)!r}, 'ab').write(b'more')")
                assert out.returncode == 0, out.stderr
            elif what == "truncate":
                out = as_nobody(f"import os; os.truncate({str(p)!r}, 1)")
                assert out.returncode == 0, out.stderr
            elif what == "chown-root":
                os.chown(p, 1, 1)
            elif what == "append-root":
                with open(p, "ab") as f:
                    f.write(b"more")
            elif what == "truncate-root":
                os.truncate(p, 1)
            elif what == "chmod-nobody":  # setgid asked by a non-member: the kernel drops it
                os.chown(p, 65534, 0)
                out = as_nobody(f"import os; os.chmod({str(p)!r}, 0o2755)")
                assert out.returncode == 0, out.stderr
            # What `stat -c %a` sees: a statx for the mode alone, served from the
            # kernel's attribute cache when that is still valid.
            out = subprocess.run(["stat", "-c", "%a", str(p)], capture_output=True, text=True)
            seen[(where + "-statx-mode", name)] = int(out.stdout, 8)
            seen[(where, name)] = stat.S_IMODE(os.stat(p).st_mode)
    for name in cases:
        assert seen[("nvramfs", name)] == seen[("tmpfs", name)], (name, seen)
        assert seen[("nvramfs-statx-mode", name)] == seen[("tmpfs", name)], (name, seen)
    assert seen[("nvramfs", "write-suid")] == 0o777
    assert seen[("nvramfs", "write-root")] == 0o6777


def test_utime_now_and_omit(mnt):
    """UTIME_NOW comes as a time pyfuse3 fills in, UTIME_OMIT as a field not set."""
    p = mnt.p("f")
    p.write_bytes(b"x")
    old = 1_000_000_000 * 10**9
    os.utime(p, ns=(old, old))
    UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    def utimensat(atime_nsec: int, mtime_nsec: int) -> None:
        ts = (Timespec * 2)(Timespec(0, atime_nsec), Timespec(0, mtime_nsec))
        assert libc.utimensat(-100, bytes(p), ts, 0) == 0, ctypes.get_errno()

    before = time.time_ns()
    utimensat(UTIME_OMIT, UTIME_NOW)
    st = os.stat(p)
    assert st.st_atime_ns == old and st.st_mtime_ns >= before - 10**9
    utimensat(UTIME_NOW, UTIME_OMIT)
    st2 = os.stat(p)
    assert st2.st_atime_ns >= before - 10**9 and st2.st_mtime_ns == st.st_mtime_ns
    ctime = st2.st_ctime_ns
    time.sleep(0.01)
    utimensat(UTIME_OMIT, UTIME_OMIT)  # the VFS sends nothing; nothing changes
    assert os.stat(p).st_ctime_ns == ctime


def test_rename_whiteout_is_einval(mnt):
    a = mnt.p("a")
    a.write_bytes(b"a")
    r = libc.renameat2(-100, bytes(a), -100, bytes(mnt.p("b")), RENAME_WHITEOUT)
    assert r == -1 and ctypes.get_errno() == errno.EINVAL
    assert a.read_bytes() == b"a" and not mnt.p("b").exists()


def test_flock_and_posix_locks_are_kept_by_the_kernel(mnt):
    p = mnt.p("lock")
    p.write_bytes(b"")
    probe = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(p)!r}, os.O_RDWR)\n"
        "kind = sys.argv[1]\n"
        "try:\n"
        "    if kind == 'flock': fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    else: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print('got')\n"
        "except OSError as e:\n"
        "    print('busy')\n"
    )

    def other(kind: str) -> str:
        return subprocess.run(
            ["python3", "-c", probe, kind], capture_output=True, text=True, timeout=30
        ).stdout.strip()

    fd = os.open(p, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert other("flock") == "busy"
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert other("flock") == "got"
        fcntl.lockf(fd, fcntl.LOCK_EX)
        assert other("lockf") == "busy"
    finally:
        os.close(fd)  # closing any descriptor drops the process's POSIX locks
    assert other("lockf") == "got"


def test_requests_pyfuse3_cannot_serve_get_the_kernels_answer(mnt):
    p = mnt.p("f")
    p.write_bytes(b"a" * 10000)
    fd = os.open(p, os.O_RDWR)
    q = os.open(mnt.p("copy"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # fallocate: EOPNOTSUPP; posix_fallocate: glibc falls back to writing zeros.
        r = libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(20000))
        assert r == -1 and ctypes.get_errno() == errno.EOPNOTSUPP
        os.posix_fallocate(fd, 0, 20000)
        assert os.fstat(fd).st_size == 20000
        assert os.pread(fd, 20000, 0) == b"a" * 10000 + bytes(10000)
        # lseek SEEK_DATA/SEEK_HOLE: the generic answer, the whole file is data.
        os.truncate(p, 1 << 20)
        assert os.lseek(fd, 500_000, os.SEEK_DATA) == 500_000
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 1 << 20
        with pytest.raises(OSError) as ei:
            os.lseek(fd, 2 << 20, os.SEEK_DATA)
        assert ei.value.errno == errno.ENXIO
        # copy_file_range: the kernel copies through read and write itself.
        assert os.copy_file_range(fd, q, 10000, 0, 0) == 10000
        assert os.pread(q, 10000, 0) == b"a" * 10000
        # ioctl: ENOTTY for FS_IOC_GETFLAGS (lsattr), EOPNOTSUPP for FICLONE (cp --reflink).
        with pytest.raises(OSError) as ei:
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8)
        assert ei.value.errno == errno.ENOTTY
        with pytest.raises(OSError) as ei:
            fcntl.ioctl(q, FICLONE, fd)
        assert ei.value.errno == errno.EOPNOTSUPP
        # bmap (FIBMAP): block 0, "not mapped", for a FUSE (not fuseblk) mount.
        assert struct.unpack("i", fcntl.ioctl(fd, FIBMAP, struct.pack("i", 0)))[0] == 0
        # poll: no handler, the kernel answers "ready" at once.
        po = select.poll()
        po.register(fd, select.POLLIN | select.POLLOUT)
        assert po.poll(0) == [(fd, select.POLLIN | select.POLLOUT)]
    finally:
        os.close(fd)
        os.close(q)
    assert mnt.stats()["errors"] == 0


def test_access_mknod_and_control_files(mnt):
    """access(2) is answered from the mode bits (root: X_OK needs an x bit);
    mknod makes fifos, sockets and device nodes with their rdev; the control
    files ignore O_TRUNC as procfs and sysfs do."""
    p = mnt.p("f")
    p.write_bytes(b"")
    os.chmod(p, 0o644)
    assert os.access(p, os.R_OK | os.W_OK) and not os.access(p, os.X_OK)
    os.chmod(p, 0o744)
    assert os.access(p, os.X_OK)
    os.mknod(mnt.p("chr"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    assert os.stat(mnt.p("chr")).st_rdev == os.makedev(1, 3)
    os.mknod(mnt.p("sock"), 0o600 | stat.S_IFSOCK)
    assert stat.S_ISSOCK(os.stat(mnt.p("sock")).st_mode)
    fd = os.open(mnt.p(".nvramfs", "stats"), os.O_RDONLY | os.O_TRUNC)
    try:
        assert json.loads(os.read(fd, 1 << 20))
    finally:
        os.close(fd)


def test_sync_and_syncfs_never_reach_the_daemon_ctl_sync_does(mounter):
    """The kernel sends FUSE_SYNCFS only to virtiofs: sync(1) and syncfs(2) return 0
    and leave nvramfs's dirty frames where they are. `sync` written to
    .nvramfs/ctl (or fsync, or unmount) is how to write everything back."""
    m = mounter(mounter.image(), "writeback=3600")
    if not m.stats()["sim"]:
        pytest.skip("sim=off: no dirty frames")
    p = m.p("f")
    p.write_bytes(os.urandom(40_000))
    assert dirty_pages(p) == 10
    fd = os.open(p, os.O_RDONLY)
    try:
        assert libc.syncfs(fd) == 0
    finally:
        os.close(fd)
    os.sync()
    assert dirty_pages(p) == 10  # if a kernel ever sends SYNCFS here, update docs/POSIX.md
    m.ctl("sync")
    assert dirty_pages(p) == 0


def test_posix_md_names_only_existing_tests():
    """Every row of docs/POSIX.md's tables names a test function that exists."""
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "POSIX.md").read_text()
    rows = [ln for ln in doc.splitlines() if ln.startswith("|") and not ln.startswith("| --")]
    named = 0
    for row in rows[1:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
        if cells[0] in ("request", "what the program does", "crash when"):
            continue  # a table's header
        refs = re.findall(r"`(test_\w+)::(test_\w+)`", cells[-1])
        assert refs, f"row names no test: {row}"
        for module, func in refs:
            src = (root / "tests" / "fuse" / f"{module}.py").read_text()
            assert re.search(rf"^def {func}\(", src, re.M), f"{module}::{func} does not exist"
            named += 1
    assert named >= 40


def test_system_xattrs_and_acls_are_refused(mnt):
    """ACLs are off: the kernel hands ACL xattrs to the daemon, which stores no
    system.* name (EOPNOTSUPP); an empty ACL is a removal of nothing (ENODATA)."""
    p = mnt.p("f")
    p.write_bytes(b"")
    # user::rw- user:1234:rwx group::r-- mask::rwx other::r-- (a named user: not a mode)
    entries = ((1, 6, -1), (2, 7, 1234), (4, 4, -1), (0x10, 7, -1), (0x20, 4, -1))
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident & 0xFFFFFFFF) for tag, perm, ident in entries
    )
    for name, value, expect in (
        ("system.posix_acl_access", acl, errno.EOPNOTSUPP),
        ("system.nvramfs_test", b"x", errno.EOPNOTSUPP),
        ("system.posix_acl_access", struct.pack("<I", 2), errno.ENODATA),
    ):
        with pytest.raises(OSError) as ei:
            os.setxattr(p, name, value)
        assert ei.value.errno == expect, name
    assert os.listxattr(p) == []
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "system.posix_acl_access")
    assert ei.value.errno == errno.ENODATA
