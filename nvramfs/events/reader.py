"""The event log reader: yields events of docs/EVENTS.md, tolerant of damage.

A log is read while it is being written (the writer appends whole lines) and
after a crash (which can cut the last line mid-way, and a later mount appends
after the cut). The reader never fails on such lines: it skips them, counts
them in a `ReadReport`, and keeps going, so whatever can be read is used and
the tools say in one line what they skipped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nvramfs.errors import NvramfsError

from . import schema

# A line of the writer starts with this; after a torn line a later session's
# first line is glued to the cut, and this is where it starts.
_LINE_START = b'{"v":'


@dataclass
class ReadReport:
    """What the reader read and what it skipped (and why)."""

    lines: int = 0
    events: int = 0
    not_json: int = 0
    not_event: int = 0  # JSON, but not an object with `v` and `ev`
    malformed: int = 0  # an event whose fields have the wrong types (a writer bug)
    other_version: dict[Any, int] = field(default_factory=dict)
    torn_last: int = 0  # a last line without its newline that is not whole JSON
    torn_inside: int = 0  # a cut line followed (on the same line) by a later session

    @property
    def skipped(self) -> int:
        return (
            self.not_json
            + self.not_event
            + self.malformed
            + sum(self.other_version.values())
            + self.torn_last
            + self.torn_inside
        )

    def add(self, other: ReadReport) -> None:
        """Count `other`'s lines in too (the reports of chunks read apart)."""
        self.lines += other.lines
        self.events += other.events
        self.not_json += other.not_json
        self.not_event += other.not_event
        self.malformed += other.malformed
        self.torn_last += other.torn_last
        self.torn_inside += other.torn_inside
        for v, n in other.other_version.items():
            self.other_version[v] = self.other_version.get(v, 0) + n

    def describe(self) -> str | None:
        """One line for a person, or None when nothing was skipped."""
        parts = []
        if self.torn_last:
            parts.append(f"{_n(self.torn_last, 'torn line')} at the end (a crash cut it)")
        if self.torn_inside:
            parts.append(
                f"{_n(self.torn_inside, 'torn line')} inside the log "
                "(a crash cut it; the next mount's events were kept)"
            )
        if self.not_json:
            parts.append(f"{_n(self.not_json, 'line')} that are not JSON")
        if self.not_event:
            parts.append(f"{_n(self.not_event, 'JSON line')} that are not events")
        if self.malformed:
            parts.append(f"{_n(self.malformed, 'event')} with fields of the wrong type")
        for v, n in sorted(self.other_version.items(), key=lambda kv: str(kv[0])):
            parts.append(
                f"{_n(n, 'line')} of schema version {v} (this nvramfs reads v{schema.SCHEMA_VERSION})"
            )
        if not parts:
            return None
        return "skipped " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "events": self.events,
            "skipped": self.skipped,
            "torn_last": self.torn_last,
            "torn_inside": self.torn_inside,
            "not_json": self.not_json,
            "not_event": self.not_event,
            "malformed": self.malformed,
            "other_version": {str(k): v for k, v in self.other_version.items()},
        }


def _n(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def check_log(path: str | os.PathLike[str]) -> str:
    """The path as str, or a one-line NvramfsError when it cannot be a log."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise NvramfsError(f"{p}: no such event log") from None
    except OSError as exc:
        raise NvramfsError(f"{p}: {exc.strerror}") from None
    import stat as stat_

    if stat_.S_ISDIR(st.st_mode):
        raise NvramfsError(f"{p}: is a directory, not an event log")
    if not os.access(p, os.R_OK):
        raise NvramfsError(f"{p}: permission denied")
    return p


def parse_line(raw: bytes, report: ReadReport, *, last: bool = False) -> dict[str, Any] | None:
    """One line (without its newline) -> an event, or None (counted in `report`).

    `last` marks a final line that had no newline: if it is not whole JSON,
    it is the line a crash cut.
    """
    report.lines += 1
    if not raw.strip():
        report.lines -= 1  # blank lines are not lines of the log
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        if last:
            report.torn_last += 1
            return None
        # A torn line followed by a later mount's first line: keep the latter.
        cut = raw.rfind(_LINE_START, 1)
        if cut > 0:
            try:
                obj = json.loads(raw[cut:])
            except (ValueError, UnicodeDecodeError):
                report.not_json += 1
                return None
            report.torn_inside += 1
        else:
            report.not_json += 1
            return None
    if not isinstance(obj, dict) or "ev" not in obj or "v" not in obj:
        report.not_event += 1
        return None
    v = obj["v"]
    if v != schema.SCHEMA_VERSION or isinstance(v, bool):
        key = v if isinstance(v, int | float | str) else repr(v)
        report.other_version[key] = report.other_version.get(key, 0) + 1
        return None
    if not well_typed(obj):
        report.malformed += 1
        return None
    report.events += 1
    return obj


_INT_FIELDS = ("seq", "ino", "index", "pfn_from", "pfn_to", "refcount", "mapcount")
_NUM_FIELDS = ("t", "t0", "t1", "wall")
_LIST_FIELDS = ("pages", "reads", "writes")
_DICT_FIELDS = ("faults", "accesses", "migrations", "writebacks")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def well_typed(ev: dict[str, Any]) -> bool:
    """The fields the tools compute with have the types docs/EVENTS.md gives them."""
    if not isinstance(ev.get("ev"), str):
        return False
    for k in _INT_FIELDS:
        if k in ev and not _is_int(ev[k]):
            return False
    for k in _NUM_FIELDS:
        if k in ev and not (_is_int(ev[k]) or isinstance(ev[k], float)):
            return False
    if "t" not in ev:
        return False
    for k in _LIST_FIELDS:
        if k in ev and not (isinstance(ev[k], list) and all(_is_int(x) for x in ev[k])):
            return False
    if ev["ev"] == schema.ACCESS:
        n = len(ev.get("pages") or [])
        if any(len(ev.get(k) or [0] * n) != n for k in ("reads", "writes")):
            return False
    for k in _DICT_FIELDS:
        if k in ev and not isinstance(ev[k], dict):
            return False
    if ev["ev"] == schema.COUNTERS:
        for k in ("faults", "accesses", "writebacks"):
            if not all(_is_int(x) for x in (ev.get(k) or {}).values()):
                return False
        for d in (ev.get("migrations") or {}).values():
            if not isinstance(d, dict) or not all(_is_int(x) for x in d.values()):
                return False
    return True


def read_events(
    path: str | os.PathLike[str],
    *,
    follow: bool = False,
    report: ReadReport | None = None,
    from_start: bool = True,
    poll: float = 0.2,
    stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the events of the log at `path`, in file order.

    Without `follow`, reads to the current end of the file (a log still being
    written is read as far as it is written; a partial last line is counted
    as torn). With `follow`, keeps waiting for new lines like `tail -f`
    (starting at the end of the file unless `from_start`) until `stop()`
    returns true; a partial line is held until its newline arrives, and a
    file that shrinks (a new log in its place) is read again from the start.
    Skipped lines are counted in `report`. A missing file is an NvramfsError.
    """
    p = check_log(path)
    if report is None:
        report = ReadReport()
    with open(p, "rb") as f:
        if follow and not from_start:
            f.seek(0, os.SEEK_END)
        pending = b""
        while True:
            chunk = f.read(1 << 20)
            if chunk:
                data = pending + chunk
                lines = data.split(b"\n")
                pending = lines.pop()
                for raw in lines:
                    ev = parse_line(raw, report)
                    if ev is not None:
                        yield ev
                continue
            # At the end of what is written so far.
            if not follow:
                break
            if stop is not None and stop():
                break
            try:
                size = os.fstat(f.fileno()).st_size
                if size < f.tell():
                    f.seek(0)  # truncated or replaced: start over
                    pending = b""
                    continue
            except OSError:
                pass
            time.sleep(poll)
        if pending:
            ev = parse_line(pending, report, last=True)
            if ev is not None:
                yield ev


def load_events(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], ReadReport]:
    """All events of a log and the report of what was skipped."""
    report = ReadReport()
    events = list(read_events(path, report=report))
    return events, report
