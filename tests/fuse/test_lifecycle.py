"""The life of a mount: mount, refuse bad input, unmount on signals, recover after kill -9."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mounthelp import FUSERMOUNT, MOUNTED_HERE, mounts_under, nvramfs, pid_alive

pytestmark = pytest.mark.fuse


def fsck_available() -> bool:
    return nvramfs("fsck", "--help").returncode == 0


def assert_fsck_clean(image: Path) -> None:
    if not fsck_available():
        pytest.skip("nvramfs fsck not built yet")
    out = nvramfs("fsck", image)
    assert out.returncode == 0, out.stdout + out.stderr


def one_line_error(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"daemon {pid} still alive"
        time.sleep(0.02)


def test_mount_is_visible_and_umount_waits_for_the_daemon(mounter):
    img = mounter.image()
    m = mounter(img)
    assert "event log:" in m.stdout and str(m.log) in m.stdout
    line = next(ln for ln in open("/proc/mounts") if ln.split()[1] == str(m.path))
    fsname, _, fstype = line.split()[:3]
    assert fsname == str(img) and fstype == "fuse.nvramfs"
    df = subprocess.run(["df", "-T", str(m.path)], capture_output=True, text=True)
    assert "fuse.nvramfs" in df.stdout
    m.p("f").write_bytes(b"x" * 10000)
    m.umount()
    assert str(m.path) not in mounts_under(str(m.path))
    evs = m.session_events()
    assert evs[0]["ev"] == "mount"
    for key in ("image", "dram_pages", "page_size", "policy", "cache", "sim", "recovered", "wall"):
        assert key in evs[0], key
    assert evs[0]["recovered"] is False and evs[0]["cache"] == "direct"
    assert evs[-1] == {**evs[-1], "ev": "unmount", "clean": True}
    assert any(e["ev"] == "path" and e["path"] == "/f" for e in evs)
    assert_fsck_clean(img)


def test_unknown_option_is_refused_with_exit_2(mounter, tmp_path):
    img = mounter.image()
    (tmp_path / "mp").mkdir()
    out = nvramfs("mount", img, tmp_path / "mp", "-o", "dram=8M,frobnicate")
    assert out.returncode == 2
    assert "frobnicate" in one_line_error(out)
    for bad in ("cache=sometimes", "sim=maybe", "dram=lots", "writeback=-1"):
        out = nvramfs("mount", img, tmp_path / "mp", "-o", bad)
        assert out.returncode == 2, bad
        one_line_error(out)
    assert not mounts_under(str(tmp_path))


def test_bad_mountpoints_are_refused(mounter, tmp_path):
    img = mounter.image()
    out = nvramfs("mount", img, tmp_path / "missing")
    assert out.returncode == 1 and "does not exist" in one_line_error(out)
    (tmp_path / "file").write_bytes(b"")
    out = nvramfs("mount", img, tmp_path / "file")
    assert out.returncode == 1 and "not a directory" in one_line_error(out)
    m = mounter(img)
    other = mounter.image()
    out = nvramfs("mount", other, m.path)
    assert out.returncode == 1 and "already a mountpoint" in one_line_error(out)
    (tmp_path / "second").mkdir()
    out = nvramfs("mount", img, tmp_path / "second")  # one daemon per image
    assert out.returncode == 1 and "in use" in one_line_error(out)
    assert str(tmp_path / "second") not in mounts_under(str(tmp_path))


def test_corrupt_image_is_refused_in_one_line(mounter, tmp_path):
    (tmp_path / "mp").mkdir()
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    out = nvramfs("mount", junk, tmp_path / "mp")
    assert out.returncode == 1
    assert "junk.img" in one_line_error(out) or "image" in one_line_error(out)
    img = mounter.image()
    with open(img, "r+b") as f:  # smash both superblock copies
        f.write(os.urandom(8192))
    out = nvramfs("mount", img, tmp_path / "mp")
    assert out.returncode == 1
    one_line_error(out)
    out = nvramfs("mount", tmp_path / "nope.img", tmp_path / "mp")
    assert out.returncode == 1
    one_line_error(out)
    assert not mounts_under(str(tmp_path))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(mounter, sig):
    img = mounter.image()
    m = mounter(img)
    payload = os.urandom(123_457)
    m.p("data").write_bytes(payload)  # not fsync'ed: the clean end writes it back
    os.kill(m.pid, sig)
    wait_gone(m.pid)
    assert str(m.path) not in mounts_under(str(m.path))
    assert m.session_events()[-1]["ev"] == "unmount"
    m.gone = True
    again = mounter(img)
    assert "not cleanly unmounted" not in again.stderr
    assert again.session_events()[0]["recovered"] is False
    assert again.p("data").read_bytes() == payload


def test_kill9_then_remount_recovers_and_keeps_fsynced_data(mounter):
    img = mounter.image()
    m = mounter(img)
    free_before = os.statvfs(m.path).f_bfree
    synced = os.urandom(300_001)
    with open(m.p("synced"), "wb") as f:
        f.write(synced)
        f.flush()
        os.fsync(f.fileno())
    m.p("dir").mkdir()
    os.rename(m.p("synced"), m.p("dir", "renamed"))
    # An unlinked-while-open file with fsync'ed data: the crash leaves it on the orphan list.
    fd = os.open(m.p("orphan"), os.O_CREAT | os.O_RDWR)
    os.write(fd, os.urandom(200_000))
    os.fsync(fd)
    os.unlink(m.p("orphan"))
    m.kill9()
    try:
        os.close(fd)
    except OSError:
        pass
    again = mounter(img)
    assert "not cleanly unmounted" in again.stderr
    assert again.session_events()[0]["recovered"] is True
    assert again.p("dir", "renamed").read_bytes() == synced
    assert not again.p("orphan").exists()
    # The orphan's blocks came back: only the synced file's blocks are in use.
    used = free_before - os.statvfs(again.path).f_bfree
    assert used <= 300_001 // 4096 + 8
    again.umount()
    assert_fsck_clean(img)


def test_readonly_mount_refuses_writes(mounter):
    img = mounter.image()
    m = mounter(img)
    m.p("f").write_bytes(b"keep")
    m.umount()
    ro = mounter(img, "ro")
    assert ro.p("f").read_bytes() == b"keep"
    for action in (
        lambda: ro.p("g").write_bytes(b""),
        lambda: ro.p("f").write_bytes(b"x"),
        lambda: ro.p("d").mkdir(),
        lambda: os.unlink(ro.p("f")),
        lambda: os.chmod(ro.p("f"), 0o600),
    ):
        with pytest.raises(OSError) as ei:
            action()
        assert ei.value.errno == errno.EROFS
    assert "ro" in next(ln for ln in open("/proc/mounts") if str(ro.path) in ln).split()[3]


def test_ctl_commands_and_bad_command(mnt):
    mnt.p("f").write_bytes(b"z" * 50_000)
    mnt.ctl("sync")
    mnt.ctl("demote-all")
    stats = mnt.stats()
    assert stats["pid"] == mnt.pid
    if stats["sim"]:
        assert stats["budget"]["dirty"] == 0
        mnt.ctl(f"policy {stats['policy']}")
    for bad in ("frobnicate", "policy no-such-policy", "sync now please"):
        with pytest.raises(OSError) as ei:
            mnt.ctl(bad)
        assert ei.value.errno == errno.EINVAL
    assert pid_alive(mnt.pid)
    assert mnt.p("f").read_bytes() == b"z" * 50_000
    tail = mnt.p(".nvramfs", "events").read_text().splitlines()
    assert tail and '"ev":"mount"' in tail[0].replace(" ", "")


def test_nvramfs_stat_command(mnt):
    out = nvramfs("stat", mnt.path)
    assert out.returncode == 0, out.stderr
    assert str(mnt.image) in out.stdout
    out = nvramfs("stat", mnt.path, "--json")
    assert '"counters"' in out.stdout
    out = nvramfs("stat", "/")
    assert out.returncode == 1
    one_line_error(out)
    out = nvramfs("umount", "/proc")
    assert out.returncode == 1
    one_line_error(out)
    with open(mnt.p("busy"), "wb"):  # an open file keeps the mount busy
        out = nvramfs("umount", mnt.path)
        assert out.returncode == 1 and "busy" in one_line_error(out)
    assert pid_alive(mnt.pid)


def test_foreground_mode_and_mount_helper_form(mounter, tmp_path):
    img = mounter.image()
    mp = tmp_path / "fg"
    mp.mkdir()
    MOUNTED_HERE.add(str(mp))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nvramfs", "mount", str(img), str(mp), "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while str(mp) not in mounts_under(str(mp)):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (mp / "hello").write_bytes(b"fg")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert str(mp) not in mounts_under(str(mp))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if str(mp) in mounts_under(str(mp)):
            subprocess.run([FUSERMOUNT, "-uz", str(mp)], capture_output=True)
    # mount(8)'s helper form, with the generic options mount.fuse passes along.
    helper = Path(sys.executable).with_name("mount.fuse.nvramfs")
    if not helper.exists():
        pytest.skip("mount.fuse.nvramfs is not installed")
    out = subprocess.run(
        [str(helper), str(img), str(mp), "-o", "rw,nosuid,nodev,noatime,_netdev,dram=8M"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    try:
        assert (mp / "hello").read_bytes() == b"fg"
        line = next(ln for ln in open("/proc/mounts") if ln.split()[1] == str(mp))
        assert "nosuid" in line and "noatime" in line
    finally:
        assert nvramfs("umount", mp).returncode == 0


def test_mount_help_lists_every_option():
    out = nvramfs("mount", "--help")
    assert out.returncode == 0
    for opt in (
        "ro",
        "allow_other",
        "default_permissions",
        "dram=SIZE",
        "policy=NAME",
        "log=PATH",
        "cache=direct",
        "cache=kernel",
        "sim=on|off",
        "trace_faults",
        "writeback=SECONDS",
    ):
        assert opt in out.stdout, opt


def test_enospc_is_an_errno_and_the_mount_stays_usable(mounter):
    m = mounter(mounter.image(size="16M"))
    keep = os.urandom(100_000)
    m.p("keep").write_bytes(keep)
    chunk = os.urandom(1 << 20)
    written = 0
    with open(m.p("fill"), "wb") as f:
        with pytest.raises(OSError) as ei:
            for _ in range(64):
                written += f.write(chunk)
                f.flush()
        assert ei.value.errno == errno.ENOSPC
    assert written > 8 << 20
    assert os.statvfs(m.path).f_bfree < 256
    assert m.p("keep").read_bytes() == keep
    with pytest.raises(OSError) as ei:
        m.p("more").write_bytes(b"x" * 2_000_000)
    assert ei.value.errno == errno.ENOSPC
    os.unlink(m.p("fill"))
    deadline = time.monotonic() + 5
    while os.statvfs(m.path).f_bfree < 2000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.statvfs(m.path).f_bfree > 2000
    assert pid_alive(m.pid) and m.stats()["errors"] == 0
