"""Helpers that damage an image file in one named structure (for the corruption tests)."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np

from nvramfs.image import Image
from nvramfs.image import format as F

BS = F.BLOCK_SIZE


def layout(path: Path) -> F.Layout:
    raw = path.read_bytes()[: F.SB_SIZE]
    return F.Layout.from_sb(np.frombuffer(raw, F.SB_DTYPE)[0])


def flip(path: Path, offset: int, mask: int = 0x40) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def patch_sb(path: Path, copies: tuple[int, ...] = (0, 1), **fields: int) -> None:
    """Change superblock fields and re-checksum, so only the *meaning* is wrong."""
    data = bytearray(path.read_bytes()[: 2 * BS])
    for c in copies:
        sb = np.frombuffer(data, F.SB_DTYPE, count=1, offset=c * BS).copy()
        for k, v in fields.items():
            sb[0][k] = v
        raw = bytearray(sb.tobytes())
        raw[-4:] = F.sb_crc(raw).to_bytes(4, "little")
        write(path, c * BS, bytes(raw))


def inode_offset(path: Path, ino: int) -> int:
    L = layout(path)
    return (L.itable_start + ino // F.INODES_PER_BLOCK) * BS + (ino % F.INODES_PER_BLOCK) * 256


def patch_inode(path: Path, ino: int, **fields: int | bytes) -> None:
    off = inode_offset(path, ino)
    raw = path.read_bytes()[off : off + 256]
    rec = np.frombuffer(raw, F.INODE_DTYPE).copy()
    for k, v in fields.items():
        rec[0][k] = v
    out = bytearray(rec.tobytes())
    out[-4:] = F.inode_crc(out, ino).to_bytes(4, "little")
    write(path, off, bytes(out))


def reseal(path: Path, block: int) -> None:
    """Recompute a tailed block's checksum after an edit (keeps kind and owner)."""
    data = bytearray(path.read_bytes()[block * BS : (block + 1) * BS])
    kind = int.from_bytes(data[F.TAIL_OFF : F.TAIL_OFF + 4], "little")
    owner = int.from_bytes(data[F.TAIL_OFF + 4 : F.TAIL_OFF + 12], "little")
    F.seal_block(data, kind, owner, block)
    write(path, block * BS, bytes(data))


def find(path: Path, *names: bytes) -> int:
    with Image.open(path, readonly=True) as img:
        ino = 1
        for n in names:
            ino = img.lookup(ino, n)
        return ino


def blocks_of(path: Path, ino: int) -> list[int]:
    with Image.open(path, readonly=True) as img:
        a = img.getattr(ino)
        n = max(1, -(-a.size // BS))
        return [int(b) for b in img.bmap(ino, 0, n)]


def is_dir(path: Path, ino: int) -> bool:
    with Image.open(path, readonly=True) as img:
        return stat.S_ISDIR(img.getattr(ino).mode)
