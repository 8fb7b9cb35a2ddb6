"""What `nvramfs umount`, `stat`, `ctl` and `mount -o remount` do to a running mount,
from outside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from typing import Any

from nvramfs.errors import NvramfsError
from nvramfs.fuse.control import CTL_XATTR_PREFIX
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


def _with_timeout(mountpoint: str, what: Any, timeout: float) -> Any:
    """what() in a thread: a hung daemon is a one-line error after `timeout`, not a hang."""
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["value"] = what()
        except OSError as exc:
            result["error"] = exc

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise NvramfsError(f"{mountpoint}: the daemon does not answer (waited {timeout:.0f} s)")
    if "error" in result:
        raise result["error"]
    return result["value"]


def read_stats(mountpoint: str, timeout: float = 10.0) -> dict[str, Any]:
    """`.nvramfs/stats` of a mount, parsed; a hung daemon is an error after `timeout`."""
    path = os.path.join(mountpoint, ".nvramfs", "stats")

    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    try:
        data = _with_timeout(mountpoint, read, timeout)
    except OSError as exc:
        raise NvramfsError(f"{path}: {exc.strerror or exc}") from None
    try:
        return json.loads(data)
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


def ctl(mountpoint: str, command: str, timeout: float = 60.0) -> tuple[bool, str]:
    """Run a ctl command in the daemon of `mountpoint`: (ok, the daemon's message).

    Asked as the xattr `user.nvramfs.ctl COMMAND` of `.nvramfs/ctl`, whose value is
    the answer (fuse/control.py): a read, so it works on read-only mounts too."""
    path = os.path.join(require_mount(mountpoint), ".nvramfs", "ctl")
    name = CTL_XATTR_PREFIX.decode() + " ".join(command.split())
    if len(name.encode()) > 255:
        raise NvramfsError("ctl: the command is too long (255 bytes with its prefix)", 2)
    try:
        raw = _with_timeout(mountpoint, lambda: os.getxattr(path, name), timeout)
    except OSError as exc:
        raise NvramfsError(f"{path}: {exc.strerror or exc}") from None
    text = raw.decode("utf-8", "replace").rstrip("\n")
    status, _, message = text.partition(": ")
    return status == "ok", message


def remount(mountpoint: str, opts: Any) -> str:
    """`mount -o remount,...`: the daemon's part through ctl, the kernel's with mount -i.

    To read-only: the kernel first (no new writer gets in; EBUSY if a file is
    open for writing), then the daemon writes everything back and refuses writes.
    To read-write: the daemon first (it refuses if the image was opened
    read-only), then the kernel."""
    path = require_mount(mountpoint)
    request = opts.remount_request()
    rw_given = "ro" in opts.given or "rw" in opts.given
    kernel = ([("ro" if opts.readonly else "rw")] if rw_given else []) + list(opts.vfs_flags)

    def kernel_remount() -> None:
        if not kernel:
            return
        out = subprocess.run(
            ["mount", "-i", "-o", ",".join(["remount", *kernel]), path],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            msg = out.stderr.strip().splitlines()[0] if out.stderr.strip() else "failed"
            raise NvramfsError(f"cannot remount {mountpoint}: {msg}")

    if rw_given and opts.readonly:
        kernel_remount()
    ok, message = ctl(path, request)
    if not ok:
        raise NvramfsError(f"cannot remount {mountpoint}: {message}")
    if not (rw_given and opts.readonly):
        kernel_remount()
    return message


def unmount(mountpoint: str, timeout: float = 300.0, lazy: bool = False) -> int | None:
    """fusermount3 -u, then wait for the daemon's writeback and exit. Returns its pid.

    lazy (umount -l): detach now (fusermount3 -uz); the daemon writes back and
    exits once the last open file under the mount is closed, so nothing waits."""
    path = require_mount(mountpoint)
    pid = None
    try:
        pid = int(read_stats(path, timeout=10.0).get("pid"))
    except (NvramfsError, TypeError, ValueError):
        pid = _find_daemon(path)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise NvramfsError("fusermount3 not found (apt install fuse3)")
    out = subprocess.run([tool, "-uz" if lazy else "-u", path], capture_output=True, text=True)
    if out.returncode != 0:
        msg = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
        raise NvramfsError(f"cannot unmount {mountpoint}: {msg}")
    if pid is not None and not lazy:
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise NvramfsError(
                    f"unmounted {mountpoint}, but the daemon (pid {pid}) is still writing "
                    f"back after {timeout:.0f} s"
                )
            time.sleep(0.05)
    return pid
