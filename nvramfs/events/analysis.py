"""The analysis engine: every number `nvramfs log`, `plot`, `demo` and `stat` print.

Definitions (docs/EVENTS.md, "Numbers"), each computed in one place here:

- the pagecache hit ratio: `hit_ratio` (page accesses a pagecache frame
  served, over all page accesses);
- a session: the events from one `mount` to the next; its time runs from its
  own mount to its own last event (`SessionInfo.duration`); several sessions
  are placed on one axis by their mount's wall clock, never overlapping;
- a file: (image uuid, inode number, inode generation). Logs written before
  uuid and generation were logged name a file by (session, inode);
- one image per result: the sessions of a log written by several images
  (`mkfs --force` appends to the old log) are split by uuid (`choose`).

The engine reads a log once, in chunks (`loader.iter_frames`), and keeps only
per-chunk aggregates keyed by session (`Scan`), so a log of ten million
events is summarised in bounded memory; `annotate` gives the same columns to
the whole-log DataFrame of `loader.load`.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from . import schema
from .fast import CHUNK_BYTES, SCAN_COLS, THIN_EV, Split, iter_splits, join, skeleton
from .loader import LINE, frame_of_events
from .numbers import hit_ratio
from .reader import ReadReport

__all__ = ["Scan", "Sessions", "SessionInfo", "hit_ratio", "summarize", "summarize_log"]

PAGE_SIZE = 4096


# --------------------------------------------------------------------------- sessions


@dataclass
class SessionInfo:
    """What the engine keeps of one mount session (the events themselves are aggregated)."""

    number: int
    mount: dict[str, Any] | None = None
    duration: float = 0.0  # t of the session's last event
    offset: float = 0.0  # start on the log's axis
    events: int = 0
    unmount: dict[str, Any] | None = None
    counters: list[dict[str, Any]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    wear: dict[str, Any] | None = None

    @property
    def uuid(self) -> str | None:
        u = (self.mount or {}).get("uuid")
        return u if isinstance(u, str) else None

    @property
    def clean(self) -> bool:
        u = self.unmount
        return bool(u and u.get("clean", True) is not False)

    @property
    def end(self) -> float:
        return self.offset + self.duration


_DICT_COLS = ("faults", "accesses", "migrations", "writebacks", "modelled_ns")
# The device model's `wear` event (JSON text columns, decoded like _DICT_COLS).
_WEAR_JSON = ("write_amplification", "worst_sectors")
_WEAR_COLS = (
    "modelled_ns_total",
    "bytes_written_back",
    "bytes_programmed",
    "bytes_erased",
    "erases",
    "lifetime_years",
    "seconds",
    "sector_pages",
    "nr_sectors",
    "sectors_per_bin",
    "erase_bins",
    "program_bins",
    *_WEAR_JSON,
)
_ROW_COLS = (
    "seq",
    "t",
    "ev",
    "image",
    "uuid",
    "dram_pages",
    "page_size",
    "policy",
    "pte_special",
    "cache",
    "sim",
    "recovered",
    "wall",
    "mountpoint",
    "kernel",
    "medium",
    "clean",
    "frames_used",
    "dirty",
    "struct_page_bytes_used",
    "struct_page_bytes_avoided",
    "name",
    *_DICT_COLS,
    *_WEAR_COLS,
)


def _row_dict(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if v is not None}
    for k in (*_DICT_COLS, *_WEAR_JSON):
        if k in out:
            out[k] = json.loads(out[k])
    return out


class Sessions:
    """Cuts the rows of a log into sessions as they stream by, and places them in time.

    A session starts at a `mount` event or where `seq` starts over. Its offset
    on the log's axis is its mount's wall clock relative to the first one's,
    but never before the previous session's end.
    """

    def __init__(self) -> None:
        self.infos: list[SessionInfo] = []
        self._last_seq: int | None = None
        self._end = 0.0
        self._wall0: float | None = None
        self._gens: dict[tuple[int, int], int] = {}

    def _start(self, info: SessionInfo) -> None:
        if self.infos:
            self._end = self.infos[-1].end
        wall = (info.mount or {}).get("wall")
        start = self._end
        if isinstance(wall, int | float):
            if self._wall0 is None:
                self._wall0 = float(wall) - self._end
            start = max(self._end, float(wall) - self._wall0)
        info.offset = start
        self.infos.append(info)

    def annotate(self, df: pl.DataFrame) -> pl.DataFrame:
        """Add `session`, `t_log`, `image_uuid`, `file_gen`, `fkey` to one chunk's rows."""
        return self.annotate_split(df)[0]

    def annotate_split(
        self,
        df: pl.DataFrame,
        skel: pl.DataFrame | None = None,
        special: pl.DataFrame | None = None,
        *,
        narrow: bool = False,
    ) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """`annotate` of a chunk given as a `fast.Split`: `skel` all its events in file
        order, `df` the full rows among them, `special` its mounts, unmounts, counters,
        marks and wears with every column (else they are taken from `df`). Also returns
        how many thin rows each session has (columns `session`, `len`), or None.
        `narrow` keeps only the columns a scan needs (`fast.SCAN_COLS`)."""
        if skel is None:
            skel = skeleton(df)
        if skel.height == 0:
            return _with_annotations(df), None
        seq = skel["seq"]
        prev = seq.shift(1)
        if self._last_seq is not None:
            prev = prev.scatter(0, self._last_seq)
        new = skel["mount"] | (prev.is_not_null() & seq.is_not_null() & (seq <= prev)).fill_null(
            False
        )
        if not self.infos:
            new = new.scatter(0, True)
        base = len(self.infos)
        new_np = new.to_numpy()
        session_np = (np.cumsum(new_np, dtype=np.int64) + base).astype(np.int32)
        session = pl.Series("session", session_np)
        # The previous event's seq, whatever chunk it was in (None when it had none).
        self._last_seq = seq[-1]
        # Sessions are runs of rows: where each starts and ends in this chunk.
        starts = np.flatnonzero(new_np)
        if not len(starts) or starts[0] != 0:
            starts = np.concatenate(([0], starts))
        ends = np.append(starts[1:], len(new_np))
        t_np = skel["t"].to_numpy()
        per = list(
            zip(
                session_np[starts].tolist(),
                t_np[ends - 1].tolist(),
                (ends - starts).tolist(),
                strict=True,
            )
        )
        thin = None
        thin_np = skel["thin"].to_numpy()
        if thin_np.any():
            thin = pl.DataFrame(
                {
                    "session": session_np[starts],
                    "len": np.add.reduceat(thin_np.astype(np.uint32), starts),
                }
            ).filter(pl.col("len") > 0)
            df = df.with_columns(pl.Series("session", session_np[~thin_np]))
        else:
            df = df.with_columns(session)
        # The few rows that shape sessions: mounts, unmounts, counters.
        kinds = [schema.MOUNT, schema.UNMOUNT, schema.COUNTERS, schema.MARK, schema.WEAR]
        if special is None:
            special = df.filter(pl.col("ev").is_in(kinds)).select("session", *_ROW_COLS)
        else:  # each special row's session: where its line is in the skeleton (sorted)
            at = np.searchsorted(skel[LINE].to_numpy(), special[LINE].to_numpy())
            special = special.select(pl.Series("session", session_np[at]), *_ROW_COLS)
        if narrow:
            df = df.select(c for c in df.columns if c in _NARROW)
        special_rows: dict[int, list[dict[str, Any]]] = {}
        for row in special.iter_rows(named=True):
            special_rows.setdefault(row.pop("session"), []).append(_row_dict(row))
        for number, last_t, n in per:
            if number > len(self.infos):
                rows = special_rows.get(number, [])
                mount = next((r for r in rows if r["ev"] == schema.MOUNT), None)
                self._start(SessionInfo(number, mount=mount))
            info = self.infos[number - 1]
            info.events += n
            info.duration = float(last_t) if last_t is not None else info.duration
            for r in special_rows.get(number, []):
                if r["ev"] == schema.UNMOUNT:
                    info.unmount = r
                elif r["ev"] == schema.COUNTERS:
                    info.counters.append(r)
                elif r["ev"] == schema.MARK:
                    info.marks.append(r)
                elif r["ev"] == schema.WEAR:
                    info.wear = r
                elif r["ev"] == schema.MOUNT and info.mount is None:
                    info.mount = r
        numbers = [n for n, _, _ in per]
        offsets = {n: self.infos[n - 1].offset for n in numbers}
        uuids = {n: self.infos[n - 1].uuid for n in numbers}
        df = df.with_columns(
            (
                pl.col("t") + pl.col("session").replace_strict(offsets, return_dtype=pl.Float64)
            ).alias("t_log"),
            pl.col("session")
            .replace_strict(uuids, default=None, return_dtype=pl.String)
            .alias("image_uuid"),
        )
        # The generation of the inode an event names: its own, or the last path event's.
        is_path = pl.col("ev") == schema.PATH
        if (df["ev"] == schema.PATH).any():  # most chunks have none: skip the window
            ff = pl.when(is_path).then(pl.col("gen")).forward_fill().over("session", "ino")
        else:
            ff = pl.lit(None, dtype=pl.Int64)
        df = df.with_columns(ff.alias("_ff"))
        if self._gens:
            carry = pl.DataFrame(
                {
                    "session": [k[0] for k in self._gens],
                    "ino": [k[1] for k in self._gens],
                    "_carry": list(self._gens.values()),
                },
                schema={"session": pl.Int32, "ino": pl.Int64, "_carry": pl.Int64},
            )
            df = df.join(carry, on=["session", "ino"], how="left", maintain_order="left")
        else:
            df = df.with_columns(pl.lit(None, dtype=pl.Int64).alias("_carry"))
        # Without the image's uuid (older logs) a file is (session, ino): no generation.
        df = df.with_columns(
            pl.when(pl.col("image_uuid").is_not_null())
            .then(pl.coalesce("gen", "_ff", "_carry"))
            .otherwise(None)
            .alias("file_gen")
        ).drop("_ff", "_carry")
        for s, ino, g in (
            df.filter(is_path & pl.col("gen").is_not_null() & pl.col("ino").is_not_null())
            .group_by("session", "ino", maintain_order=True)
            .agg(pl.col("gen").last())
            .rows()
        ):
            self._gens[(s, ino)] = g
        return df.with_columns(_fkey()), thin


def _fkey() -> pl.Expr:
    """0 for a file known by (uuid, ino, gen); else its session (older logs)."""
    return (
        pl.when(pl.col("image_uuid").is_null() | pl.col("file_gen").is_null())
        .then(pl.col("session"))
        .otherwise(0)
        .cast(pl.Int32)
        .alias("fkey")
    )


_IDENT = ["image_uuid", "ino", "file_gen", "fkey"]
_NARROW = frozenset((*SCAN_COLS, "session"))
# Chunks aggregated at once by `Scan.of_log` (each step has a fixed cost), up to
# so many full rows (memory).
_BATCH = 4
_BATCH_ROWS = 50_000


def _with_annotations(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(
        pl.lit(None, dtype=pl.Int32).alias("session"),
        pl.lit(None, dtype=pl.Float64).alias("t_log"),
        pl.lit(None, dtype=pl.String).alias("image_uuid"),
        pl.lit(None, dtype=pl.Int64).alias("file_gen"),
        pl.lit(None, dtype=pl.Int32).alias("fkey"),
    )


def annotate(df: pl.DataFrame, sessions: Sessions | None = None) -> pl.DataFrame:
    """A whole log's rows with sessions, log time, identities and `file_path` joined."""
    sessions = sessions or Sessions()
    df = sessions.annotate(df)
    names = (
        df.filter((pl.col("ev") == schema.PATH) & pl.col("path").is_not_null())
        .group_by(_IDENT, maintain_order=True)
        .agg(pl.col("path").last().alias("file_path"))
    )
    return df.join(names, on=_IDENT, how="left", maintain_order="left", nulls_equal=True)


# --------------------------------------------------------------------------- choosing sessions


def pick(infos: list[SessionInfo], which: str) -> list[SessionInfo]:
    """`all`, `last`, or a 1-based number (a UsageError if there is no such session)."""
    from nvramfs.errors import UsageError

    if which == "all" or not infos:
        return infos
    if which == "last":
        return infos[-1:]
    try:
        n = int(which)
    except ValueError:
        raise UsageError(f"--session {which}: use a number, 'last' or 'all'") from None
    if not 1 <= n <= len(infos):
        raise UsageError(f"--session {n}: the log has {len(infos)} session(s)")
    return [infos[n - 1]]


def choose(infos: list[SessionInfo], which: str) -> tuple[list[SessionInfo], str | None]:
    """The sessions a result is made of, and a note when some were left out.

    Never two images in one result: when `all` spans sessions of several
    images (known by their uuid), only the last image's sessions are kept.
    """
    chosen = pick(infos, which)
    uuids = list(dict.fromkeys(s.uuid for s in chosen if s.uuid))
    if len(uuids) <= 1:
        return chosen, None
    keep = [s for s in chosen if s.uuid == uuids[-1]]
    nums = [s.number for s in keep]
    span = f"{nums[0]}" if len(nums) == 1 else f"{nums[0]}-{nums[-1]}"
    note = (
        f"the log holds sessions of {len(uuids)} images (mkfs --force appends to the old log); "
        f"this is image {uuids[-1]} (session{'s' if len(nums) > 1 else ''} {span}); "
        "--session N reads another"
    )
    return keep, note


def time_axis(chosen: list[SessionInfo]) -> tuple[str, float]:
    """The time column and the duration of a result: one session runs on its own clock."""
    if len(chosen) == 1:
        return "t", chosen[0].duration
    return "t_log", max((s.end for s in chosen), default=0.0)


# --------------------------------------------------------------------------- the scan


_MOVES = (schema.MIGRATE, schema.COW, schema.WRITEBACK)


def _direction_expr() -> pl.Expr:
    return (
        pl.when((pl.col("from") == schema.XIP) & (pl.col("to") == schema.PAGECACHE))
        .then(pl.lit("promote"))
        .when((pl.col("from") == schema.PAGECACHE) & (pl.col("to") == schema.XIP))
        .then(pl.lit("demote"))
        .otherwise(
            pl.concat_str(
                pl.col("from").fill_null("None"), pl.lit("->"), pl.col("to").fill_null("None")
            )
        )
    )


def _concat(parts: list[pl.DataFrame]) -> pl.DataFrame | None:
    parts = [p for p in parts if p.height]
    return pl.concat(parts, how="vertical_relaxed") if parts else None


class Scan:
    """One pass over a log: per-session aggregates of everything a result needs.

    `unit` is the time resolution of the timeline (seconds): every bucket
    width the summary chooses is a multiple of 0.5 s, the default.
    """

    def __init__(self, unit: float = 0.5) -> None:
        self.unit = unit
        self.sessions = Sessions()
        self.report = ReadReport()
        self._by_event: list[pl.DataFrame] = []
        self._moves: list[pl.DataFrame] = []
        self._file_moves: list[pl.DataFrame] = []
        self._pages: list[pl.DataFrame] = []
        self._timeline: list[pl.DataFrame] = []
        self._paths: list[pl.DataFrame] = []
        self._errors: list[pl.DataFrame] = []
        self._chunk = 0

    @classmethod
    def of_log(
        cls, path: str | os.PathLike[str], unit: float = 0.5, chunk: int = CHUNK_BYTES
    ) -> Scan:
        """One pass over the log at `path`, by the fast path (`fast`), `chunk` bytes at a time."""
        scan = cls(unit)
        batch: list[Split] = []
        rows = 0
        for split in iter_splits(path, scan.report, chunk):
            batch.append(split)
            rows += split.full.height
            if len(batch) == _BATCH or rows >= _BATCH_ROWS:
                joined = join(batch)
                scan.add(joined.full, joined.skel, joined.special)
                batch.clear()
                rows = 0
        if batch:
            joined = join(batch)
            scan.add(joined.full, joined.skel, joined.special)
        scan.finish()
        return scan

    @classmethod
    def of_events(
        cls, events: Iterable[dict[str, Any]], report: ReadReport | None = None, unit: float = 0.5
    ) -> Scan:
        scan = cls(unit)
        if report is not None:
            scan.report = report
        scan.add(frame_of_events(list(events)))
        scan.finish()
        return scan

    def add(
        self,
        df: pl.DataFrame,
        skel: pl.DataFrame | None = None,
        special: pl.DataFrame | None = None,
    ) -> None:
        """Aggregate one chunk's rows (a chunk's events, or a `fast.Split`'s parts)."""
        if df.height == 0 and (skel is None or skel.height == 0):
            return
        self._chunk += 1
        df, thin = self.sessions.annotate_split(df, skel, special, narrow=True)
        if thin is not None:
            self._by_event.append(thin.select("session", pl.lit(THIN_EV).alias("ev"), "len"))
        if df.height == 0:
            self._compact()
            return
        self._by_event.append(df.group_by("session", "ev").len())
        moves = df.filter(pl.col("ev").is_in(_MOVES)).with_columns(_direction_expr().alias("dir"))
        if moves.height:
            self._moves.append(moves.group_by("session", "ev", "dir", "reason", "via", "to").len())
            fm = moves.filter(pl.col("ino").is_not_null()).with_columns(
                pl.when(pl.col("ev") == schema.COW)
                .then(pl.lit("cow"))
                .otherwise(pl.col("dir"))
                .alias("what")
            )
            fm = fm.filter(pl.col("ev") != schema.WRITEBACK)
            self._file_moves.append(fm.group_by("session", *_IDENT, "what").len())
        errors = df.filter(pl.col("ev") == schema.ERROR)
        if errors.height:
            self._errors.append(
                errors.group_by("session").agg(
                    pl.len().alias("n"), pl.col("fatal").fill_null(False).sum().alias("fatal")
                )
            )
        paths = df.filter((pl.col("ev") == schema.PATH) & pl.col("ino").is_not_null())
        if paths.height:
            self._paths.append(paths.select("session", *_IDENT, "path"))
        acc = df.filter((pl.col("ev") == schema.ACCESS) & pl.col("ino").is_not_null())
        if acc.height:
            pages = (
                acc.select(
                    "session",
                    *_IDENT,
                    "pages",
                    pl.col("reads").fill_null(pl.col("pages").list.eval(pl.element() * 0)),
                    pl.col("writes").fill_null(pl.col("pages").list.eval(pl.element() * 0)),
                )
                .explode("pages", "reads", "writes")
                .drop_nulls("pages")
            )
            self._pages.append(
                pages.group_by("session", *_IDENT, "pages").agg(
                    pl.col("reads").sum(), pl.col("writes").sum()
                )
            )
        # The timeline: per (session, local step, log step), in steps of `unit`.
        u = self.unit
        timed = df.filter(
            pl.col("ev").is_in([*_MOVES, schema.ACCESS, schema.COUNTERS])
        ).with_columns(
            (pl.col("t") / u).floor().cast(pl.Int64).alias("kloc"),
            (pl.col("t_log") / u).floor().cast(pl.Int64).alias("kabs"),
            _direction_expr().alias("dir"),
        )
        if timed.height:
            ev = pl.col("ev")
            self._timeline.append(
                timed.group_by("session", "kloc", "kabs").agg(
                    pl.when(ev == schema.ACCESS)
                    .then(pl.col("reads").list.sum())
                    .sum()
                    .alias("reads"),
                    pl.when(ev == schema.ACCESS)
                    .then(pl.col("writes").list.sum())
                    .sum()
                    .alias("writes"),
                    ((ev == schema.MIGRATE) & (pl.col("dir") == "promote")).sum().alias("promote"),
                    ((ev == schema.MIGRATE) & (pl.col("dir") == "demote")).sum().alias("demote"),
                    (ev == schema.COW).sum().alias("cow"),
                    (ev == schema.WRITEBACK).sum().alias("writeback"),
                    pl.when(ev == schema.COUNTERS)
                    .then(pl.col("frames_used"))
                    .drop_nulls()
                    .last()
                    .alias("frames_used"),
                )
            )
        self._compact()

    def _compact(self) -> None:
        """Fold the per-chunk parts together now and then, so memory stays bounded."""
        if self._chunk % 16:
            return
        self.finish()

    def finish(self) -> None:
        def fold(parts: list[pl.DataFrame], keys: list[str], aggs: list[pl.Expr]) -> None:
            df = _concat(parts)
            parts.clear()
            if df is not None:
                parts.append(df.group_by(keys, maintain_order=True).agg(aggs))

        fold(self._by_event, ["session", "ev"], [pl.col("len").sum()])
        fold(self._moves, ["session", "ev", "dir", "reason", "via", "to"], [pl.col("len").sum()])
        fold(self._file_moves, ["session", *_IDENT, "what"], [pl.col("len").sum()])
        fold(
            self._pages,
            ["session", *_IDENT, "pages"],
            [pl.col("reads").sum(), pl.col("writes").sum()],
        )
        fold(self._errors, ["session"], [pl.col("n").sum(), pl.col("fatal").sum()])
        tl = _concat(self._timeline)
        self._timeline.clear()
        if tl is not None:
            self._timeline.append(
                tl.group_by("session", "kloc", "kabs", maintain_order=True).agg(
                    pl.col("reads", "writes", "promote", "demote", "cow", "writeback").sum(),
                    pl.col("frames_used").drop_nulls().last(),
                )
            )

    # -- results ----------------------------------------------------------------

    def part(self, name: str, chosen: list[SessionInfo]) -> pl.DataFrame | None:
        parts = getattr(self, f"_{name}")
        if not parts:
            return None
        nums = [s.number for s in chosen]
        df = parts[0].filter(pl.col("session").is_in(nums))
        return df if df.height else None

    def names(self, chosen: list[SessionInfo]) -> dict[tuple[Any, ...], str]:
        """identity -> the last path logged for it (a rename's path supersedes)."""
        df = _concat(self._paths)
        if df is None:
            return {}
        df = df.filter(pl.col("session").is_in([s.number for s in chosen]))
        out: dict[tuple[Any, ...], str] = {}
        for *key, path in df.select(*_IDENT, "path").rows():
            out[tuple(key)] = str(path)
        return out


def _name(names: dict[tuple[Any, ...], str], key: tuple[Any, ...]) -> str:
    return names.get(key, f"<ino {key[1]}>")


def _ident_order(key: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    """A file identity as a sort key (nulls last): ties in a result come out the same way
    every run."""
    return tuple((x is None, x if x is not None else 0) for x in key)


def _score(reads: int, writes: int, by: str) -> int:
    return reads if by == "reads" else writes if by == "writes" else reads + writes


def _files(scan: Scan, chosen: list[SessionInfo]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Per file identity: reads, writes, pages touched (from access histograms)."""
    pages = scan.part("pages", chosen)
    if pages is None:
        return {}
    agg = pages.group_by(_IDENT).agg(
        pl.col("reads").sum(), pl.col("writes").sum(), pl.col("pages").n_unique().alias("n")
    )
    return {
        tuple(r[:4]): {"reads": int(r[4]), "writes": int(r[5]), "pages": int(r[6])}
        for r in agg.rows()
    }


def hottest_files(
    scan: Scan, chosen: list[SessionInfo], n: int = 10, by: str = "total"
) -> list[dict[str, Any]]:
    """The `n` most accessed files: path, ino, gen, reads, writes, pages, migrations, cow."""
    names = scan.names(chosen)
    files = _files(scan, chosen)
    moved: Counter[tuple[Any, ...]] = Counter()
    fm = scan.part("file_moves", chosen)
    if fm is not None:
        for *key, what, k in fm.group_by(*_IDENT, "what").agg(pl.col("len").sum()).rows():
            moved[(*key, what)] += int(k)
    rows = [
        {
            "path": _name(names, key),
            "ino": key[1],
            "gen": key[2],
            "accesses": f["reads"] + f["writes"],
            "reads": f["reads"],
            "writes": f["writes"],
            "pages": f["pages"],
            "promote": moved[(*key, "promote")],
            "demote": moved[(*key, "demote")],
            "cow": moved[(*key, "cow")],
        }
        for key, f in sorted(files.items(), key=lambda kv: _ident_order(kv[0]))
    ]
    rows.sort(key=lambda r: (-_score(r["reads"], r["writes"], by), r["path"], r["ino"]))
    return rows[:n] if n > 0 else rows


def hottest_pages(
    scan: Scan, chosen: list[SessionInfo], n: int = 10, by: str = "total"
) -> list[dict[str, Any]]:
    """The `n` most accessed pages (path, ino, index, offset, reads, writes)."""
    pages = scan.part("pages", chosen)
    if pages is None:
        return []
    names = scan.names(chosen)
    agg = pages.group_by(*_IDENT, "pages").agg(pl.col("reads").sum(), pl.col("writes").sum())
    score = {"reads": pl.col("reads"), "writes": pl.col("writes")}.get(
        by, pl.col("reads") + pl.col("writes")
    )
    named = pl.DataFrame(
        [(*k, v) for k, v in names.items()],
        schema={**{c: agg.schema[c] for c in _IDENT}, "path": pl.String},
        orient="row",
    )
    agg = (
        agg.join(named, on=_IDENT, how="left", nulls_equal=True)
        .with_columns(
            pl.col("path").fill_null(pl.format("<ino {}>", pl.col("ino"))), score.alias("_s")
        )
        .sort(
            ["_s", "path", "pages", *_IDENT],
            descending=[True, False, False, False, False, False, False],
            nulls_last=True,
        )
    )
    if n > 0:
        agg = agg.head(n)
    rows = []
    for path, ino, index, r, w in agg.select("path", "ino", "pages", "reads", "writes").rows():
        rows.append(
            {
                "path": path,
                "ino": ino,
                "index": int(index),
                "offset": int(index) * PAGE_SIZE,
                "accesses": int(r + w),
                "reads": int(r),
                "writes": int(w),
            }
        )
    rows.sort(key=lambda r: (-_score(r["reads"], r["writes"], by), r["path"], r["index"]))
    return rows[:n] if n > 0 else rows


def profile_lines(
    scan: Scan,
    chosen: list[SessionInfo],
    *,
    reads_only: bool = False,
    min_count: int = 1,
    top: int = 0,
) -> tuple[list[str], list[str]]:
    """AXFS profile lines (`./path,offset,count`) and notes on what could not be written."""
    pages = scan.part("pages", chosen)
    if pages is None:
        return [], []
    names = scan.names(chosen)
    agg = pages.group_by(*_IDENT, "pages").agg(pl.col("reads").sum(), pl.col("writes").sum())
    rows: list[tuple[str, int, int]] = []
    nameless: set[int] = set()
    unwritable: set[str] = set()
    for *key, index, r, w in agg.rows():
        path = names.get(tuple(key))
        if path is None:
            nameless.add(key[1])
            continue
        if "," in path or "\n" in path or "\r" in path:
            unwritable.add(path)
            continue
        count = int(r) if reads_only else int(r + w)
        if count >= max(1, min_count):
            rel = "." + (path if path.startswith("/") else "/" + path)
            rows.append((rel, int(index) * PAGE_SIZE, count))
    if top > 0:
        rows.sort(key=lambda x: (-x[2], x[0], x[1]))
        rows = rows[:top]
    rows.sort()  # by path, offset (and count: two files of one path, one after the other)
    notes = []
    if nameless:
        notes.append(
            f"left out the pages of {len(nameless)} inode(s) with no path event "
            f"({', '.join(str(i) for i in sorted(nameless)[:5])})"
        )
    if unwritable:
        notes.append(
            f"left out {len(unwritable)} file(s) whose path has a comma or newline "
            "(the AXFS profile format cannot say it)"
        )
    return [f"{p},{o},{c}" for p, o, c in rows], notes


_NICE_BUCKETS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


def choose_bucket(duration: float, max_buckets: int = 12) -> float:
    """A round bucket width that cuts `duration` into at most `max_buckets` rows."""
    for b in _NICE_BUCKETS:
        if duration / b <= max_buckets:
            return float(b)
    return float(math.ceil(duration / max_buckets))


def _add_nested(into: dict[str, Any], add: dict[str, Any]) -> None:
    for k, v in add.items():
        if isinstance(v, dict):
            _add_nested(into.setdefault(k, {}), v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            into[k] = into.get(k, 0) + v


def _timeline(
    scan: Scan, chosen: list[SessionInfo], width: float, duration: float, col: str
) -> list[dict[str, Any]]:
    n = max(1, math.ceil(duration / width - 1e-9)) if duration > 0 else 1
    rows = [
        {
            "t0": round(i * width, 3),
            "t1": round((i + 1) * width, 3),
            "reads": 0,
            "writes": 0,
            "promote": 0,
            "demote": 0,
            "cow": 0,
            "writeback": 0,
            "frames_used": None,
        }
        for i in range(n)
    ]
    tl = scan.part("timeline", chosen)
    if tl is None:
        return rows
    m = width / scan.unit
    step = "kloc" if col == "t" else "kabs"
    if abs(m - round(m)) < 1e-9 and round(m) >= 1:
        b = pl.col(step) // int(round(m))
    else:
        b = (pl.col(step) * scan.unit / width).floor().cast(pl.Int64)
    agg = (
        tl.with_columns(b.clip(0, n - 1).alias("b"))
        .sort("session", "kloc", maintain_order=True)
        .group_by("b")
        .agg(
            pl.col("reads", "writes", "promote", "demote", "cow", "writeback").sum(),
            pl.col("frames_used").drop_nulls().last(),
        )
    )
    for r in agg.iter_rows(named=True):
        row = rows[r["b"]]
        for k in ("reads", "writes", "promote", "demote", "cow", "writeback"):
            row[k] = int(r[k] or 0)
        row["frames_used"] = r["frames_used"]
    return rows


def summarize(
    scan: Scan,
    chosen: list[SessionInfo] | None = None,
    *,
    bucket: float | None = None,
    top: int = 10,
    log: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Everything `log summary` and the demo print, as one JSON-able dict.

    Migrations, COW and writebacks are counted from their events; faults,
    accesses and struct page memory come from the `counters` snapshots (the
    last one of each session, summed; peaks over all of them).
    """
    chosen = scan.sessions.infos if chosen is None else chosen
    by_event: Counter[str] = Counter()
    be = scan.part("by_event", chosen)
    if be is not None:
        for ev, k in be.group_by("ev").agg(pl.col("len").sum()).rows():
            by_event[ev] += int(k)
    migrations: dict[str, Counter[str]] = {"promote": Counter(), "demote": Counter()}
    cow_via: Counter[str] = Counter()
    cow_to: Counter[str] = Counter()
    writebacks: Counter[str] = Counter()
    mv = scan.part("moves", chosen)
    if mv is not None:
        for ev, d, reason, via, to, k in (
            mv.group_by("ev", "dir", "reason", "via", "to", maintain_order=True)
            .agg(pl.col("len").sum())
            .rows()
        ):
            if ev == schema.MIGRATE:
                migrations.setdefault(d, Counter())[str(reason)] += int(k)
            elif ev == schema.COW:
                cow_via[str(via)] += int(k)
                cow_to[str(to)] += int(k)
            else:
                writebacks[str(reason)] += int(k)
    errs = scan.part("errors", chosen)
    n_err = int(errs["n"].sum()) if errs is not None else 0
    n_fatal = int(errs["fatal"].sum()) if errs is not None else 0

    totals: dict[str, Any] = {}
    peak = {
        "frames_used": 0,
        "dirty": 0,
        "struct_page_bytes_used": 0,
        "struct_page_bytes_avoided": 0,
    }
    dram_pages = None
    for s in chosen:
        for c in s.counters:
            for k in peak:
                v = c.get(k)
                if isinstance(v, int | float):
                    peak[k] = max(peak[k], v)
            if isinstance(c.get("dram_pages"), int):
                dram_pages = c["dram_pages"]
        if s.counters:
            last = s.counters[-1]
            _add_nested(totals, {k: last[k] for k in _DICT_COLS if isinstance(last.get(k), dict)})
    if dram_pages is None:
        for s in chosen:
            if s.mount and isinstance(s.mount.get("dram_pages"), int):
                dram_pages = s.mount["dram_pages"]
                break

    faults = {k: int(totals.get("faults", {}).get(k, 0)) for k in schema.FAULT_KINDS}
    for k, v in totals.get("faults", {}).items():
        faults.setdefault(k, int(v))
    acc = totals.get("accesses", {})
    accesses = {"read": int(acc.get("read", 0)), "write": int(acc.get("write", 0))}
    ratio = hit_ratio({"faults": faults, "accesses": accesses})

    col, duration = time_axis(chosen)
    width = bucket or choose_bucket(duration)
    timeline = _timeline(scan, chosen, width, duration, col)

    mount = chosen[0].mount if chosen and chosen[0].mount else {}
    counted_mig = {
        d: {str(k): int(v) for k, v in (totals.get("migrations", {}).get(d) or {}).items()}
        for d in ("promote", "demote")
    }
    return {
        "log": log,
        "sessions": len(chosen),
        "session_numbers": [s.number for s in chosen],
        "clean_unmount": [s.clean for s in chosen],
        "unmounted": [s.unmount is not None for s in chosen],
        "duration_s": round(duration, 3),
        "events": sum(by_event.values()),
        "by_event": dict(sorted(by_event.items())),
        "image": mount.get("image"),
        "image_uuid": mount.get("uuid"),
        "policy": mount.get("policy"),
        "cache": mount.get("cache"),
        "dram_pages": dram_pages,
        "faults": faults,
        "accesses": accesses,
        "pagecache_hit_ratio": None if ratio is None else round(ratio, 6),
        "migrations": {d: dict(sorted(c.items())) for d, c in migrations.items()},
        "migrations_counters": counted_mig,
        "cow": {"total": sum(cow_via.values()), "via": dict(cow_via), "to": dict(cow_to)},
        "writebacks": dict(sorted(writebacks.items())),
        "writebacks_counters": {
            str(k): int(v) for k, v in (totals.get("writebacks") or {}).items()
        },
        "peak": peak,
        "struct_page": {
            "bytes_used_peak": peak["struct_page_bytes_used"],
            "bytes_avoided_peak": peak["struct_page_bytes_avoided"],
        },
        "errors": n_err,
        "fatal_errors": n_fatal,
        "timeline": {"bucket_s": width, "rows": timeline},
        "device": device_summary(chosen, width),
        "hottest_files": hottest_files(scan, chosen, top),
        "note": note,
        "skipped": scan.report.as_dict(),
    }


def _ns(c: dict[str, Any] | None) -> dict[str, int]:
    ns = (c or {}).get("modelled_ns")
    return {str(k): int(v) for k, v in ns.items()} if isinstance(ns, dict) else {}


def _sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b))}


def _phases(s: SessionInfo, width: float) -> list[dict[str, Any]]:
    """One session's phases with the modelled time of each (docs/COSTS.md, Phases).

    With `mark` events a phase runs from one mark to the next (the first from
    the mount, named `start`, when anything happened before the first mark),
    the last to the session's last counters; each mark carries the cumulative
    modelled time at that instant. Without marks, phases are time buckets of
    `width` seconds, each ending at the last counters snapshot inside it.
    """
    snaps = [(float(c.get("t", 0.0)), _ns(c)) for c in s.counters if _ns(c)]
    if not snaps:
        return []
    end_t, end_ns = snaps[-1]
    cuts: list[tuple[str, float, dict[str, int]]] = [("start", 0.0, {})]
    if s.marks:
        for mk in s.marks:
            cuts.append((str(mk.get("name", "")), float(mk.get("t", 0.0)), _ns(mk)))
    else:
        n = max(1, math.ceil(end_t / width - 1e-9)) if end_t > 0 else 1
        for i in range(1, n):
            t = i * width
            inside = [ns for ts, ns in snaps if ts <= t]
            cuts.append((f"{t:g}s", t, inside[-1] if inside else {}))
    cuts.append(("", max(end_t, cuts[-1][1]), end_ns))
    out = []
    for (name, t0, ns0), (_, t1, ns1) in zip(cuts, cuts[1:], strict=False):
        d = _sub(ns1, ns0)
        if name == "start" and s.marks and not any(d.values()):
            continue
        label = name if s.marks else f"{t0:g}-{t1:g}s"
        out.append(
            {
                "session": s.number,
                "phase": label,
                "t0": round(t0, 3),
                "t1": round(t1, 3),
                "wall_s": round(t1 - t0, 3),
                "modelled_ns": d,
                "modelled_ns_total": sum(d.values()),
            }
        )
    return out


def device_summary(chosen: list[SessionInfo], width: float) -> dict[str, Any] | None:
    """The device model's figures (docs/COSTS.md): modelled time by kind and by phase,
    and the wear of each session that logged one; None when no session was priced."""
    total: dict[str, int] = {}
    phases: list[dict[str, Any]] = []
    wear = []
    media = []
    for s in chosen:
        last = _ns(s.counters[-1]) if s.counters else {}
        if not last:
            continue
        media.append((s.mount or {}).get("medium"))
        for k, v in last.items():
            total[k] = total.get(k, 0) + v
        phases += _phases(s, width)
        if s.wear:
            w = {k: s.wear.get(k) for k in _WEAR_COLS if k not in ("erase_bins", "program_bins")}
            w["session"] = s.number
            wear.append(w)
    if not media:
        return None
    return {
        "medium": media[0] if len(set(media)) == 1 else sorted({str(m) for m in media}),
        "modelled_ns": total,
        "modelled_ns_total": sum(total.values()),
        "phases": phases,
        "wear": wear,
    }


def summarize_log(
    path: str | os.PathLike[str],
    which: str = "all",
    *,
    bucket: float | None = None,
    top: int = 10,
) -> tuple[dict[str, Any], Scan]:
    """`log summary` of the log at `path`: one pass, one image's sessions."""
    scan = Scan.of_log(path, unit=bucket or 0.5)
    chosen, note = choose(scan.sessions.infos, which)
    return summarize(scan, chosen, bucket=bucket, top=top, log=os.fspath(path), note=note), scan
