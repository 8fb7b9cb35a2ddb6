"""The on-disk trace: a directory of Parquet parts and a JSON header (docs/TRACE.md).

    TRACE/header.json          {"format": "nvramfs-trace", "version": 1, "t0_us", "config": {...}}
    TRACE/part-000000.parquet  records, in stream order; each part is written to a
    TRACE/part-000001.parquet  temporary name and renamed when complete, so a crash
    ...                        loses at most the part being written

Every record is one row of the same wide table (one schema for every part, so
`pl.scan_parquet("TRACE/*.parquet")` and duckdb read the directory as one
table). `op` names the record: a MemoryManager method (`read`, `tick`, ...)
or one of the two records that describe the image (`file`, `map`). Columns a
record does not use hold 0 / null; zstd makes them free.

Buffers are plain `array.array` columns appended on the request path; a part
is built from them and written by a worker thread (`PartWriter`).
"""

from __future__ import annotations

import array
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from nvramfs.errors import NvramfsError

log = logging.getLogger(__name__)

FORMAT = "nvramfs-trace"
VERSION = 1
HEADER = "header.json"
PART_RE = re.compile(r"^part-(\d{6})\.parquet$")

# Record kinds, in code order (the code is the dictionary index written to `op`).
# A new kind is appended (never renumbered); a reader refuses kinds it does not know.
OPS = (
    "file",  # first touch of a file: ino, gen, arg=size, text=path, runs=its extent map
    "map",  # the image differs from what the trace said: seq=backing call, ino, runs,
    # flags bit0: blocks a writeback got (else: a change mm never saw, found by bmap)
    "read",  # MemoryManager.read: ino, page, npages, pgoff, nbytes
    "write",  # MemoryManager.write: ino, page, npages, pgoff, nbytes
    "truncate",  # MemoryManager.truncate: ino, arg=new size, text=reason (when given)
    "fsync",  # MemoryManager.fsync: ino
    "evict_inode",  # MemoryManager.evict_inode: ino
    "tick",  # MemoryManager.tick
    "sync_all",  # MemoryManager.sync_all: text=reason
    "demote_all",  # MemoryManager.demote_all: text=reason
    "set_policy",  # MemoryManager.set_policy: text=name
    "close",  # MemoryManager.close
    "promote",  # MemoryManager.promote: ino, page, text=reason
    "set_size",  # MemoryManager.set_size: ino, arg=size (the file size mm faults against)
    "balance_dirty_pages",  # MemoryManager.balance_dirty_pages: ino (after a write)
    "writeback_batch",  # MemoryManager.writeback_batch: text=reason (a flusher batch)
    "set_dram_budget",  # MemoryManager.set_dram_budget: arg=frames
    "setattr",  # a MemoryManager setting assigned: text=JSON [name, value]
    "path",  # a file's path, learnt after its first touch (a create names it later): ino, gen, text
)
OP = {name: code for code, name in enumerate(OPS)}

# Plain call records: the method's arguments, in order, and the column each is
# kept in (`ino`, `page`, `arg`: integers; `text`: a string). A MemoryManager call
# listed here (and in OPS) is recorded and replayed with no code of its own:
# the recording proxy wraps it, the replay calls the method of the same name.
CALLS: dict[str, tuple[str, ...]] = {
    "fsync": ("ino",),
    "sync_all": ("text",),
    "demote_all": ("text",),
    "set_policy": ("text",),
    "promote": ("ino", "page", "text"),
    "set_size": ("ino", "arg"),
    "balance_dirty_pages": ("ino",),
    "writeback_batch": ("text",),
    "set_dram_budget": ("arg",),
}

# (name, numpy dtype, array.array typecode) of the fixed-width columns.
COLUMNS = (
    ("t_us", np.int64, "q"),  # CLOCK_MONOTONIC, microseconds (DELTA_BINARY_PACKED on disk)
    ("op", np.int8, "b"),
    ("ino", np.int64, "q"),
    ("page", np.int64, "q"),  # first page index
    ("npages", np.int32, "i"),  # pages the request covers
    ("pgoff", np.int16, "h"),  # byte offset of the request in its first page
    ("nbytes", np.int64, "q"),  # request length in bytes
    ("arg", np.int64, "q"),  # a size (truncate, file)
    ("seq", np.int64, "q"),  # backing call number (map)
    ("flags", np.int8, "b"),
    ("gen", np.int64, "q"),  # file: the inode's generation (its identity with ino)
)


class TraceError(NvramfsError):
    """A trace that cannot be read: names the file and what is wrong (exit 1)."""


def arrow_schema() -> Any:
    import pyarrow as pa

    fields = []
    for name, dt, _ in COLUMNS:
        if name == "op":
            fields.append(pa.field("op", pa.dictionary(pa.int8(), pa.string()), nullable=False))
        else:
            fields.append(pa.field(name, pa.from_numpy_dtype(dt), nullable=False))
    fields.append(pa.field("text", pa.string()))
    fields.append(pa.field("runs", pa.list_(pa.int64())))
    return pa.schema(fields, metadata={b"nvramfs-trace-version": str(VERSION).encode()})


# Columns most records leave at 0: buffered sparsely (row -> value).
SPARSE = ("arg", "seq", "flags", "gen")
# Columns added within version 1: a part without them reads them as 0.
OPTIONAL = ("gen",)
# A buffered record is five int64s: time, op code, inode, byte offset (page and
# pgoff of a read/write; page << 12 of others), length in bytes. One
# `array.extend` per record on the request path; `npages` is computed when a
# part is built (from pgoff and nbytes; a file's from its size).
FIELDS = 5


class Buffer:
    """Records not yet written: five int64s each in one array, plus the sparse columns
    (`arg`, `seq`, `flags`, `text`, `runs`) of the few records that use them."""

    def __init__(self) -> None:
        self.data = array.array("q")
        self.sparse: dict[str, dict[int, Any]] = {name: {} for name in (*SPARSE, "text", "runs")}

    def __len__(self) -> int:
        return len(self.data) // FIELDS

    def add(self, t_us: int, op: int, ino: int, offset: int, nbytes: int) -> int:
        """Append one record; returns its row."""
        i = len(self.data) // FIELDS
        self.data.extend((t_us, op, ino, offset, nbytes))
        return i

    def take(self) -> Buffer:
        """Move the records out into a new Buffer; this one is empty again (the same
        array, so a bound `extend` stays valid)."""
        out = Buffer()
        out.data = array.array("q", self.data)
        del self.data[:]
        for name, d in self.sparse.items():
            out.sparse[name] = dict(d)
            d.clear()
        return out

    def columns(self) -> dict[str, np.ndarray]:
        a = np.frombuffer(self.data, dtype=np.int64).reshape(-1, FIELDS)
        op = a[:, 1].astype(np.int8)
        off, nbytes = a[:, 3], a[:, 4].copy()
        rw = (op == OP["read"]) | (op == OP["write"])
        npages = np.where(rw & (nbytes > 0), ((off & 4095) + nbytes + 4095) >> 12, 0)
        cols = {
            "t_us": a[:, 0].copy(),
            "op": op,
            "ino": a[:, 2].copy(),
            "page": off >> 12,
            "npages": npages.astype(np.int32),
            "pgoff": (off & 4095).astype(np.int16),
            "nbytes": nbytes,
        }
        n = len(a)
        for name, dt, _ in COLUMNS:
            if name in SPARSE:
                col = np.zeros(n, dtype=dt)
                d = self.sparse[name]
                if d:
                    col[np.fromiter(d.keys(), np.int64, len(d))] = list(d.values())
                cols[name] = col
        files = self.sparse["arg"]
        for i in np.flatnonzero(op == OP["file"]).tolist():
            cols["npages"][i] = (files.get(i, 0) + 4095) >> 12
        return cols

    def table(self) -> Any:
        """The buffered records as one Arrow table (the worker thread builds it)."""
        import pyarrow as pa

        n = len(self)
        cols = self.columns()
        arrays = []
        for name, dt, _ in COLUMNS:
            col = cols[name]
            if name == "op":
                arrays.append(
                    pa.DictionaryArray.from_arrays(
                        pa.array(col, type=pa.int8()), pa.array(OPS, type=pa.string())
                    )
                )
            else:
                arrays.append(pa.array(col.astype(dt, copy=False)))
        for name, typ in (("text", pa.string()), ("runs", pa.list_(pa.int64()))):
            values: list[Any] = [None] * n
            for i, v in self.sparse[name].items():
                values[i] = v
            arrays.append(pa.array(values, type=typ))
        return pa.Table.from_arrays(arrays, schema=arrow_schema())


def write_header(directory: str, t0_us: int, config: dict[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if PART_RE.match(name) or name == HEADER or name.endswith(".tmp"):
            raise NvramfsError(f"trace {directory}: already holds a trace (give a new directory)")
    head = {"format": FORMAT, "version": VERSION, "t0_us": t0_us, "config": config}
    tmp = os.path.join(directory, HEADER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(head, f, indent=1, sort_keys=True)
        f.write("\n")
    os.rename(tmp, os.path.join(directory, HEADER))


def write_part(directory: str, number: int, table: Any) -> str:
    """One complete part: written under a temporary name, then renamed."""
    import pyarrow.parquet as pq

    name = os.path.join(directory, f"part-{number:06d}.parquet")
    tmp = name + ".tmp"
    pq.write_table(
        table,
        tmp,
        compression="zstd",
        compression_level=6,
        use_dictionary=["op", "text"],
        column_encoding={"t_us": "DELTA_BINARY_PACKED", "seq": "DELTA_BINARY_PACKED"},
        row_group_size=1 << 20,
    )
    os.rename(tmp, name)
    return name


class PartWriter:
    """Writes parts from a worker thread, in order; the request path only hands buffers over."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.parts = 0
        self.rows = 0
        self.error: BaseException | None = None
        self._q: queue.Queue[Buffer | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="trace-writer", daemon=True)
        self._thread.start()

    def submit(self, buf: Buffer) -> None:
        if len(buf):
            self._q.put(buf)

    def _run(self) -> None:
        while True:
            buf = self._q.get()
            if buf is None:
                return
            try:
                write_part(self.directory, self.parts, buf.table())
                self.parts += 1
                self.rows += len(buf)
            except BaseException as exc:  # noqa: BLE001 - reported once, recording stops
                if self.error is None:
                    log.exception("trace: cannot write a part into %s", self.directory)
                self.error = exc

    def close(self) -> None:
        """Wait for every part handed over to be on disk."""
        self._q.put(None)
        self._thread.join()


# ---------------------------------------------------------------- reading


@dataclass
class Header:
    path: str
    version: int
    t0_us: int
    config: dict[str, Any]


def read_header(directory: str) -> Header:
    """The header, or a TraceError naming what is wrong."""
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise TraceError(f"{directory}: not a trace (a trace is a directory)")
        raise TraceError(f"{directory}: no such trace")
    path = os.path.join(directory, HEADER)
    try:
        with open(path) as f:
            head = json.load(f)
    except FileNotFoundError:
        raise TraceError(f"{path}: missing (not an nvramfs trace)") from None
    except (OSError, ValueError) as exc:
        raise TraceError(f"{path}: unreadable ({exc})") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise TraceError(f"{path}: not an nvramfs trace header")
    version = head.get("version")
    if not isinstance(version, int):
        raise TraceError(f"{path}: no version")
    if version > VERSION:
        raise TraceError(
            f"{path}: trace version {version} is newer than this nvramfs reads ({VERSION})"
        )
    config = head.get("config")
    if not isinstance(config, dict) or not isinstance(head.get("t0_us"), int):
        raise TraceError(f"{path}: header lacks the configuration")
    return Header(directory, version, int(head["t0_us"]), config)


def part_files(directory: str) -> list[str]:
    """The complete parts in order; a gap in the numbering is an error (a lost part)."""
    numbered = []
    for name in os.listdir(directory):
        m = PART_RE.match(name)
        if m:
            numbered.append((int(m.group(1)), name))
    numbered.sort()
    for want, (got, name) in enumerate(numbered):
        if want != got:
            raise TraceError(
                f"{os.path.join(directory, name)}: part {want:06d} before it is missing"
            )
    return [os.path.join(directory, name) for _, name in numbered]


def cut_parts(directory: str) -> list[str]:
    """Parts that were being written when the recording stopped (a crash)."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".parquet.tmp"))


@dataclass
class Part:
    """One part as numpy columns (op as codes of OPS) plus the sparse text/runs."""

    path: str
    cols: dict[str, np.ndarray]
    text: dict[int, str]
    runs: dict[int, list[int]]

    def __len__(self) -> int:
        return len(self.cols["t_us"])


def read_part(path: str) -> Part:
    """Read and check one part (TraceError on anything foreign, cut or unknown)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # One file, one thread: ParquetFile reads it as one chunk per column (the
        # numpy columns below are then views) without the dataset machinery
        # read_table sets up (most of a short replay's first read).
        with pq.ParquetFile(path) as f:
            table = f.read(use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise TraceError(f"{path}: not a readable Parquet part ({_one_line(exc)})") from None
    names = set(table.column_names)
    want = {name for name, _, _ in COLUMNS if name not in OPTIONAL} | {"text", "runs"}
    if not want <= names:
        raise TraceError(f"{path}: not a trace part (columns {sorted(want - names)} missing)")
    op = table.column("op").combine_chunks()
    if not pa.types.is_dictionary(op.type):
        raise TraceError(f"{path}: column op is not a dictionary of record names")
    names_in = op.dictionary.to_pylist()
    for name in names_in:
        if name not in OP:
            raise TraceError(f"{path}: unknown record kind {name!r} (written by a newer nvramfs?)")
    remap = np.array([OP[name] for name in names_in], dtype=np.int8)
    codes = op.indices.to_numpy(zero_copy_only=False)
    cols: dict[str, np.ndarray] = {"op": remap[codes] if len(codes) else codes.astype(np.int8)}
    for name, dt, _ in COLUMNS:
        if name == "op":
            continue
        if name not in names:  # an OPTIONAL column a part written before it lacks
            cols[name] = np.zeros(table.num_rows, dtype=dt)
            continue
        col = table.column(name)
        if col.null_count:
            raise TraceError(f"{path}: column {name} has nulls")
        cols[name] = col.to_numpy().astype(dt, copy=False)
    return Part(path, cols, _sparse(table.column("text")), _sparse(table.column("runs")))


def _sparse(col: Any) -> dict[int, Any]:
    """Row -> value of a mostly-null column (only the rows that have one)."""
    import pyarrow.compute as pc

    if col.null_count == len(col):
        return {}
    rows = pc.indices_nonzero(pc.is_valid(col)).to_pylist()
    return dict(zip(rows, col.take(rows).to_pylist(), strict=True))


def iter_parts(directory: str) -> Iterator[Part]:
    for path in part_files(directory):
        yield read_part(path)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


# ---------------------------------------------------------------- runs


def encode_runs(first: int, blocks: np.ndarray) -> list[int]:
    """[page, count, block, ...] for the mapped pages of blocks[] (page first+i): one
    triple per run of consecutive pages on consecutive blocks; holes are left out."""
    b = np.asarray(blocks, dtype=np.int64)
    if not len(b):
        return []
    mapped = b > 0
    if not mapped.any():
        return []
    # A run starts where a mapped page does not continue the previous one.
    cont = np.zeros(len(b), dtype=bool)
    cont[1:] = mapped[1:] & mapped[:-1] & (b[1:] - b[:-1] == 1)
    starts = np.flatnonzero(mapped & ~cont)
    ends = np.append(starts[1:], len(b))
    out = np.empty((len(starts), 3), dtype=np.int64)
    for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        n = s + int(np.count_nonzero(cont[s + 1 : e])) + 1
        out[k] = (first + s, n - s, b[s])
    return out.reshape(-1).tolist()


def encode_pairs(indices: np.ndarray, blocks: np.ndarray) -> list[int]:
    """[page, count, block, ...] for arbitrary (page, block) pairs, holes included
    (block 0): consecutive pages coalesce when their blocks are consecutive or both 0."""
    idx = np.asarray(indices, dtype=np.int64)
    b = np.asarray(blocks, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    runs: list[int] = []
    for i, v in zip(idx[order].tolist(), b[order].tolist(), strict=True):
        if runs and runs[-3] + runs[-2] == i:
            last = runs[-1]
            if (last == 0 and v == 0) or (last and v == last + runs[-2]):
                runs[-2] += 1
                continue
        runs += [i, 1, v]
    return runs


def decode_runs(runs: list[int]) -> Iterator[tuple[int, int, int]]:
    for k in range(0, len(runs), 3):
        yield runs[k], runs[k + 1], runs[k + 2]
