"""The page-data interface mm takes from the filesystem, and an in-memory one for tests.

`nvramfs.image.Image` satisfies `Backing`; mm never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .flags import PAGE_SIZE


@runtime_checkable
class Backing(Protocol):
    """Where file pages live on NVRAM, and how dirty pages get back there."""

    def bmap(self, ino: int, first: int, count: int) -> np.ndarray:
        """NVRAM block of each page first..first+count-1 (int64); 0 = hole."""
        ...

    def block_view(self, block: int, count: int = 1) -> memoryview:
        """Read-only, zero-copy view of `count` blocks from `block`."""
        ...

    def write_pages(
        self,
        ino: int,
        indices: np.ndarray,
        pages: Sequence[Any],
        *,
        size: int | None = None,
        still_dirty: np.ndarray | None = None,
    ) -> np.ndarray:
        """Write back whole pages, durable on return; holes get new blocks; returns the blocks.

        With `size` (the cached i_size), the device's size of the file advances in the
        same transaction under the ordered-data rule: to `size` clamped to the start of
        the first page at or past the old device size still in `still_dirty` (sorted
        page indices that stay dirty in DRAM); it never shrinks."""
        ...


# Optional: `mapped_runs(ino, first, count) -> (starts, lengths)`, the runs of pages
# that have a block (Image and MemBacking have it): the residency map of a sparse
# file is built from them, not from a bmap as long as the file.
#
# Optional: a backing that also has `i_size(ino) -> int | None` tells mm each file's
# size when mm first sees the file (MemBacking does); otherwise the FUSE layer tells
# it with MemoryManager.set_size.


class MemBacking:
    """An NVRAM device in a numpy array: block 0 is never a data block (0 means hole).

    `relocate=True` makes every writeback program fresh blocks (a log-structured
    device), freeing the old ones, so tests see pages move.
    """

    def __init__(self, nr_blocks: int = 4096, *, relocate: bool = False) -> None:
        self.nr_blocks = nr_blocks
        self.relocate = relocate
        self._dev = np.zeros((nr_blocks, PAGE_SIZE), dtype=np.uint8)
        self._view = memoryview(self._dev.reshape(-1)).toreadonly()
        self._files: dict[int, np.ndarray] = {}
        self._sizes: dict[int, int] = {}
        self.sizes = self._sizes  # each file's size on the device (tests read it)
        self._free: list[int] = list(range(nr_blocks - 1, 0, -1))
        self.bmap_calls = 0
        self.writes = 0
        self.write_calls = 0  # write_pages calls: one per batch of one file

    def _alloc(self) -> int:
        if not self._free:
            raise OSError(28, "MemBacking: no space left on device")
        return self._free.pop()

    def _map(self, ino: int, npages: int) -> np.ndarray:
        m = self._files.get(ino)
        if m is None or len(m) < npages:
            new = np.zeros(max(npages, 16 if m is None else 2 * len(m)), dtype=np.int64)
            if m is not None:
                new[: len(m)] = m
            m = self._files[ino] = new
        return m

    def create(self, ino: int, data: bytes | bytearray, *, holes: Sequence[int] = ()) -> None:
        """Make file `ino` hold `data` (page indices in `holes` stay unallocated)."""
        npages = (len(data) + PAGE_SIZE - 1) // PAGE_SIZE
        m = self._map(ino, npages)
        self.sizes[ino] = len(data)
        for i in range(npages):
            if i in holes:
                continue
            b = self._alloc()
            chunk = data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
            self._dev[b, : len(chunk)] = np.frombuffer(bytes(chunk), dtype=np.uint8)
            self._dev[b, len(chunk) :] = 0
            m[i] = b

    def bmap(self, ino: int, first: int, count: int) -> np.ndarray:
        self.bmap_calls += 1
        out = np.zeros(count, dtype=np.int64)
        m = self._files.get(ino)
        if m is not None and first < len(m):
            n = min(count, len(m) - first)
            out[:n] = m[first : first + n]
        return out

    def mapped_runs(self, ino: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        mapped = self.bmap(ino, first, count) != 0
        edges = np.flatnonzero(np.diff(np.r_[False, mapped, False].astype(np.int8)))
        starts, ends = edges[0::2], edges[1::2]
        return starts.astype(np.int64) + first, (ends - starts).astype(np.int64)

    def block_view(self, block: int, count: int = 1) -> memoryview:
        if not 0 < block or block + count > self.nr_blocks:
            raise ValueError(f"block_view: blocks {block}+{count} outside the device")
        return self._view[block * PAGE_SIZE : (block + count) * PAGE_SIZE]

    def write_pages(
        self,
        ino: int,
        indices: np.ndarray,
        pages: Sequence[Any],
        *,
        size: int | None = None,
        still_dirty: np.ndarray | None = None,
    ) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        self.write_calls += 1
        m = self._map(ino, int(idx.max()) + 1 if len(idx) else 0)
        out = np.zeros(len(idx), dtype=np.int64)
        for k, (i, page) in enumerate(zip(idx.tolist(), pages, strict=True)):
            old = int(m[i])
            if old == 0 or self.relocate:
                b = self._alloc()
                if old:
                    self._free.append(old)
                m[i] = b
            else:
                b = old
            self._dev[b] = np.frombuffer(page, dtype=np.uint8)
            out[k] = b
            self.writes += 1
        if size is not None:
            self.advance_size(ino, size, still_dirty)
        return out

    def i_size(self, ino: int) -> int | None:
        """The file's size as last created or set (None: no such file)."""
        return self._sizes.get(ino)

    def set_size(self, ino: int, size: int) -> None:
        """What the image's setattr(size) does on a real mount: free the blocks of pages past
        the new end and zero the rest of the last partial block in place."""
        self.truncate(ino, (size + PAGE_SIZE - 1) // PAGE_SIZE)
        tail = size % PAGE_SIZE
        if tail:
            b = int(self.bmap(ino, size // PAGE_SIZE, 1)[0])
            if b:
                self._dev[b, tail:] = 0
        self._sizes[ino] = size

    def advance_size(self, ino: int, size: int, still_dirty: np.ndarray | None) -> None:
        """The ordered-data size rule (as Image._advance_size)."""
        disk = self.sizes.get(ino, 0)
        new = int(size)
        if still_dirty is not None and len(still_dirty):
            d = np.asarray(still_dirty, dtype=np.int64)
            k = int(np.searchsorted(d, disk // PAGE_SIZE))
            if k < len(d):
                new = min(new, int(d[k]) * PAGE_SIZE)
        if new > disk:
            self.sizes[ino] = new

    def truncate(self, ino: int, npages: int) -> None:
        """Free the blocks of pages >= npages (the image layer's job on a real mount)."""
        m = self._files.get(ino)
        if m is None:
            return
        for b in m[npages:].tolist():
            if b:
                self._free.append(b)
        m[npages:] = 0
        self.sizes[ino] = min(self.sizes.get(ino, 0), npages * PAGE_SIZE)

    def remove(self, ino: int) -> None:
        self.truncate(ino, 0)
        self._files.pop(ino, None)
        self._sizes.pop(ino, None)

    def read_file(self, ino: int, npages: int) -> bytes:
        """The file's pages as NVRAM holds them (holes read as zeroes)."""
        out = bytearray(npages * PAGE_SIZE)
        for i, b in enumerate(self.bmap(ino, 0, npages).tolist()):
            if b:
                out[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] = self._dev[b].tobytes()
        return bytes(out)
