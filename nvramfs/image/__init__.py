"""The image layer: the on-NVRAM format, its crash-consistent updates, mkfs and fsck.

Public API (docs/ARCHITECTURE.md): `Image`, `Attr`, `StatFs`, `FsError`,
`CorruptImage`, `NotAnImage`; `persist` is the one module that stores to an image.
"""

from nvramfs.image.errors import CorruptImage, FsError, HostFull, NotAnImage
from nvramfs.image.image import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
    Image,
    StatFs,
)

__all__ = [
    "Attr",
    "CorruptImage",
    "FsError",
    "HostFull",
    "Image",
    "NotAnImage",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "StatFs",
    "XATTR_CREATE",
    "XATTR_REPLACE",
]
