"""The log as records (dicts), for the actions that pass events through.

`filter`, `follow` and `export --csv` hand events on as they are (every
field, also of event types this version does not know), so they work on the
reader's dicts; everything that computes a number works on the columnar
engine (`analysis`).
"""

from __future__ import annotations

import csv
import fnmatch
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from nvramfs.errors import UsageError

from . import schema

PAGE_SIZE = 4096


@dataclass
class Session:
    """The events of one mount: from its `mount` line to the next (or the end)."""

    number: int  # 1-based, in file order
    events: list[dict[str, Any]] = field(default_factory=list)
    mount: dict[str, Any] | None = None
    offset: float = 0.0  # start, in seconds after the first session's start

    @property
    def duration(self) -> float:
        return max((float(e.get("t", 0.0)) for e in self.events[-1:]), default=0.0)

    @property
    def unmount(self) -> dict[str, Any] | None:
        for e in reversed(self.events):
            if e["ev"] == schema.UNMOUNT:
                return e
        return None

    @property
    def clean(self) -> bool:
        u = self.unmount
        return bool(u and u.get("clean", True))

    def abs_t(self, ev: dict[str, Any]) -> float:
        return self.offset + float(ev.get("t", 0.0))


def split_sessions(events: Iterable[dict[str, Any]]) -> list[Session]:
    """Cut a log into mount sessions: at each `mount` event, or where `seq` starts over."""
    sessions: list[Session] = []
    cur: Session | None = None
    last_seq = -1
    for ev in events:
        seq = ev.get("seq", last_seq + 1)
        seq = seq if isinstance(seq, int) else last_seq + 1
        new = ev["ev"] == schema.MOUNT or cur is None or seq <= last_seq
        if new:
            cur = Session(number=len(sessions) + 1)
            sessions.append(cur)
        assert cur is not None
        if ev["ev"] == schema.MOUNT and cur.mount is None:
            cur.mount = ev
        cur.events.append(ev)
        last_seq = seq
    # Place sessions on one time axis: by wall clock when known, never overlapping.
    end = 0.0
    wall0 = None
    for s in sessions:
        wall = s.mount.get("wall") if s.mount else None
        if isinstance(wall, int | float) and wall0 is None:
            wall0 = float(wall) - end
        start = end
        if isinstance(wall, int | float) and wall0 is not None:
            start = max(end, float(wall) - wall0)
        s.offset = start
        end = start + s.duration
    return sessions


def pick_sessions(sessions: list[Session], which: str) -> list[Session]:
    """`all`, `last`, or a 1-based number (a UsageError if there is no such session)."""
    if which == "all" or not sessions:
        return sessions
    if which == "last":
        return sessions[-1:]
    try:
        n = int(which)
    except ValueError:
        raise UsageError(f"--session {which}: use a number, 'last' or 'all'") from None
    if not 1 <= n <= len(sessions):
        raise UsageError(f"--session {n}: the log has {len(sessions)} session(s)")
    return [sessions[n - 1]]


def path_names(sessions: Iterable[Session]) -> dict[int, str]:
    """ino -> path, from `path` events (a later one, e.g. after a rename, wins)."""
    names: dict[int, str] = {}
    for s in sessions:
        for ev in s.events:
            if ev["ev"] == schema.PATH and "ino" in ev and "path" in ev:
                names[int(ev["ino"])] = str(ev["path"])
    return names


def name_of(names: dict[int, str], ino: int) -> str:
    return names.get(ino, f"<ino {ino}>")


def _direction(ev: dict[str, Any]) -> str:
    if ev.get("from") == schema.XIP and ev.get("to") == schema.PAGECACHE:
        return "promote"
    if ev.get("from") == schema.PAGECACHE and ev.get("to") == schema.XIP:
        return "demote"
    return f"{ev.get('from')}->{ev.get('to')}"


def _path_matches(path: str | None, patterns: list[str]) -> bool:
    if path is None:
        return False
    for pat in patterns:
        if any(c in pat for c in "*?["):
            if fnmatch.fnmatchcase(path, pat):
                return True
        else:
            norm = "/" + pat.strip("/") if pat.strip("/") else "/"
            if path == norm or path.startswith(norm.rstrip("/") + "/"):
                return True
    return False


def select_events(
    sessions: list[Session],
    *,
    evs: set[str] | None = None,
    paths: list[str] | None = None,
    inos: set[int] | None = None,
    reasons: set[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    context: bool = False,
) -> Iterator[dict[str, Any]]:
    """The events that pass every given test (the `filter` action)."""
    unknown = (evs or set()) - set(schema.EVENT_TYPES)
    if unknown:
        raise UsageError(
            f"unknown event type {', '.join(sorted(unknown))} (one of {', '.join(schema.EVENT_TYPES)})"
        )
    final = path_names(sessions)
    for s in sessions:
        names: dict[int, str] = {}
        for ev in s.events:
            kind = ev["ev"]
            ino = ev.get("ino")
            if kind == schema.PATH and isinstance(ino, int):
                names[ino] = str(ev.get("path"))
            if context and kind in (schema.MOUNT, schema.UNMOUNT):
                yield ev
                continue
            if evs and kind not in evs:
                if not (context and kind == schema.PATH):
                    continue
            if inos or paths:
                if not isinstance(ino, int):
                    continue
                ok_ino = bool(inos) and ino in inos
                ok_path = bool(paths) and _path_matches(names.get(ino, final.get(ino)), paths or [])
                if not (ok_ino or ok_path):
                    continue
            if context and kind == schema.PATH:
                yield ev
                continue
            if reasons and str(ev.get("reason")) not in reasons:
                continue
            t = ev.get("t")
            if since is not None and (not isinstance(t, int | float) or t < since):
                continue
            if until is not None and (not isinstance(t, int | float) or t > until):
                continue
            yield ev


CSV_COLUMNS = [
    "session",
    "seq",
    "t",
    "ev",
    "ino",
    "path",
    "index",
    "offset",
    "from",
    "to",
    "pfn_from",
    "pfn_to",
    "reason",
    "via",
    "refcount",
    "mapcount",
    "kind",
    "write",
    "t0",
    "t1",
    "page",
    "reads",
    "writes",
    *(f"faults.{k}" for k in schema.FAULT_KINDS),
    "accesses.read",
    "accesses.write",
    "migrations.promote",
    "migrations.demote",
    "writebacks",
    "frames_used",
    "dram_pages",
    "dirty",
    "struct_page_bytes_used",
    "struct_page_bytes_avoided",
    "image",
    "policy",
    "page_size",
    "pte_special",
    "cache",
    "sim",
    "recovered",
    "wall",
    "what",
    "fatal",
    "clean",
    "gen",
    "uuid",
    "extra",
]
_BASE = {"v", "seq", "t", "ev"}


def export_rows(sessions: list[Session]) -> Iterator[dict[str, Any]]:
    """Flat rows of CSV_COLUMNS: one per event; an `access` event gives one row per page."""
    known = set(CSV_COLUMNS)
    for s in sessions:
        names: dict[int, str] = {}
        for ev in s.events:
            kind = ev["ev"]
            ino = ev.get("ino")
            if kind == schema.PATH and isinstance(ino, int):
                names[ino] = str(ev.get("path"))
            row: dict[str, Any] = {"session": s.number}
            extra: dict[str, Any] = {}
            for k, v in ev.items():
                if k == "v":
                    continue
                if kind == schema.COUNTERS and k in ("faults", "accesses") and isinstance(v, dict):
                    for kk, vv in v.items():
                        col = f"{k}.{kk}"
                        if col in known:
                            row[col] = vv
                        else:
                            extra[col] = vv
                elif kind == schema.COUNTERS and k == "migrations" and isinstance(v, dict):
                    for d in ("promote", "demote"):
                        row[f"migrations.{d}"] = sum((v.get(d) or {}).values())
                elif kind == schema.COUNTERS and k == "writebacks" and isinstance(v, dict):
                    row["writebacks"] = sum(v.values())
                elif kind == schema.ACCESS and k in ("pages", "reads", "writes"):
                    continue
                elif k in known and not isinstance(v, dict | list):
                    row[k] = v
                else:
                    extra[k] = v
            if isinstance(ino, int):
                row["path"] = names.get(ino, "")
                if isinstance(ev.get("index"), int):
                    row["offset"] = ev["index"] * PAGE_SIZE
            if kind == schema.COUNTERS:
                extra.update(
                    {
                        f"migrations.{d}.{r}": n
                        for d, rs in (ev.get("migrations") or {}).items()
                        for r, n in (rs or {}).items()
                    }
                )
                extra.update(
                    {f"writebacks.{r}": n for r, n in (ev.get("writebacks") or {}).items()}
                )
            row["extra"] = json.dumps(extra, separators=(",", ":")) if extra else ""
            if kind == schema.ACCESS:
                pages = ev.get("pages") or []
                reads = ev.get("reads") or [0] * len(pages)
                writes = ev.get("writes") or [0] * len(pages)
                for p, r, w in zip(pages, reads, writes, strict=False):
                    yield {**row, "page": p, "offset": int(p) * PAGE_SIZE, "reads": r, "writes": w}
            else:
                yield row


def export_csv(sessions: list[Session], out: TextIO) -> int:
    """Write the CSV (header + rows); returns the number of rows."""
    w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    n = 0
    for row in export_rows(sessions):
        w.writerow(row)
        n += 1
    return n
