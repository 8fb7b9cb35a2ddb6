"""The columnar loader: an event log as polars DataFrames, with an explicit schema.

A log is read in chunks of whole lines (`iter_frames`), each parsed by
polars' native NDJSON reader against `FIELDS`, one column per field of
docs/EVENTS.md; a chunk polars refuses (a torn line, garbage, a field of the
wrong type) is parsed again line by line by `reader.parse_line`, so damage is
skipped and counted exactly as the streaming reader counts it. Event types
this version does not know are rows too (their known fields filled, the rest
dropped): a newer writer's log stays readable.

`load(path)` is the notebook entry point: one DataFrame, one row per accepted
event, with the session number, the session's image uuid, the time on the
log's axis, each file's identity (uuid, ino, gen) and its path joined.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import polars as pl

from . import schema
from .reader import ReadReport, check_log, parse_line, well_typed

# The fields of every event type (docs/EVENTS.md), by name. Objects whose keys
# are open-ended (the counters' faults, accesses, migrations, writebacks) are
# kept as their JSON text and decoded where they are used (few rows: one
# counters event a second). Another event type adds its fields here.
FIELDS: dict[str, pl.DataType | type[pl.DataType]] = {
    "v": pl.Int64,
    "seq": pl.Int64,
    "t": pl.Float64,
    "ev": pl.String,
    # mount
    "image": pl.String,
    "uuid": pl.String,
    "dram_pages": pl.Int64,
    "page_size": pl.Int64,
    "policy": pl.String,
    "pte_special": pl.Boolean,
    "cache": pl.String,
    "sim": pl.Boolean,
    "recovered": pl.Boolean,
    "wall": pl.Float64,
    "mountpoint": pl.String,
    "kernel": pl.String,
    "medium": pl.String,
    "lost_dirty_pages": pl.Int64,
    "lost_dirty_files": pl.Int64,
    "lost_dirty": pl.String,  # JSON text: a list of {ino, pages, path}
    "lost_dirty_as_of": pl.Float64,
    # file and page
    "ino": pl.Int64,
    "gen": pl.Int64,
    "path": pl.String,
    "index": pl.Int64,
    "from": pl.String,
    "to": pl.String,
    "pfn_from": pl.Int64,
    "pfn_to": pl.Int64,
    "reason": pl.String,
    "via": pl.String,
    "refcount": pl.Int64,
    "mapcount": pl.Int64,
    # access
    "t0": pl.Float64,
    "t1": pl.Float64,
    "pages": pl.List(pl.Int64),
    "reads": pl.List(pl.Int64),
    "writes": pl.List(pl.Int64),
    # counters
    "faults": pl.String,
    "accesses": pl.String,
    "migrations": pl.String,
    "writebacks": pl.String,
    "modelled_ns": pl.String,  # JSON text (counters, wear): nanoseconds by kind
    "frames_used": pl.Int64,
    "dirty": pl.Int64,
    "struct_page_bytes_used": pl.Int64,
    "struct_page_bytes_avoided": pl.Int64,
    # drop, zero, xip_write (issue 10's events)
    "first": pl.Int64,
    "pfns": pl.List(pl.Int64),
    "xip_unmapped": pl.Int64,
    "home": pl.String,
    "pfn": pl.Int64,
    "offset": pl.Int64,
    "length": pl.Int64,
    # mark (a phase starts), wear (the device model at unmount)
    "name": pl.String,
    "modelled_ns_total": pl.Int64,
    "bytes_written_back": pl.Int64,
    "bytes_programmed": pl.Int64,
    "bytes_erased": pl.Int64,
    "erases": pl.Int64,
    "write_amplification": pl.String,  # JSON text: {"programmed", "erased"}
    "worst_sectors": pl.String,  # JSON text: a list of {sector, first_block, erases, programs}
    "lifetime_years": pl.Float64,
    "seconds": pl.Float64,
    "sector_pages": pl.Int64,
    "nr_sectors": pl.Int64,
    "sectors_per_bin": pl.Int64,
    "erase_bins": pl.List(pl.Int64),
    "program_bins": pl.List(pl.Int64),
    # fault
    "kind": pl.String,
    "write": pl.Boolean,
    # error, unmount
    "what": pl.String,
    "fatal": pl.Boolean,
    "clean": pl.Boolean,
}
_JSON_FIELDS = ("faults", "accesses", "migrations", "writebacks")
_SCHEMA = pl.Schema(FIELDS)

CHUNK_BYTES = 8 << 20
_EMPTY: list[pl.DataFrame] = []  # empty_frame(), made once per schema


def register_fields(fields: dict[str, Any]) -> None:
    """Add the fields of a new event type (name -> polars dtype) to the schema."""
    global _SCHEMA
    for k, dt in fields.items():
        if k in FIELDS and FIELDS[k] != dt:
            raise ValueError(f"field {k} is already {FIELDS[k]}")
        FIELDS[k] = dt
    _SCHEMA = pl.Schema(FIELDS)
    _EMPTY.clear()


def empty_frame() -> pl.DataFrame:
    """No rows, every column of the schema (made once: a frame of ~100 columns costs)."""
    if not _EMPTY:
        _EMPTY.append(pl.DataFrame(schema=_SCHEMA))
    return _EMPTY[0]


def _read_ndjson(data: bytes) -> pl.DataFrame:
    if not data or (len(data) < 64 and not data.strip()):
        return empty_frame()
    return pl.read_ndjson(io.BytesIO(data), schema=_SCHEMA)


def _bad_counters(df: pl.DataFrame) -> pl.Series:
    """Counters rows whose objects are not objects of ints (decoded in Python: few rows)."""
    is_c = df["ev"] == schema.COUNTERS
    rows = df.filter(is_c).select(*_JSON_FIELDS).rows()
    bad_c = []
    for objs in rows:
        ev: dict[str, Any] = {"ev": schema.COUNTERS, "t": 0.0}
        try:
            for k, text in zip(_JSON_FIELDS, objs, strict=True):
                if text is not None:
                    ev[k] = json.loads(text)
        except ValueError:
            bad_c.append(True)
            continue
        bad_c.append(not well_typed(ev))
    bad = pl.Series([False] * df.height, dtype=pl.Boolean)
    idx = is_c.arg_true()
    if len(idx):
        bad = bad.scatter(idx, pl.Series(bad_c, dtype=pl.Boolean))
    return bad


def _accept(df: pl.DataFrame, report: ReadReport) -> pl.DataFrame:
    """Count and drop the rows the reader would skip: not events, other versions, malformed."""
    n = df.height
    report.lines += n
    if n == 0:
        return df
    not_event = pl.col("v").is_null() | pl.col("ev").is_null()
    other = ~not_event & (pl.col("v") != schema.SCHEMA_VERSION)
    acc = pl.col("ev") == schema.ACCESS
    n_pages = pl.col("pages").list.len().fill_null(0)
    malformed = (
        ~not_event
        & ~other
        & (
            pl.col("t").is_null()
            | (acc & pl.col("reads").is_not_null() & (pl.col("reads").list.len() != n_pages))
            | (acc & pl.col("writes").is_not_null() & (pl.col("writes").list.len() != n_pages))
        )
    )
    flags = df.select(not_event.alias("ne"), other.alias("ov"), malformed.alias("mf"))
    mf = flags["mf"]
    if (df["ev"] == schema.COUNTERS).any():
        mf = mf | (_bad_counters(df) & ~flags["ne"] & ~flags["ov"])
    report.not_event += int(flags["ne"].sum())
    if flags["ov"].any():
        for v, k in df.filter(flags["ov"]).group_by("v").len().rows():
            report.other_version[v] = report.other_version.get(v, 0) + k
    report.malformed += int(mf.sum())
    keep = ~(flags["ne"] | flags["ov"] | mf)
    out = df.filter(keep)
    report.events += out.height
    return out


def _slow_frame(data: bytes, report: ReadReport, *, last: bool = False) -> pl.DataFrame:
    """Line by line (damaged data): the reader's rules, then polars for the accepted events."""
    return _slow_rows(data.split(b"\n"), None, report, last=last)


def _slow_rows(
    lines: list[bytes], nos: list[int] | None, report: ReadReport, *, last: bool = False
) -> pl.DataFrame:
    """`_slow_frame` of lines (without newlines); with `nos`, each row gets its line's number
    as `_line`."""
    good: list[bytes] = []
    good_nos: list[int] = []
    for i, raw in enumerate(lines):
        ev = parse_line(raw, report, last=last and i == len(lines) - 1)
        if ev is not None:
            good.append(json.dumps(ev, separators=(",", ":")).encode())
            good_nos.append(nos[i] if nos is not None else i)
    if not good:
        return empty_frame() if nos is None else _with_line(empty_frame(), [])
    try:
        df = _read_ndjson(b"\n".join(good))
        if df.height == len(good):
            return df if nos is None else _with_line(df, good_nos)
    except pl.exceptions.PolarsError:
        pass
    frames = []
    for line, no in zip(good, good_nos, strict=True):
        try:  # a field polars cannot type: that one event is malformed
            one = _read_ndjson(line)
        except pl.exceptions.PolarsError:
            report.events -= 1
            report.malformed += 1
            continue
        frames.append(one if nos is None else _with_line(one, [no]))
    if frames:
        return pl.concat(frames)
    return empty_frame() if nos is None else _with_line(empty_frame(), [])


def _with_line(df: pl.DataFrame, nos: list[int]) -> pl.DataFrame:
    return df.with_columns(pl.Series(LINE, nos, dtype=pl.UInt32))


# The column that numbers the lines of a chunk (the scan's fast path merges rows by it).
LINE = "_line"


def parse_lines(lines: list[bytes], nos: list[int], report: ReadReport) -> pl.DataFrame:
    """Whole lines (without their newlines), numbered `nos` -> the accepted events, each with
    its line's number in `_line`, by the rules of `parse_chunk` (polars for clean lines, the
    reader's rules line by line when any is damaged)."""
    keep = [(raw, no) for raw, no in zip(lines, nos, strict=True) if raw.strip()]
    raws = [raw for raw, _ in keep]
    knos = [no for _, no in keep]
    if not raws:
        return _with_line(empty_frame(), [])
    try:
        df = _read_ndjson(b"\n".join(raws) + b"\n")
    except pl.exceptions.PolarsError:
        return _slow_rows(raws, knos, report)
    if df.height != len(raws):  # not one row per line: the reader's rules decide
        return _slow_rows(raws, knos, report)
    return _accept(_with_line(df, knos), report)


def parse_chunk(data: bytes, report: ReadReport, *, last: bool = False) -> pl.DataFrame:
    """Whole lines of a log -> the accepted events (`report` counts the rest).

    `last` marks data whose final line had no newline (the torn-line rule).
    """
    if last:
        head, sep, tail = data.rpartition(b"\n")
        front = parse_chunk(head + sep, report) if sep else empty_frame()
        if not tail.strip():
            return front
        return pl.concat([front, _slow_frame(tail, report, last=True)])
    try:
        df = _read_ndjson(data)
    except pl.exceptions.PolarsError:
        return _slow_frame(data.rstrip(b"\n"), report)
    return _accept(df, report)


def iter_frames(
    path: str | os.PathLike[str], report: ReadReport | None = None, chunk: int = CHUNK_BYTES
) -> Iterator[pl.DataFrame]:
    """The accepted events of the log at `path`, a DataFrame per chunk of lines, in file order.

    A missing or unreadable file is a one-line NvramfsError. The log is read to
    its current end (a log being written is read as far as it is written).
    """
    p = check_log(path)
    if report is None:
        report = ReadReport()
    with open(p, "rb") as f:
        pending = b""
        while True:
            block = f.read(chunk)
            if not block:
                break
            data = pending + block
            cut = data.rfind(b"\n")
            if cut < 0:
                pending = data
                continue
            pending = data[cut + 1 :]
            df = parse_chunk(data[: cut + 1], report)
            if df.height:
                yield df
        if pending:
            df = parse_chunk(pending, report, last=True)
            if df.height:
                yield df


def frame_of_events(events: list[dict[str, Any]]) -> pl.DataFrame:
    """Events already parsed (dicts, e.g. from `reader.read_events`) as one DataFrame."""
    if not events:
        return empty_frame()
    data = "\n".join(json.dumps(e, separators=(",", ":")) for e in events).encode()
    return parse_chunk(data + b"\n", ReadReport())


def load(path: str | os.PathLike[str], report: ReadReport | None = None) -> pl.DataFrame:
    """The whole log as one DataFrame: one row per accepted event (docs/EVENTS.md).

    Columns: every field of `FIELDS` (absent fields are null), then `session`
    (1-based, in file order), `t_log` (seconds on the log's axis: sessions
    placed by their wall clock, never overlapping), `image_uuid` (the uuid of
    the session's mount, null for logs written before uuids were logged),
    `file_gen` (the generation of the inode the event names: its own `gen`,
    or that of the last `path` event of the inode in the session) and
    `file_path` (the last path logged for that identity).
    """
    from .analysis import annotate

    frames = list(iter_frames(path, report))
    df = pl.concat(frames) if frames else empty_frame()
    return annotate(df)


def export_parquet(
    path: str | os.PathLike[str], out: str | os.PathLike[str], report: ReadReport | None = None
) -> int:
    """Write `load(path)` as Parquet (pyarrow); returns the number of rows."""
    df = load(path, report)
    df.write_parquet(os.fspath(out), use_pyarrow=True)
    return df.height
