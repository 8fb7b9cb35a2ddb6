"""The event writer: whole JSON lines, appended only on flush; the fields mm logs."""

from __future__ import annotations

import json
import os

from mm_helpers import PAGE, FakeClock, pattern

from nvramfs.events import schema
from nvramfs.events.writer import EventWriter, ListEventWriter, NullEventWriter
from nvramfs.mm import MemBacking, MemoryManager


def lines(path) -> list[dict]:
    text = open(path, encoding="utf-8").read()
    assert text == "" or text.endswith("\n"), "a torn line"
    return [json.loads(line) for line in text.splitlines()]


def test_emit_buffers_flush_appends_whole_lines(tmp_path) -> None:
    path = tmp_path / "ev.jsonl"
    clock = FakeClock()
    w = EventWriter(path, clock=clock)
    w.emit(schema.MOUNT, image="x", dram_pages=4)
    assert os.path.getsize(path) == 0  # nothing written before a flush
    clock.advance(1.5)
    w.emit(schema.PATH, ino=2, path="/a")
    w.flush()
    got = lines(path)
    assert [e["seq"] for e in got] == [0, 1]
    assert all(e["v"] == schema.SCHEMA_VERSION for e in got)
    assert got[0]["ev"] == "mount" and got[0]["t"] == 0.0
    assert got[1]["ev"] == "path" and got[1]["t"] == 1.5 and got[1]["path"] == "/a"
    w.emit(schema.UNMOUNT, clean=True)
    w.close()
    assert [e["seq"] for e in lines(path)] == [0, 1, 2]
    w.close()  # idempotent


def test_appends_to_existing_log_and_another_writer(tmp_path) -> None:
    path = tmp_path / "ev.jsonl"
    path.write_text('{"v":1,"seq":0,"t":0,"ev":"mount"}\n')
    a, b = EventWriter(path), EventWriter(path)
    for i in range(100):
        a.emit(schema.ERROR, what="a" * i, fatal=False)
        b.emit(schema.ERROR, what="b" * i, fatal=False)
        if i % 10 == 0:
            a.flush()
            b.flush()
            lines(path)  # valid JSON Lines at every moment
    a.close()
    b.close()
    got = lines(path)
    assert len(got) == 201
    assert sorted(len(e["what"]) for e in got[1:] if e["what"].startswith("a")) == list(
        range(1, 100)
    )


def test_null_and_list_writers() -> None:
    n = NullEventWriter()
    assert n.emit(schema.COW) == 0 and n.emit(schema.COW) == 1
    n.flush()
    n.close()
    lw = ListEventWriter()
    lw.emit(schema.FAULT, ino=1, index=2, kind="hole", write=False)
    assert lw.of(schema.FAULT)[0]["kind"] == "hole"
    # A batch of page events counts one sequence number a page; the list writer
    # (a subclass with its own emit) still gets one event a page.
    args = (schema.COW, 7, [1, 2, 3], [9, 9, 9], [4, 5, 6], "xip", "pagecache", "write", 1, 0)
    n.emit_pages(*args)
    assert n.emit(schema.COW) == 5
    lw.emit_pages(*args)
    assert [e["index"] for e in lw.of(schema.COW)] == [1, 2, 3]


def test_mm_log_is_valid_jsonl_with_schema_fields(tmp_path) -> None:
    path = tmp_path / "mm.jsonl"
    clock = FakeClock()
    w = EventWriter(path, trace_faults=True, clock=clock)
    backing = MemBacking(256)
    backing.create(2, pattern(8), holes=[6])
    mm = MemoryManager(backing, 4, policy="mq", events=w, clock=clock)
    for _ in range(3):
        for p in range(8):
            mm.read(2, p * PAGE, 64)
        mm.read(2, 0, 6 * PAGE)
        clock.advance(1.0)
        mm.tick()
        lines(path)
    mm.write(2, 7 * PAGE, b"x" * 10)
    mm.write(2, 6 * PAGE, b"y")
    clock.advance(6.0)
    mm.tick()
    mm.close()
    w.close()
    got = lines(path)
    assert [e["seq"] for e in got] == list(range(len(got)))
    assert all(e["ev"] in schema.EVENT_TYPES for e in got)
    moves = [e for e in got if e["ev"] in (schema.MIGRATE, schema.COW, schema.WRITEBACK)]
    kinds = {e["ev"] for e in moves}
    assert kinds == {schema.MIGRATE, schema.COW, schema.WRITEBACK}
    for e in moves:
        for field in ("seq", "t", "ino", "index", "pfn_from", "pfn_to", "from", "to", "reason"):
            assert field in e, (field, e)
        assert e["refcount"] >= 0 and e["mapcount"] >= 0
    assert all(e["via"] in ("pfn_mkwrite", "wp_page_copy") for e in got if e["ev"] == schema.COW)
    assert {e["reason"] for e in got if e["ev"] == schema.WRITEBACK} <= {
        "dirty_expire",
        "demote",
        "unmount",
    }
    assert any(e["reason"] == "dirty_expire" for e in got if e["ev"] == schema.WRITEBACK)
    acc = [e for e in got if e["ev"] == schema.ACCESS]
    assert acc and acc[0]["ino"] == 2
    a = acc[0]
    assert a["pages"] == sorted(a["pages"]) and len(a["pages"]) == len(a["reads"]) == len(
        a["writes"]
    )
    assert a["t1"] > a["t0"]
    assert dict(zip(a["pages"], a["reads"], strict=True))[0] == 2
    counters = [e for e in got if e["ev"] == schema.COUNTERS]
    assert len(counters) == 5  # 4 ticks + close
    c = counters[-1]
    assert set(c["faults"]) == set(schema.FAULT_KINDS)
    assert c["dram_pages"] == 4 and c["struct_page_bytes_used"] == 64 * c["frames_used"]
    faults = [e for e in got if e["ev"] == schema.FAULT]
    assert faults and {f["kind"] for f in faults} <= set(schema.FAULT_KINDS)


def test_emit_flushes_a_buffer_a_second_old(tmp_path) -> None:
    """Issue 11, defect 2: a session killed between ticks keeps all but its last second,
    even when the tick is late (a long request holds the loop)."""
    path = tmp_path / "ev.jsonl"
    clock = FakeClock()
    w = EventWriter(path, clock=clock)
    w.emit(schema.MOUNT, image="x", dram_pages=4)
    clock.advance(0.5)
    w.emit(schema.PATH, ino=2, path="/a")
    assert os.path.getsize(path) == 0
    clock.advance(0.6)
    w.emit(schema.PATH, ino=3, path="/b")  # the mount event is now 1.1 s old
    assert [e["ev"] for e in lines(path)] == ["mount", "path", "path"]
    assert w.pending == 0
    w.close()


def test_close_logs_the_last_partial_interval(tmp_path) -> None:
    """Issue 11, defect 2: accesses after the last tick are in an access event at unmount,
    and every access event names the file by (ino, gen)."""

    class GenBacking(MemBacking):
        def inode_generation(self, ino: int) -> int:
            return 40 + ino

    path = tmp_path / "mm.jsonl"
    clock = FakeClock()
    w = EventWriter(path, clock=clock)
    backing = GenBacking(256)
    backing.create(2, pattern(8))
    mm = MemoryManager(backing, 4, events=w, clock=clock)
    for p in range(8):
        mm.read(2, p * PAGE, PAGE)
    clock.advance(1.0)
    mm.tick()
    clock.advance(0.3)
    for p in range(3):
        mm.write(2, p * PAGE, b"z")
    mm.close()  # no tick since the writes
    w.close()
    got = lines(path)
    acc = [e for e in got if e["ev"] == schema.ACCESS]
    assert len(acc) == 2
    last = acc[-1]
    assert last["gen"] == 42 and acc[0]["gen"] == 42
    assert last["pages"] == [0, 1, 2] and last["writes"] == [1, 1, 1]
    assert last["t0"] == acc[0]["t1"] and last["t1"] > last["t0"]
    c = [e for e in got if e["ev"] == schema.COUNTERS][-1]
    total = sum(sum(e["reads"]) + sum(e["writes"]) for e in acc)
    assert total == c["accesses"]["read"] + c["accesses"]["write"]
