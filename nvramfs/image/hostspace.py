"""The host filesystem under an image: how much it could still need, and whether it has it.

Images are sparse (docs/FORMAT.md, "Host space"): the host allocates a block
of the image file when the image layer backs it, so an image can outgrow the
free space of its host. `growth_warning` is the one line `mkfs` and `mount`
print when that can happen; `preallocate` is `mkfs --preallocate`.
"""

from __future__ import annotations

import os

from nvramfs.errors import NvramfsError


def human(n: int) -> str:
    for unit, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= m:
            return f"{n / m:.1f} {unit}"
    return f"{n} bytes"


def room(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes the image file could still take on its host, bytes free there)."""
    st = os.stat(path)
    grow = max(0, st.st_size - st.st_blocks * 512)
    vfs = os.statvfs(os.path.dirname(os.path.abspath(path)))
    return grow, vfs.f_bavail * vfs.f_frsize


def growth_warning(path: str | os.PathLike) -> str | None:
    """One line when the host filesystem has less free space than the image could grow to."""
    try:
        grow, free = room(path)
    except OSError:
        return None
    if free >= grow:
        return None
    return (
        f"{path} can grow by {human(grow)} more but its host filesystem has {human(free)} "
        "free: writes get ENOSPC once that is used (mkfs --preallocate reserves it all)"
    )


def preallocate(fd: int, size: int, path: str | os.PathLike) -> None:
    """Allocate the whole image on the host now, as a real device has its size."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        try:
            free = human(os.fstatvfs(fd).f_bavail * os.fstatvfs(fd).f_frsize)
        except OSError:
            free = "?"
        raise NvramfsError(
            f"{path}: cannot preallocate {human(size)} ({exc.strerror}; the host has {free} free)"
        ) from None
