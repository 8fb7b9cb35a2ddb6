"""Block and inode allocation over the on-image bitmaps (a mixin of `Image`).

Bits are read through `_block()` (so an open transaction sees its own
changes) and changed in the transaction's copies; the superblock's free
counts move with them, so statfs never scans. Allocation is next-fit from a
goal (the block after the file's previous block), so sequential writeback
gives long extents.

Host space (docs/FORMAT.md, "Host space"). The image file is sparse, and a
store into a page of the mapping the host filesystem has not allocated is
SIGBUS when the host is full: the daemon would die. So every block is backed
on the host before anything is stored into it. The fixed regions
(superblocks, journal, bitmaps) are backed at mkfs and at every writable
open; inode-table blocks when an inode in them is first allocated; the data
area through a *pool*: units of HOST_UNIT blocks the allocator has backed
with `posix_fallocate` this session (`_hbacked`), grown HOST_CHUNK blocks at
a time ahead of need. The allocator takes blocks only from backed units, and
`_pool_free` counts the free blocks in them, so `reserve()` (at write())
promises writeback blocks that are backed already: a full host is ENOSPC
(`HostFull`) at write(), mkdir or create, never at writeback. `_pool_free`
may undercount (blocks freed into a unit before it was backed), never
overcount. An image the host has allocated whole (`mkfs --preallocate`)
needs none of this (`_hbacked is None`).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence

import numpy as np

from nvramfs.image import format as F
from nvramfs.image.errors import CorruptImage, FsError, HostFull
from nvramfs.image.hostspace import fully_allocated

BS = F.BLOCK_SIZE
HOST_UNIT = 16  # blocks: the grain at which host backing is tracked (64 KiB)
HOST_CHUNK = 512  # blocks the pool grows by, ahead of need (2 MiB)
HOST_HEADROOM = 32  # backed free blocks kept beyond the reservations (metadata at writeback)
HOST_TRY_UNITS = 64  # a chunk that does not fit: at most this many units tried one by one
UNITS_PER_BITMAP_BLOCK = F.BITS_PER_BITMAP_BLOCK // HOST_UNIT
assert F.BITS_PER_BITMAP_BLOCK % HOST_UNIT == 0


class Allocator:
    """Mixin: needs `_block`, `_wblock`, `_txn`, `_sb`, `L`, `reserved`, hints, `persist`."""

    _hbacked: np.ndarray | None = None  # per HOST_UNIT of the device: backed on the host
    _pool_free = 0  # free blocks inside backed units (an undercount is allowed)
    _pool_grown = 0  # blocks ever added to the pool by backing units (for rollback)
    _txn_data = 0  # data blocks (reservations consumed) allocated by the open transaction

    # ------------------------------------------------------------ transactions
    def _alloc_snapshot(self) -> tuple[int, int, int, int]:
        """At a transaction's start: what an abort must restore."""
        self._txn_data = 0
        return (self._ihint, self._bhint, self._pool_free, self._pool_grown)

    def _alloc_restore(self, snap: tuple[int, int, int, int]) -> None:
        """The transaction aborted: its bitmap changes are gone, the host backing
        it did is not (so what backing added to the pool stays)."""
        self._ihint, self._bhint, pool, grown = snap
        self._pool_free = pool + (self._pool_grown - grown)
        self._txn_data = 0

    def _held(self) -> int:
        """Reservations metadata must leave alone: those this transaction has not
        already consumed (writeback maps its reserved holes, then extent blocks)."""
        return max(0, self.reserved - self._txn_data)

    def _bitmap_bits(self, start: int, i: int) -> np.ndarray:
        blk = self._block(start + i)
        return np.unpackbits(np.frombuffer(blk[: F.PAYLOAD], np.uint8), bitorder="little")

    def used_blocks(self) -> np.ndarray:
        """One bool per block: allocated in the block bitmap (metadata included)."""
        L = self.L
        bits = [self._bitmap_bits(L.bbitmap_start, i) for i in range(L.bbitmap_blocks)]
        return np.concatenate(bits)[: L.nr_blocks].astype(bool)

    def _find_free(
        self,
        start: int,
        nbm: int,
        total: int,
        lo: int,
        want: int,
        goal: int,
        backed: np.ndarray | None = None,
    ) -> list[tuple[int, int]]:
        """Up to `want` free bits in [lo, total), first from `goal` on, as runs
        (only bits in `backed` HOST_UNITs, when given)."""
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
            if backed is not None:
                free = free[backed[free // HOST_UNIT]]
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
        """Allocate `want` blocks near `goal`, backed on the host (metadata must
        leave reservations alone; data consumes them)."""
        free = int(self._sb["free_blocks"])
        held = self._held() if meta else 0
        if want > free - held:
            raise FsError(errno.ENOSPC)
        L = self.L
        backed = self._hbacked
        if backed is not None:
            gu = goal // HOST_UNIT
            if L.data_start <= goal < L.nr_blocks and not backed[gu]:
                i = gu // UNITS_PER_BITMAP_BLOCK
                if self._unit_free(i)[gu - i * UNITS_PER_BITMAP_BLOCK] > 0:
                    self._host_grow(0, HOST_CHUNK, goal)  # keep extents long: back at the goal
            if self._pool_free < want + held:
                self._host_grow(want + held - self._pool_free, HOST_CHUNK, goal)
                if self._pool_free < want + held:
                    raise HostFull(f"no room to back {want} block(s) of {self.path}")
        args = (L.bbitmap_start, L.bbitmap_blocks, L.nr_blocks, L.data_start, want, goal)
        runs = self._find_free(*args, backed)
        if sum(n for _, n in runs) < want and backed is not None:
            # The pool counted more than the bitmap has (never expected): count
            # again; the host's answer stands, the image is not damaged.
            self._pool_free = self._pool_recount()
            if self._pool_free < want + held:
                self._host_grow(want + held - self._pool_free, HOST_CHUNK, goal)
            runs = self._find_free(*args, backed)
            if sum(n for _, n in runs) < want and sum(n for _, n in self._find_free(*args)) >= want:
                raise HostFull(f"no room to back {want} block(s) of {self.path}")
        if sum(n for _, n in runs) < want:
            raise CorruptImage(
                f"block bitmap: superblock counts {free} free blocks, bitmap has fewer"
            )
        for s, n in runs:
            self._set_bits(L.bbitmap_start, F.KIND_BBITMAP, s, n, 1)
        self._sb["free_blocks"] = free - want
        self._bhint = runs[-1][0] + runs[-1][1]
        if backed is not None:
            self._pool_free -= want
        if not meta:
            self._txn_data += want
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
            if self._hbacked is not None:
                self._pool_free += self._host_count(s, n)
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
        if self._hbacked is not None:
            u = (L.itable_start + ino // F.INODES_PER_BLOCK) // HOST_UNIT
            if not self._hbacked[u] and not self._host_back_units(u, u + 1):
                raise HostFull(f"no room to back the inode table block of inode {ino}")
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

    # --------------------------------------------------------------- host space
    def _host_prepare(self, homes: Iterable[int] = ()) -> None:
        """Writable open, before anything is stored: back the fixed regions and the
        home blocks a journal replay is about to write; start with an empty pool.

        An image file with no holes (mkfs --preallocate) needs no pool. A host
        too full for the metadata is HostFull: the open fails, nothing written.
        """
        p = self.persist
        self._hbacked = None
        if p.fd is None:
            return
        L = self.L
        if fully_allocated(p.fd, L.nr_blocks * BS):
            return
        try:
            p.allocate(0, L.itable_start * BS)
            for b in sorted(set(homes)):
                p.allocate(b * BS, BS)
        except OSError as exc:
            raise HostFull(
                f"cannot back the metadata of {self.path} "
                f"({L.itable_start * BS >> 10} KiB): {exc.strerror}"
            ) from None
        self._hbacked = np.zeros(-(-L.nr_blocks // HOST_UNIT), bool)
        self._pool_free = 0
        self._pool_grown = 0

    def _host_reserve(self, nblocks: int) -> None:
        """Before `reserve(nblocks)` counts: the pool must hold every reservation plus
        HOST_HEADROOM in backed free blocks. Grows ahead of need (a quarter chunk
        of low water); HostFull when the host cannot back what is promised."""
        if self._hbacked is None:
            return
        need = self.reserved + nblocks + HOST_HEADROOM
        if self._pool_free < need + HOST_CHUNK // 4:
            self._host_grow(need - self._pool_free, HOST_CHUNK, self._bhint)
        if self._pool_free < need:
            raise HostFull(f"no room to back {nblocks} more block(s) of {self.path}")

    def _pool_recount(self) -> int:
        """Free blocks in backed units, counted from the bitmap as this moment sees it."""
        L = self.L
        n = 0
        for i in range(L.bbitmap_blocks):
            blk = self._block(L.bbitmap_start + i)
            bits = np.unpackbits(np.frombuffer(blk[: F.PAYLOAD], np.uint8), bitorder="little")
            free = HOST_UNIT - bits.reshape(-1, HOST_UNIT).sum(axis=1, dtype=np.int64)
            u0 = i * UNITS_PER_BITMAP_BLOCK
            free = free[: max(0, min(UNITS_PER_BITMAP_BLOCK, len(self._hbacked) - u0))]
            n += int(free[self._hbacked[u0 : u0 + len(free)]].sum())
        return n

    def _host_count(self, s: int, n: int) -> int:
        """How many of blocks [s, s+n) lie in backed units."""
        U = HOST_UNIT
        u0, u1 = s // U, (s + n - 1) // U
        m = self._hbacked[u0 : u1 + 1]
        total = int(m.sum()) * U
        if m[0]:
            total -= s - u0 * U
        if m[-1]:
            total -= (u1 + 1) * U - (s + n)
        return total

    def _unit_free(self, i: int) -> np.ndarray:
        """Free blocks of each unit that bitmap block `i` covers, as committed
        (not as the open transaction sees them: see `_alloc_restore`)."""
        L = self.L
        b = L.bbitmap_start + i
        raw = np.frombuffer(self._ro[b * BS : b * BS + F.PAYLOAD], np.uint8)
        bits = np.unpackbits(raw, bitorder="little").reshape(-1, HOST_UNIT)
        free = HOST_UNIT - bits.sum(axis=1, dtype=np.int64)
        u0 = i * UNITS_PER_BITMAP_BLOCK
        return free[: max(0, min(UNITS_PER_BITMAP_BLOCK, len(self._hbacked) - u0))]

    def _host_back_units(self, u0: int, u1: int) -> bool:
        """fallocate units [u0, u1) and add their free blocks to the pool; False when
        the host has no room (nothing is marked then)."""
        U = HOST_UNIT
        end = min(u1 * U, self.L.nr_blocks)
        try:
            self.persist.allocate(u0 * U * BS, (end - u0 * U) * BS)
        except OSError:
            return False
        added = 0
        u = u0
        while u < u1:
            i = u // UNITS_PER_BITMAP_BLOCK
            base = i * UNITS_PER_BITMAP_BLOCK
            hi = min(u1, base + UNITS_PER_BITMAP_BLOCK)
            new = ~self._hbacked[u:hi]
            added += int(self._unit_free(i)[u - base : hi - base][new].sum())
            u = hi
        self._hbacked[u0:u1] = True
        self._pool_free += added
        self._pool_grown += added
        return True

    def _host_grow(self, minimum: int, ahead: int, goal: int) -> int:
        """Back unbacked units holding free blocks, from `goal`'s unit on (wrapping),
        until `max(minimum, ahead)` free blocks were added; returns how many.

        Runs of such units go to the host in one fallocate each. When a run does
        not fit, units are tried one by one (at most HOST_TRY_UNITS: a unit the
        host allocated in an earlier session costs nothing) until `minimum` is
        met, and the growth stops there: the host is full.
        """
        backed = self._hbacked
        L = self.L
        target = max(minimum, ahead)
        added = 0
        tries = 0
        nbm = L.bbitmap_blocks
        gu = (goal if L.data_start <= goal < L.nr_blocks else L.data_start) // HOST_UNIT
        g0 = gu // UNITS_PER_BITMAP_BLOCK
        for k in range(nbm + 1):
            i = (g0 + k) % nbm
            base = i * UNITS_PER_BITMAP_BLOCK
            free = self._unit_free(i)
            cand = np.flatnonzero((free > 0) & ~backed[base : base + len(free)])
            if k == 0:
                cand = cand[cand + base >= gu]
            elif k == nbm:
                cand = cand[cand + base < gu]
            if not len(cand):
                continue
            for run in np.split(cand, np.flatnonzero(np.diff(cand) != 1) + 1):
                # Only as many units of the run as the target still needs.
                csum = np.cumsum(free[run])
                take = int(np.searchsorted(csum, target - added)) + 1
                run = run[:take]
                before = self._pool_free
                if self._host_back_units(int(run[0]) + base, int(run[-1]) + base + 1):
                    added += self._pool_free - before
                else:
                    tries += 1
                    for u in run.tolist() if len(run) > 1 else ():
                        if added >= minimum or tries >= HOST_TRY_UNITS:
                            return added
                        tries += 1
                        before = self._pool_free
                        if self._host_back_units(u + base, u + base + 1):
                            added += self._pool_free - before
                    if added >= minimum or tries >= HOST_TRY_UNITS:
                        return added
                if added >= target:
                    return added
        return added
