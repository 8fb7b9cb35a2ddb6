"""Extent maps: parse, store (re-packing only the chain nodes a change touches), free.

A map is the inode's `ninline` inline extents followed by a chain of extent
blocks of 1..254 extents each (docs/FORMAT.md). In memory it is three sorted
int64 arrays, so bmap is one binary search; `counts` remembers the node
boundaries so a change rewrites only the nodes it touches.
"""

from __future__ import annotations

import bisect

import numpy as np

from nvramfs.image import format as F
from nvramfs.image.errors import CorruptImage

BS = F.BLOCK_SIZE

MAX_PAGES = 1 << 32


class _Ext:
    """An inode's extent map, parsed: sorted int64 arrays + the chain blocks."""

    __slots__ = ("lblk", "len", "pblk", "chain", "counts")

    def __init__(
        self,
        lblk: np.ndarray,
        ln: np.ndarray,
        pblk: np.ndarray,
        chain: list[int],
        counts: list[int] | None = None,
    ):
        self.lblk, self.len, self.pblk, self.chain = lblk, ln, pblk, chain
        # Extents per node: counts[0] inline, counts[i + 1] in chain[i].
        self.counts = counts if counts is not None else [len(lblk)]

    def lookup(self, pages: np.ndarray) -> np.ndarray:
        """The block of each page (0: a hole)."""
        if not len(self.lblk):
            return np.zeros(len(pages), np.int64)
        if len(pages) == 1:  # fsync's usual batch: one search, no masks
            return np.array([self.lookup_one(int(pages[0]))], np.int64)
        i = np.searchsorted(self.lblk, pages, side="right") - 1
        ic = np.maximum(i, 0)
        inside = (i >= 0) & (pages < self.lblk[ic] + self.len[ic])
        return np.where(inside, self.pblk[ic] + pages - self.lblk[ic], 0)

    def lookup_one(self, page: int) -> int:
        """The block of one page (0: a hole)."""
        i = int(np.searchsorted(self.lblk, page, side="right")) - 1
        if i >= 0 and page < int(self.lblk[i]) + int(self.len[i]):
            return int(self.pblk[i]) + page - int(self.lblk[i])
        return 0


class ExtentMaps:
    """Mixin: needs `_inode`, `_winode`, `_block`, `_wblock`, `_check_block`, allocation."""

    def _ext(self, ino: int) -> _Ext:
        e = self._exts.get(ino)
        if e is None:
            e = self._parse_ext(ino, self._inode(ino))
            self._exts[ino] = e
        return e

    def _parse_ext(self, ino: int, rec: np.void) -> _Ext:
        n = int(rec["nextents"])
        L = self.L
        if n > L.nr_blocks:
            raise CorruptImage(f"inode {ino}: absurd extent count {n}")
        if int(rec["flags"]) & F.IFLAG_INLINE_DATA:
            if n or int(rec["ext_blk"]):
                raise CorruptImage(f"inode {ino}: inline data and extents")
            z = np.zeros(0, np.int64)
            return _Ext(z, z.copy(), z.copy(), [])
        ninl = int(rec["ninline"])
        if ninl > min(n, F.INLINE_EXTENTS):
            raise CorruptImage(f"inode {ino}: bad inline extent count {ninl}")
        parts = [np.frombuffer(rec["inline"].tobytes(), F.EXTENT_DTYPE, count=ninl)]
        chain: list[int] = []
        counts = [ninl]
        left = n - ninl
        b = int(rec["ext_blk"])
        while left > 0:
            if b == 0:
                raise CorruptImage(f"inode {ino}: extent chain ends {left} extents early")
            if b in chain:
                raise CorruptImage(f"inode {ino}: extent chain loops at block {b}")
            blk = self._check_block(b, F.KIND_EXTENT, ino, f"inode {ino} extent block")
            cnt = int.from_bytes(blk[8:12], "little")
            if not 0 < cnt <= min(left, F.EXTENTS_PER_BLOCK):
                raise CorruptImage(f"inode {ino} extent block {b}: bad count {cnt}")
            parts.append(np.frombuffer(blk[F.EXTBLK_HDR :], F.EXTENT_DTYPE, count=cnt).copy())
            chain.append(b)
            counts.append(cnt)
            left -= cnt
            b = int.from_bytes(blk[0:8], "little")
        if b != 0:
            raise CorruptImage(f"inode {ino}: extent chain longer than nextents {n}")
        ext = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
        lb = ext["lblk"].astype(np.int64)
        ln = ext["len"].astype(np.int64)
        pb = ext["pblk"].astype(np.int64)
        if n:
            if (ln <= 0).any() or (lb + ln > MAX_PAGES).any():
                raise CorruptImage(f"inode {ino}: extent with a bad length")
            if (pb < L.data_start).any() or (pb + ln > L.nr_blocks).any():
                i = int(np.flatnonzero((pb < L.data_start) | (pb + ln > L.nr_blocks))[0])
                raise CorruptImage(
                    f"inode {ino}: extent {i} (blocks {int(pb[i])}+{int(ln[i])}) "
                    f"outside the device (data area {L.data_start}..{L.nr_blocks})"
                )
            if (lb[1:] < lb[:-1] + ln[:-1]).any():
                raise CorruptImage(f"inode {ino}: extents overlap or are out of order")
        return _Ext(lb, ln, pb, chain, counts)

    def _store_ext(self, ino: int, lb: np.ndarray, ln: np.ndarray, pb: np.ndarray) -> None:
        """Write a new extent map (merging neighbours); rewrites only changed chain blocks."""
        old = self._ext(ino)
        if len(lb) > 1:
            order = np.argsort(lb, kind="stable")
            lb, ln, pb = lb[order], ln[order], pb[order]
            join = (lb[:-1] + ln[:-1] == lb[1:]) & (pb[:-1] + ln[:-1] == pb[1:])
            if join.any():
                start = np.concatenate([[True], ~join])
                grp = np.cumsum(start) - 1
                ln = np.bincount(grp, weights=ln).astype(np.int64)
                lb, pb = lb[start], pb[start]
        rec = self._winode(ino)
        n, old_n = len(lb), len(old.lblk)
        # The changed run: old[p:old_n-q] became new[p:n-q].
        m = min(n, old_n)
        eq = (old.lblk[:m] == lb[:m]) & (old.len[:m] == ln[:m]) & (old.pblk[:m] == pb[:m])
        p = m if eq.all() else int(np.argmin(eq))
        if p == n == old_n:
            return
        mq = m - p
        eq = (
            (old.lblk[old_n - mq :] == lb[n - mq :])
            & (old.len[old_n - mq :] == ln[n - mq :])
            & (old.pblk[old_n - mq :] == pb[n - mq :])
        )[::-1]
        q = mq if eq.all() else int(np.argmin(eq))
        counts = old.counts
        starts = np.concatenate(
            [[0], np.cumsum(counts)]
        ).tolist()  # node i: [starts[i], starts[i+1])

        def node_of(i: int) -> int:
            return min(bisect.bisect_right(starts, i) - 1, len(counts) - 1)

        a = node_of(p)
        b = node_of(old_n - q - 1) if old_n - q - 1 >= starts[a] else a
        lo, hi = starts[a], starts[b + 1] + (n - old_n)  # new extents to pack into nodes a..
        mid: list[int] = []
        left = hi - lo
        if a == 0:
            mid.append(min(left, F.INLINE_EXTENTS))
            left -= mid[0]
        while left > 0:
            mid.append(min(left, F.EXTENTS_PER_BLOCK))
            left -= mid[-1]
        new_counts = counts[:a] + mid + counts[b + 1 :]
        # Chain blocks: reuse those of nodes a..b, allocate or free the difference.
        first_c = max(a, 1) - 1  # chain index of the first chain node in the range
        old_mid_chain = old.chain[first_c:b] if b >= 1 else []
        need = len(mid) - (1 if a == 0 else 0)
        mid_chain = old_mid_chain[:need]
        for blk in old_mid_chain[need:]:
            self._free_runs([(blk, 1)])
            rec["blocks"] = int(rec["blocks"]) - 1
        while len(mid_chain) < need:
            goal = (
                mid_chain[-1] + 1 if mid_chain else (old.chain[first_c - 1] + 1 if first_c else 0)
            )
            mid_chain.append(self._alloc_meta(goal or (int(pb[-1]) + 1 if n else 0)))
            rec["blocks"] = int(rec["blocks"]) + 1
        chain = (
            old.chain[:first_c] + mid_chain + old.chain[b:]
            if b >= 1
            else (old.chain[:first_c] + mid_chain + old.chain[first_c:])
        )
        arr = np.zeros(n, F.EXTENT_DTYPE)
        arr["lblk"], arr["len"], arr["pblk"] = lb, ln, pb
        inline = np.zeros(F.INLINE_EXTENTS, F.EXTENT_DTYPE)
        inline[: new_counts[0]] = arr[: new_counts[0]]
        rec["inline"] = inline.tobytes()
        rec["ninline"] = new_counts[0]
        rec["nextents"] = n
        rec["ext_blk"] = chain[0] if chain else 0
        new_starts = np.concatenate([[0], np.cumsum(new_counts)]).tolist()
        # Write the chain nodes of the range, and the one before it (its `next`).
        for ci in range(max(first_c - 1, 0), first_c + len(mid_chain)):
            if ci >= len(chain):
                break
            body = bytearray(F.TAIL_OFF)
            nxt = chain[ci + 1] if ci + 1 < len(chain) else 0
            cnt = new_counts[ci + 1]
            body[0:8] = nxt.to_bytes(8, "little")
            body[8:12] = cnt.to_bytes(4, "little")
            raw = arr[new_starts[ci + 1] : new_starts[ci + 1] + cnt].tobytes()
            body[F.EXTBLK_HDR : F.EXTBLK_HDR + len(raw)] = raw
            blk_no = chain[ci]
            cur = self._block(blk_no)
            if (
                blk_no in old.chain
                and bytes(cur[: F.TAIL_OFF]) == bytes(body)
                and not F.check_tail(cur, blk_no, F.KIND_EXTENT, ino)
            ):
                continue
            blk = self._wblock(blk_no, F.KIND_EXTENT, ino, fresh=True)
            blk[: F.TAIL_OFF] = body
        assert sum(new_counts) == n and len(new_counts) == len(chain) + 1
        assert all(c > 0 for c in new_counts[1:]), new_counts
        self._exts[ino] = _Ext(lb.copy(), ln.copy(), pb.copy(), chain, new_counts)

    def _free_tail(self, ino: int, npages: int) -> bool:
        """Free the blocks of pages >= npages, as many as fit the transaction.

        Returns True when none are left. Frees from the end, so each
        transaction leaves a valid (shorter) map.
        """
        e = self._ext(ino)
        lb, ln, pb = e.lblk, e.len, e.pblk
        c0 = int(np.searchsorted(lb + ln, npages, side="right"))  # extents [c0:] reach past
        if c0 == len(lb):
            return True
        bpb = F.BITS_PER_BITMAP_BLOCK
        room = self._txn_room() - 3  # the chain blocks rewritten at the cut
        bitmaps = {b // bpb for b in e.chain}  # chain blocks may be freed too
        runs: list[tuple[int, int]] = []
        keep_n = len(lb)  # extents [0, keep_n) stay
        head = 0  # pages kept of extent keep_n - 1 when it straddles npages
        i = len(lb) - 1
        while i >= c0:
            s0, n0, p0 = int(lb[i]), int(ln[i]), int(pb[i])
            first = max(s0, npages)
            fs, fn = p0 + first - s0, n0 - (first - s0)
            new = bitmaps.union(range(fs // bpb, (fs + fn - 1) // bpb + 1))
            if runs and len(new) > room:
                break
            bitmaps = new
            runs.append((fs, fn))
            keep_n, head = (i + 1, first - s0) if first > s0 else (i, 0)
            i -= 1
        done = i < c0
        rec = self._winode(ino)
        self._free_runs(runs)
        rec["blocks"] = int(rec["blocks"]) - sum(n for _, n in runs)
        new_ln = ln[:keep_n].copy()
        if head:
            new_ln[-1] = head
        self._store_ext(ino, lb[:keep_n].copy(), new_ln, pb[:keep_n].copy())
        return done
