"""Traces in and out: libCacheSim's CSV and oracleGeneral formats (docs/TRACE.md).

Export writes one row per page access, in replay order (the accesses of
nvramfs.trace.policies): object id `(ino << 32) | index`, size 4096, time in
whole seconds since the trace's start (monotonic). `oracle` is libCacheSim's
oracleGeneral binary: 24 bytes a request, little-endian
`uint32 time, uint64 obj_id, uint32 obj_size, int64 next_access_vtime`, the
next access as the virtual time (request number, from 1) of the next request
for the same object, -1 for none (what its Belady reads).

Import makes an nvramfs trace from such a file, with no image: every page is
data (each distinct page gets its own block), every request one page access
(its size is not looked at), a tick record per second of trace time (at
most 300 per gap). Ids of the form `(ino << 32) | index` with 0 < ino < 2^31
keep their inode and page; other ids are renumbered as pages of inode 1 in
order of first appearance (a hit ratio does not depend on names).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from nvramfs.errors import NvramfsError, UsageError

from .format import OP, Buffer, TraceError, iter_parts, read_header, write_header, write_part
from .policies import part_accesses

FORMATS = ("libcachesim", "oracle")
ORACLE = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next", "<i8")])
CSV_HEADER = ["time", "obj_id", "obj_size", "op"]
# libCacheSim's CSV reader: 1-based fields of CSV_HEADER (ReaderInitParam).
CSV_FIELDS = {"time_field": 1, "obj_id_field": 2, "obj_size_field": 3, "has_header": True}
MAX_TICKS_PER_GAP = 300


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: use one of {', '.join(FORMATS)}")


def export_accesses(trace: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(obj_id, time in seconds since the start, is_write) of every page access."""
    head = read_header(trace)
    ids, times, writes = [], [], []
    for part in iter_parts(trace):
        c = part.cols
        keys = part_accesses(c)
        op = c["op"]
        rw = (op == OP["read"]) | (op == OP["write"])
        arg = c["arg"]
        tail = (op == OP["truncate"]) & ((arg & 4095) != 0) & ((c["flags"] & 1) != 0)
        counts = np.where(rw, c["npages"].astype(np.int64), np.where(tail, 1, 0))
        ids.append(keys)
        times.append(np.repeat(c["t_us"], counts))
        writes.append(np.repeat(op != OP["read"], counts))
    if not ids:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z.astype(bool)
    t = np.concatenate(times) - head.t0_us
    t = np.maximum.accumulate(np.maximum(t, 0)) // 1_000_000
    return np.concatenate(ids), t, np.concatenate(writes)


def next_vtime(ids: np.ndarray) -> np.ndarray:
    """For each request, the virtual time (1-based request number) of the next request
    for the same object; -1 for none."""
    from nvramfs.mm.policy import NEVER, Future

    nxt = Future(ids).next
    return np.where(nxt == NEVER, -1, nxt + 1)


def export_trace(trace: str, fmt: str, out: str) -> int:
    """Write `trace`'s page accesses to `out` in `fmt`; returns the number of requests."""
    _check_format(fmt)
    ids, t, writes = export_accesses(trace)
    tmp = out + ".tmp"
    try:
        if fmt == "oracle":
            if len(t) and int(t.max()) >= 1 << 32:
                raise NvramfsError(f"{trace}: longer than the oracle format's 32-bit time")
            rec = np.zeros(len(ids), dtype=ORACLE)
            rec["time"], rec["obj_id"], rec["obj_size"] = t, ids, 4096
            rec["next"] = next_vtime(ids)
            rec.tofile(tmp)
        else:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(CSV_HEADER)
                ops = np.where(writes, "write", "read")
                w.writerows(
                    zip(t.tolist(), ids.tolist(), [4096] * len(ids), ops.tolist(), strict=True)
                )
        os.replace(tmp, out)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise NvramfsError(f"{out}: {exc.strerror or exc}") from None
    return len(ids)


def read_requests(path: str, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(obj_id, time, is_write) of a libCacheSim CSV or oracleGeneral file (TraceError: exit 1)."""
    _check_format(fmt)
    try:
        if fmt == "oracle":
            size = os.path.getsize(path)
            if size % ORACLE.itemsize:
                raise TraceError(
                    f"{path}: not an oracleGeneral file ({size} bytes is not a whole number "
                    f"of {ORACLE.itemsize}-byte requests)"
                )
            rec = np.fromfile(path, dtype=ORACLE)
            rec = rec[rec["obj_size"] > 0]  # libCacheSim skips size-0 requests too
            t = rec["time"].astype(np.int64)
            return rec["obj_id"].astype(np.uint64), t, np.zeros(len(rec), dtype=bool)
        ids, times, writes = [], [], []
        with open(path, newline="") as f:
            rows = csv.reader(f)
            for no, row in enumerate(rows, 1):
                if not row or (no == 1 and not row[0].strip().lstrip("-").isdigit()):
                    continue  # a header line
                try:
                    times.append(int(float(row[0])))
                    ids.append(int(row[1]))
                except (IndexError, ValueError):
                    raise TraceError(
                        f"{path}:{no}: not `time,obj_id[,obj_size[,op]]`: {','.join(row)[:80]!r}"
                    ) from None
                writes.append(len(row) > 3 and row[3].strip().lower() in ("write", "w", "set"))
        return np.array(ids, dtype=np.uint64), np.array(times, dtype=np.int64), np.array(writes)
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a CSV text file") from None


def import_trace(path: str, fmt: str, out: str, *, dram_pages: int = 16384) -> int:
    """Make an nvramfs trace directory `out` from a libCacheSim file; returns the requests."""
    ids, t, writes = read_requests(path, fmt)
    n = len(ids)
    ino = (ids >> np.uint64(32)).astype(np.int64)
    index = (ids & np.uint64(0xFFFFFFFF)).astype(np.int64)
    if n and not (int(ino.min()) > 0 and int(ino.max()) < 1 << 31):
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        ino, index = np.ones(n, dtype=np.int64), rank[inverse.reshape(-1)]
    t = np.maximum.accumulate(np.maximum(t - (int(t[0]) if n else 0), 0)) if n else t
    # Every page is data: the pages of each file get consecutive blocks from 1.
    files: dict[int, int] = {}
    for i in np.unique(ino).tolist():
        files[i] = int(index[ino == i].max()) + 1
    nr_blocks = sum(files.values()) + 16
    t0 = 1_000_000_000
    config = {
        "dram_pages": dram_pages,
        "policy": "lru",
        "writeback_seconds": 5.0,
        "tick_seconds": 1.0,
        "cache": "direct",
        "pte_special": True,
        "nr_blocks": nr_blocks,
        "image": None,
        "imported": {"file": os.path.abspath(path), "format": fmt, "requests": n},
    }
    try:
        write_header(out, t0, config)
    except OSError as exc:
        raise NvramfsError(f"{out}: {exc.strerror or exc}") from None
    buf = Buffer()
    block = 1
    for i, npages in files.items():
        row = buf.add(t0, OP["file"], i, 0, 0)
        buf.sparse["arg"][row] = npages * 4096
        buf.sparse["text"][row] = f"/imported/{i}"
        buf.sparse["runs"][row] = [0, npages, block]
        block += npages
    last = 0
    tick, read, write = OP["tick"], OP["read"], OP["write"]
    for sec, i, pg, w in zip(
        t.tolist(), ino.tolist(), index.tolist(), writes.tolist(), strict=True
    ):
        if sec > last:
            for s in range(max(last + 1, sec - MAX_TICKS_PER_GAP + 1), sec + 1):
                buf.add(t0 + s * 1_000_000, tick, 0, 0, 0)
            last = sec
        buf.add(t0 + sec * 1_000_000, write if w else read, i, pg << 12, 4096)
    buf.add(t0 + (last + 1) * 1_000_000, OP["close"], 0, 0, 0)
    write_part(out, 0, buf.table())
    return n


def libcachesim_reader(path: str, fmt: str) -> Any:
    """A libCacheSim TraceReader of a file this module wrote (tests, docs)."""
    import libcachesim as lcs

    if fmt == "oracle":
        return lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
    params = lcs.ReaderInitParam(has_header=True, has_header_set=True, delimiter=",")
    params.time_field = CSV_FIELDS["time_field"]
    params.obj_id_field = CSV_FIELDS["obj_id_field"]
    params.obj_size_field = CSV_FIELDS["obj_size_field"]
    return lcs.TraceReader(path, lcs.TraceType.CSV_TRACE, params)
