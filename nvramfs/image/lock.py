"""The image's lock: who may write an image file.

A mount holds an exclusive `flock` on the image file for the life of its
daemon (the kernel drops it when the process dies, also after kill -9). mkfs
--force and fsck's repairs take the same lock, so none of the three writes an
image another is serving. A program that opened the path and then got the
lock checks that the path still names the file it locked: mkfs renames a new
image over the old one while it holds the locks of both, and a mount that
opened the old file just before the rename must not serve a deleted file.
"""

from __future__ import annotations

import fcntl
import os

from nvramfs.errors import NvramfsError


class ImageInUse(NvramfsError):
    """Another process (a mount, mkfs, a repairing fsck) holds the image's lock."""


def lock_image(path: str | os.PathLike) -> int:
    """Take the exclusive lock of the image at `path`; returns the fd that holds it.

    Raises ImageInUse when someone else holds it, OSError when the file cannot
    be opened. Close the fd (unlock_image) to let go.
    """
    for _ in range(100):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ImageInUse(f"{path} is in use by a mount") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        mine = os.fstat(fd)
        if st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # the path was replaced under us (mkfs --force): lock the new file
    raise ImageInUse(f"{path} keeps being replaced")


def lock_fd(fd: int) -> None:
    """Lock a file we just created (mkfs's temporary), before anyone can see it."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def unlock_image(fd: int) -> None:
    os.close(fd)


def in_use(path: str | os.PathLike) -> bool:
    """Does another process hold the image's lock (is it mounted)?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
