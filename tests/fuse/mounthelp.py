"""Helpers to mount nvramfs for real in tests, and always take the mount down again.

`mounter` mounts an image with `nvramfs mount` (a real daemon, a real FUSE
mount); whatever happens in the test, the fixture's teardown unmounts
(`nvramfs umount`, then `fusermount3 -u`, then `-uz`), kills the daemon if it
is still there, and checks that no mount under the test's directory is left
in /proc/mounts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
# Every mountpoint this test process mounted on: the session's last sweep looks only
# at these (other pytest sessions may be running mounts of their own).
MOUNTED_HERE: set[str] = set()
# Extra mount options for every mount of the suite, e.g. NVRAMFS_TEST_OPTIONS=sim=off
# runs it all against the no-simulation baseline, cache=kernel through the page cache.
EXTRA_OPTIONS = os.environ.get("NVRAMFS_TEST_OPTIONS", "")


def have_fuse() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which(FUSERMOUNT) is not None


def nvramfs(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    """Run the `nvramfs` command (this checkout's), capturing its output."""
    out = subprocess.run(
        [sys.executable, "-m", "nvramfs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and out.returncode != 0:
        raise AssertionError(
            f"nvramfs {' '.join(map(str, args))} -> {out.returncode}\n{out.stderr}"
        )
    return out


def mkfs(image: Path, size: str = "64M", tree: Path | None = None) -> Path:
    """Make an image with `nvramfs mkfs` (of `tree`'s contents when given)."""
    args = ["mkfs", str(image), "--size", size]
    if tree is not None:
        args += ["--from", str(tree)]
    nvramfs(*args, check=True)
    return image


def unescape(field: str) -> str:
    """A /proc/mounts field as a path: \\040 \\011 \\012 \\134 are space, tab, newline, \\."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(prefix: str) -> list[str]:
    with open("/proc/mounts") as f:
        paths = [unescape(ln.split()[1]) for ln in f]
    return [p for p in paths if p.startswith(prefix)]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@dataclass
class Mount:
    """A running mount: where, which daemon, which log."""

    image: Path
    path: Path
    pid: int
    log: Path
    stdout: str
    stderr: str
    options: str = ""
    gone: bool = field(default=False)

    def p(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def stats(self) -> dict:
        return json.loads(self.p(".nvramfs", "stats").read_bytes())

    def ctl(self, command: str) -> None:
        fd = os.open(self.p(".nvramfs", "ctl"), os.O_WRONLY)
        try:
            os.write(fd, command.encode() + b"\n")
        finally:
            os.close(fd)

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def session_events(self) -> list[dict]:
        """The events of this session: from its `mount` event on."""
        evs = self.events()
        starts = [i for i, e in enumerate(evs) if e.get("ev") == "mount"]
        return evs[starts[-1] :] if starts else evs

    def umount(self) -> subprocess.CompletedProcess:
        out = nvramfs("umount", self.path, timeout=120)
        assert out.returncode == 0, out.stderr
        assert not pid_alive(self.pid)
        self.gone = True
        return out

    def kill9(self) -> None:
        """Crash the daemon (SIGKILL) and clear the dead mount."""
        os.kill(self.pid, signal.SIGKILL)
        for _ in range(200):
            if not pid_alive(self.pid):
                break
            time.sleep(0.01)
        subprocess.run([FUSERMOUNT, "-uz", str(self.path)], capture_output=True)
        self.gone = True

    def daemon_log(self) -> str:
        name = str(self.log)
        base = name[: -len(".events.jsonl")] if name.endswith(".events.jsonl") else name
        try:
            return Path(base + ".daemon.log").read_text()
        except OSError:
            return ""

    def teardown(self) -> None:
        """Whatever state the mount is in, end with no mount and no daemon.

        The daemon's own log is printed when it holds a traceback, so a failing
        test shows why the daemon answered EIO."""
        text = self.daemon_log()
        if "Traceback" in text:
            print(f"--- daemon log of {self.path}:\n{text[-6000:]}")
        if not self.gone and str(self.path) in mounts_under(str(self.path)):
            try:
                nvramfs("umount", self.path, "--timeout", "30", timeout=60)
            except subprocess.TimeoutExpired:
                pass
        if str(self.path) in mounts_under(str(self.path)):
            subprocess.run([FUSERMOUNT, "-u", str(self.path)], capture_output=True, timeout=30)
        if str(self.path) in mounts_under(str(self.path)):
            subprocess.run([FUSERMOUNT, "-uz", str(self.path)], capture_output=True, timeout=30)
        if pid_alive(self.pid):
            deadline = time.monotonic() + 10
            while pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        self.gone = True


class Mounter:
    """Mounts images under one test directory and remembers every mount it made."""

    def __init__(self, base: Path, images: Path | None = None) -> None:
        self.base = base
        self.images = images or base
        self.mounts: list[Mount] = []
        self.n = 0

    def image(self, size: str = "64M", tree: Path | None = None, name: str | None = None) -> Path:
        self.n += 1
        return mkfs(self.images / (name or f"img{self.n}.nvram"), size, tree)

    def __call__(self, image: Path, options: str = "", mountpoint: Path | None = None) -> Mount:
        if mountpoint is None:
            self.n += 1
            mountpoint = self.base / f"mnt{self.n}"
        mountpoint.mkdir(exist_ok=True)
        MOUNTED_HERE.add(str(mountpoint))
        args = ["mount", str(image), str(mountpoint)]
        options = ",".join(o for o in (EXTRA_OPTIONS, options) if o)
        if options:
            args += ["-o", options]
        out = nvramfs(*args, timeout=60)
        m = re.search(r"\(pid (\d+)\)", out.stdout)
        if out.returncode != 0 or not m:
            # Never leave a half-made mount behind.
            if str(mountpoint) in mounts_under(str(mountpoint)):
                subprocess.run([FUSERMOUNT, "-uz", str(mountpoint)], capture_output=True)
            raise AssertionError(f"mount failed ({out.returncode}): {out.stderr}{out.stdout}")
        log = re.search(r"event log: (\S+)", out.stdout)
        mount = Mount(
            image=image,
            path=mountpoint,
            pid=int(m.group(1)),
            log=Path(log.group(1)) if log else Path(str(image) + ".events.jsonl"),
            stdout=out.stdout,
            stderr=out.stderr,
            options=options,
        )
        self.mounts.append(mount)
        return mount

    def cleanup(self) -> None:
        for mount in reversed(self.mounts):
            mount.teardown()


def as_nobody(code: str) -> subprocess.CompletedProcess:
    """Run `python3 -c code` as nobody (uid/gid 65534, no groups): permission checks."""
    return subprocess.run(
        ["python3", "-c", code],
        capture_output=True,
        text=True,
        user=65534,
        group=65534,
        extra_groups=[],
        timeout=30,
    )
