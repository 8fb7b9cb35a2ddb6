"""The image layer's exceptions.

`FsError` is a namespace error the FUSE layer returns as an errno (ENOENT,
EEXIST, ENOSPC...). `CorruptImage` means the image cannot be trusted at some
structure: the message is one line naming the structure and where it is.
`NotAnImage` is the extreme case: nothing recognisable (fsck exits 8).
"""

from __future__ import annotations

import os

from nvramfs.errors import NvramfsError


class FsError(OSError):
    """A filesystem-level error with an errno, e.g. FsError(errno.ENOENT)."""

    def __init__(self, err: int, message: str | None = None) -> None:
        super().__init__(err, message or os.strerror(err))


class CorruptImage(NvramfsError):
    """The image is damaged at a named structure; nothing was written to it."""


class NotAnImage(CorruptImage):
    """The file is not an nvramfs image at all (no valid superblock magic)."""
