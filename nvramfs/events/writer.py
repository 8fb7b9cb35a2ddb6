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
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from . import schema


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
    ) -> None:
        self.path = os.fspath(path)
        self.flush_seconds = flush_seconds
        self.flush_events = flush_events
        self.trace_faults = trace_faults
        self._clock = clock
        self._t0 = clock()
        self._seq = 0
        self._buf: list[dict[str, Any]] = []
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )

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
        buf.append(rec)
        if t - buf[0]["t"] >= self.flush_seconds or len(buf) >= self.flush_events:
            self.flush()
        return seq

    @property
    def pending(self) -> int:
        return len(self._buf)

    def flush(self) -> None:
        """Append every buffered event as whole lines, in one write."""
        if not self._buf or self._fd is None:
            return
        buf, self._buf = self._buf, []
        dumps = json.dumps
        for rec in buf:
            rec["t"] = round(rec["t"], 6)
        data = ("\n".join(dumps(r, separators=(",", ":")) for r in buf) + "\n").encode()
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

    @property
    def pending(self) -> int:
        return 0

    def flush(self) -> None:
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
