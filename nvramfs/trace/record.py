"""Recording: a proxy in front of MemoryManager (and of its Backing) that logs every call.

The mount builds `Recorder(directory, backing, config)`, hands `recorder.backing`
and `recorder.clock` to MemoryManager, and `recorder.wrap(mm)` to the FUSE layer,
which then calls the proxy exactly as it called mm. Each call appends one
record (five int64s; format.Buffer) and goes on to mm; parts are written by a
worker thread.

mm's clock is the recorder's: the CLOCK_MONOTONIC reading (in microseconds,
the trace's resolution) taken when the call came in, the same for the whole
call. A replay sets the same clock from the recorded `t_us`, so every
time-based decision (dirty expiry) is the same.

The Backing proxy numbers every `bmap` and `write_pages` call and compares the
image's answers with the block maps recorded so far (shadow.py); differences
become `map` records.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nvramfs.mm.flags import PAGE_SHIFT, PAGE_SIZE

from .format import CALLS, FIELDS, OP, Buffer, PartWriter, encode_pairs, encode_runs, write_header
from .shadow import ExtentShadow

log = logging.getLogger(__name__)

# A part is written once this many records are buffered, or at the first tick
# after PART_SECONDS: a crash loses at most that much.
# NVRAMFS_TRACE_PART_SECONDS changes the second figure (tests cut traces short).
PART_ROWS = 1 << 20
PART_SECONDS = float(os.environ.get("NVRAMFS_TRACE_PART_SECONDS", "10") or 10)

_READ, _WRITE = OP["read"], OP["write"]

# MemoryManager attributes the proxy hands through without recording: they
# report and do not change the simulation.
PASS_THROUGH = frozenset(
    {
        "stats", "residency", "residency_map", "machine", "policy", "dram_pages",
        "pte_special", "kernel", "stats_", "backing", "events", "clock", "nr_nvram_pages",
        "writeback_seconds", "events_t0", "trace_faults",
        "max_promote_per_tick", "over_dirty_limit", "over_background_thresh", "nr_dirty",
        "dirty_counts", "bug",
    }
)  # fmt: skip


class RecordingBacking:
    """The image as mm sees it, with each answer checked against the shadow block maps."""

    def __init__(self, rec: Recorder, backing: Any) -> None:
        self._rec = rec
        self._b = backing
        self.block_view = backing.block_view
        self.seq = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._b, name)

    def bmap(self, ino: int, first: int, count: int) -> np.ndarray:
        live = np.asarray(self._b.bmap(ino, first, count), dtype=np.int64)
        self.seq = seq = self.seq + 1
        shadow = self._rec.shadow
        m = shadow.files.get(ino)
        if m is not None and first + count <= len(m) and len(live) == count:
            known = m[first : first + count]
        else:
            known = shadow.bmap(ino, first, count)
        # On the fault path: a byte compare is a few times cheaper than array_equal.
        if known.tobytes() != live.tobytes():
            diff = np.flatnonzero(known != live)
            self._rec.map_record(seq, ino, encode_pairs(diff + first, live[diff]), writeback=False)
            shadow.set_range(ino, first, count, live)
        return live

    def write_pages(
        self, ino: int, indices: np.ndarray, pages: Sequence[Any], **kw: Any
    ) -> np.ndarray:
        blocks = self._b.write_pages(ino, indices, pages, **kw)
        live = np.asarray(blocks, dtype=np.int64)
        self.seq = seq = self.seq + 1
        shadow = self._rec.shadow
        idx = np.asarray(indices, dtype=np.int64)
        if not np.array_equal(shadow.get(ino, idx), live):
            self._rec.map_record(seq, ino, encode_pairs(idx, live), writeback=True)
            shadow.set_pages(ino, idx, live)
        return blocks


class Recorder:
    """One trace being recorded: the buffers, the shadow block maps, the writer thread."""

    def __init__(
        self,
        directory: str,
        backing: Any,
        config: dict[str, Any],
        *,
        part_rows: int = PART_ROWS,
        part_seconds: float = PART_SECONDS,
        path_of: Callable[[int], str | None] | None = None,
        size_of: Callable[[int], int] | None = None,
        now_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.directory = directory
        self.now_ns = now_ns
        self.now_us = now_ns() // 1000
        write_header(directory, self.now_us, config)
        self.config = config
        self.shadow = ExtentShadow()
        self.backing = RecordingBacking(self, backing)
        self._image = backing
        self.path_of = path_of
        self.size_of = size_of
        self.part_rows = part_rows
        self.part_us = int(part_seconds * 1e6)
        self._last_part_us = self.now_us
        self._buf = Buffer()
        self._data = self._buf.data
        self._sparse = self._buf.sparse
        self._seen: set[int] = set()
        self._unnamed: set[int] = set()
        self._gens: dict[int, int] = {}
        self._writer = PartWriter(directory)
        self.records = 0
        self.closed = False

    def clock(self) -> float:
        """mm's clock: the time the current call came in (seconds)."""
        return self.now_us * 1e-6

    # -- rows ----------------------------------------------------------------

    def row(
        self,
        op: int,
        ino: int = 0,
        page: int = 0,
        nbytes: int = 0,
        *,
        offset: int | None = None,
        arg: int = 0,
        seq: int = 0,
        flags: int = 0,
        gen: int = 0,
        text: str | None = None,
        runs: list[int] | None = None,
    ) -> None:
        i = self._buf.add(
            self.now_us, op, ino, (page << PAGE_SHIFT) if offset is None else offset, nbytes
        )
        sp = self._sparse
        for name, v in (
            ("arg", arg), ("seq", seq), ("flags", flags), ("gen", gen), ("runs", runs)
        ):  # fmt: skip
            if v:
                sp[name][i] = v
        if text is not None:
            sp["text"][i] = text

    def map_record(self, seq: int, ino: int, runs: list[int], *, writeback: bool) -> None:
        self.row(OP["map"], ino, seq=seq, flags=1 if writeback else 0, runs=runs)

    def call(self, op: str, ino: int = 0, *, touch: bool = True, **kw: Any) -> None:
        """A MemoryManager call is about to run: stamp the clock, write its row."""
        self.now_us = self.now_ns() // 1000
        if len(self._data) >= self.part_rows * FIELDS:
            self.flush()
        if touch and ino and ino not in self._seen:
            self.first_touch(ino)
        self.row(OP[op], ino, **kw)
        self.records += 1

    def first_touch(self, ino: int) -> None:
        """The file's path and extent map, the first time mm hears of it."""
        self._seen.add(ino)
        size = 0
        if self.size_of is not None:
            try:
                size = int(self.size_of(ino))
            except Exception:  # noqa: BLE001 - a freed inode: no extents to record
                size = 0
        npages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        runs: list[int] = []
        self.shadow.forget(ino)
        if npages:
            blocks = np.asarray(self._image.bmap(ino, 0, npages), dtype=np.int64)
            runs = encode_runs(0, blocks)
            self.shadow.set_range(ino, 0, npages, blocks)
        path = self.path_of(ino) if self.path_of is not None else None
        if path is None:
            self._unnamed.add(ino)  # e.g. a create: mm hears of it before it has a name
        gen = 0
        get_gen = getattr(self._image, "inode_generation", None)
        if get_gen is not None:
            try:
                gen = int(get_gen(ino) or 0)
            except Exception:  # noqa: BLE001 - a freed inode: generation unknown
                gen = 0
        self._gens[ino] = gen
        self.row(OP["file"], ino, arg=size, gen=gen, text=path, runs=runs)

    def name_files(self) -> None:
        """`path` records for files first touched before they had a name (at a call
        boundary: before each tick and at the end)."""
        if not self._unnamed or self.path_of is None:
            return
        for ino in sorted(self._unnamed):
            path = self.path_of(ino)
            if path is not None:
                self._unnamed.discard(ino)
                self.row(OP["path"], ino, gen=self._gens.get(ino, 0), text=path)

    def flush(self) -> None:
        """Hand the buffered records to the writer thread (a call boundary)."""
        buf = self._buf.take()
        self._last_part_us = self.now_us
        self._writer.submit(buf)

    def maybe_flush(self) -> None:
        if self.now_us - self._last_part_us >= self.part_us:
            self.flush()

    def close(self) -> None:
        """Write the last part and wait for the writer."""
        if self.closed:
            return
        self.closed = True
        self.flush()
        self._writer.close()
        if self._writer.error is not None:
            raise OSError(
                f"trace {self.directory}: a part could not be written: {self._writer.error}"
            )

    def wrap(self, mm: Any) -> RecordingMM:
        return RecordingMM(self, mm)


class RecordingMM:
    """MemoryManager as the FUSE layer sees it: each state-changing call recorded, then run."""

    def __init__(self, rec: Recorder, mm: Any) -> None:
        self._rec = rec
        self._mm = mm
        self._warned: set[str] = set()
        self._mm_read = mm.read
        self._mm_write = mm.write
        self._now_ns = rec.now_ns
        self._seen = rec._seen
        self._data = rec._data
        # array.frombytes(struct.pack(...)): a third of array.extend(tuple)'s cost.
        self._put = rec._data.frombytes
        self._pack = struct.Struct("=5q").pack
        self._max = rec.part_rows * FIELDS

    @property
    def recorder(self) -> Recorder:
        return self._rec

    def __setattr__(self, name: str, value: Any) -> None:
        """The proxy's own fields start with `_`; anything else is a MemoryManager
        setting (e.g. ctl promote-cap): recorded, then assigned on mm."""
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self._rec.call("setattr", text=json.dumps([name, value]))
        setattr(self._mm, name, value)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._mm, name)
        if name in CALLS and callable(value):
            wrapper = self._plain_call(name, value)
            self.__dict__[name] = wrapper  # found directly from now on
            return wrapper
        if callable(value) and name not in PASS_THROUGH and name not in self._warned:
            # A call this recorder does not know: the replay will not see it.
            self._warned.add(name)
            log.warning("trace: MemoryManager.%s is not recorded (replay may diverge)", name)
        return value

    def _plain_call(self, name: str, method: Any) -> Any:
        """A recording wrapper of a CALLS method: its arguments into their columns."""
        sig = inspect.signature(method)
        fields = CALLS[name]
        rec = self._rec

        def call(*args: Any, **kw: Any) -> Any:
            bound = sig.bind(*args, **kw)
            bound.apply_defaults()
            values = dict(zip(fields, bound.args, strict=False))
            rec.call(
                name,
                int(values.get("ino") or 0),
                page=int(values.get("page") or 0),
                arg=int(values.get("arg") or 0),
                text=None if values.get("text") is None else str(values["text"]),
            )
            return method(*args, **kw)

        call.__name__ = name
        return call

    def read(self, ino: int, offset: int, length: int) -> Any:
        # The request path: a clock reading and one append of five int64s.
        now = self._now_ns() // 1000
        self._rec.now_us = now
        if ino not in self._seen:
            self._rec.first_touch(ino)
        elif len(self._data) >= self._max:
            self._rec.flush()
        self._put(self._pack(now, _READ, ino, offset, length))
        return self._mm_read(ino, offset, length)

    def write(self, ino: int, offset: int, data: Any) -> None:
        now = self._now_ns() // 1000
        self._rec.now_us = now
        if ino not in self._seen:
            self._rec.first_touch(ino)
        elif len(self._data) >= self._max:
            self._rec.flush()
        length = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        self._put(self._pack(now, _WRITE, ino, offset, length))
        return self._mm_write(ino, offset, data)

    def truncate(self, ino: int, new_size: int, *args: Any) -> None:
        """`args`: a reason, when this mm takes one (truncate or o_trunc): kept in `text`."""
        mm = self._mm
        rec = self._rec
        rec.call("truncate", ino, arg=new_size, text=str(args[0]) if args else None)
        out = mm.truncate(ino, new_size, *args)
        rec.shadow.drop_from(ino, (new_size + PAGE_SIZE - 1) >> PAGE_SHIFT)
        return out

    def evict_inode(self, ino: int) -> None:
        rec = self._rec
        rec.call("evict_inode", ino, touch=False)  # an evicted file needs no extents
        rec._seen.discard(ino)
        rec._unnamed.discard(ino)
        out = self._mm.evict_inode(ino)
        rec.shadow.forget(ino)
        return out

    def tick(self) -> None:
        rec = self._rec
        rec.now_us = rec.now_ns() // 1000
        rec.name_files()
        rec.call("tick")
        out = self._mm.tick()
        rec.maybe_flush()
        return out

    def close(self) -> None:
        rec = self._rec
        if getattr(self._mm, "_closed", False):
            return self._mm.close()
        rec.now_us = rec.now_ns() // 1000
        rec.name_files()
        rec.call("close")
        try:
            return self._mm.close()
        finally:
            rec.close()


PROGRAMMED = "programmed.npy"


def save_programmed(directory: str, programmed: np.ndarray) -> None:
    """The blocks in use when the recording started (one bit each): the device model's
    starting state (which blocks hold programmed data), for the replay's model."""
    bits = np.packbits(np.asarray(programmed, dtype=bool))
    tmp = os.path.join(directory, PROGRAMMED + ".tmp.npy")
    np.save(tmp, bits)
    os.rename(tmp, os.path.join(directory, PROGRAMMED))
