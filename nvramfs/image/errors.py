"""The image layer's exceptions.

`FsError` is a namespace error the FUSE layer returns as an errno (ENOENT,
EEXIST, ENOSPC...). `CorruptImage` means the image cannot be trusted at some
structure: the message is one line naming the structure and where it is.
`HostFull` is the ENOSPC of a full host filesystem (docs/FORMAT.md, "Host
space"). `NotAnImage` is the extreme case: nothing recognisable (fsck exits 8).
"""

from __future__ import annotations

import errno
import os

from nvramfs.errors import NvramfsError


class FsError(OSError):
    """A filesystem-level error with an errno, e.g. FsError(errno.ENOENT)."""

    def __init__(self, err: int, message: str | None = None) -> None:
        super().__init__(err, message or os.strerror(err))


class HostFull(FsError):
    """ENOSPC because the *host* filesystem under the image has no room to back
    the blocks a call needs (the image itself may have free blocks). The FUSE
    layer answers ENOSPC and logs an `error` event; nothing was stored."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, f"host filesystem full: {message}")


class CorruptImage(NvramfsError):
    """The image is damaged at a named structure; nothing was written to it."""


class NotAnImage(CorruptImage):
    """The file is not an nvramfs image at all (no valid superblock magic)."""
