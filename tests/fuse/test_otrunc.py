"""open(O_TRUNC) through a real mount, on both cache modes, and the programs that rely on it.

pyfuse3 leaves FUSE_CAP_ATOMIC_O_TRUNC on: the kernel sends O_TRUNC inside OPEN
and no SETATTR, so the daemon's `open` must truncate (issue 8). Every rewrite
in place goes through it: shell redirections, open(path, "w"), cp, editors.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import time

import pytest

pytestmark = pytest.mark.fuse

CACHES = ["cache=direct", "cache=kernel"]


def dirty_pages(path) -> int:
    return json.loads(os.getxattr(path, "user.nvramfs.residency"))["dirty"]


@pytest.mark.parametrize("cache", CACHES)
def test_shell_redirection_and_open_w_rewrite_the_whole_file(mounter, cache):
    img = mounter.image()
    m = mounter(img, cache)
    subprocess.run(["sh", "-c", "echo hello > f; echo hi > f"], cwd=m.path, check=True)
    out = subprocess.run(["cat", "f"], cwd=m.path, capture_output=True, check=True)
    assert out.stdout == b"hi\n"
    subprocess.run(
        ["python3", "-c", "open('g','w').write('a long first line\\n' * 100)"],
        cwd=m.path,
        check=True,
    )
    subprocess.run(["python3", "-c", "open('g','w').write('x')"], cwd=m.path, check=True)
    assert m.p("g").read_bytes() == b"x"
    assert os.stat(m.p("g")).st_size == 1
    m.umount()
    m = mounter(img, cache)
    assert m.p("f").read_bytes() == b"hi\n"
    assert m.p("g").read_bytes() == b"x"


@pytest.mark.parametrize("cache", CACHES)
def test_otrunc_of_dirty_file_leaves_nothing_of_the_old_data(mounter, cache):
    img = mounter.image()
    m = mounter(img, cache)
    p = m.p("f")
    old = os.urandom(200 * 4096 + 77)
    p.write_bytes(old[: 100 * 4096])
    with open(p, "r+b") as f:
        os.fsync(f.fileno())  # half of it on the image ...
        f.seek(0, os.SEEK_END)
        f.write(old[100 * 4096 :])  # ... half in dirty frames only
        f.seek(0)
        f.write(b"D" * 8192)  # and a dirty COW of on-image pages
    sim = m.stats()["sim"]
    if sim:  # sim=off writes straight to the image
        dirty = dirty_pages(p)
        assert dirty > 0
    free_before = os.statvfs(m.path).f_bfree
    with open(p, "wb") as f:
        assert os.fstat(f.fileno()).st_size == 0
        f.write(b"new")
    if sim:  # the file's frames were dropped by the O_TRUNC, and the log says so
        m.ctl("sync")  # flushes the event log too
        drops = [e for e in m.session_events() if e.get("ev") == "drop"]
        assert [e["reason"] for e in drops] == ["o_trunc"]
        # Ordered data writes a file's dirty frames back before any size change
        # (see _set_size), so they are dropped clean; never more than were dirty.
        assert drops[0]["first"] == 0 and drops[0]["dirty"] in (0, dirty)
    assert dirty_pages(p) <= 1
    assert p.read_bytes() == b"new"
    assert os.statvfs(m.path).f_bfree >= free_before + 99  # the old blocks came back
    # Extending again reads zeros: no old byte behind the new end, in DRAM or on NVRAM.
    os.truncate(p, len(old))
    data = p.read_bytes()
    assert data[:3] == b"new" and data[3:] == bytes(len(old) - 3)
    os.truncate(p, 3)
    m.umount()
    m = mounter(img, cache)
    assert m.p("f").read_bytes() == b"new"
    os.truncate(m.p("f"), len(old))
    assert m.p("f").read_bytes() == b"new" + bytes(len(old) - 3)
    m.umount()
    assert mounter_fsck_clean(img)


def mounter_fsck_clean(img) -> bool:
    from mounthelp import nvramfs

    out = nvramfs("fsck", img)
    assert out.returncode == 0, out.stdout + out.stderr
    return True


@pytest.mark.parametrize("cache", CACHES)
def test_otrunc_is_seen_by_a_second_descriptor(mounter, cache):
    m = mounter(mounter.image(), cache)
    p = m.p("f")
    p.write_bytes(b"hello world" * 1000)
    reader = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(reader, 5, 0) == b"hello"  # in the kernel's cache under cache=kernel
        writer = os.open(p, os.O_WRONLY | os.O_TRUNC)
        try:
            assert os.fstat(reader).st_size == 0
            assert os.pread(reader, 100, 0) == b""
            os.write(writer, b"ab")
            assert os.fstat(reader).st_size == 2
            assert os.pread(reader, 100, 0) == b"ab"
        finally:
            os.close(writer)
        # O_RDONLY|O_TRUNC truncates too, as on Linux filesystems.
        os.close(os.open(p, os.O_RDONLY | os.O_TRUNC))
        assert os.fstat(reader).st_size == 0
        assert os.pread(reader, 100, 0) == b""
    finally:
        os.close(reader)
    assert p.read_bytes() == b""


@pytest.mark.parametrize("cache", CACHES)
def test_otrunc_stamps_mtime_and_ctime_as_tmpfs_does(mounter, tmpfs_dir, cache):
    m = mounter(mounter.image(), cache)
    old = 1_000_000_000 * 10**9
    for root in (m.path, tmpfs_dir):
        for name, content in (("full", b"data" * 100), ("empty", b"")):
            p = root / name
            p.write_bytes(content)
            os.utime(p, ns=(old, old))
            ctime0 = os.stat(p).st_ctime_ns
            time.sleep(0.02)
            os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
            st = os.stat(p)
            assert st.st_size == 0, (root, name)
            assert st.st_mtime_ns > old, (root, name)  # also for an empty file (POSIX)
            assert st.st_ctime_ns > ctime0, (root, name)
            assert st.st_atime_ns == old, (root, name)


def test_otrunc_on_a_read_only_mount_is_erofs(mounter):
    img = mounter.image()
    m = mounter(img)
    m.p("f").write_bytes(b"keep me")
    m.umount()
    ro = mounter(img, "ro")
    for flags in (os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(OSError) as ei:
            os.open(ro.p("f"), flags)
        assert ei.value.errno == errno.EROFS
    with pytest.raises(OSError) as ei:
        open(ro.p("f"), "w")
    assert ei.value.errno == errno.EROFS
    assert ro.p("f").read_bytes() == b"keep me"


def test_rewrite_closed_before_a_crash_keeps_the_new_data(mounter):
    """ext4's auto_da_alloc: a file truncated by O_TRUNC and written is written back
    when it is closed, so a crash right after the close shows the new content."""
    img = mounter.image()
    m = mounter(img, "writeback=3600")
    p = m.p("config")
    p.write_bytes(b"old settings\n" * 500)
    m.umount()
    m = mounter(img, "writeback=3600")
    subprocess.run(["sh", "-c", "printf 'new settings\\n' > config"], cwd=m.path, check=True)
    assert dirty_pages(m.p("config")) == 0  # written back at close
    m.kill9()
    m = mounter(img)
    assert m.p("config").read_bytes() == b"new settings\n"


def test_rename_over_existing_lands_the_new_data_first(mounter):
    """The editors' atomic save (write a temporary file, rename it over the old one)
    with no fsync: after a crash the name shows the whole new file, as on ext4."""
    img = mounter.image()
    m = mounter(img, "writeback=3600")
    m.p("doc.txt").write_bytes(b"version 1\n" * 300)
    m.umount()
    m = mounter(img, "writeback=3600")
    tmp = m.p(".doc.txt.swp")
    new = b"version 2\n" * 400
    tmp.write_bytes(new)
    os.rename(tmp, m.p("doc.txt"))
    assert m.p("doc.txt").read_bytes() == new
    m.kill9()
    m = mounter(img)
    assert m.p("doc.txt").read_bytes() == new
    assert not m.p(".doc.txt.swp").exists()


@pytest.mark.parametrize("cache", CACHES)
def test_cp_over_a_larger_file_and_truncate_command(mounter, cache):
    m = mounter(mounter.image(), cache)
    big, small = m.p("big"), m.p("small")
    big.write_bytes(os.urandom(300_000))
    small.write_bytes(b"small file\n")
    subprocess.run(["cp", str(small), str(big)], check=True)
    assert big.read_bytes() == b"small file\n"
    shutil.copyfile(small, big)
    assert big.read_bytes() == b"small file\n"
    t = m.p("t")
    t.write_bytes(b"0123456789")
    subprocess.run(["truncate", "-s", "4", str(t)], check=True)
    assert t.read_bytes() == b"0123"
    subprocess.run(["truncate", "-s", "+4", str(t)], check=True)
    assert t.read_bytes() == b"0123" + bytes(4)
    subprocess.run(["truncate", "-s", "0", str(t)], check=True)
    assert t.read_bytes() == b"" and os.stat(t).st_size == 0


@pytest.mark.parametrize("cache", CACHES)
def test_sqlite_database_survives_rewrites_and_remount(mounter, cache):
    img = mounter.image()
    m = mounter(img, cache)
    db = m.p("test.db")
    # WAL maps DB-shm shared: under cache=direct that file goes through the page
    # cache (the shared_mmap= default), so WAL works on both.
    journals = ["DELETE", "TRUNCATE", "PERSIST", "WAL"]
    for i, journal in enumerate(journals):
        con = sqlite3.connect(db)
        con.execute(f"PRAGMA journal_mode={journal}")
        con.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
        with con:
            con.executemany(
                "INSERT INTO t (v) VALUES (?)", [(os.urandom(300),) for _ in range(500)]
            )
        with con:
            con.execute("DELETE FROM t WHERE k % 3 = 0")
        con.execute("VACUUM")  # rewrites the whole file, shrinking it
        con.close()
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        n = con.execute("SELECT count(*) FROM t").fetchone()[0]
        con.close()
        assert n > 300 * (i + 1)
    m.umount()
    m = mounter(img, cache)
    con = sqlite3.connect(m.p("test.db"))
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == n
    con.close()


@pytest.mark.parametrize("cache", CACHES)
def test_sqlite_wal_with_a_reader_open_while_writing(mounter, cache):
    """Two connections share the WAL index (DB-shm, mapped MAP_SHARED): a reader
    keeps its snapshot while a writer commits, then sees the new rows."""
    img = mounter.image()
    m = mounter(img, cache)
    db = m.p("wal.db")
    w = sqlite3.connect(db, isolation_level=None)
    assert w.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    w.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    w.executemany("INSERT INTO t (v) VALUES (?)", [(os.urandom(200),) for _ in range(100)])
    r = sqlite3.connect(db, isolation_level=None)
    r.execute("BEGIN")
    assert r.execute("SELECT count(*) FROM t").fetchone() == (100,)
    w.executemany("INSERT INTO t (v) VALUES (?)", [(os.urandom(200),) for _ in range(50)])
    assert r.execute("SELECT count(*) FROM t").fetchone() == (100,)  # its snapshot
    r.execute("COMMIT")
    assert r.execute("SELECT count(*) FROM t").fetchone() == (150,)
    r.close()
    w.close()
    m.umount()
    m = mounter(img, cache)
    con = sqlite3.connect(m.p("wal.db"))
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (150,)
    con.close()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("cache", CACHES)
def test_git_init_add_commit_in_the_mount(mounter, cache):
    img = mounter.image()
    m = mounter(img, cache)
    repo = m.p("repo")
    repo.mkdir()
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
        GIT_CONFIG_NOSYSTEM="1",
        HOME=str(m.path),
    )

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, f"git {' '.join(args)}: {out.stderr}"
        return out.stdout

    git("init", "-q")
    (repo / "a.txt").write_text("first\n" * 100)
    (repo / "b.bin").write_bytes(os.urandom(50_000))
    git("add", ".")
    git("commit", "-q", "-m", "one")
    (repo / "a.txt").write_text("second\n")  # shorter: O_TRUNC rewrite
    git("commit", "-q", "-am", "two")
    assert git("status", "--porcelain") == ""
    m.umount()
    m = mounter(img, cache)
    repo = m.p("repo")
    git("fsck", "--strict")
    assert git("log", "--format=%s") == "two\none\n"
    assert git("show", "HEAD~1:a.txt") == "first\n" * 100
    assert (repo / "a.txt").read_text() == "second\n"
    assert git("status", "--porcelain") == ""


def test_otrunc_drops_setuid_as_tmpfs_does(mounter, public_dir, tmpfs_dir):
    """The kernel's killpriv for an O_TRUNC never reaches the daemon (no SETATTR):
    an unprivileged truncating open drops setuid/setgid in the daemon; root keeps them."""
    m = mounter(mounter.image(), "allow_other", mountpoint=public_dir / "mnt")
    os.chmod(m.path, 0o777)
    os.chmod(tmpfs_dir, 0o777)
    results = {}
    for root in (m.path, tmpfs_dir):
        for name, mode in (("suid", 0o6777), ("sgid-noexec", 0o2766), ("root", 0o6777)):
            p = root / name
            p.write_bytes(b"payload")
            os.chmod(p, mode)
            user = 0 if name == "root" else 65534
            out = subprocess.run(
                ["sh", "-c", f"echo x > {p}"],
                user=user,
                group=user,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stderr
            assert p.read_bytes() == b"x\n"
            results[(root == m.path, name)] = stat.S_IMODE(os.stat(p).st_mode)
    for name in ("suid", "sgid-noexec", "root"):
        assert results[(True, name)] == results[(False, name)], (name, results)
    assert results[(True, "suid")] == 0o777
    assert results[(True, "root")] == 0o6777


def test_crash_before_close_never_shows_the_old_data(mounter):
    """Crash between the O_TRUNC and the close: the file is empty, or has its new size
    with the new bytes or zeros (the once-a-second size update); never old bytes."""
    img = mounter.image()
    m = mounter(img, "writeback=3600")
    old = b"O" * 30_000
    m.p("f").write_bytes(old)
    m.umount()
    m = mounter(img, "writeback=3600")
    new = b"N" * 20_000
    fd = os.open(m.p("f"), os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, new)
        time.sleep(1.5)  # let the size update run: the harder case
        m.kill9()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    m = mounter(img)
    data = m.p("f").read_bytes()
    assert len(data) in (0, len(new))
    assert b"O" not in data
    assert all(c in (0, ord("N")) for c in set(data))
