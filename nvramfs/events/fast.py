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
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa

from . import schema
from .loader import FIELDS, LINE, parse_chunk, parse_lines
from .reader import ReadReport, check_log

CHUNK_BYTES = 8 << 20
# The event type of the thin skeleton rows (FAULT lines).
THIN_EV = schema.FAULT
WORKERS = 2
# Lines given to the NDJSON reader at once (bounds the memory of a log the templates miss).
ACCURATE_LINES = 8192

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
_SCAN_BASE = pl.DataFrame(schema=_SCAN_SCHEMA)
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
    loaded: int = 0  # lines given to the NDJSON reader


def skeleton(full: pl.DataFrame) -> pl.DataFrame:
    """The skeleton (`Split.skel`) of full rows: every row of a chunk that has no thin one,
    or of any frame of events (`_line`: its own, else the row's number)."""
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
    split = _split([full], [], None, report)
    split.loaded = full.height
    return split


def _split(
    accurate: list[pl.DataFrame],
    parts: list[pl.DataFrame],
    thin: pl.DataFrame | None,
    report: ReadReport,
) -> Split:
    """A `Split` of the rows of the accurate path (frames with every column), of the
    templates (theirs only) and the thin rows."""
    special = pl.concat([a.filter(pl.col("ev").is_in(SPECIAL)) for a in accurate])
    full = _merge([*(a.select(SCAN_COLS) for a in accurate), *parts])
    skel = skeleton(full)
    if thin is not None and thin.height:
        skel = skel.merge_sorted(thin, key=LINE) if skel.height else thin
    return Split(full, skel, special, report)


_local = threading.local()


def _lines(data: bytes, end: int) -> tuple[pl.Series, np.ndarray]:
    """The lines of `data[:end]` (which ends with a newline), each with its newline, and the
    offset where each starts (one more at the end)."""
    mask = getattr(_local, "mask", None)
    if mask is None or len(mask) < end:  # one per thread, reused: no page faults per chunk
        mask = _local.mask = np.empty(max(end, CHUNK_BYTES), np.bool_)
    np.equal(np.frombuffer(data, np.uint8, count=end), 10, out=mask[:end])
    ends = np.flatnonzero(mask[:end])
    offs = np.empty(len(ends) + 1, np.int32)
    offs[0] = 0
    offs[1:] = ends + 1
    arr = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offs), pa.py_buffer(data))
    return pl.Series("l", arr), offs


def _typed(value: pl.Expr, key: str) -> pl.Expr:
    """The text of one value a template matched, as the dtype `FIELDS` gives `key`."""
    dt = FIELDS[key]
    if dt == pl.Boolean:
        return (value == "true").alias(key)
    if dt == pl.Int64 or dt == pl.Float64:
        return value.cast(dt).alias(key)
    return value.str.strip_chars('"').alias(key)  # a bare word in quotes


def _cut(lines: pl.Series, keys: list[str], *, rest: bool = False) -> pl.DataFrame:
    """Lines a template matched, cut at their commas: field i is `"keys[i]":value` (the
    first after `{`). A template's values hold no comma, so the cut is exact; with
    `rest`, the text after the last key's value is one more column, `rest`."""
    n = len(keys)
    parts = lines.str.splitn(",", n + 1) if rest else lines.str.split_exact(",", n - 1)
    fields = parts.struct.unnest()
    names = fields.columns
    cols = []
    for i, k in enumerate(keys):
        value = pl.col(names[i]).str.slice(len(k) + (4 if i == 0 else 3))
        if not rest and i >= n - 2:  # may be the last value: strip the line's end
            value = value.str.strip_suffix("}\n")
        cols.append(_typed(value, k))
    if rest:
        cols.append(pl.col(names[n]).alias("rest"))
    return fields.select(cols)


_MOVE_KEYS = ["v", *_HEAD_COLS, *(k for k, _ in _MOVE_FIELDS), "via"]
_ACCESS_HEAD = ["v", *_HEAD_COLS, *(k for k, _ in _ACCESS_FIELDS[:4])]


def _moves(frame: pl.DataFrame) -> pl.DataFrame:
    """Page-event lines (`MOVE`) as rows, with their `_line`."""
    return _cut(frame["l"], _MOVE_KEYS).with_columns(frame[LINE])


def _int_list(text: pl.Expr, name: str) -> pl.Expr:
    """`1,2,3` (the inside of a list a template matched) -> a list of int64."""
    return (
        pl.when(text.str.len_bytes() > 0)
        .then(text.str.split(",").cast(pl.List(pl.Int64), strict=False))
        .otherwise(pl.lit([], dtype=pl.List(pl.Int64)))
        .alias(name)
    )


def _access(frame: pl.DataFrame, report: ReadReport) -> pl.DataFrame:
    """Access lines (`ACCESS`) as rows; one whose reads or writes are not one per page is
    malformed (the reader's rule), counted and dropped."""
    df = _cut(frame["l"], _ACCESS_HEAD, rest=True)
    # rest: "pages":[..],"reads":[..],"writes":[..]}\n
    lists = df["rest"].str.split_exact('],"', 2).struct.unnest()
    a, b, c = lists.columns
    lists = lists.select(
        _int_list(pl.col(a).str.slice(len('"pages":[')), "pages"),
        _int_list(pl.col(b).str.slice(len('reads":[')), "reads"),
        _int_list(pl.col(c).str.slice(len('writes":[')).str.strip_suffix("]}\n"), "writes"),
    )
    df = pl.concat([df.drop("rest"), lists], how="horizontal").with_columns(frame[LINE])
    n = pl.col("pages").list.len()
    good = df.filter((pl.col("reads").list.len() == n) & (pl.col("writes").list.len() == n))
    report.lines += df.height
    report.events += good.height
    report.malformed += df.height - good.height
    return good


def split_chunk(data: bytes, end: int | None = None, *, last: bool = False) -> Split:
    """Whole lines of a log, `data[:end]` (`last`: the final piece, without its newline),
    as a `Split`."""
    report = ReadReport()
    if end is None:
        end = len(data)
    if last or not end:
        return _accurate(data[:end], report, last=last)
    if not data.isascii():
        try:
            data[:end].decode()  # polars holds only valid UTF-8
        except UnicodeDecodeError:
            return _accurate(data[:end], report)
    lines, offs = _lines(data, end)
    line_no = pl.int_range(pl.len(), dtype=pl.UInt32).alias(LINE)
    frame = pl.DataFrame([lines]).with_columns(line_no)
    is_fault = lines.str.contains(FAULT)
    rest = frame.filter(~is_fault)
    is_move = rest["l"].str.contains(MOVE)
    is_acc = rest["l"].str.contains(ACCESS)
    parts = []
    other = rest.filter(~is_move & ~is_acc)[LINE].to_list()
    # The other lines by the loader, a slice at a time: all the columns of the schema
    # are made for them, and a log of no template is all other lines.
    accurate = []
    for k in range(0, max(1, len(other)), ACCURATE_LINES):
        nos = other[k : k + ACCURATE_LINES]
        raws = [data[offs[i] : offs[i + 1] - 1] for i in nos]
        accurate.append(parse_lines(raws, nos, report))
    moves = rest.filter(is_move)
    if moves.height:
        parts.append(_moves(moves))
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
    split.loaded = len(other)
    split.skel = _thin_ends(split.skel, lines)
    return split


def _merge(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The rows of the parts in file order, with the columns of `SCAN_COLS`."""
    base = _SCAN_BASE
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
    one more than there are workers at a time, so memory stays bounded
    whatever the log's size. A log whose lines are mostly not templates
    (another writer's) is read one chunk at a time: the NDJSON reader's
    memory, once.
    """
    p = check_log(path)
    if report is None:
        report = ReadReport()
    pending: list[Future[Split]] = []
    ahead = WORKERS + 1
    with open(p, "rb") as f, ThreadPoolExecutor(WORKERS) as pool:
        for data, end, last in _blocks(f, chunk):
            pending.append(pool.submit(split_chunk, data, end, last=last))
            while len(pending) >= ahead:
                split = _done(pending.pop(0), report)
                if 2 * split.loaded > split.skel.height:
                    ahead = 1
                yield split
        while pending:
            yield _done(pending.pop(0), report)


def _blocks(f: BinaryIO, chunk: int) -> Iterator[tuple[bytes, int, bool]]:
    """(data, end, last): `data[:end]` is whole lines (`last`: the final piece, without its
    newline). The part of a read after its last newline is read again with the next
    chunk (a seek back), so no chunk is copied."""
    carry = b""
    seekable = f.seekable()
    while True:
        block = f.read(chunk)
        if carry:
            block, carry = carry + block, b""
        if not block:
            return
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # no line end: a line longer than a chunk, or the torn end of the log
            more = f.read(chunk)
            if not more:
                yield block, len(block), True
                return
            carry = block + more
            continue
        yield block, cut, False
        if cut < len(block):
            if seekable:
                f.seek(cut - len(block), os.SEEK_CUR)
            else:
                carry = block[cut:]


def join(splits: list[Split]) -> Split:
    """Consecutive splits as one (the scan aggregates a few chunks at a time: fewer, larger
    steps). Their reports stay with them."""
    if len(splits) == 1:
        return splits[0]
    off = 0
    fulls, skels, specials = [], [], []
    for sp in splits:
        shift = (pl.col(LINE) + off).cast(pl.UInt32)
        fulls.append(sp.full.with_columns(shift))
        skels.append(sp.skel.with_columns(shift))
        specials.append(sp.special.with_columns(shift))
        if sp.skel.height:
            off += int(sp.skel[LINE].max()) + 1  # type: ignore[arg-type]
    return Split(pl.concat(fulls), pl.concat(skels), pl.concat(specials), ReadReport())


def _done(fut: Future[Split], report: ReadReport) -> Split:
    split = fut.result()
    report.add(split.report)
    return split
