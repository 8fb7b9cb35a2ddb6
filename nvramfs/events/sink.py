"""The event log's sink: a process that turns the daemon's records into log lines.

A busy mount logs three page events per page it moves (a `cow`, a
`writeback`, a `migrate`): formatting them is a fifth of the daemon's time
in a streaming write. The daemon's thread serves requests and runs the
simulation, so the text is made elsewhere, as the kernel's trace ring buffer
is formatted by its reader: `EventWriter(offload=True)` hands its buffer
(event dicts and page batches, plain Python values) to this module's `Sink`,
which `marshal`s it and queues it for a sender thread; the sender writes it
to the sink process's stdin; the sink process (`main`) formats it with the
writer's own `format_buffer` and appends the lines to the log. Both append
with O_APPEND, whole lines only.

The wire: an 8-byte header (the payload's length, little-endian) and a
`marshal`led list of records: a page batch as `emit_pages` took it (or as
`emit_page_rows` did, its int64 array as bytes), an event
dict whose values are plain scalars, or a line the daemon encoded itself (a
dict with lists or other values in it; a batch not made of Python ints).
`marshal` would write a numpy value as its raw bytes, so only plain Python
values travel unformatted. After writing a message's lines the sink writes
one byte to its stdout: the daemon keeps each buffer until then, so
`EventWriter.flush()` can wait for the log to be complete (when
`.nvramfs/stats` is read, or the mount ends), and if the sink dies the
writer formats what it had not written.

What a crash keeps is what the writer kept before: the sink writes whatever
reached it, and exits at end of input (the daemon closed it, or died), after
the last whole message. It ignores SIGINT, SIGTERM and SIGHUP: a Ctrl-C or a
`kill` of the process group reaches the daemon, which unmounts and closes the
log, and the sink must outlive that to write the last lines.
"""

from __future__ import annotations

import collections
import marshal
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
from typing import Any

_SCALAR = frozenset((int, float, str, bool, type(None)))
_HEAD = struct.Struct("<Q")  # the payload's length
ACK_TIMEOUT = 60.0  # seconds a flush waits for the sink before giving it up
START_TIMEOUT = 30.0


class SinkError(Exception):
    """The sink cannot take more (gone, or stuck). `unwritten`: the buffers it never
    said it wrote, in order, for the caller to write itself."""

    def __init__(self, msg: str, unwritten: list[list[Any]]) -> None:
        super().__init__(msg)
        self.unwritten = unwritten


class Sink:
    """The daemon's end: the sink process, and a thread that feeds its stdin so that
    the daemon's thread never waits on a full pipe. Every buffer is kept until the
    sink says it wrote it (one byte per message on its stdout): if the sink dies,
    the writer formats what it had not written, so nothing is lost (a message the
    sink wrote but died before acknowledging would be written twice)."""

    def __init__(self, path: str) -> None:
        # Run this checkout's nvramfs, whatever the daemon's cwd (it chdirs to /).
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (
            f"import sys; sys.path.insert(0, {root!r}); "
            "from nvramfs.events.sink import main; main()"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
            )
        except OSError as exc:
            raise SinkError(f"cannot start the sink: {exc.strerror or exc}", []) from None
        self.pid = self._proc.pid
        self._in = self._proc.stdin.fileno()  # type: ignore[union-attr]
        self._out = self._proc.stdout.fileno()  # type: ignore[union-attr]
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._failed: str | None = None
        self._inflight: collections.deque[list[Any]] = collections.deque()
        self._thread = threading.Thread(target=self._feed, name="event-sink", daemon=True)
        self._thread.start()
        # The sink says it is ready (its log open) with one byte.
        self._inflight.append([])
        self._take_acks(START_TIMEOUT, "start")

    def _feed(self) -> None:
        """The sender thread: write each queued message whole (the GIL is free while
        the pipe is full); None ends."""
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            view = memoryview(msg)
            try:
                while view:
                    view = view[os.write(self._in, view) :]
            except OSError as exc:
                self._failed = f"the sink (pid {self.pid}) stopped taking events: {exc.strerror}"
                return

    def send(self, buf: list[Any]) -> None:
        """Queue the records of `buf` for the sink (and take the acknowledgements that
        came meanwhile)."""
        self._inflight.append(buf)
        if self._failed is not None:
            self._fail(self._failed)
        payload = marshal.dumps([_wire(r) for r in buf])
        self._queue.put(_HEAD.pack(len(payload)) + payload)
        self._take_acks()

    def wait(self, timeout: float = ACK_TIMEOUT) -> None:
        """Until the sink has written every message handed over."""
        while self._inflight:
            self._take_acks(timeout, "flush")

    def _take_acks(self, timeout: float = 0.0, what: str = "") -> None:
        """Drop the buffers the sink says it wrote. A named wait (`what`) blocks up to
        `timeout` for at least one acknowledgement; otherwise only those already
        there are taken."""
        ready, _, _ = select.select([self._out], [], [], timeout if what else 0.0)
        if not ready:
            if what:
                self._fail(f"the sink (pid {self.pid}) did not answer a {what} in {timeout:g} s")
            return
        data = os.read(self._out, len(self._inflight))
        if not data:
            self._fail(self._failed or f"the sink (pid {self.pid}) exited")
        for _ in range(len(data)):
            self._inflight.popleft()

    def _fail(self, msg: str) -> None:
        unwritten = [b for b in self._inflight if b]
        self._inflight.clear()
        raise SinkError(msg, unwritten)

    def close(self, timeout: float = ACK_TIMEOUT) -> None:
        """End of input: the sink writes what it has and exits."""
        self._queue.put(None)
        self._thread.join(timeout)
        for f in (self._proc.stdin, self._proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Give the sink up (it failed): stop it and reap it."""
        try:
            self._proc.kill()
            self._proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _plain_value(v: Any) -> bool:
    """A JSON value made of Python's own types only (the access event's lists of
    thousands of pages are checked at C speed)."""
    t = type(v)
    if t in _SCALAR:
        return True
    if t is list or t is tuple:
        kinds = set(map(type, v))
        if kinds <= _SCALAR:
            return True
        return all(_plain_value(x) for x in v)
    if t is dict:
        return all(type(k) is str for k in v) and all(_plain_value(x) for x in v.values())
    return False


def _plain(rec: Any) -> bool:
    """Can `rec` travel as it is (marshal keeps its values exactly)?"""
    if type(rec) is dict:
        return _plain_value(rec)
    _ev, _seq, t, cols = rec
    ino, index, pfn_from, pfn_to, home_from, home_to, reason, refcount, mapcount, via = cols
    return (
        type(t) is float
        and type(ino) is int
        and type(index) is list
        and type(pfn_from) is list
        and type(pfn_to) is list
        and type(index[0]) is int
        and type(pfn_from[0]) is int
        and type(pfn_to[0]) is int
        and (type(refcount) is int or (type(refcount) is list and type(refcount[0]) is int))
        and (type(mapcount) is int or (type(mapcount) is list and type(mapcount[0]) is int))
    )


def _wire(rec: Any) -> Any:
    """`rec` as it travels: as it is when marshal keeps it exactly; an emit_page_rows
    batch with its array as bytes; otherwise its lines, made here."""
    if type(rec) is tuple and len(rec[3]) == 7:
        ev, seq, t, (ino, rows, home_from, home_to, reason, counts, via) = rec
        if (
            type(t) is float
            and type(ino) is int
            and rows.dtype.str == "<i8"
            and (counts is None or (type(counts[0]) is int and type(counts[1]) is int))
        ):
            wired = (rows.tobytes(), rows.shape[0])
            return (ev, seq, t, (ino, wired, home_from, home_to, reason, counts, via))
        return _line(rec)
    return rec if _plain(rec) else _line(rec)


def _line(rec: Any) -> str:
    """The log text of one record, made here."""
    from .writer import format_buffer

    return b"".join(format_buffer([rec])).decode()


def _read_exactly(fd: int, n: int) -> bytes | None:
    """n bytes from fd; None at end of input before all of them (a cut message)."""
    parts = []
    while n:
        data = os.read(fd, min(n, 1 << 20))
        if not data:
            return None
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def main() -> None:
    """The sink process: messages on stdin, lines appended to the log in sys.argv[1]."""
    from .writer import format_buffer

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    path = sys.argv[1]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    os.write(1, b"r")

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    while True:
        head = _read_exactly(0, _HEAD.size)
        if head is None:
            break
        (n,) = _HEAD.unpack(head)
        payload = _read_exactly(0, n)
        if payload is None:
            break
        for chunk in format_buffer(marshal.loads(payload)):
            write(chunk)
        try:
            os.write(1, b"k")  # written: the daemon may forget this message
        except OSError:
            pass
    os.close(fd)
