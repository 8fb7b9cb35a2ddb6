"""The event log's sink process (EventWriter(offload=True)): the same bytes as the
writer formatting in place, complete when flush() returns, and never a lost
daemon or a lost log when the sink or the daemon dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nvramfs.events import schema
from nvramfs.events.writer import EventWriter
from nvramfs.mm import MemBacking, MemoryManager

PAGE = 4096
ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "a torn line"
    return [json.loads(line) for line in text.splitlines()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running any more.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def workload(path: Path, offload: bool) -> bytes:
    """A mm session with every kind of record: page batches (cow, writeback, migrate),
    per-fault dicts, access events with lists, numpy values in a dict and a batch
    given as arrays (those the daemon formats itself), ticks and auto-flushes."""
    clock = Clock()
    w = EventWriter(path, trace_faults=True, clock=clock, flush_events=200, offload=offload)
    rng = np.random.default_rng(7)
    backing = MemBacking(1024)
    backing.create(2, rng.integers(0, 256, 96 * PAGE, dtype=np.uint8).tobytes(), holes=[5, 40])
    mm = MemoryManager(backing, 16, policy="mq", events=w, clock=clock)
    for step in range(12):
        for _ in range(20):
            page = int(rng.integers(0, 96))
            if rng.random() < 0.4:
                mm.write(
                    2, page * PAGE, b"w" * min(int(rng.integers(1, 3 * PAGE)), (96 - page) * PAGE)
                )
            else:
                mm.read(2, page * PAGE, min(int(rng.integers(1, 8 * PAGE)), (96 - page) * PAGE))
        w.emit(schema.THROTTLE, ino=np.int64(2), dirty=np.int32(step), background=1, limit=2)
        w.emit(
            schema.ERROR, what="x", nested={"a": [1, np.int64(2)], "b": (3.5, None)}, n=[[1], [2]]
        )
        w.emit_pages(
            schema.MIGRATE, 2, np.arange(3), np.arange(3) + 7, np.arange(3) + 9,
            schema.PAGECACHE, schema.XIP, schema.REASON_CTL, np.ones(3, np.int64), 0,
        )  # fmt: skip
        clock.now += 0.7
        mm.tick()
    mm.close()
    w.close()
    return path.read_bytes()


def test_sink_writes_the_same_bytes_as_the_writer(tmp_path: Path) -> None:
    inline = workload(tmp_path / "inline.jsonl", offload=False)
    sunk = workload(tmp_path / "sink.jsonl", offload=True)
    assert sunk == inline
    got = lines(tmp_path / "sink.jsonl")
    assert [e["seq"] for e in got] == list(range(len(got)))
    kinds = {e["ev"] for e in got}
    assert {"cow", "writeback", "migrate", "fault", "access", "throttle", "counters"} <= kinds
    throttles = [e for e in got if e["ev"] == "throttle"]
    assert [e["dirty"] for e in throttles] == list(range(12))  # numbers, not bytes
    errors = [e for e in got if e["ev"] == "error"]
    assert errors[0]["nested"] == {"a": [1, 2], "b": [3.5, None]} and errors[0]["n"] == [[1], [2]]


def test_flush_returns_with_every_line_written(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    w = EventWriter(path, offload=True)
    try:
        assert w.sink_pid is not None
        for k in range(50):
            w.emit_pages(
                schema.WRITEBACK, 3, list(range(k * 8, k * 8 + 8)), list(range(8)),
                list(range(100, 108)), schema.PAGECACHE, schema.XIP, schema.REASON_SYNC, 1, 0,
            )  # fmt: skip
            w.flush(wait=False)
        w.emit(schema.PATH, ino=3, path="/f")
        w.flush()
        got = lines(path)
        assert len(got) == 401 and got[-1]["ev"] == "path"
        assert [e["index"] for e in got[:-1]] == list(range(400))
        w.flush(wait=False)  # nothing buffered: nothing sent
        w.flush()
        assert len(lines(path)) == 401
    finally:
        w.close()


def test_close_ends_the_sink(tmp_path: Path) -> None:
    w = EventWriter(tmp_path / "ev.jsonl", offload=True)
    pid = w.sink_pid
    assert pid is not None and alive(pid)
    w.emit(schema.UNMOUNT, clean=True)
    w.close()
    assert not alive(pid)
    assert [e["ev"] for e in lines(tmp_path / "ev.jsonl")] == ["unmount"]


def test_a_dead_sink_is_replaced_by_formatting_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ev.jsonl"
    w = EventWriter(path, offload=True)
    try:
        w.emit(schema.PATH, ino=2, path="/a")
        w.flush()
        pid = w.sink_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        for k in range(3):
            w.emit(schema.PATH, ino=3 + k, path=f"/b{k}")
            w.flush(wait=False)
        w.flush()  # no exception: the daemon must not die with its log's helper
        assert w.sink_pid is None
        paths = [e["path"] for e in lines(path)]
        assert paths[0] == "/a"
        # What the dead sink never wrote, the writer wrote itself: nothing is lost.
        assert paths == ["/a", "/b0", "/b1", "/b2"]
        assert any("sink" in r.getMessage() for r in caplog.records)
    finally:
        w.close()


def test_the_sink_outlives_sigterm_and_sigint(tmp_path: Path) -> None:
    """A kill of the process group reaches the daemon, which closes the log: the
    sink must still be there to write the last lines."""
    path = tmp_path / "ev.jsonl"
    w = EventWriter(path, offload=True)
    try:
        pid = w.sink_pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        w.emit(schema.UNMOUNT, clean=True)
        w.flush()
        assert alive(pid)
        assert [e["ev"] for e in lines(path)] == ["unmount"]
    finally:
        w.close()


def test_a_killed_daemon_keeps_what_it_handed_over(tmp_path: Path) -> None:
    """SIGKILL of the writing process: every record handed over before it (flushed,
    a moment earlier) is written by the sink, as whole lines, and the sink then
    exits by itself."""
    path = tmp_path / "ev.jsonl"
    code = f"""
import os, signal, sys, time
sys.path.insert(0, {str(ROOT)!r})
from nvramfs.events.writer import EventWriter
w = EventWriter({str(path)!r}, offload=True)
for k in range(2000):
    w.emit_pages("writeback", 2, list(range(k * 4, k * 4 + 4)), [1, 2, 3, 4], [5, 6, 7, 8],
                 "pagecache", "xip", "fsync", 1, 0)
    if k % 500 == 499:
        w.flush(wait=False)
print(w.sink_pid, flush=True)
time.sleep(0.5)  # the sender thread has handed everything over by now
os.kill(os.getpid(), signal.SIGKILL)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    sink = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30
    while alive(sink) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(sink), "the sink outlived its daemon"
    got = lines(path)
    assert [e["seq"] for e in got] == list(range(8000))


def test_page_rows_give_the_lines_of_one_emit_per_page(tmp_path) -> None:
    """emit_page_rows (the mm's page batches, one int64 array handed over) writes
    exactly the lines of one `emit` per page, formatted here or by the sink, and a
    ListEventWriter gets the same dicts; the array may be reused once handed over."""
    from nvramfs.events.writer import ListEventWriter

    rows5 = np.array([[0, 1, 2], [7, 8, 9], [1 << 20, 5, 6], [1, 2, 1], [0, 1, 0]], np.int64)
    rows3 = np.array([[4], [(1 << 40) + 9], [9]], np.int64)
    batches = [
        (schema.WRITEBACK, 2, rows5, "pagecache", "xip", "background", None, None),
        (schema.COW, 3, rows3, "xip", "pagecache", "write", (1, 0), "pfn_mkwrite"),
        (schema.MIGRATE, 2, rows3, "pagecache", "xip", 'not "a word"', (2, 3), None),
        (schema.MIGRATE, 2, rows5[:, :0], "pagecache", "xip", "tick", None, None),
    ]

    def per_page(w) -> None:
        for ev, ino, rows, hf, ht, reason, counts, via in batches:
            cols = rows.tolist()
            for k in range(rows.shape[1]):
                ref, mc = counts if counts is not None else (cols[3][k], cols[4][k])
                extra = {} if via is None else {"via": via}
                w.emit(ev, ino=ino, index=cols[0][k], pfn_from=cols[1][k], pfn_to=cols[2][k],
                       **{"from": hf, "to": ht}, reason=reason, refcount=ref, mapcount=mc,
                       **extra)  # fmt: skip

    def rows_of(w) -> None:
        for ev, ino, rows, hf, ht, reason, counts, via in batches:
            handed = rows.copy()
            w.emit_page_rows(ev, ino, handed, hf, ht, reason, counts, via)

    out = []
    for name, how, offload in [("emit", per_page, False), ("rows", rows_of, False),
                               ("sink", rows_of, True)]:  # fmt: skip
        w = EventWriter(tmp_path / f"{name}.jsonl", clock=Clock(), offload=offload)
        how(w)
        w.close()
        out.append((tmp_path / f"{name}.jsonl").read_text())
    assert out[0].count("\n") == 5
    assert out[1] == out[0] and out[2] == out[0]
    listed = [ListEventWriter(clock=Clock()) for _ in range(2)]
    per_page(listed[0])
    rows_of(listed[1])
    assert listed[1].events == listed[0].events and len(listed[0].events) == 5
