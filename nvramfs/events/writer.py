"""The event log writer: buffered JSON Lines, appended whole lines at a time.

`emit` appends a small dict to an in-memory list; `flush` (called from mm's
once-a-second tick, and at close) encodes the buffered events and appends
them with one `os.write` on an `O_APPEND` descriptor. So that a session
killed with SIGKILL keeps all but its last second even when the tick is
late (a long request holds the loop), `emit` itself flushes when the oldest
buffered event is `flush_seconds` old or `flush_events` are buffered. Only whole lines are ever written, so the file is valid JSON
Lines at every moment and `tail -f LOG | jq` works while the filesystem runs
(a crash in the middle of a write can at most cut the last line, which every
reader skips).

With `offload=True` (the mount's writer) the encoding runs in another
process, as the kernel's trace ring buffer is formatted by its reader and not
by the code that records: `flush` hands the buffered records, still Python
values, to `events/sink.py`, which writes exactly the lines `flush` would
have written. The daemon's thread pays for `marshal` of the records, not for
formatting three lines per page it moves (docs/EVENTS.md, "Who writes the
log").
"""

from __future__ import annotations

import json
import logging
import os
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

from . import schema
from .sink import Sink, SinkError

log = logging.getLogger(__name__)


def _json_default(obj: Any) -> Any:
    """A field value JSON has no type for: a numpy scalar as its Python value,
    anything else as its text (the line is written either way)."""
    item = getattr(obj, "item", None)
    if item is not None:
        try:
            value = item()
        except (TypeError, ValueError):
            value = None
        if isinstance(value, int | float | str | bool):
            return value
    return str(obj)


_ENCODE = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode

# The page events (migrate, writeback, cow) are most of a busy log: they are
# formatted from one template each, byte for byte what the encoder would write,
# when every field is where the template expects it, every number a plain int
# (the time a float) and every string one of the schema's words.
_PAGE_KEYS = (
    "v",
    "seq",
    "t",
    "ev",
    "ino",
    "index",
    "pfn_from",
    "pfn_to",
    "from",
    "to",
    "reason",
    "refcount",
    "mapcount",
)
_PAGE_FMT = (
    '{"v":%d,"seq":%d,"t":%r,"ev":"%s","ino":%d,"index":%d,"pfn_from":%d,"pfn_to":%d,'
    '"from":"%s","to":"%s","reason":"%s","refcount":%d,"mapcount":%d'
)
_WORDS = frozenset(
    v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str) and v.isidentifier()
)


def _encode(rec: dict[str, Any]) -> str:
    n = len(rec)
    if (n == 13 or n == 14) and tuple(rec)[:13] == _PAGE_KEYS:
        v = tuple(rec.values())
        if (
            type(v[2]) is float
            and {type(v[0]), type(v[1]), type(v[4]), type(v[5]), type(v[6]), type(v[7]),
                 type(v[11]), type(v[12])} == _INT
            and {v[3], v[8], v[9], v[10]} <= _WORDS
        ):  # fmt: skip
            if n == 13:
                return _PAGE_FMT % v + "}"
            if tuple(rec)[13] == "via" and v[13] in _WORDS:
                return _PAGE_FMT % v[:13] + ',"via":"' + v[13] + '"}'
    return _ENCODE(rec)


_INT = {int}


def _page_lines(ev: str, seq: int, t: float, cols: tuple) -> list[str]:
    """The lines of an emit_pages batch, each exactly what `_encode` gives its dict,
    newline included.

    The fields a batch shares (time, event, file, homes, reason, and the counts
    when every page has the same) are formatted once; each line is then one
    f-string of its own numbers (the mm logs three lines per page it moves)."""
    ino, index, pfn_from, pfn_to, home_from, home_to, reason, refcount, mapcount, via = cols
    if type(index) is not list or type(refcount) not in _INT_OR_LIST:  # numpy values given
        index, pfn_from, pfn_to, refcount, mapcount = (
            _as_list(c) for c in (index, pfn_from, pfn_to, refcount, mapcount)
        )
        cols = (ino, index, pfn_from, pfn_to, home_from, home_to, reason, refcount, mapcount, via)
    n = len(index)
    one = type(refcount) is int and type(mapcount) is int  # the same counts for every page
    if not one:
        refcount = [refcount] * n if type(refcount) is int else refcount
        mapcount = [mapcount] * n if type(mapcount) is int else mapcount
        if refcount.count(refcount[0]) == n and mapcount.count(mapcount[0]) == n:
            one, refcount, mapcount = True, refcount[0], mapcount[0]
    t = round(t, 6)
    words = {ev, home_from, home_to, reason} | ({via} if via is not None else set())
    columns = (index, pfn_from, pfn_to) if one else (index, pfn_from, pfn_to, refcount, mapcount)
    fast = (
        words <= _WORDS
        and type(ino) is int
        and type(t) is float
        and (not one or (type(refcount) is int and type(mapcount) is int))
        and all(set(map(type, c)) <= _INT for c in columns)
    )
    if not fast:
        return [_page_dict_line(ev, seq + k, t, cols, k) + "\n" for k in range(n)]
    head = f'{{"v":{schema.SCHEMA_VERSION},"seq":'
    mid = f',"t":{t!r},"ev":"{ev}","ino":{ino},"index":'
    end = "}\n" if via is None else f',"via":"{via}"}}\n'
    homes = f',"from":"{home_from}","to":"{home_to}","reason":"{reason}","refcount":'
    seqs = range(seq, seq + n)
    if one:
        tail = f'{homes}{refcount},"mapcount":{mapcount}{end}'
        return [
            f'{head}{s}{mid}{i},"pfn_from":{a},"pfn_to":{b}{tail}'
            for s, i, a, b in zip(seqs, index, pfn_from, pfn_to, strict=True)
        ]
    return [
        f'{head}{s}{mid}{i},"pfn_from":{a},"pfn_to":{b}{homes}{r},"mapcount":{m}{end}'
        for s, i, a, b, r, m in zip(seqs, index, pfn_from, pfn_to, refcount, mapcount, strict=True)
    ]


_INT_OR_LIST = (int, list)


def _as_list(col: Any) -> Any:
    """An emit_pages column as the writer formats it: a list of ints, or one int."""
    tolist = getattr(col, "tolist", None)
    return tolist() if tolist is not None else col if type(col) is int else list(col)


def _rows_columns(
    ino: int, rows: Any, home_from: str, home_to: str, reason: str, counts: Any, via: Any
) -> tuple:
    """The ten emit_pages columns of an emit_page_rows record. `rows`: the int64 array
    the mm handed over (index, pfn_from, pfn_to, and refcount, mapcount unless `counts`
    gives one pair for every page), or on the sink's wire its bytes and row count."""
    if type(rows) is tuple:
        data, k = rows
        flat = array("q", data).tolist()
        n = len(flat) // k
        lists = [flat[r * n : (r + 1) * n] for r in range(k)]
    else:
        lists = rows.tolist()
    if counts is None:
        index, pfn_from, pfn_to, refcount, mapcount = lists
    else:
        (index, pfn_from, pfn_to), (refcount, mapcount) = lists, counts
    return (ino, index, pfn_from, pfn_to, home_from, home_to, reason, refcount, mapcount, via)


def _page_dict_line(ev: str, seq: int, t: float, cols: tuple, k: int) -> str:
    """One line of a batch through the JSON encoder (a field the template cannot take)."""
    ino, index, pfn_from, pfn_to, home_from, home_to, reason, refcount, mapcount, via = cols
    rec = {"v": schema.SCHEMA_VERSION, "seq": seq, "t": t, "ev": ev, "ino": ino}
    rec.update(index=index[k], pfn_from=pfn_from[k], pfn_to=pfn_to[k])
    rec.update({"from": home_from, "to": home_to, "reason": reason})
    rec.update(
        refcount=refcount if type(refcount) is int else refcount[k],
        mapcount=mapcount if type(mapcount) is int else mapcount[k],
    )
    if via is not None:
        rec["via"] = via
    return _ENCODE(rec)


# flush writes this many lines at a time: each write's text stays small (a flush of
# 65536 page events joined at once costs more in fresh memory than in formatting).
_WRITE_LINES = 4096


def format_buffer(buf: list[Any]) -> Iterator[bytes]:
    """The log text of a writer's buffer (event dicts and emit_pages batches), whole
    lines, at most _WRITE_LINES a chunk: what `flush` appends, here or in the sink."""
    encode = _encode
    lines: list[str] = []
    for rec in buf:
        if type(rec) is tuple:
            ev, seq, t, cols = rec
            if len(cols) == 7:  # an emit_page_rows batch
                cols = _rows_columns(*cols)
            lines += _page_lines(ev, seq, t, cols)
        elif type(rec) is str:  # a line the daemon made (events/sink.py)
            lines.append(rec)
        else:
            rec["t"] = round(rec["t"], 6)
            lines.append(encode(rec) + "\n")
        if len(lines) >= _WRITE_LINES:
            yield "".join(lines).encode()
            lines = []
    if lines:
        yield "".join(lines).encode()


class EventWriter:
    """Appends events to `path` (docs/EVENTS.md); `trace_faults` asks mm for per-fault events."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        trace_faults: bool = False,
        clock: Callable[[], float] = time.monotonic,
        flush_seconds: float = 1.0,
        flush_events: int = 65536,
        offload: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.flush_seconds = flush_seconds
        self.flush_events = flush_events
        self.trace_faults = trace_faults
        self._clock = clock
        self._t0 = clock()
        self._seq = 0
        self._buf: list[Any] = []  # event dicts, and page-event batches (emit_pages)
        self._pending = 0
        self._t_first = 0.0  # `t` of the oldest buffered event
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        # The formatting process (events/sink.py); None: this thread formats.
        self._sink: Any = None
        if offload:
            try:
                self._sink = Sink(self.path)
            except SinkError as exc:
                log.warning("event log: %s; formatting in the daemon", exc)

    @property
    def sink_pid(self) -> int | None:
        """The pid of the process that formats the log (None: this one does)."""
        return None if self._sink is None else self._sink.pid

    @property
    def t0(self) -> float:
        """The clock reading at the mount: `t` of an event is seconds since it."""
        return self._t0

    def emit(self, ev: str, **fields: Any) -> int:
        """Buffer one event (adds `v`, `seq`, `t`, `ev`); returns its seq. Writes only when
        the buffer is a second old or large (see the module's docstring)."""
        seq = self._seq
        self._seq = seq + 1
        t = self._clock() - self._t0
        rec = {"v": schema.SCHEMA_VERSION, "seq": seq, "t": t, "ev": ev}
        rec.update(fields)
        buf = self._buf
        if not buf:
            self._t_first = t
        buf.append(rec)
        self._pending += 1
        if t - self._t_first >= self.flush_seconds or self._pending >= self.flush_events:
            self.flush(wait=False)
        return seq

    def emit_pages(
        self,
        ev: str,
        ino: int,
        index: list[int],
        pfn_from: list[int],
        pfn_to: list[int],
        home_from: str,
        home_to: str,
        reason: str,
        refcount: list[int] | int,
        mapcount: list[int] | int,
        via: str | None = None,
    ) -> None:
        """A batch of page events of one kind and file (migrate, writeback, cow), one per
        element of the lists: the lines `emit` would write for each, with consecutive
        seqs and one `t`; `refcount`/`mapcount` may be one int for every page. Kept as
        columns until `flush`, which formats them from the template (the mm's batches
        log thousands of pages a second)."""
        n = len(index)
        if not n:
            return
        seq = self._seq
        self._seq = seq + n
        t = self._clock() - self._t0
        cols = (ino, index, pfn_from, pfn_to, home_from, home_to, reason, refcount, mapcount, via)
        buf = self._buf
        if not buf:
            self._t_first = t
        buf.append((ev, seq, t, cols))
        self._pending += n
        if t - self._t_first >= self.flush_seconds or self._pending >= self.flush_events:
            self.flush(wait=False)

    def emit_page_rows(
        self,
        ev: str,
        ino: int,
        rows: Any,
        home_from: str,
        home_to: str,
        reason: str,
        counts: tuple[int, int] | None = None,
        via: str | None = None,
    ) -> None:
        """emit_pages with the columns as one int64 array, `rows[:, k]` page k's index,
        pfn_from, pfn_to, and refcount and mapcount unless `counts` gives one pair for
        every page. The writer keeps the array (the caller hands it over and does not
        touch it again): the mm's batches reach the log, or the sink's pipe as bytes,
        without a Python int made per page in the daemon."""
        n = rows.shape[1]
        if not n:
            return
        seq = self._seq
        self._seq = seq + n
        t = self._clock() - self._t0
        buf = self._buf
        if not buf:
            self._t_first = t
        buf.append((ev, seq, t, (ino, rows, home_from, home_to, reason, counts, via)))
        self._pending += n
        if t - self._t_first >= self.flush_seconds or self._pending >= self.flush_events:
            self.flush(wait=False)

    @property
    def pending(self) -> int:
        return self._pending

    def flush(self, wait: bool = True) -> None:
        """Append every buffered event as whole lines. With the sink, `wait=False` only
        hands them over (the tick's flush); `wait=True` returns once the sink has
        written them and everything handed over before (what `.nvramfs/stats` and
        close need: the log as of now)."""
        if self._fd is None:
            return
        buf = self._buf
        if buf:
            self._buf = []
            self._pending = 0
        sink = self._sink
        if sink is not None:
            try:
                if buf:
                    sink.send(buf)
                if wait:
                    sink.wait()
                return
            except SinkError as exc:
                log.warning("event log: %s; formatting in the daemon from now on", exc)
                self._sink = None
                sink.kill()
                for unwritten in exc.unwritten:
                    self._write_buffer(unwritten)
                return
        if buf:
            self._write_buffer(buf)

    def _write_buffer(self, buf: list[Any]) -> None:
        for chunk in format_buffer(buf):
            self._write(chunk)

    def _write(self, data: bytes) -> None:
        """Append whole lines (all of `data`, however many writes it takes)."""
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def close(self) -> None:
        """Flush and close; later emits are dropped."""
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            sink, self._sink = self._sink, None
            if sink is not None:
                sink.close()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullEventWriter:
    """The writer for tests and simulations that want no log: counts events, keeps none."""

    trace_faults = False

    def __init__(self, *, trace_faults: bool = False) -> None:
        self.trace_faults = trace_faults
        self._seq = 0

    def emit(self, ev: str, **fields: Any) -> int:
        seq = self._seq
        self._seq = seq + 1
        return seq

    def emit_pages(
        self,
        ev: str,
        ino: int,
        index: list[int],
        pfn_from: list[int],
        pfn_to: list[int],
        home_from: str,
        home_to: str,
        reason: str,
        refcount: list[int] | int,
        mapcount: list[int] | int,
        via: str | None = None,
    ) -> None:
        """EventWriter.emit_pages: here one `emit` per page (only the count when
        `emit` is this class's own: replays and sweeps without a log)."""
        if type(self).emit is NullEventWriter.emit:
            self._seq += len(index)
            return
        extra = {} if via is None else {"via": via}
        if type(refcount) is int:
            refcount = [refcount] * len(index)
        if type(mapcount) is int:
            mapcount = [mapcount] * len(index)
        for k in range(len(index)):
            self.emit(
                ev,
                ino=ino,
                index=index[k],
                pfn_from=pfn_from[k],
                pfn_to=pfn_to[k],
                **{"from": home_from, "to": home_to},
                reason=reason,
                refcount=refcount[k],
                mapcount=mapcount[k],
                **extra,
            )

    def emit_page_rows(
        self,
        ev: str,
        ino: int,
        rows: Any,
        home_from: str,
        home_to: str,
        reason: str,
        counts: tuple[int, int] | None = None,
        via: str | None = None,
    ) -> None:
        """EventWriter.emit_page_rows, as emit_pages of its columns."""
        if type(self).emit is NullEventWriter.emit:
            self._seq += rows.shape[1]
            return
        if rows.shape[1]:
            self.emit_pages(ev, *_rows_columns(ino, rows, home_from, home_to, reason, counts, via))

    @property
    def pending(self) -> int:
        return 0

    def flush(self, wait: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


class ListEventWriter(NullEventWriter):
    """Keeps every event in `events` as the dict a reader would parse (tests)."""

    def __init__(
        self, *, trace_faults: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(trace_faults=trace_faults)
        self._clock = clock
        self._t0 = clock()
        self.events: list[dict[str, Any]] = []

    def emit(self, ev: str, **fields: Any) -> int:
        seq = super().emit(ev)
        rec = {"v": schema.SCHEMA_VERSION, "seq": seq, "t": self._clock() - self._t0, "ev": ev}
        rec.update(fields)
        self.events.append(rec)
        return seq

    def of(self, ev: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["ev"] == ev]
