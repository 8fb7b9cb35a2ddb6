"""`nvramfs ctl`: the daemon's own answer, events for every command, read-only mounts,
the promotion cap as a mount option; mountpoints with /proc/mounts escapes."""

from __future__ import annotations

import errno
import json
import os

import pytest
from mounthelp import mounts_under, nvramfs, pid_alive

pytestmark = pytest.mark.fuse


def test_ctl_prints_the_daemons_answer_and_fails_with_its_message(mounter):
    m = mounter(mounter.image(), "dram=4M")
    if not m.stats()["sim"]:
        pytest.skip("sim=off has no policy")
    out = nvramfs("ctl", m.path, "policy")
    assert out.returncode == 0 and out.stdout.strip() == "policy 2q"
    out = nvramfs("ctl", m.path, "policy", "mq")
    assert out.returncode == 0 and out.stdout.strip() == "policy 2q -> mq"
    assert m.stats()["policy"] == "mq"
    out = nvramfs("ctl", m.path, "policy", "nosuch")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().startswith("nvramfs ctl: policy nosuch: unknown policy")
    out = nvramfs("ctl", m.path, "frobnicate")
    assert out.returncode == 1 and "unknown command 'frobnicate'" in out.stderr
    m.p("f").write_bytes(b"d" * 3 * 4096)
    out = nvramfs("ctl", m.path, "sync")
    assert out.returncode == 0 and out.stdout.strip() == "wrote back 3 dirty pages", out.stdout
    assert m.stats()["budget"]["dirty"] == 0
    out = nvramfs("ctl", m.path, "help")
    assert "demote-all" in out.stdout and "promote-cap" in out.stdout
    # Every command is an event with its answer; the switch is a `policy` event too.
    evs = m.session_events()
    ctl = [(e["cmd"], e["ok"], e["message"]) for e in evs if e["ev"] == "ctl"]
    assert ("policy mq", True, "policy 2q -> mq") in ctl
    assert any(c == "frobnicate" and not ok and "unknown command" in msg for c, ok, msg in ctl)
    pol = [e for e in evs if e["ev"] == "policy"]
    assert [(e["from"], e["to"], e["reason"]) for e in pol] == [("2q", "mq", "ctl")]
    # A write to ctl still fails with EINVAL, and is logged the same way.
    with pytest.raises(OSError) as ei:
        m.ctl("policy nosuch2")
    assert ei.value.errno == errno.EINVAL
    assert any(e.get("cmd") == "policy nosuch2" for e in m.session_events())


def test_ctl_on_a_readonly_mount_serves_what_does_not_write(mounter):
    img = mounter.image()
    m = mounter(img, "ro")
    if not m.stats()["sim"]:
        pytest.skip("sim=off has no policy")
    out = nvramfs("ctl", m.path, "policy", "clock")
    assert out.returncode == 0, out.stderr
    assert m.stats()["policy"] == "clock"
    out = nvramfs("ctl", m.path, "stats")
    assert out.returncode == 0 and json.loads(out.stdout)["readonly"] is True
    # A long answer is asked for twice (ERANGE, then a bigger buffer): it runs once.
    assert [e["cmd"] for e in m.session_events() if e["ev"] == "ctl"].count("stats") == 1
    out = nvramfs("ctl", m.path, "sync")
    assert out.returncode == 1 and "read-only" in out.stderr
    out = nvramfs("mount", img, m.path, "-o", "remount,rw")
    assert out.returncode == 1 and "opened read-only" in out.stderr
    assert pid_alive(m.pid)


def test_promote_cap_is_a_mount_option_and_a_command(mounter):
    m = mounter(mounter.image(), "dram=4M,promote_cap=5")
    if not m.stats()["sim"]:
        pytest.skip("sim=off has no promotion")
    assert nvramfs("ctl", m.path, "promote-cap").stdout.strip() == "promote-cap 5 pages per tick"
    out = nvramfs("ctl", m.path, "promote-cap", "9")
    assert out.stdout.strip() == "promote-cap 9 pages per tick"
    out = nvramfs("mount", m.image, m.path, "-o", "remount,promote_cap=11")
    assert out.returncode == 0 and "promote-cap 11" in out.stdout
    assert nvramfs("ctl", m.path, "promote-cap", "0").returncode == 1


def test_remount_refuses_what_cannot_change(mounter):
    m = mounter(mounter.image(), "dram=4M")
    for opts, code, text in (
        ("remount,cache=kernel", 2, "cannot change cache"),
        ("remount,log=/tmp/x", 2, "cannot change log"),
        ("remount,dram=8M", 1, "the size at mount"),
        ("remount,rw,policy=nosuch", 1, "unknown policy"),
    ):
        out = nvramfs("mount", m.image, m.path, "-o", opts)
        assert out.returncode == code and text in out.stderr, (opts, out.stderr)
    out = nvramfs("mount", m.image, m.path, "-o", "remount,dram=4MB")  # the same: fine
    assert out.returncode == 0, out.stderr


def test_remount_dram_shrinks_and_grows_the_budget(mounter):
    m = mounter(mounter.image(), "dram=4M")
    if not m.stats()["sim"]:
        pytest.skip("sim=off has no DRAM budget")
    data = os.urandom(2 << 20)
    m.p("f").write_bytes(data)  # 512 dirty frames
    out = nvramfs("mount", m.image, m.path, "-o", "remount,dram=1M")
    assert out.returncode == 0 and "dram 1024 -> 256 frames" in out.stdout, out.stderr
    b = m.stats()["budget"]
    assert b["dram_pages"] == 256 and b["frames_used"] <= 256
    assert m.p("f").read_bytes() == data
    out = nvramfs("ctl", m.path, "dram", "3M")
    assert out.returncode == 0 and out.stdout.strip() == "dram 256 -> 768 frames"
    assert m.stats()["counters"]["dram_pages"] == 768
    assert nvramfs("ctl", m.path, "dram", "5M").returncode == 1
    evs = m.session_events()
    budget = [e for e in evs if e["ev"] == "migrate" and e["reason"] == "dram_budget"]
    assert budget  # shrinking demoted pages to make room
    m.umount()


@pytest.mark.parametrize("name", ["with space", "tab\there", "new\nline", "back\\slash"])
def test_escaped_mountpoints_work_for_stat_ctl_and_umount(mounter, tmp_path, name):
    mp = tmp_path / name
    mp.mkdir()
    m = mounter(mounter.image(), mountpoint=mp)
    assert str(mp) in mounts_under(str(tmp_path))
    out = nvramfs("stat", mp)
    assert out.returncode == 0, out.stderr
    assert nvramfs("ctl", mp, "help").returncode == 0
    m.umount()
    assert str(mp) not in mounts_under(str(tmp_path))


def test_nonempty_mountpoint_warns_once_and_umount_lazy(mounter, tmp_path):
    mp = tmp_path / "full"
    mp.mkdir()
    (mp / "hidden").write_text("under the mount")
    m = mounter(mounter.image(), mountpoint=mp)
    warnings = [ln for ln in m.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "not empty" in warnings[0]
    assert not (mp / "hidden").exists()
    fd = os.open(m.p("busy"), os.O_CREAT | os.O_WRONLY)
    try:
        out = nvramfs("umount", "--lazy", mp)
        assert out.returncode == 0, out.stderr
        assert str(mp) not in mounts_under(str(mp))
        assert pid_alive(m.pid)  # still serving the open file
        os.write(fd, b"late")
    finally:
        os.close(fd)
    m.gone = True
    assert (mp / "hidden").read_text() == "under the mount"
