"""`-o sim=off`: the same calls as `MemoryManager`, served straight from the image.

No pages, frames, policy or events: a read is a memoryview slice of the image
mmap (via `bmap` + `block_view`), a write goes to the image at once through
`write_pages` (durable on return). This is the baseline the benchmarks divide
by: whatever `sim=on` costs beyond it is the simulation's price.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_ZERO_PAGE = bytes(PAGE_SIZE)


class NoSim:
    """A stand-in for MemoryManager that does no simulation at all."""

    policy = "none"

    def __init__(self, img: Any) -> None:
        self.img = img
        self.reads = 0
        self.writes = 0

    def read(self, ino: int, offset: int, length: int) -> Any:
        """Bytes [offset, offset+length) of the file (caller clamps to EOF).

        One memoryview of the mmap when the range sits in physically contiguous
        blocks, else the pieces joined (holes read as zeros)."""
        self.reads += 1
        first = offset >> PAGE_SHIFT
        last = (offset + length - 1) >> PAGE_SHIFT
        n = last - first + 1
        blocks = self.img.bmap(ino, first, n)
        start = offset & (PAGE_SIZE - 1)
        b0 = int(blocks[0])
        if b0 and (n == 1 or int(blocks[-1]) - b0 == n - 1 and bool(np.all(np.diff(blocks) == 1))):
            return self.img.block_view(b0, n)[start : start + length]
        out = bytearray(n * PAGE_SIZE)
        i = 0
        while i < n:
            b = int(blocks[i])
            j = i + 1
            if b:
                while j < n and int(blocks[j]) == b + (j - i):
                    j += 1
                out[i * PAGE_SIZE : j * PAGE_SIZE] = self.img.block_view(b, j - i)
            i = j
        return memoryview(out)[start : start + length]

    def _page(self, ino: int, index: int) -> bytearray:
        b = int(self.img.bmap(ino, index, 1)[0])
        return bytearray(self.img.block_view(b, 1)) if b else bytearray(PAGE_SIZE)

    def write(self, ino: int, offset: int, data: Any) -> None:
        """Program the touched pages into the image now (read-modify-write at the edges)."""
        self.writes += 1
        data = memoryview(data)
        length = len(data)
        first = offset >> PAGE_SHIFT
        last = (offset + length - 1) >> PAGE_SHIFT
        n = last - first + 1
        start = offset & (PAGE_SIZE - 1)
        if start == 0 and length == n * PAGE_SIZE:
            # One (n, PAGE_SIZE) array: the image stores it a run of blocks at a time.
            pages = np.frombuffer(data, dtype=np.uint8).reshape(n, PAGE_SIZE)
        else:
            buf = bytearray(n * PAGE_SIZE)
            if start:
                buf[:PAGE_SIZE] = self._page(ino, first)
            end = start + length
            if end & (PAGE_SIZE - 1) and (n > 1 or not start):
                buf[(n - 1) * PAGE_SIZE :] = self._page(ino, last)
            buf[start:end] = data
            pages = np.frombuffer(buf, dtype=np.uint8).reshape(n, PAGE_SIZE)
        self.img.write_pages(ino, np.arange(first, last + 1, dtype=np.int64), pages)

    def set_size(self, ino: int, size: int) -> None:
        pass  # the image keeps the size; nothing here faults against it

    def truncate(self, ino: int, new_size: int, reason: str = "truncate") -> None:
        """Zero the tail of a partial last page, so a later extension reads zeros."""
        tail = new_size & (PAGE_SIZE - 1)
        if not tail:
            return
        index = new_size >> PAGE_SHIFT
        b = int(self.img.bmap(ino, index, 1)[0])
        if not b:
            return
        page = bytearray(self.img.block_view(b, 1))
        if any(page[tail:]):
            page[tail:] = bytes(PAGE_SIZE - tail)
            self.img.write_pages(ino, np.array([index], dtype=np.int64), [page])

    def fsync(self, ino: int) -> int:
        return 0  # every write was durable when it returned

    def evict_inode(self, ino: int) -> None:
        pass

    def tick(self) -> None:
        pass

    def sync_all(self, reason: str = "sync") -> None:
        pass

    def demote_all(self, reason: str = "ctl") -> None:
        pass

    def set_policy(self, name: str) -> None:
        raise ValueError("sim=off has no migration policy")

    def stats(self) -> dict[str, Any]:
        return {"sim": False, "reads": self.reads, "writes": self.writes}

    def residency(self, ino: int) -> dict[str, int]:
        size = self.img.getattr(ino).size
        pages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        mapped = int(self.img.mapped_runs(ino, 0, pages)[1].sum()) if pages else 0
        return {"pages": pages, "xip": mapped, "pagecache": 0, "dirty": 0}

    def residency_map(self, ino: int, nr_pages: int) -> list[list[Any]]:
        """Runs of `xip` (a block) and `hole` pages: with no simulation nothing is in DRAM."""
        from nvramfs.mm.manager import residency_runs

        if nr_pages <= 0:
            return []
        starts, lens = self.img.mapped_runs(ino, 0, nr_pages)
        none = np.zeros(0, np.int64)
        return residency_runs(nr_pages, starts, lens, none, none)

    def close(self) -> None:
        pass
