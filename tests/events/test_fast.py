"""The scan's fast path (`nvramfs.events.fast`) against the accurate path, result for result.

The fast path cuts the lines the writer writes most (fault, page events,
access histograms) into columns with string operations and leaves every other
line to the NDJSON loader; the accurate path gives every line to the loader
(`loader.iter_frames`). Every number a `log` command prints comes from a
`Scan`, so the two must agree on every result and on every skipped line --
on clean logs, on damaged ones, and whatever the chunk size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvramfs.events import fast, schema
from nvramfs.events.analysis import (
    Scan,
    choose,
    hottest_files,
    hottest_pages,
    profile_lines,
    summarize,
)
from nvramfs.events.loader import iter_frames
from nvramfs.events.writer import EventWriter

UUID_A = "11111111-2222-4333-8444-555555555555"
UUID_B = "66666666-7777-4888-9999-aaaaaaaaaaaa"
WALL = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def accurate(path: Path, chunk: int = fast.CHUNK_BYTES) -> Scan:
    """The scan as the loader alone gives it: every line parsed as JSON."""
    scan = Scan()
    for df in iter_frames(path, scan.report, chunk):
        scan.add(df)
    scan.finish()
    return scan


def results(scan: Scan) -> dict[str, Any]:
    """Everything the log commands print from a scan, per choice of sessions."""
    out: dict[str, Any] = {
        "report": scan.report.as_dict(),
        "sessions": [
            (s.number, s.events, s.duration, s.offset, s.uuid, s.clean, len(s.counters))
            for s in scan.sessions.infos
        ],
    }
    for which in ["all", "last", *(str(s.number) for s in scan.sessions.infos)]:
        chosen, note = choose(scan.sessions.infos, which)
        out[which] = {
            "summary": summarize(scan, chosen, note=note),
            "pages": hottest_pages(scan, chosen, n=0),
            "files": hottest_files(scan, chosen, n=0),
            "profile": profile_lines(scan, chosen),
        }
    return out


def session(w: EventWriter, clock: Clock, uuid: str, seconds: int, seed: int) -> None:
    """One mount of the real writer, with per-fault tracing: every template and the rest."""
    w.emit(schema.MOUNT, image="/x.img", uuid=uuid, dram_pages=64, page_size=4096,
           policy="2q", cache="direct", sim=True, recovered=False, wall=WALL + 100 * seed)  # fmt: skip
    for ino in (2, 3, 4):
        w.emit(schema.PATH, ino=ino, gen=ino + seed, path=f"/d/f{ino}")
    hits = reads = 0
    for sec in range(seconds):
        for k in range(40):
            clock.now += 0.01
            ino = 2 + (k + seed) % 3
            kind = schema.FAULT_KINDS[(k * 7 + sec) % 5]
            hits += kind == "pagecache_hit"
            w.emit(schema.FAULT, ino=ino, index=k % 9, kind=kind, write=k % 4 == 0)
        # page events as the mm writes them: batches from the template, and one by one
        w.emit_pages(schema.MIGRATE, 2, [1, 2, 3], [100, 101, 102], [5, 6, 7], schema.XIP,
                     schema.PAGECACHE, schema.REASON_POLICY, [1, 1, 1], [1, 1, 2])  # fmt: skip
        w.emit_pages(schema.COW, 3, [4], [104], [8], schema.XIP, schema.PAGECACHE,
                     schema.REASON_WRITE, [1], [1], via=schema.VIA_PFN_MKWRITE)  # fmt: skip
        w.emit(schema.WRITEBACK, ino=4, index=sec % 5, pfn_from=9, pfn_to=200,
               **{"from": schema.PAGECACHE, "to": schema.XIP}, reason="fsync", refcount=1,
               mapcount=0)  # fmt: skip
        clock.now += 0.5
        pages = list(range(sec % 4 + 1))
        r = [k + 1 for k in pages]
        reads += sum(r)
        w.emit(schema.ACCESS, ino=2, gen=2 + seed, t0=float(sec), t1=float(sec) + 0.5,
               pages=pages, reads=r, writes=[0] * len(pages))  # fmt: skip
        w.emit(schema.ACCESS, ino=9, gen=1, t0=float(sec), t1=float(sec) + 0.5,
               pages=[], reads=[], writes=[])  # fmt: skip
        w.emit(schema.COUNTERS, faults={"pagecache_hit": hits, "xip_read": 3},
               accesses={"read": reads, "write": 0},
               migrations={"promote": {"policy": 3 * (sec + 1)}, "demote": {}},
               writebacks={"fsync": sec + 1}, frames_used=sec, dram_pages=64, dirty=0,
               struct_page_bytes_used=64 * sec, struct_page_bytes_avoided=4096)  # fmt: skip
        clock.now += 0.49
    w.emit(schema.UNMOUNT, clean=True)


def write_log(path: Path, sessions: list[tuple[str, int]]) -> list[bytes]:
    """A log of the real writer (one session per (uuid, seconds)); returns its lines."""
    clock = Clock()
    for seed, (uuid, seconds) in enumerate(sessions):
        with EventWriter(path, clock=clock) as w:
            session(w, clock, uuid, seconds, seed)
        clock.now += 5.0
    return path.read_bytes().split(b"\n")[:-1]


def _first(lines: list[bytes], ev: str, nth: int = 0) -> int:
    hits = [i for i, raw in enumerate(lines) if f'"ev":"{ev}"'.encode() in raw]
    return hits[nth]


def _sub(ev: str, old: bytes, new: bytes, nth: int = 0) -> Callable[[list[bytes]], bytes]:
    def edit(lines: list[bytes]) -> bytes:
        i = _first(lines, ev, nth)
        assert old in lines[i]
        lines[i] = lines[i].replace(old, new, 1)
        return b"\n".join(lines) + b"\n"

    return edit


def _insert(at_ev: str, *new: bytes) -> Callable[[list[bytes]], bytes]:
    def edit(lines: list[bytes]) -> bytes:
        i = _first(lines, at_ev, 5)
        lines[i:i] = list(new)
        return b"\n".join(lines) + b"\n"

    return edit


def _torn_last(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n" + lines[_first(lines, "fault", 3)][:30]


def _torn_inside(lines: list[bytes]) -> bytes:
    # A crash cut a fault line; the next mount appended after the cut, on the same line.
    i = _first(lines, "mount", 1)
    lines[i - 1] = lines[i - 1][:25] + lines[i]
    del lines[i]
    return b"\n".join(lines) + b"\n"


def _no_mount(lines: list[bytes]) -> bytes:
    # The second session's mount is lost: its seq starting over still cuts a session.
    del lines[_first(lines, "mount", 1)]
    return b"\n".join(lines) + b"\n"


def _reordered(lines: list[bytes]) -> bytes:
    i = _first(lines, "fault", 7)
    ev = json.loads(lines[i])
    lines[i] = json.dumps(dict(reversed(list(ev.items())))).encode()
    return b"\n".join(lines) + b"\n"


def _no_template(lines: list[bytes]) -> bytes:
    # Another writer's key order: no line is a template, all go to the loader.
    out = [b'{"seq":' + raw[len(b'{"v":1,"seq":') :].replace(b",", b',"v":1,', 1) for raw in lines]
    return b"\n".join(out) + b"\n"


def _crlf(lines: list[bytes]) -> bytes:
    return b"\n".join(raw + b"\r" if k % 5 == 0 else raw for k, raw in enumerate(lines)) + b"\n"


DAMAGE: dict[str, Callable[[list[bytes]], bytes]] = {
    "clean": lambda lines: b"\n".join(lines) + b"\n",
    "garbage": _insert("fault", b"not json at all", b"[1,2,3]", b"{}", b"42"),
    "blank and space lines": _insert("migrate", b"", b"   ", b"\t"),
    "invalid utf-8": _insert("access", b'{"v":1,"seq":3,"t":0.5,"ev":"path","path":"\xff\xfe"}'),
    "non-ascii path": _sub("path", b'"/d/f3"', '"/données/é"'.encode(), 1),
    "escaped path": _sub("path", b'"/d/f2"', b'"/d/\\u00e9\\n"'),
    "fault, ino a string": _sub("fault", b'"ino":', b'"ino":"7","_":', 4),
    "fault, seq a float": _sub("fault", b'"seq":', b'"seq":1.5,"x":', 2),
    "fault, no t": _sub("fault", b'"t":', b'"u":', 6),
    "fault, t a string": _sub("fault", b'"t":', b'"t":"1","u":', 8),
    "fault, extra field": _sub("fault", b',"write":', b',"extra":[1,{"a":2}],"write":', 9),
    "fault, keys reordered": _reordered,
    "fault, duplicate ev": _sub("fault", b'"ev":"fault"', b'"ev":"fault","ev":"cow"', 10),
    "fault, v 2": _sub("fault", b'{"v":1,', b'{"v":2,', 11),
    "fault, v true": _sub("fault", b'{"v":1,', b'{"v":true,', 11),
    "fault, huge index": _sub("fault", b'"index":', b'"index":123456789012345678901234,"i":', 12),
    "fault, leading zero": _sub("fault", b'"index":', b'"index":07,"i":', 13),
    "fault, long t": _sub("fault", b'"t":', b'"t":0.12345678901234567,"u":', 14),
    "fault, t exponent": _sub("fault", b'"t":', b'"t":1e-06,"u":', 15),
    "fault, negative and -0": _sub("fault", b'"index":', b'"index":-0,"i":-3,"j":', 16),
    "fault, seq starts over": _sub("fault", b'"seq":', b'"seq":0,"s":', 40),
    "unknown event": _insert("counters", b'{"v":1,"seq":7,"t":0.1,"ev":"future","x":[1]}'),
    "migrate, via in the middle": _sub("migrate", b'"index":', b'"via":"x","index":', 3),
    "access, reads too short": _sub("access", b'"reads":[1,', b'"reads":[', 2),
    "access, pages not ints": _sub("access", b'"pages":[0', b'"pages":[0.5', 4),
    "counters, faults not ints": _sub("counters", b'"xip_read":3', b'"xip_read":"3"', 1),
    "torn last line": _torn_last,
    "torn line inside": _torn_inside,
    "mount lost": _no_mount,
    "crlf": _crlf,
    "no line a template": _no_template,
}


@pytest.fixture(scope="module")
def base_lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = tmp_path_factory.mktemp("fast") / "base.events.jsonl"
    return write_log(path, [(UUID_A, 3), (UUID_A, 2), (UUID_B, 2)])


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_fast_path_gives_the_accurate_results(
    tmp_path: Path, base_lines: list[bytes], damage: str
) -> None:
    path = tmp_path / "log.events.jsonl"
    path.write_bytes(DAMAGE[damage](list(base_lines)))
    want = results(accurate(path))
    assert results(Scan.of_log(path)) == want
    # Chunks smaller than a line, a few lines, and some: the same results.
    for chunk in (331, 4096):
        assert results(Scan.of_log(path, chunk=chunk)) == want, chunk
    if damage in ("clean", "no line a template"):
        assert want["report"]["skipped"] == 0
        assert want["all"]["summary"]["by_event"][schema.FAULT] == 40 * 2


def test_the_writers_lines_take_the_fast_path(tmp_path: Path, base_lines: list[bytes]) -> None:
    """Every fault, page event and access line the writer writes matches its template (else
    the scan is right but slow: the writer's format and `fast`'s templates must move together)."""
    lines = pl.Series([raw.decode() + "\n" for raw in base_lines])
    for ev, pattern in (
        (schema.FAULT, fast.FAULT),
        (schema.MIGRATE, fast.MOVE),
        (schema.COW, fast.MOVE),
        (schema.WRITEBACK, fast.MOVE),
        (schema.ACCESS, fast.ACCESS),
    ):
        of_ev = lines.filter(lines.str.contains(f'"ev":"{ev}"', literal=True))
        assert len(of_ev) > 0
        assert of_ev.str.contains(pattern).all(), ev
    split = fast.split_chunk(b"\n".join(base_lines) + b"\n")
    assert split.skel["thin"].sum() == sum(b'"ev":"fault"' in raw for raw in base_lines)
    assert split.full.height + split.skel["thin"].sum() == len(base_lines)


def test_a_chunk_that_is_not_utf8_goes_the_accurate_way(base_lines: list[bytes]) -> None:
    data = b"\n".join([*base_lines[:50], b"\xc3\x28 broken", *base_lines[50:]]) + b"\n"
    split = fast.split_chunk(data)
    assert not split.skel["thin"].any()  # all of it by the loader's rules
    assert split.report.not_json == 1 and split.report.events == len(base_lines)


# --------------------------------------------------------------------------- generated logs

_EDITS = st.sampled_from(sorted(DAMAGE))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sessions=st.lists(
        st.tuples(st.sampled_from([UUID_A, UUID_B]), st.integers(1, 3)), min_size=1, max_size=3
    ),
    edits=st.lists(_EDITS, max_size=3),
    chunk=st.integers(60, 5000),
)
def test_generated_logs(
    tmp_path: Path, sessions: list[tuple[str, int]], edits: list[str], chunk: int
) -> None:
    path = tmp_path / "gen.events.jsonl"
    path.unlink(missing_ok=True)
    lines = write_log(path, sessions)
    for name in edits:
        try:
            data = DAMAGE[name](list(lines))
        except (AssertionError, IndexError):
            continue  # the edit needs more of the log than this one has
        lines = data.split(b"\n")
        lines = lines[:-1] if not lines[-1] else lines
        torn = not data.endswith(b"\n")
        path.write_bytes(data)
        if torn:
            break
    want = results(accurate(path, chunk))
    assert results(Scan.of_log(path, chunk=chunk)) == want
    assert results(Scan.of_log(path)) == results(accurate(path))
