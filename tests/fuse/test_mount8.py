"""mount(8), fstab and umount(8) reach nvramfs as on a set-up machine.

mount(8) runs the helper of `-t fuse.nvramfs` only from /sbin (and runs it with
PATH removed); failing that, Debian's /sbin/mount.fuse runs `nvramfs IMAGE DIR
-o OPTS` through /bin/sh. Each test runs in a private mount namespace
(`unshare -m`) where a read-only overlay adds this checkout's helper (or
`nvramfs` command) to /usr/sbin (or /usr/local/bin), so the machine's own
directories are never touched and every mount made in it disappears with it.
The script unmounts on any exit; the test kills the daemon if it is still
there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mounthelp import mkfs, nvramfs, pid_alive

pytestmark = pytest.mark.fuse

ROOT = Path(__file__).resolve().parents[2]

ENTRY = textwrap.dedent(
    """\
    #!/bin/sh
    exec {py} -c 'import sys; sys.path.insert(0, "{root}"); sys.argv[0] = "{name}"; \\
    from nvramfs.cli import {func}; sys.exit({func}())' "$@"
    """
)


def write_entry(directory: Path, name: str, func: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(ENTRY.format(py=sys.executable, root=ROOT, name=name, func=func))
    path.chmod(0o755)


def run_in_namespace(tmp_path: Path, overlays: dict[str, Path], body: str) -> dict:
    """Run `body` (sh) in a private mount namespace with `overlays` (lower dir over a
    system dir). The body writes the daemon's pid to $PIDFILE as soon as it knows it;
    returns {"out": CompletedProcess, "pids": [...]}, after killing any daemon left."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    pidfile = tmp_path / "pids"
    setup = "\n".join(
        f"mount -t overlay overlay -o lowerdir={low}:{sysdir} {sysdir} || exit 77"
        for sysdir, low in overlays.items()
    )
    script = tmp_path / "script.sh"
    script.write_text(
        "set -e\n"
        f"PIDFILE={pidfile}\n"
        f"{setup}\n"
        "cleanup() { for m in $(awk '$3==\"fuse.nvramfs\"{print $2}' /proc/mounts); do "
        'umount -l "$m" 2>/dev/null || true; done; }\n'
        "trap cleanup EXIT\n" + textwrap.dedent(body)
    )
    out = None
    try:
        out = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", str(script)],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        pids = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
        for pid in pids:
            deadline = time.monotonic() + 30
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    if out.returncode == 77:
        pytest.skip(f"no overlayfs in a private mount namespace: {out.stderr.strip()}")
    return {"out": out, "pids": pids}


def pid_of(mnt: str) -> str:
    """sh: record the daemon's pid (from its stats) in $PIDFILE."""
    return (
        f"python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"pid\"])' "
        f"{mnt}/.nvramfs/stats >> $PIDFILE\n"
    )


def test_mount_t_fstab_remount_and_umount8(tmp_path: Path) -> None:
    img = mkfs(tmp_path / "a.img", "32M")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    helpers = tmp_path / "sbin"
    write_entry(helpers, "mount.fuse.nvramfs", "mount_helper_main")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{img}  {mnt}  fuse.nvramfs  dram=4MB,policy=mq,noauto  0 0\n")
    res = run_in_namespace(
        tmp_path,
        {"/usr/sbin": helpers},
        f"""
        mount -t fuse.nvramfs {img} {mnt} -o dram=8M,policy=clock
        {pid_of(mnt)}
        grep " {mnt} " /proc/mounts > {tmp_path}/line1
        cp {mnt}/.nvramfs/stats {tmp_path}/stats1.json
        echo first > {mnt}/f
        mount -o remount,ro,policy=mq {mnt}
        grep " {mnt} " /proc/mounts > {tmp_path}/line2
        if echo no > {mnt}/g 2>/dev/null; then echo "wrote on ro"; exit 3; fi
        mount -o remount,rw {mnt}
        echo second >> {mnt}/f
        umount {mnt}
        mount -T {fstab} {mnt}
        {pid_of(mnt)}
        cp {mnt}/.nvramfs/stats {tmp_path}/stats2.json
        cat {mnt}/f > {tmp_path}/content
        umount {mnt}
        """,
    )
    out = res["out"]
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(res["pids"]) == 2
    line1 = (tmp_path / "line1").read_text().split()
    assert line1[0] == str(img) and line1[2] == "fuse.nvramfs" and line1[3].startswith("rw")
    assert (tmp_path / "line2").read_text().split()[3].startswith("ro")
    s1 = json.loads((tmp_path / "stats1.json").read_text())
    assert s1["policy"] == "clock" and s1["budget"]["dram_pages"] == 2048
    s2 = json.loads((tmp_path / "stats2.json").read_text())  # from the fstab line
    assert s2["policy"] == "mq" and s2["budget"]["dram_pages"] == 1024
    assert (tmp_path / "content").read_text() == "first\nsecond\n"
    # umount(8) ended each daemon after its writeback: the image is clean.
    assert all(not pid_alive(p) for p in res["pids"])
    assert nvramfs("fsck", img).returncode == 0
    info = json.loads(nvramfs("info", img, "--json").stdout)
    assert info["clean"] is True
    log = [json.loads(ln) for ln in Path(str(img) + ".events.jsonl").read_text().splitlines()]
    switches = [e for e in log if e["ev"] == "policy"]
    assert switches and switches[0]["from"] == "clock" and switches[0]["to"] == "mq"
    assert switches[0]["reason"] == "remount"


def test_mount_fuse_fallback_runs_nvramfs_image_dir(tmp_path: Path) -> None:
    """Without the helper, mount.fuse runs `nvramfs IMAGE DIR -o OPTS` from sh's PATH."""
    if not Path("/sbin/mount.fuse").exists():
        pytest.skip("no /sbin/mount.fuse (apt install fuse3)")
    if Path("/sbin/mount.fuse.nvramfs").exists():
        pytest.skip("/sbin/mount.fuse.nvramfs is installed: mount(8) would use it")
    img = mkfs(tmp_path / "b.img", "16M")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    bindir = tmp_path / "bin"
    write_entry(bindir, "nvramfs", "main")
    res = run_in_namespace(
        tmp_path,
        {"/usr/local/bin": bindir},
        f"""
        mount -t fuse.nvramfs {img} {mnt} -o dram=2M
        {pid_of(mnt)}
        cp {mnt}/.nvramfs/stats {tmp_path}/stats.json
        umount {mnt}
        """,
    )
    out = res["out"]
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((tmp_path / "stats.json").read_text())["budget"]["dram_pages"] == 512


def test_make_helper_installs_and_clean_removes_only_its_own(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stamp = venv / ".installed"
    stamp.touch()  # newer than pyproject.toml: make builds no venv
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    args = ["make", "-s", "-C", str(ROOT), f"SBINDIR={sbin}", f"VENV={venv}"]
    out = subprocess.run([*args, "helper"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    link = sbin / "mount.fuse.nvramfs"
    assert os.readlink(link) == str(venv / "bin" / "mount.fuse.nvramfs")
    out = subprocess.run([*args, "uninstall-helper"], capture_output=True, text=True)
    assert out.returncode == 0 and not link.is_symlink()
    link.symlink_to("/elsewhere/bin/mount.fuse.nvramfs")  # another checkout's
    subprocess.run([*args, "uninstall-helper"], capture_output=True, text=True)
    assert link.is_symlink()


def test_fallback_form_and_not_a_command(tmp_path: Path) -> None:
    """`nvramfs IMAGE DIR -o OPTS` is mount; a mistyped command is still a usage error."""
    out = nvramfs(str(tmp_path / "none.img"), str(tmp_path), "-o", "rw")
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = nvramfs("mout", "x")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_the_installed_helper_after_make_setup(tmp_path: Path) -> None:
    """On a machine set up by this checkout's `make setup`: plain `mount -t fuse.nvramfs`."""
    helper = Path("/sbin/mount.fuse.nvramfs")
    if (
        not helper.is_symlink()
        or Path(os.readlink(helper)) != ROOT / ".venv/bin/mount.fuse.nvramfs"
    ):
        pytest.skip("/sbin/mount.fuse.nvramfs is not this checkout's (run make setup)")
    img = mkfs(tmp_path / "c.img", "16M")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = run_in_namespace(
        tmp_path,
        {},
        f"""
        mount -t fuse.nvramfs {img} {mnt}
        {pid_of(mnt)}
        echo ok > {mnt}/f
        umount {mnt}
        """,
    )
    assert res["out"].returncode == 0, res["out"].stderr
    assert nvramfs("fsck", img).returncode == 0
