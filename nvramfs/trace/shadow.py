"""The image's block maps as mm saw them, and the Backing a replay runs on.

Recording and replay keep the same model (`ExtentShadow`): each file's
block of every page, starting from the extent map recorded when mm first
touched the file. The recorder compares every answer the image gives mm
(`bmap`, `write_pages`) with the model; when they differ (blocks allocated at
writeback, freed by a size change or an orphan's release: changes mm never
sees) it records a `map` record keyed by the number of the backing call, and
updates the model. The replay's `TraceBacking` applies each `map` record at
the backing call with the same number, so every bmap answers exactly what the
image answered live, with no image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nvramfs.mm.flags import PAGE_SIZE

from .format import TraceError, decode_runs


class ExtentShadow:
    """Per file, the NVRAM block of each page (0 = hole), in growable int64 arrays."""

    def __init__(self) -> None:
        self.files: dict[int, np.ndarray] = {}

    def _map(self, ino: int, end: int) -> np.ndarray:
        m = self.files.get(ino)
        if m is None or len(m) < end:
            new = np.zeros(max(end, 64 if m is None else 2 * len(m)), dtype=np.int64)
            if m is not None:
                new[: len(m)] = m
            m = self.files[ino] = new
        return m

    def bmap(self, ino: int, first: int, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.int64)
        m = self.files.get(ino)
        if m is not None and first < len(m):
            n = min(count, len(m) - first)
            out[:n] = m[first : first + n]
        return out

    def get(self, ino: int, indices: np.ndarray) -> np.ndarray:
        m = self.files.get(ino)
        idx = np.asarray(indices, dtype=np.int64)
        if m is None:
            return np.zeros(len(idx), dtype=np.int64)
        out = np.zeros(len(idx), dtype=np.int64)
        inside = idx < len(m)
        out[inside] = m[idx[inside]]
        return out

    def set_range(self, ino: int, first: int, count: int, blocks: np.ndarray) -> None:
        """Pages [first, first+count) are exactly `blocks` now."""
        if count <= 0:
            return
        m = self.files.get(ino)
        if m is None and not np.any(blocks):
            return
        m = self._map(ino, first + count)
        m[first : first + count] = blocks

    def set_pages(self, ino: int, indices: np.ndarray, blocks: np.ndarray) -> None:
        idx = np.asarray(indices, dtype=np.int64)
        if not len(idx):
            return
        m = self._map(ino, int(idx.max()) + 1)
        m[idx] = blocks

    def set_file(self, ino: int, npages: int, runs: list[int]) -> None:
        """A file's extent map at first touch: `runs` mapped, every other page a hole."""
        self.files.pop(ino, None)
        self.apply_runs(ino, runs)

    def apply_runs(self, ino: int, runs: list[int]) -> None:
        """Set the pages `runs` names ([page, count, block, ...]; block 0: holes)."""
        for page, n, block in decode_runs(runs):
            m = self._map(ino, page + n)
            m[page : page + n] = np.arange(block, block + n) if block else 0

    def drop_from(self, ino: int, npages: int) -> None:
        """The image frees every page from `npages` on at a size change."""
        m = self.files.get(ino)
        if m is not None:
            m[npages:] = 0

    def forget(self, ino: int) -> None:
        self.files.pop(ino, None)


class TraceBacking:
    """The Backing of a replay: block maps from the trace, page data made up.

    Data is never recorded: every block reads as 0x01 bytes (writes store 0x01
    too). mm decides nothing on page contents."""

    def __init__(self, nr_blocks: int, *, exact: bool = True) -> None:
        self.nr_blocks = nr_blocks
        self.exact = exact
        self.shadow = ExtentShadow()
        self.seq = 0
        self.pending: dict[int, tuple[int, list[int]]] = {}
        self._next_block = nr_blocks // 2
        self._ones = np.ones(256 * PAGE_SIZE, dtype=np.uint8)
        self._ones_view = memoryview(self._ones).toreadonly()
        self.generations: dict[int, int] = {}

    def inode_generation(self, ino: int) -> int:
        """The generation the trace recorded for the file (its identity with `ino`)."""
        return self.generations.get(ino, 0)

    def expect(self, seq: int, ino: int, runs: list[int], writeback: bool) -> None:
        """A recorded `map`. Exact replay (the recorded configuration): applied at the
        backing call of the same number. Otherwise mm calls the backing at other times:
        changes mm never saw apply at once (their place in the stream), and a writeback
        takes blocks of its own (`write_pages`)."""
        if self.exact:
            self.pending[seq] = (ino, runs)
        elif not writeback:
            self.shadow.apply_runs(ino, runs)

    def _step(self) -> None:
        self.seq = seq = self.seq + 1
        fix = self.pending.pop(seq, None)
        if fix is not None:
            self.shadow.apply_runs(*fix)

    def bmap(self, ino: int, first: int, count: int) -> np.ndarray:
        self._step()
        return self.shadow.bmap(ino, first, count)

    def write_pages(
        self, ino: int, indices: np.ndarray, pages: Sequence[Any], **kw: Any
    ) -> np.ndarray:
        """The blocks the live writeback got (keywords such as the file size the image
        kept with it change nothing mm sees)."""
        self._step()
        blocks = self.shadow.get(ino, indices)
        if not self.exact and len(blocks) and int(blocks.min()) <= 0:
            # A hole takes a new block, as the image's allocator would give one.
            for k in np.flatnonzero(blocks <= 0).tolist():
                blocks[k] = self._next_block
                self._next_block = (
                    self._next_block + 1 if self._next_block + 1 < self.nr_blocks else 1
                )
            self.shadow.set_pages(ino, indices, blocks)
        if len(blocks) and int(blocks.min()) <= 0:
            raise TraceError(
                f"replay diverged: writeback #{self.seq} of inode {ino} has no recorded block"
            )
        return blocks

    def block_view(self, block: int, count: int = 1) -> memoryview:
        if not 0 < block or block + count > self.nr_blocks:
            raise ValueError(f"block_view: blocks {block}+{count} outside the device")
        if count <= 256:
            return self._ones_view[: count * PAGE_SIZE]
        return memoryview(np.ones(count * PAGE_SIZE, dtype=np.uint8)).toreadonly()
