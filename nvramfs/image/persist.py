"""The one way bytes reach the image: store, flush, fence.

Real NVRAM makes a store durable only once its cache lines are flushed
(clwb) and a fence (sfence) orders the flush before what follows. Here the
image is a shared file mapping: `store` writes the mapping, `flush` notes the
range, and `fence` makes every range noted since the last fence durable with
ONE msync over their hull (msync is synchronous, so its return is the
ordering point). Flushing more than was asked is always safe: stores issued
before a fence may reach the media anyway. `store_rows` stores rows of an
array (a writeback batch's frames) gathered straight into the mapping: one
copy, no staging buffer. `msyncs` counts the msync calls
(`.nvramfs/stats` shows it as `image.msyncs`). Every store to an image goes
through a `Persist`, so the crash model below is complete.

`RecordingPersist` also logs every store, flush and fence. `crash_images()`
rebuilds the image as a power cut right after each fence would leave it: a
store survives only if a flush covering it was issued before that fence;
everything else is dropped. Tests check fsck and acknowledged updates on every
one of those images.
"""

from __future__ import annotations

import mmap
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

PAGE = mmap.PAGESIZE


class Persist:
    """store/flush/fence over one mmap; subclass to observe them."""

    def __init__(self) -> None:
        self._mm: mmap.mmap | None = None
        self.bulk = False  # mkfs: no flushes until the final sync()
        self.msyncs = 0  # msync calls made (one per fence with something to flush)
        self._lo = -1  # hull of the ranges flushed since the last fence
        self._hi = -1
        self.fd: int | None = None  # the image file, for `allocate` (None: nothing to back)

    def attach(self, mm: mmap.mmap) -> None:
        """Bind to the image mapping (Image.open does this)."""
        self._mm = mm

    def attach_file(self, fd: int) -> None:
        """The image file's descriptor, which `allocate` backs (the caller keeps it open)."""
        self.fd = fd

    def allocate(self, offset: int, length: int) -> None:
        """Back [offset, offset+length) of the image file with host space.

        Images are sparse: a store into a page of the mapping that the host
        filesystem has not allocated must allocate it then, and on a full host
        that store is SIGBUS, which kills the process. `posix_fallocate`
        allocates ahead (already-allocated parts cost nothing), so it is the
        one place a full host can say so: OSError(ENOSPC), nothing stored.
        """
        if self.fd is None or length <= 0:
            return
        os.posix_fallocate(self.fd, offset, length)

    def store(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        self._mm[offset : offset + n] = data

    def store_rows(self, offset: int, src: np.ndarray, rows: np.ndarray | slice) -> None:
        """Store rows `rows` of the 2-D uint8 array `src` back to back at `offset`.

        The rows are gathered straight into the mapping (`np.take` into a numpy
        view of it), so a batch of scattered frames is copied once, not gathered
        into a staging array first. The view is dropped before returning: a
        mapping with a live export cannot be closed. Same durability as `store`.
        """
        if src.ndim != 2 or src.dtype != np.uint8:
            raise ValueError("store_rows: src must be a 2-D uint8 array")
        width = src.shape[1]
        if isinstance(rows, slice):
            part = src[rows]
            n = len(part)
        else:
            n = len(rows)
            if n and (int(rows.min()) < 0 or int(rows.max()) >= len(src)):
                raise IndexError("store_rows: row outside src")
        if not n:
            return
        if offset < 0 or offset + n * width > len(self._mm):
            raise ValueError(f"store_rows: {n} rows at {offset} outside the mapping")
        dst = np.frombuffer(self._mm, np.uint8, count=n * width, offset=offset).reshape(n, width)
        try:
            if isinstance(rows, slice):
                dst[...] = part
            else:
                # mode="clip" (rows are checked above): "raise" would buffer the
                # output, a second copy.
                np.take(src, rows, axis=0, out=dst, mode="clip")
        finally:
            del dst

    def flush(self, offset: int, length: int) -> None:
        """Ask for the stores in [offset, offset+length) to be durable at the next fence."""
        if self.bulk or length <= 0:
            return
        start = offset - offset % PAGE
        end = offset + length
        if self._lo < 0:
            self._lo, self._hi = start, end
        else:
            self._lo = min(self._lo, start)
            self._hi = max(self._hi, end)

    def fence(self) -> None:
        """Make every range flushed since the last fence durable (one msync over their
        hull), ahead of every store after it."""
        if self._lo < 0:
            return
        lo, hi = self._lo, self._hi
        self._lo = self._hi = -1
        self._mm.flush(lo, hi - lo)
        self.msyncs += 1

    def sync(self) -> None:
        """Flush the whole mapping (end of a bulk build)."""
        self._lo = self._hi = -1
        self._mm.flush()
        self.msyncs += 1


@dataclass
class Op:
    kind: str  # "store" | "flush" | "fence"
    offset: int = 0
    data: bytes = b""
    length: int = 0


@dataclass
class RecordingPersist(Persist):
    """A Persist that logs every operation, for power-cut tests."""

    log: list[Op] = field(default_factory=list)

    def __post_init__(self) -> None:
        Persist.__init__(self)

    def store(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.log.append(Op("store", offset, bytes(data)))
        super().store(offset, data)

    def store_rows(self, offset: int, src: np.ndarray, rows: np.ndarray | slice) -> None:
        super().store_rows(offset, src, rows)
        n = len(src[rows]) if isinstance(rows, slice) else len(rows)
        if n:  # the bytes that store landed in the mapping, as one store
            self.log.append(
                Op("store", offset, bytes(self._mm[offset : offset + n * src.shape[1]]))
            )

    def flush(self, offset: int, length: int) -> None:
        self.log.append(Op("flush", offset, length=length))
        super().flush(offset, length)

    def fence(self) -> None:
        self.log.append(Op("fence"))
        super().fence()

    def sync(self) -> None:
        self.log.append(Op("flush", 0, length=len(self._mm)))
        self.log.append(Op("fence"))
        super().sync()

    def fences(self) -> int:
        return sum(1 for op in self.log if op.kind == "fence")

    def crash_images(
        self, base: bytes, torn: random.Random | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """Yield (fence number, image bytes) for a power cut right after each fence.

        `base` is the image as it was when recording started. A store counts
        only if a flush that covers it (issued after the store) precedes the
        fence; unflushed or unfenced stores are lost, as on real NVRAM.

        With `torn`, also yield for each fence an image where a random part of
        the stores issued after it did reach the media (any dirty cache line
        may be written back early): each such store is kept whole, cut to a
        random 8-byte-aligned prefix, or dropped.
        """
        img = bytearray(base)
        pending: list[Op] = []  # stored, not yet flushed
        flushed: list[Op] = []  # flushed, waiting for a fence
        nfence = 0
        epochs: list[int] = [0]  # index in the log just after each fence
        for i, op in enumerate(self.log):
            if op.kind == "fence":
                epochs.append(i + 1)
        yield from self._torn(img, 0, epochs, torn)
        yield 0, bytes(img)
        for op in self.log:
            if op.kind == "store":
                pending.append(op)
            elif op.kind == "flush":
                lo, hi = op.offset, op.offset + op.length
                keep = []
                for st in pending:
                    if lo <= st.offset and st.offset + len(st.data) <= hi:
                        flushed.append(st)
                    else:
                        keep.append(st)
                pending = keep
            else:
                for st in flushed:
                    img[st.offset : st.offset + len(st.data)] = st.data
                flushed = []
                nfence += 1
                yield from self._torn(img, nfence, epochs, torn)
                yield nfence, bytes(img)

    def _torn(
        self, img: bytearray, nfence: int, epochs: list[int], rng: random.Random | None
    ) -> Iterator[tuple[int, bytes]]:
        if rng is None or nfence + 1 >= len(epochs):
            return
        out = bytearray(img)
        for op in self.log[epochs[nfence] : epochs[nfence + 1]]:
            if op.kind != "store":
                continue
            r = rng.random()
            if r < 0.4:
                continue
            data = op.data
            if r < 0.7:
                data = data[: rng.randrange(0, len(data) + 1, 8)]
            out[op.offset : op.offset + len(data)] = data
        yield nfence, bytes(out)
