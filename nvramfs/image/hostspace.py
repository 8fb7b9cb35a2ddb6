"""The host filesystem under an image: how much it could still need, and whether it has it.

Images are sparse (docs/FORMAT.md, "Host space"): the host allocates a block
of the image file when the image layer backs it, so an image can outgrow the
free space of its host. `growth_warning` is the one line `mkfs` and `mount`
print when that can happen; `preallocate` is `mkfs --preallocate`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from nvramfs.errors import NvramfsError

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_HDR = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_FIEMAP_EXT = struct.Struct(
    "=QQQQQIIII"
)  # logical, physical, length, 2 reserved, flags, 3 reserved
_FIEMAP_BATCH = 256


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


def fully_allocated(fd: int, size: int) -> bool:
    """Has the host allocated every byte of [0, size) of the file (no holes)?

    Preallocated extents count (SEEK_HOLE would call them holes on ext4 and
    tmpfs). FIEMAP where the host has it; else (tmpfs) st_blocks, which there
    counts data pages only. False whenever unsure: the caller then backs
    blocks itself, which is only slower.
    """
    try:
        end = 0
        for _ in range(64):
            buf = bytearray(_FIEMAP_HDR.size + _FIEMAP_EXT.size * _FIEMAP_BATCH)
            _FIEMAP_HDR.pack_into(buf, 0, end, size - end, 0, 0, _FIEMAP_BATCH, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = _FIEMAP_HDR.unpack_from(buf, 0)[3]
            if not mapped:
                return False
            for k in range(mapped):
                ext = _FIEMAP_EXT.unpack_from(buf, _FIEMAP_HDR.size + k * _FIEMAP_EXT.size)
                logical, length, flags = ext[0], ext[2], ext[5]
                if logical > end:
                    return False  # a hole before this extent
                end = max(end, logical + length)
                if end >= size:
                    return True
                if flags & FIEMAP_EXTENT_LAST:
                    return False
        return False
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            return False
    return os.fstat(fd).st_blocks * 512 >= size


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
