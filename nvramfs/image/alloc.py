"""Block and inode allocation over the on-image bitmaps (a mixin of `Image`).

Bits are read through `_block()` (so an open transaction sees its own
changes) and changed in the transaction's copies; the superblock's free
counts move with them, so statfs never scans. Allocation is next-fit from a
goal (the block after the file's previous block), so sequential writeback
gives long extents.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import numpy as np

from nvramfs.image import format as F
from nvramfs.image.errors import CorruptImage, FsError

BS = F.BLOCK_SIZE


class Allocator:
    """Mixin: needs `_block`, `_wblock`, `_txn`, `_sb`, `L`, `reserved`, hints."""

    def _bitmap_bits(self, start: int, i: int) -> np.ndarray:
        blk = self._block(start + i)
        return np.unpackbits(np.frombuffer(blk[: F.PAYLOAD], np.uint8), bitorder="little")

    def used_blocks(self) -> np.ndarray:
        """One bool per block: allocated in the block bitmap (metadata included)."""
        L = self.L
        bits = [self._bitmap_bits(L.bbitmap_start, i) for i in range(L.bbitmap_blocks)]
        return np.concatenate(bits)[: L.nr_blocks].astype(bool)

    def _find_free(
        self, start: int, nbm: int, total: int, lo: int, want: int, goal: int
    ) -> list[tuple[int, int]]:
        """Up to `want` free bits in [lo, total), first from `goal` on, as runs."""
        kind = F.KIND_BBITMAP if start == self.L.bbitmap_start else F.KIND_IBITMAP
        runs: list[tuple[int, int]] = []
        got = 0
        goal = goal if lo <= goal < total else lo
        g0 = goal // F.BITS_PER_BITMAP_BLOCK
        for k in range(nbm + 1):
            i = (g0 + k) % nbm
            blk = self._block(start + i)
            if self._txn is None or (start + i) not in self._txn.blocks:
                why = F.check_tail(blk, start + i, kind, start + i)
                if why:
                    raise CorruptImage(f"{F.KIND_NAMES[kind]} block {start + i}: {why}")
            bits = self._bitmap_bits(start, i)
            base = i * F.BITS_PER_BITMAP_BLOCK
            free = np.flatnonzero(bits == 0) + base
            first = goal if k == 0 else lo
            if k == nbm:  # wrapped back to the goal's block: the part before goal
                free = free[free < goal]
            free = free[(free >= (first if k < nbm else lo)) & (free < total)]
            if not len(free):
                continue
            brk = np.flatnonzero(np.diff(free) != 1) + 1
            for seg in np.split(free, brk):
                take = min(len(seg), want - got)
                runs.append((int(seg[0]), take))
                got += take
                if got == want:
                    return runs
        return runs

    def _set_bits(self, start: int, kind: int, first: int, n: int, value: int) -> None:
        while n > 0:
            i, bit = divmod(first, F.BITS_PER_BITMAP_BLOCK)
            take = min(n, F.BITS_PER_BITMAP_BLOCK - bit)
            blk = self._wblock(start + i, kind, start + i)
            arr = np.frombuffer(blk, np.uint8, count=F.PAYLOAD)
            bits = np.unpackbits(arr, bitorder="little")
            seg = bits[bit : bit + take]
            if (seg == value).any():
                what = "allocated" if value else "freed"
                raise CorruptImage(
                    f"{F.KIND_NAMES[kind]} block {start + i}: bit {first} already {what}"
                )
            seg[:] = value
            arr[:] = np.packbits(bits, bitorder="little")
            first += take
            n -= take

    def _avail(self) -> int:
        return int(self._sb["free_blocks"]) - self.reserved

    def _alloc_blocks(self, want: int, goal: int, meta: bool) -> list[tuple[int, int]]:
        """Allocate `want` blocks near `goal` (metadata must leave reservations alone)."""
        free = int(self._sb["free_blocks"])
        if want > (free - self.reserved if meta else free):
            raise FsError(errno.ENOSPC)
        L = self.L
        runs = self._find_free(
            L.bbitmap_start, L.bbitmap_blocks, L.nr_blocks, L.data_start, want, goal
        )
        if sum(n for _, n in runs) < want:
            raise CorruptImage(
                f"block bitmap: superblock counts {free} free blocks, bitmap has fewer"
            )
        for s, n in runs:
            self._set_bits(L.bbitmap_start, F.KIND_BBITMAP, s, n, 1)
        self._sb["free_blocks"] = free - want
        self._bhint = runs[-1][0] + runs[-1][1]
        return runs

    def _alloc_meta(self, goal: int = 0) -> int:
        return self._alloc_blocks(1, int(goal) or self._bhint, meta=True)[0][0]

    def _free_runs(self, runs: Sequence[tuple[int, int]]) -> None:
        L = self.L
        total = 0
        for s, n in runs:
            s, n = int(s), int(n)
            if n <= 0:
                continue
            if s < L.data_start or s + n > L.nr_blocks:
                raise CorruptImage(f"free of blocks {s}+{n} outside the data area")
            self._set_bits(L.bbitmap_start, F.KIND_BBITMAP, s, n, 0)
            total += n
        self._sb["free_blocks"] = int(self._sb["free_blocks"]) + total
        if self._txn is not None:
            self._txn.freed += total

    def _alloc_inode(self) -> int:
        L = self.L
        if int(self._sb["free_inodes"]) <= 0:
            raise FsError(errno.ENOSPC, "no free inodes")
        runs = self._find_free(L.ibitmap_start, L.ibitmap_blocks, L.nr_inodes, 2, 1, self._ihint)
        if not runs:
            raise CorruptImage("inode bitmap: superblock counts free inodes, bitmap has none")
        ino = runs[0][0]
        self._set_bits(L.ibitmap_start, F.KIND_IBITMAP, ino, 1, 1)
        self._sb["free_inodes"] = int(self._sb["free_inodes"]) - 1
        self._ihint = ino + 1
        return ino

    def _free_inode(self, ino: int) -> None:
        self._winode(ino)
        b, off = self._ino_loc(ino)
        self._txn.blocks[b][off : off + F.INODE_SIZE] = bytes(F.INODE_SIZE)
        self._set_bits(self.L.ibitmap_start, F.KIND_IBITMAP, ino, 1, 0)
        self._sb["free_inodes"] = int(self._sb["free_inodes"]) + 1
        self._exts.pop(ino, None)
        self._dirs.pop(ino, None)
