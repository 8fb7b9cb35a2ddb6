"""POSIX behaviour through a real mount, compared with kernel tmpfs where that makes sense."""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import random
import stat
import subprocess
import time
from pathlib import Path

import pytest
from mounthelp import as_nobody

pytestmark = pytest.mark.fuse

libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: Path, new: Path, flags: int) -> None:
    AT_FDCWD = -100
    r = libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def run_script(root: Path) -> dict:
    """A sequence of everyday operations; returns what can be observed afterwards."""
    os.umask(0o022)
    (root / "d").mkdir()
    (root / "d" / "sub").mkdir()
    (root / "d" / "sub2").mkdir(mode=0o700)
    f = root / "d" / "f"
    f.write_bytes(b"hello world\n" * 1000)
    with open(f, "r+b") as fp:
        fp.seek(100)
        fp.write(b"X" * 50)
        fp.truncate(5000)
    os.link(f, root / "hard")
    os.symlink("d/f", root / "sym")
    (root / "gone").write_bytes(b"bye")
    os.unlink(root / "gone")
    (root / "a").write_bytes(b"aaa")
    (root / "b").write_bytes(b"bbbbbb")
    os.rename(root / "a", root / "b")
    os.chmod(root / "b", 0o640)
    os.utime(root / "b", ns=(1_234_567_891_123_456_789, 1_000_000_000_987_654_321))
    os.mkfifo(root / "fifo")
    os.truncate(root / "hard", 7000)

    def info(p: Path) -> tuple:
        st = os.lstat(p)
        kind = stat.S_IFMT(st.st_mode)
        return (oct(st.st_mode), st.st_nlink, st.st_size if kind != stat.S_IFDIR else None)

    out = {}
    out["b:times"] = (os.stat(root / "b").st_atime_ns, os.stat(root / "b").st_mtime_ns)
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = info(p)
        if p.is_file() and not p.is_symlink() and stat.S_ISREG(os.lstat(p).st_mode):
            out[rel + ":data"] = p.read_bytes()
    out["sym:target"] = os.readlink(root / "sym")
    # relatime: reading b (atime set explicitly in 2009, older than a day) updated it.
    out["b:atime_updated"] = os.stat(root / "b").st_atime_ns > 1_700_000_000 * 10**9
    out["hard:ino"] = os.stat(root / "hard").st_ino == os.stat(root / "d" / "f").st_ino
    out["root:nlink"] = os.stat(root).st_nlink
    return out


def test_everyday_operations_behave_as_on_tmpfs(mnt, tmpfs_dir):
    work = mnt.p("work")
    work.mkdir()
    ref = tmpfs_dir / "work"
    ref.mkdir()
    assert run_script(work) == run_script(ref)


def test_directory_link_count_is_two_plus_subdirectories(mnt):
    d = mnt.p("d")
    d.mkdir()
    assert os.stat(d).st_nlink == 2
    for i in range(3):
        (d / f"s{i}").mkdir()
    (d / "file").write_bytes(b"x")
    assert os.stat(d).st_nlink == 5
    os.rmdir(d / "s0")
    assert os.stat(d).st_nlink == 4
    os.rename(d / "s1", mnt.p("moved"))
    assert os.stat(d).st_nlink == 3


@pytest.mark.parametrize(
    "op",
    ["create", "mkdir", "rmdir", "unlink", "link", "symlink", "mknod", "rename_in", "rename_out"],
)
def test_namespace_calls_update_parent_ctime_and_mtime(mnt, op):
    d = mnt.p("parent")
    d.mkdir()
    other = mnt.p("other")
    other.mkdir()
    (d / "victim").write_bytes(b"v")
    (d / "emptydir").mkdir()
    (other / "incoming").write_bytes(b"i")
    before = os.stat(d)
    time.sleep(0.02)
    {
        "create": lambda: (d / "new").write_bytes(b""),
        "mkdir": lambda: (d / "newdir").mkdir(),
        "rmdir": lambda: (d / "emptydir").rmdir(),
        "unlink": lambda: (d / "victim").unlink(),
        "link": lambda: os.link(other / "incoming", d / "hl"),
        "symlink": lambda: os.symlink("x", d / "sl"),
        "mknod": lambda: os.mkfifo(d / "fifo"),
        "rename_in": lambda: os.rename(other / "incoming", d / "came"),
        "rename_out": lambda: os.rename(d / "victim", other / "went"),
    }[op]()
    after = os.stat(d)
    assert after.st_mtime_ns > before.st_mtime_ns
    assert after.st_ctime_ns > before.st_ctime_ns


def test_write_past_eof_leaves_a_zero_hole(mnt):
    p = mnt.p("holey")
    with open(p, "wb") as f:
        f.write(b"head")
        f.seek(3 * 4096 + 100)
        f.write(b"tail")
    data = p.read_bytes()
    assert len(data) == 3 * 4096 + 104
    assert data[:4] == b"head" and data[-4:] == b"tail"
    assert data[4:-4] == bytes(len(data) - 8)
    # Shrink then grow: the cut-off bytes must read back as zeros.
    os.truncate(p, 2)
    os.truncate(p, 4096)
    assert p.read_bytes() == b"he" + bytes(4094)


def test_du_counts_blocks_written_but_not_yet_written_back(mnt, tmpfs_dir):
    """st_blocks of a file just written counts its reserved blocks (ext4's delayed
    allocation does the same), before and after writeback: `du` is never 0."""
    seen = {}
    for where, root in (("nvramfs", mnt.path), ("tmpfs", tmpfs_dir)):
        p = root / "fresh"
        p.write_bytes(b"z" * (1 << 20))
        fd = os.open(p, os.O_WRONLY)
        os.pwrite(fd, b"x" * 4096, 8 << 20)  # one page past a hole
        os.close(fd)
        # `stat -c %b`: a statx for the block count alone.
        out = subprocess.run(["stat", "-c", "%b", str(p)], capture_output=True, text=True)
        seen[where] = (int(out.stdout), os.stat(p).st_blocks)
    assert seen["nvramfs"] == seen["tmpfs"] == ((257 * 4096) // 512,) * 2
    mnt.ctl("sync")
    assert os.stat(mnt.p("fresh")).st_blocks == seen["tmpfs"][1]


def test_truncate_to_a_petabyte_is_sparse_or_efbig(mnt):
    p = mnt.p("huge")
    p.write_bytes(b"abc")
    before = os.statvfs(mnt.path)
    try:
        os.truncate(p, 10**15)
    except OSError as exc:
        assert exc.errno == errno.EFBIG
        assert os.stat(p).st_size == 3
    else:
        assert os.stat(p).st_size == 10**15
        with open(p, "rb") as f:
            f.seek(10**15 - 4096)
            assert f.read() == bytes(4096)
            f.seek(0)
            assert f.read(3) == b"abc"
    after = os.statvfs(mnt.path)
    assert before.f_bfree - after.f_bfree <= 2
    os.truncate(p, 0)
    assert p.read_bytes() == b""


def test_rename_over_existing_is_atomic_and_flags_work(mnt):
    a, b = mnt.p("a"), mnt.p("b")
    a.write_bytes(b"new")
    b.write_bytes(b"old")
    with open(b, "rb") as held:
        os.rename(a, b)
        assert b.read_bytes() == b"new"
        assert not a.exists()
        assert held.read() == b"old"  # the replaced file lives on while open
    a.write_bytes(b"A")
    with pytest.raises(OSError) as ei:
        renameat2(a, b, RENAME_NOREPLACE)
    assert ei.value.errno == errno.EEXIST
    renameat2(a, b, RENAME_EXCHANGE)
    assert a.read_bytes() == b"new" and b.read_bytes() == b"A"
    # Over an empty directory, not over a full one.
    mnt.p("d1").mkdir()
    mnt.p("d2").mkdir()
    os.rename(mnt.p("d1"), mnt.p("d2"))
    assert mnt.p("d2").is_dir() and not mnt.p("d1").exists()
    mnt.p("d3").mkdir()
    (mnt.p("d2") / "x").write_bytes(b"")
    with pytest.raises(OSError) as ei:
        os.rename(mnt.p("d3"), mnt.p("d2"))
    assert ei.value.errno in (errno.ENOTEMPTY, errno.EEXIST)


def test_unlink_while_open_keeps_the_file_readable(mnt):
    p = mnt.p("tmpfile")
    payload = os.urandom(300_000)
    p.write_bytes(payload)
    free0 = os.statvfs(mnt.path).f_bfree
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not p.exists()
        assert os.pread(fd, len(payload), 0) == payload
        os.pwrite(fd, b"still writable", 10)
        assert os.pread(fd, 14, 10) == b"still writable"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    deadline = time.monotonic() + 5
    while os.statvfs(mnt.path).f_bfree < free0 + 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.statvfs(mnt.path).f_bfree >= free0 + 50  # the blocks came back


def test_hard_links_and_symlinks(mnt):
    f = mnt.p("f")
    f.write_bytes(b"data")
    os.link(f, mnt.p("g"))
    assert os.stat(f).st_nlink == 2
    assert os.stat(mnt.p("g")).st_ino == os.stat(f).st_ino
    os.unlink(f)
    assert os.stat(mnt.p("g")).st_nlink == 1
    assert mnt.p("g").read_bytes() == b"data"
    os.symlink("g", mnt.p("s"))
    assert os.readlink(mnt.p("s")) == "g"
    assert mnt.p("s").read_bytes() == b"data"
    long_target = "x/" * 1000
    os.symlink(long_target, mnt.p("long"))
    assert os.readlink(mnt.p("long")) == long_target
    with pytest.raises(FileExistsError):
        os.symlink("g", mnt.p("s"))
    mnt.p("dir").mkdir()
    with pytest.raises(OSError) as ei:
        os.link(mnt.p("dir"), mnt.p("dirlink"))
    assert ei.value.errno == errno.EPERM


def test_user_xattrs(mnt):
    f = mnt.p("x")
    f.write_bytes(b"")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.b", b"\x00binary\xff" * 10)
    assert os.getxattr(f, "user.a") == b"1"
    assert os.getxattr(f, "user.b") == b"\x00binary\xff" * 10
    assert sorted(os.listxattr(f)) == ["user.a", "user.b"]
    os.setxattr(f, "user.a", b"22")
    assert os.getxattr(f, "user.a") == b"22"
    with pytest.raises(FileExistsError):
        os.setxattr(f, "user.a", b"3", os.XATTR_CREATE)
    with pytest.raises(OSError) as ei:
        os.setxattr(f, "user.new", b"3", os.XATTR_REPLACE)
    assert ei.value.errno == errno.ENODATA
    res = json.loads(os.getxattr(f, "user.nvramfs.residency"))
    assert set(res) >= {"pages", "dirty"}  # computed, not stored, not listed
    os.removexattr(f, "user.a")
    assert os.listxattr(f) == ["user.b"]
    with pytest.raises(OSError) as ei:
        os.getxattr(f, "user.a")
    assert ei.value.errno == errno.ENODATA
    with pytest.raises(OSError) as ei:
        os.removexattr(f, "user.nope")
    assert ei.value.errno == errno.ENODATA


def test_chmod_chown_utimens_with_nanoseconds(mnt):
    f = mnt.p("f")
    f.write_bytes(b"x")
    os.chmod(f, 0o4751)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o4751
    os.chown(f, 1234, 5678)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(f, -1, 42)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (1234, 42)
    os.utime(f, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    st = os.stat(f)
    assert st.st_atime_ns == 1_500_000_000_123_456_789
    assert st.st_mtime_ns == 1_600_000_000_987_654_321
    # UTIME_OMIT / UTIME_NOW through touch: -a leaves mtime alone, -m leaves atime alone.
    ctime0 = st.st_ctime_ns
    time.sleep(0.01)
    subprocess.run(["touch", "-a", str(f)], check=True)
    st = os.stat(f)
    assert st.st_mtime_ns == 1_600_000_000_987_654_321
    assert st.st_atime_ns > 1_700_000_000 * 10**9
    assert st.st_ctime_ns > ctime0
    subprocess.run(["touch", "-m", "-d", "@1000000000.5", str(f)], check=True)
    st2 = os.stat(f)
    assert st2.st_mtime_ns == 1_000_000_000_500_000_000
    assert st2.st_atime_ns == st.st_atime_ns


def test_statfs_reports_name_max_and_blocks(mnt):
    s = os.statvfs(mnt.path)
    assert s.f_namemax == 255
    assert s.f_bsize == 4096
    assert 0 < s.f_bfree <= s.f_blocks
    assert s.f_files > 0
    with pytest.raises(OSError) as ei:
        mnt.p("n" * 256).write_bytes(b"")
    assert ei.value.errno == errno.ENAMETOOLONG
    mnt.p("n" * 255).write_bytes(b"ok")
    assert mnt.p("n" * 255).read_bytes() == b"ok"
    free0 = os.statvfs(mnt.path).f_bfree
    mnt.p("blob").write_bytes(os.urandom(1 << 20))
    os.sync()
    with open(mnt.p("blob"), "rb+") as fp:
        os.fsync(fp.fileno())
    assert free0 - os.statvfs(mnt.path).f_bfree >= 256


def test_errors_are_the_kernel_errnos(mnt):
    mnt.p("d").mkdir()
    (mnt.p("d") / "x").write_bytes(b"")
    with pytest.raises(FileExistsError):
        mnt.p("d").mkdir()
    with pytest.raises(FileNotFoundError):
        mnt.p("nope").read_bytes()
    with pytest.raises(OSError) as ei:
        os.rmdir(mnt.p("d"))
    assert ei.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        os.listdir(mnt.p("d") / "x")
    with pytest.raises(IsADirectoryError):
        os.unlink(mnt.p("d"))
    with pytest.raises(NotADirectoryError):
        os.rmdir(mnt.p("d") / "x")
    # The control directory's name is taken.
    with pytest.raises(FileExistsError):
        mnt.p(".nvramfs").mkdir()
    with pytest.raises(OSError) as ei:
        os.rename(mnt.p("d"), mnt.p(".nvramfs"))
    assert ei.value.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR)
    assert mnt.p("d").is_dir()


def test_readdir_is_complete_and_stable_while_entries_change(mnt):
    d = mnt.p("many")
    d.mkdir()
    names = {f"file-{i:04d}-{'x' * (i % 50)}" for i in range(600)}
    for n in names:
        (d / n).write_bytes(b"")
    assert set(os.listdir(d)) == names
    assert ".nvramfs" not in os.listdir(mnt.path)
    ls = subprocess.run(["ls", "-a", str(d)], capture_output=True, text=True).stdout.split()
    assert ls[:2] == [".", ".."] and set(ls[2:]) == names
    # Remove and add entries while a listing is in progress: nothing that stays is lost
    # or seen twice.
    seen = []
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i == 10:
                for n in sorted(names)[300:310]:
                    os.unlink(d / n)
                for k in range(10):
                    (d / f"new-{k}").write_bytes(b"")
    stayed = names - set(sorted(names)[300:310])
    assert len(seen) == len(set(seen))
    assert stayed <= set(seen)


def test_sticky_directory_and_setgid_inheritance(mounter, public_dir):
    m = mounter(mounter.image(), "allow_other", mountpoint=public_dir / "mnt")
    os.chmod(m.path, 0o777)
    t = m.p("tmp")
    t.mkdir()
    os.chmod(t, 0o1777)
    own = t / "roots"
    own.write_bytes(b"r")
    os.chmod(own, 0o666)

    out = as_nobody(f"import os; os.unlink({str(own)!r})")
    assert out.returncode != 0 and "PermissionError" in out.stderr
    out = as_nobody(
        f"open({str(t / 'mine')!r}, 'w').write('n'); import os; os.unlink({str(t / 'mine')!r})"
    )
    assert out.returncode == 0, out.stderr
    # Mode bits are enforced for others (default_permissions).
    secret = m.p("secret")
    secret.write_bytes(b"s")
    os.chmod(secret, 0o600)
    out = as_nobody(f"open({str(secret)!r}).read()")
    assert "PermissionError" in out.stderr
    # A write by another user clears setuid (and setgid with group-exec), as on ext4.
    w = m.p("suid")
    w.write_bytes(b"abc")
    os.chmod(w, 0o6777)
    out = as_nobody(f"open({str(w)!r}, 'ab').write(b'more')")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(w).st_mode) == 0o777
    # A setgid directory hands its group to new files and its bit to new directories.
    g = m.p("g")
    g.mkdir()
    os.chown(g, 0, 4321)
    os.chmod(g, 0o2775)
    (g / "f").write_bytes(b"")
    (g / "sub").mkdir()
    assert os.stat(g / "f").st_gid == 4321
    assert os.stat(g / "sub").st_gid == 4321
    assert os.stat(g / "sub").st_mode & stat.S_ISGID


def test_mmap_private_under_direct_and_shared_under_kernel_cache(mounter):
    img = mounter.image()
    m = mounter(img)
    data = os.urandom(5 * 4096 + 123)
    m.p("f").write_bytes(data)
    with open(m.p("f"), "rb") as f:
        mp = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        assert mp[:] == data
        mp.close()
        with pytest.raises(OSError) as ei:
            mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        assert ei.value.errno == errno.ENODEV
    # A name `shared_mmap=` matches (default *-shm, SQLite's WAL index) goes
    # through the page cache, so it can be mapped shared.
    m.p("f-shm").write_bytes(data)
    with open(m.p("f-shm"), "r+b") as f:
        mp = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
        mp[0:5] = b"SHARE"
        mp.flush()
        mp.close()
    assert m.p("f-shm").read_bytes() == b"SHARE" + data[5:]
    m.umount()
    n = mounter(img, "shared_mmap=")
    with open(n.p("f-shm"), "rb") as f, pytest.raises(OSError) as ei:
        mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    assert ei.value.errno == errno.ENODEV
    n.umount()
    k = mounter(img, "cache=kernel")
    with open(k.p("f"), "r+b") as f:
        mp = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
        assert mp[:] == data
        mp[0:5] = b"HELLO"
        mp.flush()
        mp.close()
    assert k.p("f").read_bytes()[:5] == b"HELLO"


def test_daemon_survives_requests_it_cannot_serve(mnt):
    f = mnt.p("f")
    f.write_bytes(b"abc")
    fd = os.open(f, os.O_RDWR)
    try:
        # fallocate: pyfuse3 has no handler, so the kernel answers EOPNOTSUPP.
        r = libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(1 << 40))
        assert r == -1 and ctypes.get_errno() == errno.EOPNOTSUPP
        import fcntl

        with pytest.raises(OSError):
            fcntl.ioctl(fd, 0x5401)  # TCGETS on a file
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        os.setxattr(f, "system.posix_acl_access", b"\x02\x00\x00\x00")
    with pytest.raises(OSError):
        os.mknod(mnt.p("n" * 300))
    assert f.read_bytes()[:3] == b"abc"
    assert mnt.stats()["errors"] == 0


def test_atime_relatime_by_default_and_noatime(mounter):
    img = mounter.image()
    m = mounter(img)
    f = m.p("f")
    f.write_bytes(b"data")
    old = 1_000_000_000 * 10**9
    os.utime(f, ns=(old, old + 5))  # atime older than mtime: the next read updates it
    f.read_bytes()
    first = os.stat(f).st_atime_ns
    assert first > 1_700_000_000 * 10**9
    f.read_bytes()  # newer than mtime and less than a day old: relatime leaves it
    assert os.stat(f).st_atime_ns == first
    m.umount()
    n = mounter(img, "noatime")
    assert os.stat(n.p("f")).st_atime_ns == first  # it reached the image
    os.utime(n.p("f"), ns=(old, old + 5))
    n.p("f").read_bytes()
    assert os.stat(n.p("f")).st_atime_ns == old
    assert "noatime" in next(ln for ln in open("/proc/mounts") if str(n.path) in ln)


def test_removed_directory_still_open_stats_with_nlink_0(mnt, tmpfs_dir):
    for root in (mnt.path, tmpfs_dir):
        d = root / "gone"
        d.mkdir()
        fd = os.open(d, os.O_RDONLY)
        try:
            os.rmdir(d)
            st = os.fstat(fd)
            assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 0, root
            assert os.listdir(fd) == []
        finally:
            os.close(fd)
        d.mkdir()  # the name (and maybe the inode number) can be used again
        assert os.stat(d).st_nlink == 2


def random_ops(root: Path, seed: int, n: int) -> list[str]:
    """A random sequence of namespace and data calls; returns what each call did."""
    rnd = random.Random(seed)
    names = ["a", "b", "c", "d/x", "d/y", "e", "d/sub/z"]
    out = []
    fds: dict[str, int] = {}
    for _ in range(n):
        op = rnd.choice(["write", "write", "trunc", "mkdir", "rename", "unlink", "link",
                         "rmdir", "open", "close", "pwrite_open", "symlink", "chmod"])  # fmt: skip
        p = root / rnd.choice(names)
        q = root / rnd.choice(names)
        try:
            if op == "write":
                with open(p, "ab") as f:
                    f.write(rnd.randbytes(rnd.choice([1, 100, 4096, 9000])))
            elif op == "trunc":
                os.truncate(p, rnd.choice([0, 1, 4095, 4097, 20000]))
            elif op == "mkdir":
                os.mkdir(p)
            elif op == "rename":
                os.rename(p, q)
            elif op == "unlink":
                os.unlink(p)
            elif op == "link":
                os.link(p, q)
            elif op == "rmdir":
                os.rmdir(p)
            elif op == "open" and str(p) not in fds:
                fds[str(p)] = os.open(p, os.O_RDWR)
            elif op == "close" and fds:
                os.close(fds.pop(rnd.choice(sorted(fds))))
            elif op == "pwrite_open" and fds:
                fd = fds[rnd.choice(sorted(fds))]
                os.pwrite(fd, rnd.randbytes(3000), rnd.choice([0, 5000, 12000]))
            elif op == "symlink":
                os.symlink("target", p)
            elif op == "chmod":
                os.chmod(p, rnd.choice([0o600, 0o755, 0o4755]), follow_symlinks=False)
            out.append(f"{op} ok")
        except OSError as exc:
            out.append(f"{op} {errno.errorcode[exc.errno]}")
        except NotImplementedError:
            out.append(f"{op} notimpl")
    for fd in fds.values():
        os.close(fd)
    return out


def tree_state(root: Path) -> dict:
    state = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            state[rel] = ("l", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            state[rel] = ("d", st.st_nlink, oct(st.st_mode))
        else:
            state[rel] = ("f", st.st_nlink, oct(st.st_mode), p.read_bytes())
    return state


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operations_match_tmpfs(mnt, tmpfs_dir, seed):
    a = mnt.p(f"r{seed}")
    b = tmpfs_dir / f"r{seed}"
    a.mkdir()
    b.mkdir()
    assert random_ops(a, seed, 300) == random_ops(b, seed, 300)
    assert tree_state(a) == tree_state(b)
    assert mnt.stats()["errors"] == 0
