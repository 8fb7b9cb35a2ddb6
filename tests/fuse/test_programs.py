"""Real programs and the syscall patterns they rely on, on a real mount, with a
small DRAM budget (so reclaim and writeback run), on both cache modes, compared
with kernel tmpfs where that makes sense."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from mounthelp import nvramfs

pytestmark = pytest.mark.fuse

# The small budget makes writeback and reclaim part of every test.
MODES = ["dram=4M", "cache=kernel,dram=4M"]
MODE_IDS = ["direct", "kernel"]

# The largest file size (docs/FORMAT.md: 2^32 pages of 4 KiB, the size below that).
LIMIT = (1 << 44) - 1


def fsck_clean(img: Path) -> None:
    out = nvramfs("fsck", img)
    assert out.returncode == 0, out.stdout + out.stderr


def no_daemon_errors(m) -> None:
    assert "Traceback" not in m.daemon_log(), m.daemon_log()[-3000:]


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        with open(root / name, "wb") as f:
            if name == "sparse":
                f.seek(1 << 20)
                f.write(data[1 << 20 :])
            else:
                f.write(data)


@pytest.mark.skipif(shutil.which("tar") is None, reason="tar is not installed")
@pytest.mark.parametrize("options", MODES, ids=MODE_IDS)
def test_tar_sparse_archive_of_files_just_written(mounter, tmpfs_dir, options):
    """`tar -cS` right after the files were written (before writeback): tar lists
    the directory (READDIRPLUS: the kernel caches the attributes it carries) and
    takes a file whose st_blocks is 0 for all hole. The archive must hold the data."""
    m = mounter(mounter.image(), options)
    # The shapes archivers special-case: tiny, a page and a bit, sparse.
    files = {"small": b"abc", "mid": os.urandom(5000), "sparse": bytes(1 << 20) + b"z" * 10}
    blocks = {}
    for where, root in (("nvramfs", m.p("tree")), ("tmpfs", tmpfs_dir / "tree")):
        root.mkdir()
        write_tree(root, files)
        # A listing first, as tar, du, ls -s and find do: then the blocks.
        blocks[where] = {e.name: e.stat().st_blocks for e in os.scandir(root)}
    assert blocks["nvramfs"] == blocks["tmpfs"] == {"small": 8, "mid": 16, "sparse": 8}
    archive = tmpfs_dir / "t.tar"
    subprocess.run(["tar", "-cSf", archive, "-C", m.path, "tree"], check=True, timeout=60)
    out = tmpfs_dir / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", archive, "-C", out], check=True, timeout=60)
    for name, data in files.items():
        assert (out / "tree" / name).read_bytes() == data, name
    no_daemon_errors(m)


@pytest.mark.parametrize("options", MODES, ids=MODE_IDS)
def test_writes_near_and_past_the_largest_file_size(mounter, options):
    """A sparse file with pages terabytes apart stats and reads as on ext4; a write
    at the largest size is EFBIG and one across it short, as the VFS's
    generic_write_check_limits: never a page accepted that writeback cannot store."""
    img = mounter.image()
    m = mounter(img, options)
    p = m.p("big")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"a", 0)
        os.pwrite(fd, b"b", 15 << 40)
        st = os.fstat(fd)
        assert (st.st_size, st.st_blocks) == ((15 << 40) + 1, 16)
        assert os.stat(p).st_blocks == 16
        with pytest.raises(OSError) as ei:
            os.pwrite(fd, b"x", LIMIT)
        assert ei.value.errno == errno.EFBIG
        assert os.pwrite(fd, b"y" * 8192, LIMIT - 100) == 100
        assert os.fstat(fd).st_size == LIMIT
        assert os.pread(fd, 200, LIMIT - 100) == b"y" * 100
    finally:
        os.close(fd)
    # Writeback of the other files goes on.
    q = m.p("after")
    with open(q, "wb") as f:
        f.write(b"q" * 100_000)
        os.fsync(f.fileno())
    no_daemon_errors(m)
    m.umount()
    fsck_clean(img)
    m = mounter(img, options)
    with open(m.p("big"), "rb") as f:
        assert os.fstat(f.fileno()).st_size == LIMIT
        assert os.pread(f.fileno(), 1, 15 << 40) == b"b"
        assert os.pread(f.fileno(), 100, LIMIT - 100) == b"y" * 100
    assert m.p("after").read_bytes() == b"q" * 100_000


def test_xattr_value_too_large_for_the_block_is_enospc(mnt):
    """setxattr of a value up to the VFS's 64 KiB that does not fit in the inode's
    one xattr block: ENOSPC (ext4 without ea_inode), the xattrs there untouched."""
    f = mnt.p("x")
    f.write_bytes(b"")
    os.setxattr(f, "user.keep", b"1")
    for size in (5000, 65535, 65536):
        with pytest.raises(OSError) as ei:
            os.setxattr(f, "user.big", b"v" * size)
        assert ei.value.errno == errno.ENOSPC, size
    assert os.listxattr(f) == ["user.keep"]
    os.setxattr(f, "user.fits", b"w" * 3000)
    assert os.getxattr(f, "user.fits") == b"w" * 3000
    no_daemon_errors(mnt)


@pytest.mark.parametrize("options", MODES, ids=MODE_IDS)
def test_link_unlink_rename_stamp_the_ctime_of_a_file_just_written(mounter, tmpfs_dir, options):
    """pjdfstest's link/00.t, unlink/00.t, rename/00.t: a new or removed name
    changes the inode's ctime, also while its data and size are still waiting for
    writeback, and also when it was the last name of a file still open."""
    m = mounter(mounter.image(), options)
    seen = {}
    for where, root in (("nvramfs", m.path), ("tmpfs", tmpfs_dir)):
        f = root / "f"
        f.write_bytes(b"x" * 100)
        steps = []
        for step in ("link", "unlink"):
            before = os.stat(f).st_ctime_ns
            time.sleep(0.01)
            if step == "link":
                os.link(f, root / "g")
            else:
                os.unlink(root / "g")
            steps.append(os.stat(f).st_ctime_ns > before)
        # The last name goes while the file is open (unlink, rename over it):
        # fstat shows the new ctime too.
        for step in ("unlink", "rename"):
            g = root / step
            g.write_bytes(b"y" * 100)
            fd = os.open(g, os.O_RDONLY)
            before = os.fstat(fd).st_ctime_ns
            time.sleep(0.01)
            if step == "unlink":
                os.unlink(g)
            else:
                (root / "new").write_bytes(b"n")
                os.rename(root / "new", g)
            steps.append(os.fstat(fd).st_ctime_ns > before)
            os.close(fd)
        seen[where] = steps
    assert seen["nvramfs"] == seen["tmpfs"] == [True] * 4
    # The ctime the image holds is the new one, not the older one the cache had.
    ctime = os.stat(m.p("f")).st_ctime_ns
    m.umount()
    m = mounter(m.image, options)
    assert os.stat(m.p("f")).st_ctime_ns == ctime


def test_listing_a_directory_updates_its_atime_by_the_relatime_rule(mounter, tmpfs_dir):
    """`ls` reads a directory: its atime moves when it is not newer than mtime or
    ctime (relatime, the default), as on tmpfs and ext4; a second listing leaves it."""
    img = mounter.image()
    m = mounter(img)
    seen = {}
    for where, root in (("nvramfs", m.path), ("tmpfs", tmpfs_dir)):
        d = root / "d"
        d.mkdir()
        (d / "f").write_bytes(b"")
        os.utime(d, ns=(1_000_000_000, 2_000_000_000))  # atime older than mtime
        os.listdir(d)
        first = os.stat(d).st_atime_ns
        os.listdir(d)
        seen[where] = (first > 2_000_000_000, os.stat(d).st_atime_ns == first)
    assert seen["nvramfs"] == seen["tmpfs"] == (True, True)
    atime = os.stat(m.p("d")).st_atime_ns
    m.umount()
    m = mounter(img, "noatime")
    assert os.stat(m.p("d")).st_atime_ns == atime  # it reached the image
    os.utime(m.p("d"), ns=(1_000_000_000, 2_000_000_000))
    os.listdir(m.p("d"))
    assert os.stat(m.p("d")).st_atime_ns == 1_000_000_000  # noatime: never


def test_every_atime_word_of_mount8_mounts_and_strictatime_works(mounter):
    """fstab lines carry relatime, strictatime, nodiratime, lazytime...: libfuse
    refuses some of them, so they stay in the daemon (which keeps atime itself:
    FUSE inodes are S_NOATIME to the kernel). strictatime: every read moves atime."""
    img = mounter.image()
    m = mounter(img, "relatime,diratime,nostrictatime,nolazytime,atime")
    (m.p("f")).write_bytes(b"data")
    m.umount()
    m = mounter(img, "nodiratime,lazytime,norelatime,strictatime")
    f = m.p("f")
    f.read_bytes()
    first = os.stat(f).st_atime_ns  # newer than mtime and ctime now
    time.sleep(0.01)
    f.read_bytes()
    assert os.stat(f).st_atime_ns > first  # relatime would have left it


def make_tricky_tree(root: Path) -> None:
    """What archivers and copiers special-case: hard links, symlinks (one dangling,
    one long), a sparse file, a 255-byte name, a deep path, a fifo, set times."""
    root.mkdir()
    (root / "d1" / "d2").mkdir(parents=True)
    (root / "a").write_bytes(bytes(range(256)) * 400)
    os.link(root / "a", root / "d1" / "a_link")
    os.symlink("../a", root / "d1" / "sym")
    os.symlink("y" * 1000, root / "dangling")
    with open(root / "sparse", "wb") as f:
        f.seek(3 << 20)
        f.write(b"mid")
        f.seek(10 << 20)
        f.write(b"end")
    (root / ("n" * 255)).write_bytes(b"long name")
    deep = root.joinpath(*[f"dir{i:02d}_" + "x" * 50 for i in range(40)])
    deep.mkdir(parents=True)
    (deep / "deep").write_bytes(b"deep")
    os.mkfifo(root / "fifo")
    os.chmod(root / "a", 0o4755)
    os.utime(root / "a", ns=(1_234_567_890_123_456_789, 1_234_567_890_987_654_321))


def tree_listing(root: Path) -> list[tuple]:
    """Everything but directory sizes (tmpfs counts entries, nvramfs blocks)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            data = None
            if stat.S_ISREG(st.st_mode):
                data = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            size = None if stat.S_ISDIR(st.st_mode) else st.st_size
            out.append((rel, st.st_mode, st.st_nlink, size, st.st_mtime_ns, data))
    return sorted(out)


@pytest.mark.skipif(shutil.which("tar") is None, reason="tar is not installed")
@pytest.mark.parametrize("options", MODES, ids=MODE_IDS)
def test_tar_and_cp_round_trip_a_tricky_tree_as_on_tmpfs(mounter, tmpfs_dir, options):
    """tar -xSp into the mount, tar -cS out of it, cp -a within it, sed -i on a
    hard-linked file: the same tree as on tmpfs, and fsck clean after unmount."""
    img = mounter.image()
    m = mounter(img, options)
    src = tmpfs_dir / "src"
    make_tricky_tree(src)
    archive = tmpfs_dir / "src.tar"
    tar_c = ["tar", "--format=posix", "-cSf"]  # pax: times to the nanosecond
    subprocess.run([*tar_c, archive, "-C", src, "."], check=True, timeout=60)
    listings = {}
    for where, root in (("nvramfs", m.path), ("tmpfs", tmpfs_dir / "dst")):
        x = root / "x"
        x.mkdir(parents=True)
        subprocess.run(["tar", "-xSpf", archive, "-C", x], check=True, timeout=60)
        subprocess.run(["cp", "-a", x, root / "copy"], check=True, timeout=60)
        back = tmpfs_dir / f"back-{where}.tar"
        subprocess.run([*tar_c, back, "-C", root / "copy", "."], check=True, timeout=60)
        again = tmpfs_dir / f"again-{where}"
        again.mkdir()
        subprocess.run(["tar", "-xSpf", back, "-C", again], check=True, timeout=60)
        subprocess.run(["sed", "-i", "s/x/X/", root / "copy" / "d1" / "a_link"], timeout=60)
        listings[where] = (tree_listing(x), tree_listing(again), tree_listing(root / "copy"))
    assert listings["nvramfs"][0] == tree_listing(src)
    assert listings["nvramfs"][0] == listings["nvramfs"][1]
    # sed -i stamps its own mtime: the rest must be the same.
    for n, t in zip(listings["nvramfs"][2], listings["tmpfs"][2], strict=True):
        assert n[:4] == t[:4] and n[5] == t[5], (n[0], t[0])
    assert os.stat(m.p("x", "sparse")).st_blocks <= 16
    no_daemon_errors(m)
    m.umount()
    fsck_clean(img)


def test_the_control_directory_refuses_namespace_changes(mnt):
    """`.nvramfs` and its files are the daemon's, as /proc's are the kernel's: a
    rename, unlink, rmdir or link of them is EPERM and a new file in it EACCES (the
    VFS's answers for a directory without those operations), never a misleading
    ENOENT; `rm -rf` says so and the directory stays. A directory renamed over it
    gets ENOTEMPTY, as over any directory with entries."""
    ctl = mnt.p(".nvramfs")
    mnt.p("x").write_bytes(b"x")
    mnt.p("dd").mkdir()
    attempts = {
        "rename it": lambda: os.rename(ctl, mnt.p("y")),
        "rename over it": lambda: os.rename(mnt.p("dd"), ctl),
        "rename into it": lambda: os.rename(mnt.p("x"), ctl / "x"),
        "rename out of it": lambda: os.rename(ctl / "stats", mnt.p("s")),
        "rmdir it": lambda: os.rmdir(ctl),
        "unlink in it": lambda: os.unlink(ctl / "stats"),
        "mkdir in it": lambda: os.mkdir(ctl / "d"),
        "symlink in it": lambda: os.symlink("x", ctl / "l"),
        "link from it": lambda: os.link(ctl / "stats", mnt.p("l")),
        "link into it": lambda: os.link(mnt.p("x"), ctl / "l"),
        "create in it": lambda: open(ctl / "new", "w"),
    }
    got = {}
    for what, call in attempts.items():
        with pytest.raises(OSError) as ei:
            call()
        got[what] = errno.errorcode[ei.value.errno]
    want = {what: "EPERM" for what in attempts}
    want["create in it"] = "EACCES"
    want["rename over it"] = "ENOTEMPTY"  # what a directory with entries answers
    assert got == want
    out = subprocess.run(["rm", "-rf", str(ctl)], capture_output=True, text=True)
    assert out.returncode != 0 and "not permitted" in out.stderr
    assert sorted(os.listdir(ctl)) == ["ctl", "events", "stats"]
    assert mnt.p("x").read_bytes() == b"x"
    no_daemon_errors(mnt)


def test_a_directory_atime_that_cannot_be_stored_never_fails_the_listing(tmp_path):
    """The handler itself: an image that refuses the atime update (full journal,
    read-only after an error) leaves `ls` working."""
    from nvramfs.events.writer import EventWriter
    from nvramfs.fuse.operations import Operations
    from nvramfs.image import FsError, Image
    from nvramfs.image.mkfs import mkfs
    from nvramfs.mm import MemoryManager

    mkfs(tmp_path / "img", size=16 << 20)
    img = Image.open(tmp_path / "img")
    events = EventWriter(tmp_path / "log.jsonl")
    mm = MemoryManager(img, 1024, events=events)
    ops = Operations(img, mm, events)
    try:
        real = img.setattr

        def refuse(ino, **kw):
            if set(kw) == {"atime_ns", "ctime_ns"}:
                raise FsError(errno.ENOSPC)
            return real(ino, **kw)

        img.setattr = refuse
        before = ops._attr(ops._root).st_atime_ns
        ops._touch_dir_atime(ops._root)  # relatime: the root's atime is not newer
        assert ops._attr(ops._root).st_atime_ns == before
        assert ops.errors == 0
    finally:
        ops.shutdown()
        mm.close()
        events.close()
        img.close()
