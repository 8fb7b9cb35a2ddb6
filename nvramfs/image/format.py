"""The on-NVRAM byte layout: constants, numpy structured dtypes, checksums.

Everything here is little-endian and fixed-size so that a record can be read
as a numpy view of the mmap with no parsing step (opening is O(1)). The prose
version of this file is docs/FORMAT.md; keep the two in step.

Layout of an image of `nr_blocks` 4 KiB blocks::

    block 0                 superblock, copy A
    block 1                 superblock, copy B
    journal_start ...       redo journal: header block + up to journal_blocks-1 block images
    bbitmap_start ...       block allocation bitmap (1 bit per block)
    ibitmap_start ...       inode allocation bitmap (1 bit per inode)
    itable_start ...        inode table (16 inodes of 256 bytes per block)
    data_start ... end      data, directory, extent, xattr and symlink blocks
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

BLOCK_SIZE = 4096
BLOCK_SHIFT = 12
MAGIC = 0x3153_4D41_5256_4E  # b"NVRAMS1" read as a little-endian u64
VERSION = 1

# Feature flags (superblock `features`); all of them are set by this version.
FEAT_XATTR = 1 << 0
FEAT_ORPHANS = 1 << 1
FEAT_EXTENT_CHAIN = 1 << 2
FEAT_INLINE_SYMLINK = 1 << 3
FEATURES = FEAT_XATTR | FEAT_ORPHANS | FEAT_EXTENT_CHAIN | FEAT_INLINE_SYMLINK
FEATURE_NAMES = {
    FEAT_XATTR: "xattr",
    FEAT_ORPHANS: "orphan_list",
    FEAT_EXTENT_CHAIN: "extent_chain",
    FEAT_INLINE_SYMLINK: "inline_symlink",
}

STATE_CLEAN = 1  # superblock `state`: cleanly closed
STATE_DIRTY = 0  # opened writable and not (yet) closed

ROOT_INO = 1
NAME_MAX = 255
SYMLINK_MAX = 4095
INODE_SIZE = 256
INODES_PER_BLOCK = BLOCK_SIZE // INODE_SIZE

# Every metadata block except the superblock and the inode table ends in a
# 16-byte tail: kind (u32), owner (u64: an inode, or the block itself for
# bitmaps), crc32 (u32) over bytes [0, 4092) seeded with the block number, so a
# block written to the wrong place fails its checksum.
TAIL_SIZE = 16
TAIL_OFF = BLOCK_SIZE - TAIL_SIZE
PAYLOAD = TAIL_OFF  # usable bytes of a tailed block
KIND_BBITMAP = 0x4D42_4231  # "1BBM"
KIND_IBITMAP = 0x4D42_4931  # "1IBM"
KIND_DIR = 0x5249_4431  # "1DIR"
KIND_EXTENT = 0x5458_4531  # "1EXT"
KIND_XATTR = 0x5441_5831  # "1XAT"
KIND_JOURNAL = 0x4C4E_4A31  # "1JNL"
KIND_NAMES = {
    KIND_BBITMAP: "block bitmap",
    KIND_IBITMAP: "inode bitmap",
    KIND_DIR: "directory block",
    KIND_EXTENT: "extent block",
    KIND_XATTR: "xattr block",
    KIND_JOURNAL: "journal header",
}
BITS_PER_BITMAP_BLOCK = PAYLOAD * 8

DIRTY_PAIRS = 32  # (inode, dirty pages) pairs the superblock's dirty summary holds

SB_DTYPE = np.dtype(
    [
        ("magic", "<u8"),
        ("version", "<u4"),
        ("block_size", "<u4"),
        ("features", "<u8"),
        ("nr_blocks", "<u8"),
        ("nr_inodes", "<u8"),
        ("free_blocks", "<u8"),
        ("free_inodes", "<u8"),
        ("generation", "<u8"),
        ("state", "<u4"),
        ("mounts", "<u4"),
        ("journal_start", "<u8"),
        ("journal_blocks", "<u8"),
        ("bbitmap_start", "<u8"),
        ("bbitmap_blocks", "<u8"),
        ("ibitmap_start", "<u8"),
        ("ibitmap_blocks", "<u8"),
        ("itable_start", "<u8"),
        ("itable_blocks", "<u8"),
        ("data_start", "<u8"),
        ("root_ino", "<u8"),
        ("orphan_head", "<u8"),
        ("orphan_count", "<u8"),
        ("mkfs_time_ns", "<i8"),
        ("write_time_ns", "<i8"),
        ("uuid", "V16"),
        # From here on: fields carved out of the old zero pad (0 = unknown, so
        # images made before them read as "not known"; no version change).
        ("mount_time_ns", "<i8"),  # last writable open
        ("dirty_time_ns", "<i8"),  # when the dirty summary was written; 0 = none
        ("dirty_pages", "<u8"),  # dirty pages in DRAM then, all files
        ("dirty_files", "<u4"),  # files with dirty pages then
        ("dirty_nr", "<u4"),  # (ino, pages) pairs held below (the largest first)
        ("dirty_ino", "<u4", (DIRTY_PAIRS,)),
        ("dirty_cnt", "<u4", (DIRTY_PAIRS,)),
        ("pad", "V20"),
        ("crc", "<u4"),
    ]
)
SB_SIZE = 512
assert SB_DTYPE.itemsize == SB_SIZE, SB_DTYPE.itemsize

# Extent: file pages [lblk, lblk+len) live in blocks [pblk, pblk+len).
EXTENT_DTYPE = np.dtype([("lblk", "<u4"), ("len", "<u4"), ("pblk", "<u8")])
INLINE_EXTENTS = 8
INLINE_SIZE = INLINE_EXTENTS * EXTENT_DTYPE.itemsize  # also the inline symlink capacity

INODE_DTYPE = np.dtype(
    [
        ("mode", "<u4"),
        ("uid", "<u4"),
        ("gid", "<u4"),
        ("nlink", "<u4"),
        ("size", "<u8"),
        ("atime_ns", "<i8"),
        ("mtime_ns", "<i8"),
        ("ctime_ns", "<i8"),
        ("rdev", "<u8"),
        ("blocks", "<u8"),  # blocks owned: data + extent + xattr blocks
        ("parent", "<u8"),  # directories: the parent directory ("..")
        ("xattr_blk", "<u8"),
        ("ext_blk", "<u8"),  # first overflow extent block, 0 = none
        ("orphan_next", "<u8"),  # next inode on the orphan list, 0 = end
        ("nextents", "<u4"),  # extents in total (inline + chain)
        ("flags", "<u4"),
        ("igen", "<u4"),
        ("ninline", "<u4"),  # extents held inline (the rest are in the chain)
        ("inline", "V128"),  # 8 extents, or an inline symlink target
        ("pad1", "V12"),
        ("crc", "<u4"),
    ]
)
assert INODE_DTYPE.itemsize == INODE_SIZE, INODE_DTYPE.itemsize
IFLAG_INLINE_DATA = 1 << 0  # symlink target stored in `inline`
IFLAG_ORPHAN = 1 << 1  # on the orphan list

# Extent block: next (u64), count (u32, 1..254), pad (u32), extents, tail. Blocks
# need not be full, so a change rewrites only the blocks around it.
EXTBLK_HDR = 16
EXTENTS_PER_BLOCK = (PAYLOAD - EXTBLK_HDR) // EXTENT_DTYPE.itemsize

# Directory entry: ino (u64, 0 = free), rec_len (u16), name_len (u8), ftype (u8),
# name, padded so rec_len is a multiple of 8. Records tile [0, PAYLOAD).
DIRENT_HDR = 12
DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12

# Journal header block: kind u32, pad u32, seq u64, nblocks u32, pad u32, the
# commit sum (BLAKE2b-64 of header bytes 0..24 + block list + every block image,
# 8 bytes at 24), pad, then the list of home block numbers (u64) from JH_LIST_OFF.
JH_LIST_OFF = 64
JOURNAL_MAX_TXN = (BLOCK_SIZE - JH_LIST_OFF) // 8


def dirent_len(name_len: int) -> int:
    """Bytes a record with a name of `name_len` bytes needs (8-aligned)."""
    return (DIRENT_HDR + name_len + 7) & ~7


def crc(data: bytes | memoryview, seed: int = 0) -> int:
    """crc32 of `data`, seeded with where the record lives (catches misplaced writes)."""
    return zlib.crc32(data, seed & 0xFFFF_FFFF)


def tail_crc(block: bytes | memoryview | bytearray, blockno: int) -> int:
    return crc(memoryview(block)[: BLOCK_SIZE - 4], blockno)


def seal_block(block: bytearray, kind: int, owner: int, blockno: int) -> None:
    """Write the 16-byte tail (kind, owner, crc) of a metadata block in place."""
    mv = memoryview(block)
    mv[TAIL_OFF : TAIL_OFF + 4] = kind.to_bytes(4, "little")
    mv[TAIL_OFF + 4 : TAIL_OFF + 12] = owner.to_bytes(8, "little")
    mv[BLOCK_SIZE - 4 :] = tail_crc(block, blockno).to_bytes(4, "little")


def check_tail(block: bytes | memoryview, blockno: int, kind: int, owner: int) -> str | None:
    """None when the tail is right, else what is wrong with it (for the error message)."""
    mv = memoryview(block)
    got_kind = int.from_bytes(mv[TAIL_OFF : TAIL_OFF + 4], "little")
    if got_kind != kind:
        return f"is not a {KIND_NAMES[kind]} (kind {got_kind:#x})"
    got_owner = int.from_bytes(mv[TAIL_OFF + 4 : TAIL_OFF + 12], "little")
    if got_owner != owner:
        return f"belongs to {got_owner}, expected {owner}"
    want = int.from_bytes(mv[BLOCK_SIZE - 4 :], "little")
    if tail_crc(mv, blockno) != want:
        return "bad checksum"
    return None


def inode_crc(raw: bytes | memoryview, ino: int) -> int:
    return crc(memoryview(raw)[: INODE_SIZE - 4], ino)


def sb_crc(raw: bytes | memoryview) -> int:
    return crc(memoryview(raw)[: SB_SIZE - 4])


@dataclass(frozen=True)
class Layout:
    """Where each region starts; computed by mkfs, stored in the superblock."""

    nr_blocks: int
    nr_inodes: int
    journal_start: int
    journal_blocks: int
    bbitmap_start: int
    bbitmap_blocks: int
    ibitmap_start: int
    ibitmap_blocks: int
    itable_start: int
    itable_blocks: int
    data_start: int

    @classmethod
    def compute(cls, nr_blocks: int, nr_inodes: int) -> Layout:
        """Lay out an image; the journal scales with the device (64..512 blocks)."""
        nr_inodes = max(INODES_PER_BLOCK, -(-nr_inodes // INODES_PER_BLOCK) * INODES_PER_BLOCK)
        jblocks = min(JOURNAL_MAX_TXN + 1, max(64, nr_blocks // 64))
        jstart = 2
        bbstart = jstart + jblocks
        bbn = -(-nr_blocks // BITS_PER_BITMAP_BLOCK)
        ibstart = bbstart + bbn
        ibn = -(-nr_inodes // BITS_PER_BITMAP_BLOCK)
        itstart = ibstart + ibn
        itn = nr_inodes // INODES_PER_BLOCK
        return cls(
            nr_blocks,
            nr_inodes,
            jstart,
            jblocks,
            bbstart,
            bbn,
            ibstart,
            ibn,
            itstart,
            itn,
            itstart + itn,
        )

    @classmethod
    def from_sb(cls, sb: np.void) -> Layout:
        return cls(
            int(sb["nr_blocks"]),
            int(sb["nr_inodes"]),
            int(sb["journal_start"]),
            int(sb["journal_blocks"]),
            int(sb["bbitmap_start"]),
            int(sb["bbitmap_blocks"]),
            int(sb["ibitmap_start"]),
            int(sb["ibitmap_blocks"]),
            int(sb["itable_start"]),
            int(sb["itable_blocks"]),
            int(sb["data_start"]),
        )

    def problems(self) -> list[str]:
        """What makes this layout impossible (absurd counts, overlapping regions)."""
        out = []
        if self.nr_blocks < self.data_start + 1:
            out.append(f"nr_blocks {self.nr_blocks} leaves no data blocks")
        if not 2 <= self.nr_inodes < 1 << 31 or self.nr_inodes % INODES_PER_BLOCK:
            out.append(f"absurd nr_inodes {self.nr_inodes}")
        if self.journal_start != 2 or not 2 <= self.journal_blocks <= JOURNAL_MAX_TXN + 1:
            out.append(f"absurd journal {self.journal_start}+{self.journal_blocks}")
        want = Layout.compute(self.nr_blocks, self.nr_inodes) if not out else None
        if want is not None and want != self:
            out.append("region layout does not match nr_blocks/nr_inodes")
        return out

    def metadata_blocks(self) -> int:
        return self.data_start
