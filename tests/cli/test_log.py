"""`nvramfs log`: every action on a small recorded log, on damaged logs, and on a live one.

Two kinds of log are made here (none is committed): a hand-made one written
with the real EventWriter, whose every count is known, and one recorded by
driving the real mm MemoryManager over an in-memory backing, whose numbers
must agree with its own counters.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from nvramfs.cli import run
from nvramfs.cli.log import format_summary, split_sessions, summarize
from nvramfs.events.reader import ReadReport, load_events, read_events
from nvramfs.events.writer import EventWriter

WALL = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _counters(promote: dict, demote: dict, wb: dict, faults: dict, reads: int, writes: int,
              frames: int, avoided: int) -> dict:  # fmt: skip
    return {
        "faults": {
            k: faults.get(k, 0) for k in ("xip_read", "pagecache_hit", "cow", "write_reuse", "hole")
        },
        "accesses": {"read": reads, "write": writes},
        "migrations": {"promote": promote, "demote": demote},
        "writebacks": wb,
        "frames_used": frames,
        "dram_pages": 8,
        "dirty": 1,
        "struct_page_bytes_used": 64 * frames,
        "struct_page_bytes_avoided": avoided,
    }


def _mig(w: EventWriter, ino: int, index: int, promote: bool, reason: str) -> None:
    src, dst = ("xip", "pagecache") if promote else ("pagecache", "xip")
    w.emit(
        "migrate",
        ino=ino,
        index=index,
        pfn_from=(1 << 20) + index if promote else 3,
        pfn_to=3 if promote else (1 << 20) + index,
        reason=reason,
        refcount=1 if promote else 0,
        mapcount=1 if promote else 0,
        **{"from": src, "to": dst},
    )


def write_handmade(path: Path, *, wall: float = WALL) -> None:
    """A 3-second session with known counts (see HANDMADE)."""
    clk = FakeClock()
    with EventWriter(path, clock=clk) as w:
        w.emit(
            "mount",
            image="test.img",
            dram_pages=8,
            page_size=4096,
            policy="2q",
            pte_special=True,
            cache="direct",
            sim=True,
            recovered=False,
            wall=wall,
        )
        w.emit("path", ino=2, path="/hot.bin")
        w.emit("path", ino=3, path="/data/cold.bin")
        clk.now += 1.0
        w.emit(
            "access", ino=2, t0=0.0, t1=1.0, pages=[0, 1, 2], reads=[50, 20, 5], writes=[0, 0, 1]
        )
        w.emit("access", ino=3, t0=0.0, t1=1.0, pages=[10], reads=[3], writes=[0])
        _mig(w, 2, 0, True, "policy")
        _mig(w, 2, 1, True, "policy")
        _mig(w, 2, 2, True, "policy")
        c1 = _counters({"policy": 3}, {}, {}, {"xip_read": 20, "pagecache_hit": 58, "cow": 1},
                       78, 1, 3, 256)  # fmt: skip
        w.emit("counters", **c1)
        clk.now += 1.0
        w.emit(
            "cow",
            ino=3,
            index=10,
            via="pfn_mkwrite",
            pfn_from=(1 << 20) + 10,
            pfn_to=4,
            reason="write",
            refcount=1,
            mapcount=1,
            **{"from": "xip", "to": "pagecache"},
        )
        w.emit(
            "cow",
            ino=3,
            index=11,
            via="pfn_mkwrite",
            pfn_from=(1 << 20) + 11,
            pfn_to=5,
            reason="write",
            refcount=1,
            mapcount=1,
            **{"from": "xip", "to": "pagecache"},
        )
        w.emit(
            "cow",
            ino=2,
            index=5,
            via="wp_page_copy",
            pfn_from=3,
            pfn_to=6,
            reason="write",
            refcount=1,
            mapcount=1,
            **{"from": "pagecache", "to": "anon"},
        )
        w.emit("access", ino=3, t0=1.0, t1=2.0, pages=[10, 11], reads=[0, 0], writes=[4, 2])
        _mig(w, 2, 1, False, "dram_budget")
        _mig(w, 2, 2, False, "dram_budget")
        w.emit(
            "writeback",
            ino=3,
            index=10,
            pfn_from=4,
            pfn_to=(1 << 20) + 40,
            reason="fsync",
            refcount=1,
            mapcount=1,
            **{"from": "pagecache", "to": "xip"},
        )
        w.emit("error", what="read: OSError: boom", fatal=False)
        c2 = _counters({"policy": 3}, {"dram_budget": 2}, {"fsync": 1},
                       {"xip_read": 20, "pagecache_hit": 58, "cow": 4, "write_reuse": 3}, 78, 7,
                       5, 512)  # fmt: skip
        w.emit("counters", **c2)
        w.flush()
        clk.now += 1.0
        _mig(w, 2, 5, True, "ctl")
        for i in (11, 12):
            w.emit(
                "writeback",
                ino=3,
                index=i,
                pfn_from=5,
                pfn_to=(1 << 20) + 41,
                reason="dirty_expire",
                refcount=1,
                mapcount=1,
                **{"from": "pagecache", "to": "xip"},
            )
        w.emit(
            "writeback",
            ino=2,
            index=5,
            pfn_from=3,
            pfn_to=(1 << 20) + 42,
            reason="unmount",
            refcount=0,
            mapcount=0,
            **{"from": "pagecache", "to": "xip"},
        )
        _mig(w, 2, 0, False, "unmount")
        c3 = _counters({"policy": 3, "ctl": 1}, {"dram_budget": 2, "unmount": 1},
                       {"fsync": 1, "dirty_expire": 2, "unmount": 1},
                       {"xip_read": 20, "pagecache_hit": 58, "cow": 4, "write_reuse": 3}, 78, 7,
                       2, 512)  # fmt: skip
        w.emit("counters", **c3)
        w.emit("unmount", clean=True)


HANDMADE = {
    "by_event": {
        "access": 3,
        "counters": 3,
        "cow": 3,
        "error": 1,
        "migrate": 7,
        "mount": 1,
        "path": 2,
        "unmount": 1,
        "writeback": 4,
    },
    "migrations": {"promote": {"policy": 3, "ctl": 1}, "demote": {"dram_budget": 2, "unmount": 1}},
    "cow_via": {"pfn_mkwrite": 2, "wp_page_copy": 1},
    "writebacks": {"fsync": 1, "dirty_expire": 2, "unmount": 1},
    "faults": {
        "xip_read": 20,
        "pagecache_hit": 58,
        "cow": 4,
        "write_reuse": 3,
        "hole": 0,
        "readpage": 0,
    },
    "accesses": {"read": 78, "write": 7},
    "hot": {"/hot.bin": (75, 1), "/data/cold.bin": (3, 6)},
}
N_EVENTS = sum(HANDMADE["by_event"].values())


@pytest.fixture
def log(tmp_path: Path) -> Path:
    p = tmp_path / "test.img.events.jsonl"
    write_handmade(p)
    return p


def write_mm_log(path: Path, seconds: int = 12) -> None:
    """Drive the real MemoryManager: a zipf-hot file, a scan, then writes and an fsync."""
    np = pytest.importorskip("numpy")
    from nvramfs.mm.backing import MemBacking
    from nvramfs.mm.manager import MemoryManager

    clk = FakeClock()
    w = EventWriter(path, clock=clk)
    backing = MemBacking(2048)
    backing.create(2, bytes(64 * 4096))
    backing.create(3, bytes(256 * 4096))
    mm = MemoryManager(backing, 32, events=w, clock=clk, writeback_seconds=2.0)
    w.emit("mount", image="mem", dram_pages=32, page_size=4096, policy="2q", pte_special=True,
           cache="direct", sim=True, recovered=False, wall=WALL)  # fmt: skip
    w.emit("path", ino=2, path="/hot.bin")
    w.emit("path", ino=3, path="/big/scan.bin")
    rng = np.random.default_rng(7)
    for sec in range(seconds):
        for _ in range(300):
            mm.read(2, int(min(63, rng.zipf(1.3) - 1)) * 4096, 4096)
        if 4 <= sec < 7:
            for p in range(256):
                mm.read(3, p * 4096, 4096)
        if sec >= 7:
            for _ in range(20):
                mm.write(2, int(rng.integers(0, 64)) * 4096, b"x" * 100)
        clk.now += 1.0
        mm.tick()
    mm.fsync(2)
    mm.close()
    w.emit("unmount", clean=True)
    w.close()


@pytest.fixture(scope="module")
def mm_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("mm") / "mm.events.jsonl"
    write_mm_log(p)
    return p


def nv(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- reader


def test_reader_reads_every_event_of_a_whole_log(log: Path) -> None:
    events, report = load_events(log)
    assert len(events) == N_EVENTS
    assert report.skipped == 0 and report.describe() is None
    assert [e["seq"] for e in events] == list(range(N_EVENTS))


def test_reader_skips_a_torn_last_line_and_says_so(log: Path) -> None:
    whole = log.read_bytes()
    log.write_bytes(whole + b'{"v":1,"seq":99,"t":3.5,"ev":"migr')
    events, report = load_events(log)
    assert len(events) == N_EVENTS
    assert report.torn_last == 1
    assert report.describe() == "skipped 1 torn line at the end (a crash cut it)"


def test_reader_keeps_the_next_session_glued_to_a_torn_line(log: Path, tmp_path: Path) -> None:
    other = tmp_path / "second.jsonl"
    write_handmade(other, wall=WALL + 100)
    whole = log.read_bytes()
    log.write_bytes(whole[:-20] + other.read_bytes())  # cut the unmount line mid-way
    events, report = load_events(log)
    assert report.torn_inside == 1 and report.torn_last == 0
    assert len(events) == 2 * N_EVENTS - 1
    sessions = split_sessions(events)
    assert len(sessions) == 2
    assert not sessions[0].clean and sessions[1].clean
    assert sessions[1].offset == pytest.approx(100.0)
    s = summarize(sessions, report)
    assert s["clean_unmount"] == [False, True] and s["unmounted"] == [False, True]
    assert "some sessions were not cleanly unmounted" in format_summary(s)


def test_reader_counts_garbage_other_versions_and_non_events(log: Path) -> None:
    lines = log.read_text().splitlines()
    lines[3:3] = [
        "not json at all",
        '{"v":2,"seq":0,"t":0,"ev":"mount"}',
        '{"v":2,"seq":1,"t":0,"ev":"path"}',
        "[1, 2, 3]",
        "",
        '{"no":"ev"}',
        "\x00\x00garbage",
    ]
    log.write_text("\n".join(lines) + "\n")
    events, report = load_events(log)
    assert len(events) == N_EVENTS
    assert report.not_json == 2
    assert report.other_version == {2: 2}
    assert report.not_event == 2
    text = report.describe()
    assert "2 lines that are not JSON" in text
    assert "2 lines of schema version 2" in text


def test_reader_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    from nvramfs.errors import NvramfsError

    with pytest.raises(NvramfsError, match="no such event log"):
        list(read_events(tmp_path / "nope.jsonl"))
    with pytest.raises(NvramfsError, match="is a directory"):
        list(read_events(tmp_path))


def test_reader_follows_a_log_being_written_and_waits_for_whole_lines(tmp_path: Path) -> None:
    p = tmp_path / "live.jsonl"
    p.write_bytes(b"")
    got: list[dict] = []
    done = threading.Event()
    report = ReadReport()

    def reader() -> None:
        for ev in read_events(p, follow=True, report=report, poll=0.02, stop=done.is_set):
            got.append(ev)

    th = threading.Thread(target=reader)
    th.start()
    try:
        with open(p, "ab") as f:
            f.write(b'{"v":1,"seq":0,"t":0.0,"ev":"mount","image":"x"}\n{"v":1,"seq":1,"t":0.1,')
            f.flush()
            time.sleep(0.2)
            assert [e["seq"] for e in got] == [0]  # the half line is held back
            f.write(b'"ev":"unmount","clean":true}\n')
            f.flush()
            deadline = time.monotonic() + 5
            while len(got) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        done.set()
        th.join(5)
    assert [e["ev"] for e in got] == ["mount", "unmount"]
    assert report.skipped == 0


# --------------------------------------------------------------------------- summary


def test_summary_json_counts_what_the_log_holds(log: Path, capsys) -> None:
    code, out, err = nv(capsys, "log", log, "summary", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["by_event"] == HANDMADE["by_event"]
    assert s["events"] == N_EVENTS
    assert s["migrations"] == HANDMADE["migrations"]
    assert s["migrations_counters"] == HANDMADE["migrations"]
    assert s["cow"]["via"] == HANDMADE["cow_via"] and s["cow"]["total"] == 3
    assert s["writebacks"] == HANDMADE["writebacks"] == s["writebacks_counters"]
    assert s["faults"] == HANDMADE["faults"]
    assert s["accesses"] == HANDMADE["accesses"]
    assert s["pagecache_hit_ratio"] == pytest.approx(58 / 85)
    assert s["struct_page"] == {"bytes_used_peak": 64 * 5, "bytes_avoided_peak": 512}
    assert s["errors"] == 1 and s["fatal_errors"] == 0
    assert s["sessions"] == 1 and s["clean_unmount"] == [True]
    assert s["duration_s"] == pytest.approx(3.0)
    # Over time: every bucket adds up to the totals.
    rows = s["timeline"]["rows"]
    assert sum(r["promote"] for r in rows) == 4
    assert sum(r["demote"] for r in rows) == 3
    assert sum(r["cow"] for r in rows) == 3
    assert sum(r["writeback"] for r in rows) == 4
    assert sum(r["reads"] for r in rows) == 78 and sum(r["writes"] for r in rows) == 7
    hot = {f["path"]: (f["reads"], f["writes"]) for f in s["hottest_files"]}
    assert hot == HANDMADE["hot"]
    assert s["hottest_files"][0]["path"] == "/hot.bin"


def test_summary_text_is_short_and_says_the_numbers(log: Path, capsys) -> None:
    code, out, err = nv(capsys, "log", log, "summary", "--bucket", "1")
    assert code == 0 and err == ""
    assert "1 session, 3.0 s, 25 events, clean unmount" in out
    assert re.search(r"promote\s+xip→pagecache\s+4\s+policy 3, ctl 1", out)
    assert re.search(r"demote\s+pagecache→xip\s+3\s+dram_budget 2, unmount 1", out)
    assert "cow          3   via pfn_mkwrite 2, wp_page_copy 1" in out
    assert "writebacks   4   dirty_expire 2, fsync 1, unmount 1" in out
    assert "hit ratio    68.2%" in out
    assert "over time (1 s buckets)" in out
    assert "/hot.bin" in out and "/data/cold.bin" in out
    assert len(out.splitlines()) < 40


def test_summary_of_the_real_mm_agrees_with_its_counters(mm_log: Path, capsys) -> None:
    code, out, err = nv(capsys, "log", mm_log, "summary", "--json")
    assert code == 0, err
    s = json.loads(out)
    # Events and the mm's own cumulative counters tell the same story.
    assert s["migrations"]["promote"] == s["migrations_counters"]["promote"]
    assert s["migrations"]["demote"] == s["migrations_counters"]["demote"]
    assert s["writebacks"] == s["writebacks_counters"]
    assert sum(s["migrations"]["promote"].values()) > 0
    assert sum(s["migrations"]["demote"].values()) > 0
    assert s["cow"]["via"].get("pfn_mkwrite", 0) > 0
    # The access histograms add up to the counters' accesses.
    rows = s["timeline"]["rows"]
    assert sum(r["reads"] for r in rows) == s["accesses"]["read"]
    assert sum(r["writes"] for r in rows) == s["accesses"]["write"]
    assert s["hottest_files"][0]["path"] == "/hot.bin"


def test_summary_session_selection(log: Path, tmp_path: Path, capsys) -> None:
    second = tmp_path / "b.jsonl"
    write_handmade(second, wall=WALL + 10)
    with open(log, "ab") as f:
        f.write(second.read_bytes())
    code, out, _ = nv(capsys, "log", log, "summary", "--json")
    s = json.loads(out)
    assert s["sessions"] == 2 and s["events"] == 2 * N_EVENTS
    assert s["migrations"]["promote"] == {"policy": 6, "ctl": 2}
    assert s["faults"]["pagecache_hit"] == 116  # last counters of each session, summed
    assert s["duration_s"] == pytest.approx(13.0)
    code, out, _ = nv(capsys, "log", log, "summary", "--json", "--session", "last")
    assert json.loads(out)["events"] == N_EVENTS
    code, out, err = nv(capsys, "log", log, "summary", "--session", "3")
    assert code == 2 and "2 session(s)" in err


# --------------------------------------------------------------------------- top


def test_top_names_the_hottest_files_and_pages(log: Path, capsys) -> None:
    code, out, err = nv(capsys, "log", log, "top", "--json")
    assert code == 0, err
    t = json.loads(out)
    assert [f["path"] for f in t["files"]] == ["/hot.bin", "/data/cold.bin"]
    assert t["files"][0]["promote"] == 4 and t["files"][0]["demote"] == 3
    first = t["pages"][0]
    assert (first["path"], first["index"], first["offset"], first["reads"]) == (
        "/hot.bin",
        0,
        0,
        50,
    )
    code, out, _ = nv(capsys, "log", log, "top", "--json", "--by", "writes", "-n", "1")
    t = json.loads(out)
    assert [f["path"] for f in t["files"]] == ["/data/cold.bin"]
    assert (t["pages"][0]["path"], t["pages"][0]["index"]) == ("/data/cold.bin", 10)
    code, out, _ = nv(capsys, "log", log, "top")
    assert "hottest files (by total)" in out and "hottest pages (by total)" in out


def test_top_without_path_events_names_inodes(log: Path, capsys) -> None:
    lines = [ln for ln in log.read_text().splitlines() if '"ev":"path"' not in ln]
    log.write_text("\n".join(lines) + "\n")
    code, out, _ = nv(capsys, "log", log, "top", "--what", "files")
    assert code == 0 and "<ino 2>" in out


# --------------------------------------------------------------------------- filter


def _jsonl(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines()]


def test_filter_by_event_reason_path_inode_and_time(log: Path, capsys) -> None:
    _, out, _ = nv(capsys, "log", log, "filter", "--ev", "migrate")
    evs = _jsonl(out)
    assert len(evs) == 7 and {e["ev"] for e in evs} == {"migrate"}
    _, out, _ = nv(capsys, "log", log, "filter", "--ev", "migrate,cow", "--reason", "dram_budget")
    assert [e["index"] for e in _jsonl(out)] == [1, 2]
    _, out, _ = nv(capsys, "log", log, "filter", "--path", "/data")
    evs = _jsonl(out)
    assert evs and all(e.get("ino") == 3 for e in evs)
    _, out2, _ = nv(capsys, "log", log, "filter", "--path", "*/cold.*")
    assert out2 == out
    _, out3, _ = nv(capsys, "log", log, "filter", "--ino", "3")
    assert out3 == out
    _, out, _ = nv(capsys, "log", log, "filter", "--since", "1.5", "--until", "2.5")
    assert {e["t"] for e in _jsonl(out)} == {2.0}


def test_filter_with_context_is_itself_a_log(log: Path, tmp_path: Path, capsys) -> None:
    out_path = tmp_path / "cold.jsonl"
    code, _, err = nv(capsys, "log", log, "filter", "--path", "/data/cold.bin", "--context",
                      "-o", out_path)  # fmt: skip
    assert code == 0 and "events written to" in err
    evs = _jsonl(out_path.read_text())
    assert evs[0]["ev"] == "mount" and evs[-1]["ev"] == "unmount"
    assert {e["ev"] for e in evs} >= {"path", "cow", "writeback", "access"}
    code, out, _ = nv(capsys, "log", out_path, "top", "--json", "--what", "files")
    assert [f["path"] for f in json.loads(out)["files"]] == ["/data/cold.bin"]


def test_filter_unknown_event_is_a_usage_error(log: Path, capsys) -> None:
    code, _, err = nv(capsys, "log", log, "filter", "--ev", "migrat")
    assert code == 2 and "unknown event type migrat" in err and "Traceback" not in err


# --------------------------------------------------------------------------- follow


def test_follow_from_start_prints_one_readable_line_per_event(log: Path, capsys) -> None:
    code, out, err = nv(capsys, "log", log, "follow", "--from-start", "--until-unmount")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == N_EVENTS
    assert "mount      test.img" in lines[0]
    promote = [ln for ln in lines if " promote " in ln]
    assert len(promote) == 4
    assert "/hot.bin page 0" in promote[0] and "xip→pagecache" in promote[0]
    assert "reason=policy" in promote[0]
    assert any(
        "cow        /data/cold.bin page 10  xip→pagecache via pfn_mkwrite" in ln for ln in lines
    )
    assert lines[-1].endswith("unmount    clean")


def test_follow_shows_events_appended_while_it_runs(tmp_path: Path, capsys) -> None:
    p = tmp_path / "live.jsonl"
    clk = FakeClock()
    w = EventWriter(p, clock=clk)
    w.emit("mount", image="live.img", dram_pages=4, page_size=4096, policy="2q",
           pte_special=True, cache="direct", sim=True, recovered=False, wall=WALL)  # fmt: skip
    w.emit("path", ino=7, path="/live.bin")
    w.flush()

    def writer() -> None:
        time.sleep(0.5)
        _mig(w, 7, 3, True, "policy")
        w.flush()
        time.sleep(0.3)
        w.emit("unmount", clean=True)
        w.close()

    th = threading.Thread(target=writer)
    th.start()
    try:
        code, out, err = nv(capsys, "log", p, "follow", "--until-unmount", "--idle-exit", "10")
    finally:
        th.join(10)
    assert code == 0, err
    lines = out.splitlines()
    # Starts at the end, but names the file from the path event written before.
    assert len(lines) == 2
    assert "promote    /live.bin page 3" in lines[0]
    assert "unmount    clean" in lines[1]


def test_follow_raw_and_event_selection(log: Path, capsys) -> None:
    code, out, _ = nv(capsys, "log", log, "follow", "--from-start", "--raw", "--ev", "cow",
                      "--idle-exit", "0.3")  # fmt: skip
    assert code == 0
    assert [e["via"] for e in _jsonl(out)] == ["pfn_mkwrite", "pfn_mkwrite", "wp_page_copy"]


# --------------------------------------------------------------------------- export


def test_export_csv_is_flat_and_complete(log: Path, tmp_path: Path, capsys) -> None:
    out_path = tmp_path / "x.csv"
    code, _, err = nv(capsys, "log", log, "export", "--csv", "-o", out_path)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out_path.read_text())))
    # One row per event, but one per page of an access event.
    assert len(rows) == N_EVENTS - 3 + (3 + 1 + 2)
    mig = [r for r in rows if r["ev"] == "migrate"]
    assert len(mig) == 7
    assert mig[0]["path"] == "/hot.bin" and mig[0]["from"] == "xip" and mig[0]["reason"] == "policy"
    acc = [r for r in rows if r["ev"] == "access" and r["path"] == "/hot.bin"]
    assert [(r["page"], r["offset"], r["reads"]) for r in acc] == [
        ("0", "0", "50"),
        ("1", "4096", "20"),
        ("2", "8192", "5"),
    ]
    cnt = [r for r in rows if r["ev"] == "counters"]
    assert cnt[-1]["faults.pagecache_hit"] == "58" and cnt[-1]["migrations.promote"] == "4"
    assert json.loads(cnt[-1]["extra"])["migrations.promote.ctl"] == 1
    assert {r["session"] for r in rows} == {"1"}


def test_export_csv_to_stdout(log: Path, capsys) -> None:
    code, out, _ = nv(capsys, "log", log, "export", "--csv")
    assert code == 0
    assert out.splitlines()[0].startswith("session,seq,t,ev,ino,path,index,offset,from,to")


# --------------------------------------------------------------------------- profile

PROFILE_LINE = re.compile(r"^\./[^,\n]+,(\d+),(\d+)$")


def test_profile_is_axfs_mkfs_input(log: Path, capsys) -> None:
    code, out, err = nv(capsys, "log", log, "profile")
    assert code == 0, err
    lines = out.splitlines()
    assert lines == [
        "./data/cold.bin,40960,7",
        "./data/cold.bin,45056,2",
        "./hot.bin,0,50",
        "./hot.bin,4096,20",
        "./hot.bin,8192,6",
    ]
    _, out, _ = nv(capsys, "log", log, "profile", "--reads", "--top", "2")
    assert out.splitlines() == ["./hot.bin,0,50", "./hot.bin,4096,20"]


def test_profile_of_the_real_mm_adds_up_to_its_accesses(mm_log: Path, capsys, tmp_path) -> None:
    out_path = tmp_path / "axfs.profile"
    code, _, err = nv(capsys, "log", mm_log, "profile", "-o", out_path)
    assert code == 0, err
    total = 0
    for line in out_path.read_text().splitlines():
        m = PROFILE_LINE.match(line)
        assert m, line
        assert int(m.group(1)) % 4096 == 0
        total += int(m.group(2))
    _, out, _ = nv(capsys, "log", mm_log, "summary", "--json")
    s = json.loads(out)
    assert total == s["accesses"]["read"] + s["accesses"]["write"]


def test_profile_leaves_out_what_it_cannot_name(log: Path, capsys) -> None:
    text = log.read_text().replace('"path":"/data/cold.bin"', '"path":"/a,b"')
    text = "\n".join(ln for ln in text.splitlines() if '"path":"/hot.bin"' not in ln) + "\n"
    log.write_text(text)
    code, out, err = nv(capsys, "log", log, "profile")
    assert code == 0 and out == ""
    assert "1 inode(s) with no path event" in err
    assert "comma or newline" in err


# --------------------------------------------------------------------------- damaged logs

ACTION_ARGS = {
    "summary": ["summary"],
    "top": ["top"],
    "filter": ["filter", "--ev", "migrate"],
    "follow": ["follow", "--from-start", "--idle-exit", "0.2"],
    "export": ["export", "--csv"],
    "profile": ["profile"],
}


@pytest.mark.parametrize("action", sorted(ACTION_ARGS))
def test_every_action_reads_a_crash_cut_log(action: str, log: Path, capsys) -> None:
    data = log.read_bytes()
    cut = data.rindex(b'{"v":1', 0, len(data) - 1)  # inside the last line: the unmount
    log.write_bytes(data[: cut + 17])
    code, out, err = nv(capsys, "log", log, *ACTION_ARGS[action])
    assert code == 0, err
    assert "skipped 1 torn line at the end" in err
    assert out.strip()  # what could be read was used
    assert "Traceback" not in err


@pytest.mark.parametrize("action", sorted(ACTION_ARGS))
def test_every_action_skips_garbage_and_other_versions(action: str, log: Path, capsys) -> None:
    bad = [
        {"v": 1, "seq": 90, "t": 3.1, "ev": "migrate", "ino": "two", "index": 0},
        {"v": 1, "seq": 91, "t": 3.1, "ev": "access", "ino": 2, "pages": [1, 2], "reads": [1]},
        {"v": 1, "seq": 92, "t": 3.1, "ev": "counters", "faults": {"cow": "many"}},
    ]
    with open(log, "a") as f:
        f.write("garbage\n" + json.dumps({"v": 9, "seq": 0, "t": 0, "ev": "mount"}) + "\n")
        f.write("".join(json.dumps(b) + "\n" for b in bad))
    code, out, err = nv(capsys, "log", log, *ACTION_ARGS[action])
    assert code == 0, err
    assert "1 line that are not JSON" in err and "1 line of schema version 9" in err
    assert "3 events with fields of the wrong type" in err
    assert out.strip()


@pytest.mark.parametrize("action", sorted(set(ACTION_ARGS) - {"follow"}))
def test_every_action_on_an_empty_missing_or_unreadable_log(action, tmp_path, capsys) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    code, out, err = nv(capsys, "log", empty, *ACTION_ARGS[action])
    assert code == 1 and err == f"nvramfs: {empty}: the event log is empty\n"
    code, out, err = nv(capsys, "log", tmp_path / "missing.jsonl", *ACTION_ARGS[action])
    assert code == 1 and err.strip().endswith("missing.jsonl: no such event log")
    assert len(err.splitlines()) == 1
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n" + json.dumps({"v": 2, "ev": "mount", "seq": 0, "t": 0}) + "\n")
    code, out, err = nv(capsys, "log", junk, *ACTION_ARGS[action])
    assert code == 1
    assert "skipped 1 line that are not JSON, 1 line of schema version 2" in err
    assert err.splitlines()[-1] == f"nvramfs: {junk}: no readable events"


def test_follow_in_a_missing_directory_is_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = nv(capsys, "log", tmp_path / "no" / "nope.jsonl", "follow")
    assert code == 1 and len(err.splitlines()) == 1 and "no such event log" in err


def test_cli_runs_as_a_program(log: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "nvramfs", "log", str(log), "summary", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["events"] == N_EVENTS


def test_summarize_is_the_function_the_demo_uses(log: Path) -> None:
    events, report = load_events(log)
    s = summarize(split_sessions(events), report)
    assert s["migrations"] == HANDMADE["migrations"]


# --------------------------------------------------------------------------- a live mount


def _have_fuse() -> bool:
    import shutil

    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def _nvramfs(*args, timeout: float = 120):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "nvramfs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _mounted(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f if line.strip())


@pytest.mark.fuse
@pytest.mark.slow
def test_log_tools_on_the_log_of_a_running_mount(tmp_path: Path) -> None:
    """follow sees a real mount's events as they come; the other actions read its log
    while it is still being written."""
    import subprocess
    import sys

    if not _have_fuse():
        pytest.skip("needs /dev/fuse and fusermount3")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data.bin").write_bytes(os.urandom(2 << 20))
    image = tmp_path / "live.img"
    assert _nvramfs("mkfs", image, "--from", tree, "-q").returncode == 0
    import tempfile

    # Not under tmp_path: another pytest session's end-of-session sweep unmounts
    # nvramfs mounts whose path has "/pytest-" in it.
    mnt = Path(tempfile.mkdtemp(prefix="nvramfs-clitest-"))
    log = tmp_path / "live.events.jsonl"
    res = _nvramfs("mount", image, mnt, "-o", f"dram=256K,log={log}")
    assert res.returncode == 0, res.stderr
    follow = None
    try:
        follow = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nvramfs",
                "log",
                str(log),
                "follow",
                "--from-start",
                "--until-unmount",
                "--idle-exit",
                "60",
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            with open(mnt / "data.bin", "rb") as f:
                for off in (0, 4096, 8192, 1 << 20, 0, 4096):
                    f.seek(off)
                    f.read(4096)
            time.sleep(0.05)
        time.sleep(1.2)  # a tick: access and counters events are out
        live = _nvramfs("log", log, "summary", "--json")
        assert live.returncode == 0, live.stderr
        s = json.loads(live.stdout)
        assert s["clean_unmount"] == [False] and s["unmounted"] == [False]
        text = _nvramfs("log", log, "summary").stdout
        assert "no unmount event yet (still mounted, or the daemon died)" in text
        assert s["accesses"]["read"] > 0
        assert s["hottest_files"][0]["path"] == "/data.bin"
        prof = _nvramfs("log", log, "profile")
        assert prof.returncode == 0 and "./data.bin,0," in prof.stdout
        assert _nvramfs("log", log, "export", "--csv").returncode == 0
    finally:
        umount = _nvramfs("umount", mnt)
        if _mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        if follow is not None:
            try:
                out, err = follow.communicate(timeout=60)
            finally:
                if follow.poll() is None:
                    follow.kill()
                    follow.wait()
        if not _mounted(mnt):
            mnt.rmdir()
    assert umount.returncode == 0, umount.stderr
    assert follow.returncode == 0, err
    lines = out.splitlines()
    assert "mount      " in lines[0]
    assert any("is /data.bin" in ln for ln in lines)
    assert any("access     /data.bin" in ln for ln in lines)
    assert any("counters   hit" in ln for ln in lines)
    assert lines[-1].endswith("unmount    clean")
    after = json.loads(_nvramfs("log", log, "summary", "--json").stdout)
    assert after["clean_unmount"] == [True]


def test_action_first_order_works_too(log: Path, capsys) -> None:
    code, out, err = nv(capsys, "log", "summary", log, "--json")
    assert code == 0, err
    assert json.loads(out)["events"] == N_EVENTS
    code, out, _ = nv(capsys, "log", log, "summary", "--json")
    assert json.loads(out)["events"] == N_EVENTS


# --------------------------------------------------------------------------- issue 11: every number true

UUID_A = "11111111-2222-3333-4444-555555555555"
UUID_B = "99999999-8888-7777-6666-555555555555"


def _session(w: EventWriter, clk: FakeClock, *, uuid: str | None, wall: float,
             files: list[tuple[int, int, str, list[int], list[int]]], seconds: float = 1.0,
             counters: dict | None = None) -> None:  # fmt: skip
    """One mount session: path events, then one access histogram per file, counters, unmount."""
    extra = {"uuid": uuid} if uuid else {}
    w.emit("mount", image="x.img", dram_pages=8, page_size=4096, policy="2q", pte_special=True,
           cache="direct", sim=True, recovered=False, wall=wall, **extra)  # fmt: skip
    for ino, gen, path, _, _ in files:
        w.emit("path", ino=ino, gen=gen, path=path)
    clk.now += seconds
    for ino, gen, _, pages, writes in files:
        w.emit("access", ino=ino, gen=gen, t0=0.0, t1=seconds, pages=pages,
               reads=[0] * len(pages), writes=writes)  # fmt: skip
    if counters:
        w.emit("counters", **counters)
    w.emit("unmount", clean=True)


def _fresh_writer(path: Path) -> tuple[EventWriter, FakeClock]:
    clk = FakeClock()
    return EventWriter(path, clock=clk), clk


def test_files_are_keyed_by_image_inode_and_generation(tmp_path: Path, capsys) -> None:
    """Defect 1: an inode number reused by another file is another row; one file over two
    mounts is one row."""
    log = tmp_path / "reuse.jsonl"
    big = list(range(100))
    for wall, files in (
        (WALL, [(5, 1, "/old", big, [3] * 100), (6, 1, "/kept", [0], [1])]),
        (WALL + 50, [(5, 2, "/live", [0], [1]), (6, 1, "/kept", [0], [1])]),
    ):
        w, clk = _fresh_writer(log)
        _session(w, clk, uuid=UUID_A, wall=wall, files=files)
        w.close()
    code, out, err = nv(capsys, "log", log, "top", "--json", "--what", "files", "-n", "0")
    assert code == 0, err
    files = {f["path"]: (f["writes"], f["pages"]) for f in json.loads(out)["files"]}
    assert files == {"/old": (300, 100), "/live": (1, 1), "/kept": (2, 1)}
    code, out, _ = nv(capsys, "log", log, "profile")
    assert "./live,0,1" in out.splitlines() and "./kept,0,2" in out.splitlines()


def test_two_images_in_one_log_are_never_mixed(tmp_path: Path, capsys) -> None:
    """Defect 1: mkfs --force appends a new image's sessions to the old log."""
    log = tmp_path / "two.jsonl"
    w, clk = _fresh_writer(log)
    _session(w, clk, uuid=UUID_A, wall=WALL, files=[(5, 1, "/a", [0, 1], [4, 4])])
    w.close()
    w, clk = _fresh_writer(log)
    _session(w, clk, uuid=UUID_B, wall=WALL + 10, files=[(5, 1, "/b", [0], [1])])
    w.close()
    code, out, err = nv(capsys, "log", log, "summary", "--json")
    assert code == 0
    s = json.loads(out)
    assert s["sessions"] == 1 and s["session_numbers"] == [2]
    assert s["image_uuid"] == UUID_B
    assert [f["path"] for f in s["hottest_files"]] == ["/b"]
    assert "sessions of 2 images" in err and UUID_B in err
    code, out, err = nv(capsys, "log", log, "top", "--json", "--session", "1")
    assert [f["path"] for f in json.loads(out)["files"]] == ["/a"] and err == ""


def test_follow_summary_and_plot_share_one_hit_ratio(tmp_path: Path, capsys) -> None:
    """Defect 3: hits over page accesses, not over faults."""
    from nvramfs.events.analysis import hit_ratio

    log = tmp_path / "hr.jsonl"
    c = _counters({}, {}, {}, {"xip_read": 5, "pagecache_hit": 40}, 90, 10, 2, 0)
    w, clk = _fresh_writer(log)
    _session(w, clk, uuid=UUID_A, wall=WALL, files=[], counters=c)
    w.close()
    assert hit_ratio(c) == pytest.approx(0.4)
    code, out, _ = nv(capsys, "log", log, "summary", "--json")
    assert json.loads(out)["pagecache_hit_ratio"] == pytest.approx(0.4)
    code, out, _ = nv(capsys, "log", log, "follow", "--from-start", "--until-unmount")
    assert "counters   hit 40.0%" in out
    code, out, _ = nv(capsys, "log", log, "summary")
    assert "hit ratio    40.0%" in out


def test_a_session_runs_on_its_own_clock(tmp_path: Path, capsys) -> None:
    """Defect 4: --session N and --session last span that session's mount to its last event."""
    log = tmp_path / "late.jsonl"
    write_handmade(log)  # 3.0 s
    w, clk = _fresh_writer(log)
    _session(w, clk, uuid=None, wall=WALL + 270, files=[(2, 0, "/x", [0], [1])], seconds=1.1)
    w.close()
    code, out, _ = nv(capsys, "log", log, "summary", "--json", "--session", "2")
    s = json.loads(out)
    assert s["duration_s"] == pytest.approx(1.1)
    rows = s["timeline"]["rows"]
    assert rows[0]["t0"] == 0 and rows[-1]["t1"] <= 1.5 and sum(r["writes"] for r in rows) == 1
    code, out2, _ = nv(capsys, "log", log, "summary", "--json", "--session", "last")
    assert json.loads(out2)["duration_s"] == pytest.approx(1.1)
    code, out, _ = nv(capsys, "log", log, "summary", "--json")
    assert json.loads(out)["duration_s"] == pytest.approx(271.1)  # all: on the log's axis
    from nvramfs.cli.plot import load_view

    view = load_view(log, "2", ReadReport())
    assert view is not None and view.duration == pytest.approx(1.1)
    assert view.offset == {2: 0.0}


def test_unmount_after_a_fatal_error_is_not_clean(monkeypatch) -> None:
    """Defect 5: the error path that turned the mount read-only must not log clean:true."""
    from nvramfs.events.writer import ListEventWriter
    from nvramfs.fuse import mount as mount_mod

    monkeypatch.setattr(mount_mod.pyfuse3, "close", lambda unmount: None)  # nothing mounted

    class Ops:
        fatal_errors = 1

        def shutdown(self) -> None:
            pass

        def translate(self, what: str, exc: BaseException) -> None:
            pass

    class MM:
        def close(self) -> None:
            pass

    class Img:
        corrupt = None

        def close(self, clean: bool) -> None:
            pass

    events = ListEventWriter()
    mount_mod._finish(Ops(), MM(), events, Img(), unmount=False)
    (u,) = events.of("unmount")
    assert u["clean"] is False and u["fatal_errors"] == 1
    ops = Ops()
    ops.fatal_errors = 0
    events = ListEventWriter()
    mount_mod._finish(ops, MM(), events, Img(), unmount=False)
    assert events.of("unmount")[0]["clean"] is True


def test_summary_counts_event_types_it_does_not_know(log: Path, capsys) -> None:
    """Other helpers add event types (zero, drop, throttle): read, counted, never an error."""
    with open(log, "a") as f:
        f.write('{"v":1,"seq":40,"t":3.2,"ev":"throttle","ino":2,"delay_us":150}\n')
        f.write('{"v":1,"seq":41,"t":3.3,"ev":"zero","ino":2,"index":7,"pfn_to":5}\n')
    code, out, err = nv(capsys, "log", log, "summary", "--json")
    assert code == 0 and err == ""
    by = json.loads(out)["by_event"]
    assert by["throttle"] == 1 and by["zero"] == 1


# --------------------------------------------------------------------------- the loader


def test_load_is_one_typed_row_per_accepted_event(log: Path) -> None:
    import polars as pl

    import nvramfs.events

    with open(log, "a") as f:
        f.write("garbage\n" + '{"v":1,"seq":90,"t":3.1,"ev":"migrate","ino":"two"}\n')
    report = ReadReport()
    df = nvramfs.events.load(log, report)
    events, _ = load_events(log)
    assert df.height == len(events) == N_EVENTS and report.skipped == 2
    assert df["seq"].to_list() == [e["seq"] for e in events]
    assert df.schema["t"] == pl.Float64 and df.schema["pages"] == pl.List(pl.Int64)
    assert df.schema["session"] == pl.Int32 and df.schema["ino"] == pl.Int64
    cow = df.filter(pl.col("ev") == "cow")
    assert cow["file_path"].to_list() == ["/data/cold.bin", "/data/cold.bin", "/hot.bin"]
    assert set(df["session"].to_list()) == {1}


def test_export_parquet_round_trips(log: Path, tmp_path: Path, capsys) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "x.parquet"
    code, _, err = nv(capsys, "log", log, "export", "--parquet", "-o", out)
    assert code == 0, err
    assert f"{N_EVENTS} events written to {out}" in err
    t = pq.read_table(out)
    assert t.num_rows == N_EVENTS
    assert sorted(set(t.column("ev").to_pylist())) == sorted(HANDMADE["by_event"])
    code, _, err = nv(capsys, "log", log, "export", "--parquet")
    assert code == 2 and "-o FILE" in err


def test_the_engine_reads_a_log_in_chunks_as_one(mm_log: Path) -> None:
    """Chunked reading (bounded memory) gives the numbers of one whole read."""
    from nvramfs.events import analysis
    from nvramfs.events.loader import iter_frames

    whole = analysis.Scan.of_log(mm_log)
    parts = analysis.Scan()
    for df in iter_frames(mm_log, parts.report, chunk=700):
        parts.add(df)
    parts.finish()
    a = analysis.summarize(whole, log="x")
    b = analysis.summarize(parts, log="x")
    assert a == b


# --------------------------------------------------------------------------- issue 15: live views


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path: Path, capsys) -> None:
    p = tmp_path / "later.jsonl"

    def writer() -> None:
        time.sleep(0.6)
        w = EventWriter(p, clock=FakeClock())
        w.emit("mount", image="late.img", dram_pages=4)
        w.emit("unmount", clean=True)
        w.close()

    th = threading.Thread(target=writer)
    th.start()
    try:
        code, out, err = nv(capsys, "log", p, "follow", "--from-start", "--until-unmount",
                            "--idle-exit", "20")  # fmt: skip
    finally:
        th.join(10)
    assert code == 0, err
    assert "waiting for the log to appear" in err
    assert [ln.split()[1] for ln in out.splitlines()] == ["mount", "unmount"]


def test_follow_idle_exit_means_no_access(tmp_path: Path, capsys) -> None:
    """A counters event every tick is not activity: --idle-exit fires without accesses."""
    p = tmp_path / "idle.jsonl"
    clk = FakeClock()
    w = EventWriter(p, clock=clk)
    w.emit("mount", image="i.img", dram_pages=4)
    w.flush()
    c = _counters({}, {}, {}, {"pagecache_hit": 1}, 5, 0, 1, 0)
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            clk.now += 0.1
            w.emit("counters", **c)
            w.flush()
            time.sleep(0.1)

    th = threading.Thread(target=ticker)
    th.start()
    t0 = time.monotonic()
    try:
        code, out, _ = nv(capsys, "log", p, "follow", "--idle-exit", "0.6")
    finally:
        done.set()
        th.join(10)
        w.close()
    assert code == 0
    assert time.monotonic() - t0 < 8
    assert "counters" in out  # it saw the ticks, and still stopped


@pytest.mark.fuse
@pytest.mark.slow
def test_a_short_session_ended_by_sigterm_logs_every_access(tmp_path: Path) -> None:
    """Defects 1 and 2 on a real mount: uuid on mount, gen on path and access events,
    and the accesses of the last, partial second are logged when SIGTERM ends it."""
    import signal
    import subprocess
    import tempfile

    if not _have_fuse():
        pytest.skip("needs /dev/fuse and fusermount3")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f.bin").write_bytes(bytes(256 << 10))
    image = tmp_path / "t.img"
    assert _nvramfs("mkfs", image, "--from", tree, "-q").returncode == 0
    mnt = Path(tempfile.mkdtemp(prefix="nvramfs-clitest-"))
    log = tmp_path / "t.events.jsonl"
    res = _nvramfs("mount", image, mnt, "-o", f"dram=1M,log={log}")
    assert res.returncode == 0, res.stderr
    pid = int(re.search(r"\(pid (\d+)\)", res.stdout).group(1))
    try:
        with open(mnt / "f.bin", "r+b") as f:
            f.write(b"x" * (64 * 4096))
            f.flush()
            os.fsync(f.fileno())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if _mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        if not _mounted(mnt):
            mnt.rmdir()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.1)
    events, report = load_events(log)
    assert report.skipped == 0
    kinds = [e["ev"] for e in events]
    assert kinds[0] == "mount" and kinds[-1] == "unmount" and events[-1]["clean"] is True
    assert re.fullmatch(r"[0-9a-f-]{36}", events[0]["uuid"])
    paths = [e for e in events if e["ev"] == "path" and e["path"] == "/f.bin"]
    assert paths and isinstance(paths[0]["gen"], int)
    acc = [e for e in events if e["ev"] == "access"]
    assert acc and all(e["gen"] == paths[0]["gen"] for e in acc)
    c = [e for e in events if e["ev"] == "counters"][-1]
    assert sum(sum(e["writes"]) for e in acc) == c["accesses"]["write"] >= 64
    assert sum(sum(e["reads"]) for e in acc) == c["accesses"]["read"]
