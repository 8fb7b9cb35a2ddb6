"""What `nvramfs umount` and `nvramfs stat` do to a running mount, from outside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from typing import Any

from nvramfs.errors import NvramfsError
from nvramfs.fuse.mount import mounted_paths

FSTYPE = "fuse.nvramfs"


def require_mount(mountpoint: str) -> str:
    """The absolute path of an nvramfs mount, or a one-line error."""
    path = os.path.abspath(mountpoint)
    if path not in mounted_paths(FSTYPE):
        if not os.path.exists(path):
            raise NvramfsError(f"{mountpoint} does not exist")
        raise NvramfsError(f"{mountpoint} is not an nvramfs mount")
    return path


def read_stats(mountpoint: str, timeout: float = 10.0) -> dict[str, Any]:
    """`.nvramfs/stats` of a mount, parsed; a hung daemon is an error after `timeout`."""
    path = os.path.join(mountpoint, ".nvramfs", "stats")
    result: dict[str, Any] = {}

    def reader() -> None:
        try:
            with open(path, "rb") as f:
                result["data"] = f.read()
        except OSError as exc:
            result["error"] = exc

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise NvramfsError(f"{mountpoint}: the daemon does not answer (waited {timeout:.0f} s)")
    if "error" in result:
        exc = result["error"]
        raise NvramfsError(f"{path}: {exc.strerror or exc}")
    try:
        return json.loads(result["data"])
    except ValueError as exc:
        raise NvramfsError(f"{path}: not JSON ({exc})") from None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _find_daemon(mountpoint: str) -> int | None:
    """The daemon serving `mountpoint`, from /proc (when it cannot answer for itself)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if any("nvramfs" in a for a in argv[:3]) and "mount" in argv[:4]:
            if any(os.path.abspath(a) == mountpoint for a in argv if a.startswith(("/", "."))):
                return int(entry)
    return None


def unmount(mountpoint: str, timeout: float = 300.0) -> int | None:
    """fusermount3 -u, then wait for the daemon's writeback and exit. Returns its pid."""
    path = require_mount(mountpoint)
    pid = None
    try:
        pid = int(read_stats(path, timeout=10.0).get("pid"))
    except (NvramfsError, TypeError, ValueError):
        pid = _find_daemon(path)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise NvramfsError("fusermount3 not found (apt install fuse3)")
    out = subprocess.run([tool, "-u", path], capture_output=True, text=True)
    if out.returncode != 0:
        msg = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
        raise NvramfsError(f"cannot unmount {mountpoint}: {msg}")
    if pid is not None:
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise NvramfsError(
                    f"unmounted {mountpoint}, but the daemon (pid {pid}) is still writing "
                    f"back after {timeout:.0f} s"
                )
            time.sleep(0.05)
    return pid
