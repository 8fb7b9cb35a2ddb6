"""The scan's fast path: the lines the writer writes most, parsed a column at a time.

A log with per-fault tracing is mostly `fault` lines, then `migrate`, `cow`,
`writeback` and `access`; the writer formats each of them from one template
(`writer._PAGE_FMT`, the encoder's key order). A line that is *exactly* such a
template -- every key in its place, every number a plain JSON integer that
fits int64 or a short decimal, every string a bare word, nothing else -- is
JSON that every parser reads the same way, so its fields can be cut out of
the line with vectorised string operations instead of a JSON parser:

- `fault` lines (`FAULT`) become a thin skeleton row: their line number and
  `seq` only. The scan needs nothing else of them: they are counted, they
  cut sessions (a `seq` that starts over), and the last line of a session
  gives its duration (`t`, parsed for those few lines only);
- page events (`MOVE`) and `access` histograms (`ACCESS`) become full rows
  with the same columns and dtypes the NDJSON loader gives them;
- every other line (mounts, counters, paths, damage, a field in another
  order, another writer's log) goes through `loader.parse_lines`, the
  accurate path, with the reader's rules for skipped lines.

So the rows, the skipped-line counts and every number are those of the
accurate path (tests/events/test_fast.py holds them side by side). Chunks are
cut into lines with numpy, matched with polars' regex engine (which releases
the GIL), and two chunks are worked on at once, one per core.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from . import schema
from .loader import FIELDS, LINE, parse_chunk, parse_lines
from .reader import ReadReport, check_log

CHUNK_BYTES = 16 << 20
# The event type of the thin skeleton rows (FAULT lines).
THIN_EV = schema.FAULT
WORKERS = 2

# JSON values all parsers read alike: integers of at most 18 digits (int64),
# decimals of at most 15 significant digits with a small exponent (exact in
# any correctly rounding or Clinger fast-path parser), bare words, booleans.
_INT = r"(-?(?:0|[1-9][0-9]{0,17}))"
_NUM = r"(-?(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,6})?(?:[eE][-+]?0?[0-9])?)"
_WORD = r'"([A-Za-z0-9_]*)"'
_BOOL = r"(true|false)"
_LIST = r"(\[(?:-?(?:0|[1-9][0-9]{0,17})(?:,-?(?:0|[1-9][0-9]{0,17}))*)?\])"


def _template(ev: str, fields: list[tuple[str, str]], tail: str = "") -> str:
    """A regex for the whole line (with its newline) of one template, a group per value."""
    head = rf'^\{{"v":{schema.SCHEMA_VERSION},"seq":{_INT},"t":{_NUM},"ev":"({ev})"'
    body = "".join(f',"{k}":{pat}' for k, pat in fields)
    return f"(?-u){head}{body}{tail}\\}}\\n$"


FAULT = _template(schema.FAULT, [("ino", _INT), ("index", _INT), ("kind", _WORD), ("write", _BOOL)])
_MOVE_FIELDS = [
    ("ino", _INT),
    ("index", _INT),
    ("pfn_from", _INT),
    ("pfn_to", _INT),
    ("from", _WORD),
    ("to", _WORD),
    ("reason", _WORD),
    ("refcount", _INT),
    ("mapcount", _INT),
]
MOVE = _template(
    f"{schema.MIGRATE}|{schema.COW}|{schema.WRITEBACK}",
    _MOVE_FIELDS,
    tail=rf'(?:,"via":{_WORD})?',
)
_ACCESS_FIELDS = [
    ("ino", _INT),
    ("gen", _INT),
    ("t0", _NUM),
    ("t1", _NUM),
    ("pages", _LIST),
    ("reads", _LIST),
    ("writes", _LIST),
]
ACCESS = _template(schema.ACCESS, _ACCESS_FIELDS)

_HEAD_COLS = ["seq", "t", "ev"]
_MOVE_COLS = [*_HEAD_COLS, *(k for k, _ in _MOVE_FIELDS), "via"]
_ACCESS_COLS = [*_HEAD_COLS, *(k for k, _ in _ACCESS_FIELDS)]
_PREFIX = len(f'{{"v":{schema.SCHEMA_VERSION},"seq":')


# The columns a scan aggregates: the full rows of a `Split` carry only these.
SCAN_COLS = (
    LINE,
    "seq",
    "t",
    "ev",
    "ino",
    "gen",
    "path",
    "from",
    "to",
    "reason",
    "via",
    "fatal",
    "pages",
    "reads",
    "writes",
    "frames_used",
)
_SCAN_SCHEMA = {c: pl.UInt32 if c == LINE else FIELDS[c] for c in SCAN_COLS}
# The events that shape sessions, kept whole (`Split.special`).
SPECIAL = (schema.MOUNT, schema.UNMOUNT, schema.COUNTERS, schema.MARK, schema.WEAR)


@dataclass
class Split:
    """One chunk of a log as the scan takes it.

    `full`: the accepted events that are rows (every line but the thin ones),
    in file order, with `_line` and the columns of `SCAN_COLS`. `skel`: every
    accepted event in file order: `_line`, `seq`, `t` (null for a thin line
    that does not end a session in this chunk), `mount` and `thin` (a `fault`
    line, counted but not a row). `special`: the full rows of `SPECIAL` types
    with every column of the schema.
    """

    full: pl.DataFrame
    skel: pl.DataFrame
    special: pl.DataFrame
    report: ReadReport


_SKEL_SCHEMA = {
    LINE: pl.UInt32,
    "seq": pl.Int64,
    "t": pl.Float64,
    "mount": pl.Boolean,
    "thin": pl.Boolean,
}


def skeleton(full: pl.DataFrame) -> pl.DataFrame:
    """The skeleton of rows that are all full (no thin line)."""
    line = pl.col(LINE) if LINE in full.columns else pl.int_range(pl.len(), dtype=pl.UInt32)
    return full.select(
        line.cast(pl.UInt32).alias(LINE),
        pl.col("seq"),
        pl.col("t"),
        (pl.col("ev") == schema.MOUNT).fill_null(False).alias("mount"),
        pl.lit(False).alias("thin"),
    )


def _accurate(data: bytes, report: ReadReport, *, last: bool = False) -> Split:
    """A chunk the fast path does not take (not UTF-8): all of it by the loader's rules."""
    full = parse_chunk(data, report, last=last)
    full = full.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias(LINE))
    return _split(full, [], None, report)


def _split(
    accurate: pl.DataFrame, parts: list[pl.DataFrame], thin: pl.DataFrame | None, report: ReadReport
) -> Split:
    """A `Split` of the rows of the accurate path (every column), of the templates (theirs
    only) and the thin rows."""
    special = accurate.filter(pl.col("ev").is_in(SPECIAL))
    full = _merge([accurate.select(SCAN_COLS), *parts])
    skel = skeleton(full)
    if thin is not None and thin.height:
        skel = skel.merge_sorted(thin, key=LINE) if skel.height else thin
    return Split(full, skel, special, report)


def _lines(data: bytes) -> tuple[pl.Series, np.ndarray]:
    """The lines of `data` (which ends with a newline), each with its newline, and the offset
    where each starts (one more at the end)."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
    offs = np.empty(len(ends) + 1, np.int32)
    offs[0] = 0
    offs[1:] = ends + 1
    arr = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offs), pa.py_buffer(data))
    return pl.Series("l", arr), offs


def _groups(frame: pl.DataFrame, pattern: str, cols: list[str]) -> pl.DataFrame:
    """The groups of a template in the lines `frame.l` as columns named `cols`, with the
    dtypes of `FIELDS` (lists stay text), and the lines' `_line`."""
    parts = frame["l"].str.extract_groups(pattern).struct.unnest()
    parts.columns = cols

    def typed(c: str) -> pl.Expr:
        dt = FIELDS[c]
        if dt == pl.Boolean:
            return pl.col(c) == "true"
        if dt == pl.Int64 or dt == pl.Float64:
            return pl.col(c).cast(dt)
        return pl.col(c)

    return parts.with_columns(
        *(typed(c) for c in cols),
        pl.lit(schema.SCHEMA_VERSION, dtype=pl.Int64).alias("v"),
        frame[LINE],
    )


def _int_list(col: str) -> pl.Expr:
    """`[1,2,3]` (text a template matched) -> a list of int64."""
    c = pl.col(col)
    inner = c.str.slice(1, c.str.len_bytes() - 2)
    return (
        pl.when(inner.str.len_bytes() > 0)
        .then(inner.str.split(",").cast(pl.List(pl.Int64), strict=False))
        .otherwise(pl.lit([], dtype=pl.List(pl.Int64)))
        .alias(col)
    )


def _access(frame: pl.DataFrame, report: ReadReport) -> pl.DataFrame:
    """Access lines as rows; one whose reads or writes are not one per page is malformed
    (the reader's rule), counted and dropped."""
    df = _groups(frame, ACCESS, _ACCESS_COLS).with_columns(
        _int_list("pages"), _int_list("reads"), _int_list("writes")
    )
    n = pl.col("pages").list.len()
    good = df.filter((pl.col("reads").list.len() == n) & (pl.col("writes").list.len() == n))
    report.lines += df.height
    report.events += good.height
    report.malformed += df.height - good.height
    return good


def split_chunk(data: bytes, *, last: bool = False) -> Split:
    """Whole lines of a log (`last`: the final piece, without its newline) as a `Split`."""
    report = ReadReport()
    if last or not data:
        return _accurate(data, report, last=last)
    if not data.isascii():
        try:
            data.decode()  # polars holds only valid UTF-8
        except UnicodeDecodeError:
            return _accurate(data, report)
    lines, offs = _lines(data)
    line_no = pl.int_range(pl.len(), dtype=pl.UInt32).alias(LINE)
    frame = pl.DataFrame([lines]).with_columns(line_no)
    is_fault = lines.str.contains(FAULT)
    rest = frame.filter(~is_fault)
    is_move = rest["l"].str.contains(MOVE)
    is_acc = rest["l"].str.contains(ACCESS)
    parts = []
    other = rest.filter(~is_move & ~is_acc)[LINE].to_list()
    raws = [data[offs[i] : offs[i + 1] - 1] for i in other]
    accurate = parse_lines(raws, other, report)
    moves = rest.filter(is_move)
    if moves.height:
        parts.append(_groups(moves, MOVE, _MOVE_COLS))
        report.lines += moves.height
        report.events += moves.height
    acc = rest.filter(is_acc)
    if acc.height:
        parts.append(_access(acc, report))
    # The thin rows: seq from the line's text (`{"v":1,"seq":` is its first 13 bytes).
    faults = frame.filter(is_fault)
    thin = faults.select(
        pl.col(LINE),
        pl.col("l")
        .str.slice(_PREFIX, pl.col("l").str.find(',"t":', literal=True) - _PREFIX)
        .str.to_integer()
        .alias("seq"),
        pl.lit(None, dtype=pl.Float64).alias("t"),
        pl.lit(False).alias("mount"),
        pl.lit(True).alias("thin"),
    )
    report.lines += thin.height
    report.events += thin.height
    split = _split(accurate, parts, thin, report)
    split.skel = _thin_ends(split.skel, lines)
    return split


def _merge(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The rows of the parts in file order, with the columns of `SCAN_COLS`."""
    base = pl.DataFrame(schema=_SCAN_SCHEMA)
    parts = [p.select(c for c in p.columns if c in _SCAN_SCHEMA) for p in parts if p.height]
    if not parts:
        return base
    df = pl.concat([base, *parts], how="diagonal_relaxed")
    return df if len(parts) == 1 else df.sort(LINE)


def _thin_ends(skel: pl.DataFrame, lines: pl.Series) -> pl.DataFrame:
    """Fill `t` of the thin rows that end a session inside the chunk (and of the last row)."""
    seq = skel["seq"]
    prev = seq.shift(1)
    new = skel["mount"] | (prev.is_not_null() & seq.is_not_null() & (seq <= prev)).fill_null(False)
    ends = skel["thin"] & new.shift(-1, fill_value=True)
    idx = ends.arg_true()
    if not len(idx):
        return skel
    nos = skel[LINE].gather(idx).to_list()
    ts = [float(json.loads(lines[no])["t"]) for no in nos]
    return skel.with_columns(skel["t"].scatter(idx, pl.Series(ts, dtype=pl.Float64)))


def iter_splits(
    path: str | os.PathLike[str], report: ReadReport | None = None, chunk: int = CHUNK_BYTES
) -> Iterator[Split]:
    """The log at `path` as `Split`s, in file order; `report` counts what was skipped.

    Chunks are cut at line ends and worked on by `WORKERS` threads, at most
    two per worker at a time, so memory stays bounded whatever the log's size.
    """
    p = check_log(path)
    if report is None:
        report = ReadReport()
    pending: list[Future[Split]] = []
    with open(p, "rb") as f, ThreadPoolExecutor(WORKERS) as pool:

        def blocks() -> Iterator[tuple[bytes, bool]]:
            tail = b""
            while True:
                block = f.read(chunk)
                if not block:
                    break
                data = tail + block
                cut = data.rfind(b"\n")
                if cut < 0:
                    tail = data
                    continue
                tail = data[cut + 1 :]
                yield data[: cut + 1], False
            if tail:
                yield tail, True

        for data, last in blocks():
            pending.append(pool.submit(split_chunk, data, last=last))
            if len(pending) > 2 * WORKERS:
                yield _done(pending.pop(0), report)
        while pending:
            yield _done(pending.pop(0), report)


def _done(fut: Future[Split], report: ReadReport) -> Split:
    split = fut.result()
    report.add(split.report)
    return split
