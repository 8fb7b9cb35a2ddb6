"""lru, opt, opt-nox, static; export/import; checked against libCacheSim (docs/POLICIES.md).

The hit ratio is the one of docs/EVENTS.md: `faults.pagecache_hit` over
`accesses.read + accesses.write`. libCacheSim runs with objects of 4096
bytes, a cache of `dram_pages * 4096` bytes and its default TTL (300 days,
far longer than any trace here), so both simulate plain LRU / Belady over
the same request sequence.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from mounthelp import nvramfs

from nvramfs.events.numbers import hit_ratio  # the one definition (docs/EVENTS.md)
from nvramfs.mm import MemoryManager
from nvramfs.mm.backing import MemBacking
from nvramfs.mm.policy import Future, OptNoXPolicy, OptPolicy, Profile, StaticPolicy
from nvramfs.trace import replay
from nvramfs.trace.convert import export_trace, import_trace, libcachesim_reader
from nvramfs.trace.synth import read_trace, zipf_pages

lcs = pytest.importorskip("libcachesim")

SIZES = (8, 64, 400)
ONLINE = ("none", "mq", "2q", "clock", "lru")


def nvram_served(c: dict) -> int:
    """Page accesses not served by a frame (docs/POLICIES.md)."""
    a = c["accesses"]
    return a["read"] + a["write"] - c["faults"]["pagecache_hit"] - c["faults"]["write_reuse"]


def lcs_hit(path: Path, fmt: str, algo: str, frames: int) -> float:
    cache = getattr(lcs, algo)(frames * 4096)
    miss, _ = cache.process_trace(libcachesim_reader(str(path), fmt))
    return 1.0 - miss


@pytest.fixture(scope="module")
def zipf_trace(tmp_path_factory) -> Path:
    t = tmp_path_factory.mktemp("z") / "z.trace"
    read_trace(str(t), zipf_pages(1500, 12000, 0.9, seed=3), 1500, tick_every=2000)
    return t


def test_lru_and_opt_nox_equal_libcachesim_lru_and_belady(zipf_trace: Path, tmp_path) -> None:
    csv, oracle = tmp_path / "z.csv", tmp_path / "z.oracle"
    assert export_trace(str(zipf_trace), "libcachesim", str(csv)) == 12000
    export_trace(str(zipf_trace), "oracle", str(oracle))
    for frames in SIZES:
        lru = replay(str(zipf_trace), {"dram_pages": frames, "policy": "lru"}, summary=False)
        nox = replay(str(zipf_trace), {"dram_pages": frames, "policy": "opt-nox"}, summary=False)
        assert hit_ratio(lru.counters) == pytest.approx(lcs_hit(csv, "libcachesim", "LRU", frames))
        assert hit_ratio(lru.counters) == pytest.approx(lcs_hit(oracle, "oracle", "LRU", frames))
        assert hit_ratio(nox.counters) == pytest.approx(lcs_hit(oracle, "oracle", "Belady", frames))
        assert lru.counters["frames_used"] == frames


def test_imported_foreign_ids_replay_like_libcachesim(tmp_path: Path) -> None:
    # Ids a public trace might have (hashes, no inode part): renumbered on import.
    rng = np.random.default_rng(7)
    ids = (rng.zipf(1.2, 8000) % 700).astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(5)
    rec = np.zeros(len(ids), dtype=[("t", "<u4"), ("id", "<u8"), ("sz", "<u4"), ("nx", "<i8")])
    rec["t"], rec["id"], rec["sz"], rec["nx"] = np.arange(len(ids)) // 100, ids, 4096, -1
    src = tmp_path / "foreign.oracle"
    rec.tofile(src)
    out = tmp_path / "imp.trace"
    assert import_trace(str(src), "oracle", str(out)) == len(ids)
    redo = tmp_path / "again.oracle"
    export_trace(str(out), "oracle", str(redo))  # with real next-access times, for Belady
    for frames in SIZES:
        lru = replay(str(out), {"dram_pages": frames, "policy": "lru"}, summary=False).counters
        nox = replay(str(out), {"dram_pages": frames, "policy": "opt-nox"}, summary=False).counters
        assert hit_ratio(lru) == pytest.approx(lcs_hit(src, "oracle", "LRU", frames))
        assert hit_ratio(nox) == pytest.approx(lcs_hit(redo, "oracle", "Belady", frames))


@pytest.mark.parametrize("fmt", ["libcachesim", "oracle"])
def test_export_import_round_trip(zipf_trace: Path, tmp_path: Path, fmt: str) -> None:
    first, second = tmp_path / "a.out", tmp_path / "b.out"
    export_trace(str(zipf_trace), fmt, str(first))
    import_trace(str(first), fmt, str(tmp_path / "imp.trace"))
    export_trace(str(tmp_path / "imp.trace"), fmt, str(second))
    assert first.read_bytes() == second.read_bytes()
    a = replay(str(zipf_trace), {"dram_pages": 64, "policy": "lru"}, summary=False).counters
    b = replay(str(tmp_path / "imp.trace"), {"dram_pages": 64, "policy": "lru"}, summary=False)
    assert a["faults"] == b.counters["faults"] and a["accesses"] == b.counters["accesses"]


def test_opt_is_a_lower_bound_on_nvram_accesses(zipf_trace: Path) -> None:
    for frames in SIZES:
        got = {
            p: nvram_served(
                replay(str(zipf_trace), {"dram_pages": frames, "policy": p}, summary=False).counters
            )
            for p in (*ONLINE, "opt", "opt-nox")
        }
        for p in ONLINE:
            assert got["opt"] <= got[p], (frames, p, got)
        assert got["opt"] <= got["opt-nox"] <= got["lru"], (frames, got)


def _mixed(seed: int = 5) -> tuple[MemBacking, list[tuple[int, int, bool]]]:
    rng = np.random.default_rng(seed)
    b = MemBacking(4096)
    for ino in (1, 2):
        b.create(ino, bytes(rng.integers(0, 255, 200 * 4096, dtype=np.uint8)), holes=[3, 4, 9])
    acc = [(int(rng.integers(1, 3)), int(rng.zipf(1.3) % 200), bool(rng.random() < 0.2))
           for _ in range(4000)]  # fmt: skip
    return b, acc


def _run(mm: MemoryManager, acc: list[tuple[int, int, bool]]) -> dict:
    for ino, index, write in acc:
        if write:
            mm.write(ino, index * 4096 + 100, b"\x07" * 50)
        else:
            mm.read(ino, index * 4096, 4096)
    return mm.stats()


def test_lru_is_exact_with_writes_and_holes() -> None:
    b, acc = _mixed()
    for frames in (4, 32, 150):
        od: OrderedDict = OrderedDict()
        hits = write_hits = evictions = 0
        for ino, index, write in acc:
            key = (ino, index)
            if key in od:
                od.move_to_end(key)
                hits += not write
                write_hits += write
            else:
                if len(od) >= frames:
                    od.popitem(last=False)
                    evictions += 1
                od[key] = None
        c = _run(MemoryManager(b, frames, "lru"), acc)
        assert c["faults"]["pagecache_hit"] == hits and c["faults"]["write_reuse"] == write_hits
        assert sum(c["migrations"]["demote"].values()) == evictions  # one per miss, no more
        assert c["faults"]["xip_read"] == 0 and c["struct_page_bytes_avoided"] == 0


def test_opt_with_writes_beats_lru_and_data_stays_right() -> None:
    b, acc = _mixed(9)
    fut = Future(np.array([(i << 32) | x for i, x, _ in acc], dtype=np.int64))
    for frames in (4, 32, 150):
        mm_opt = MemoryManager(b, frames, OptPolicy(frames + 1, future=fut))
        opt = _run(mm_opt, acc)
        nox = _run(MemoryManager(b, frames, OptNoXPolicy(frames + 1, future=fut)), acc)
        lru = _run(MemoryManager(b, frames, "lru"), acc)
        assert nvram_served(opt) <= nvram_served(nox) <= nvram_served(lru)
        assert opt["faults"]["cow"] > 0  # writes were admitted through the COW
        mm_opt.sync_all()
    # Every policy wrote the same bytes: compare what a fresh read returns.
    ref, _ = _mixed(9)
    mm = MemoryManager(ref, 8, "2q")
    for ino, index, write in acc:
        if write:
            mm.write(ino, index * 4096 + 100, b"\x07" * 50)
    mm.sync_all()
    assert b.read_file(1, 200) == ref.read_file(1, 200)


def test_opt_refuses_a_sequence_that_is_not_its_future() -> None:
    b, acc = _mixed()
    mm = MemoryManager(b, 8, OptPolicy(9, future=Future(np.array([1 << 32], dtype=np.int64))))
    mm.read(1, 0, 10)
    with pytest.raises(Exception, match="does not match the trace's future"):
        mm.read(1, 4096, 10)


def test_static_pins_the_profile_and_never_moves_it(tmp_path: Path) -> None:
    b, acc = _mixed()
    prof = Profile.parse("./a,0,5\n# comment\n/b,40960,9\n./a,4096,1\na,100,2\n")
    assert prof.entries == [("/b", 10, 9), ("/a", 0, 7), ("/a", 1, 1)]  # most counted first
    pol = StaticPolicy(33, profile=prof)
    pol.bind(1, "/a")
    pol.bind(2, "b")
    mm = MemoryManager(b, 32, pol)
    c = _run(mm, acc)
    assert pol.nr_pinned == 3
    pinned = {(int(mm.machine.mapping[f]), int(mm.machine.index[f])) for f in
              np.flatnonzero(pol.pinned).tolist()}  # fmt: skip
    assert pinned == {(1, 0), (1, 1), (2, 10)}
    assert c["migrations"]["promote"] == {"readpage": 3}  # never promotes anything else
    with pytest.raises(ValueError, match="2: not `path,offset,count`"):
        Profile.parse("/a,0,1\n/a,zero,1\n", "p")


def test_trace_profile_and_static_replay(zipf_trace: Path, tmp_path: Path) -> None:
    prof = tmp_path / "hot.profile"
    out = nvramfs("trace", "profile", str(zipf_trace), "--top", "40", "-o", str(prof))
    assert out.returncode == 0, out.stderr
    lines = prof.read_text().splitlines()
    assert len(lines) == 40 and all(line.startswith("./synthetic,") for line in lines)
    assert lines == sorted(lines, key=lambda x: int(x.split(",")[1]))  # by offset, as log profile
    keys = np.array([int(line.split(",")[1]) >> 12 for line in lines])
    pages = zipf_pages(1500, 12000, 0.9, seed=3)
    counts = np.bincount(pages, minlength=1500)
    assert [int(line.split(",")[2]) for line in lines] == counts[keys].tolist()
    assert counts[keys].min() >= np.sort(counts)[-40]  # the 40 most accessed
    r = replay(str(zipf_trace), {"dram_pages": 64, "static": str(prof)}, summary=False)
    assert r.config["policy"] == "static"
    assert r.counters["faults"]["pagecache_hit"] == counts[keys].sum()  # pinned from the start
    assert not r.counters["migrations"]["demote"]


def test_cli_errors(tmp_path: Path, zipf_trace: Path) -> None:
    out = nvramfs("trace", "import", str(tmp_path / "missing"), "--format", "oracle",
                  str(tmp_path / "t"))  # fmt: skip
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.oracle"
    bad.write_bytes(b"x" * 25)
    out = nvramfs("trace", "import", str(bad), "--format", "oracle", str(tmp_path / "t2"))
    assert out.returncode == 1 and "24-byte" in out.stderr
    out = nvramfs("replay", str(zipf_trace), "-o", "policy=static")
    assert out.returncode == 2 and "static=PROFILE" in out.stderr


def test_mount_refuses_opt_and_a_bad_profile(tmp_path: Path) -> None:
    image = tmp_path / "i.img"
    assert nvramfs("mkfs", str(image), "--size", "16M").returncode == 0
    mnt = tmp_path / "m"
    mnt.mkdir()
    out = nvramfs("mount", str(image), str(mnt), "-o", "policy=opt")
    assert out.returncode == 2 and "replays only" in out.stderr, out.stderr
    prof = tmp_path / "p"
    prof.write_text("/x,notanumber,1\n")
    out = nvramfs("mount", str(image), str(mnt), "-o", f"static={prof}")
    assert out.returncode == 2 and "path,offset,count" in out.stderr, out.stderr
    assert not any(str(mnt) in line for line in Path("/proc/mounts").read_text().splitlines())


def test_recorded_read_only_trace_equals_libcachesim(mounter, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(os.urandom(3 << 20))
    image = mounter.image("32M", tree)
    trace = tmp_path / "ro.trace"
    m = mounter(image, f"ro,dram=1M,trace={trace}")
    rng = np.random.default_rng(11)
    with open(m.path / "f", "rb", buffering=0) as f:
        for page in (rng.zipf(1.3, 3000) % 768).tolist():
            f.seek(page * 4096)
            f.read(4096 * int(1 + page % 3))
    m.umount()
    oracle = tmp_path / "ro.oracle"
    export_trace(str(trace), "oracle", str(oracle))
    for frames in SIZES:
        lru = replay(str(trace), {"dram_pages": frames, "policy": "lru"}, summary=False).counters
        nox = replay(str(trace), {"dram_pages": frames, "policy": "opt-nox"}, summary=False)
        assert lru["accesses"]["write"] == 0 and lru["accesses"]["read"] > 3000
        assert hit_ratio(lru) == pytest.approx(lcs_hit(oracle, "oracle", "LRU", frames))
        assert hit_ratio(nox.counters) == pytest.approx(lcs_hit(oracle, "oracle", "Belady", frames))


def test_lru_and_static_mounts_serve_right_and_replay_exactly(mounter, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    data = os.urandom(1 << 20)
    (tree / "d" / "f").write_bytes(data)
    image = mounter.image("32M", tree)
    # lru: every page read goes through a frame; the budget holds; data is right.
    trace = tmp_path / "lru.trace"
    m = mounter(image, f"dram=64K,policy=lru,trace={trace}")
    with open(m.p("d", "f"), "rb", buffering=0) as f:
        for page in (7, 8, 7, 200, 9, 7, 30, 31, 32, 33, 34, 35, 36, 7, 255, 0):
            f.seek(page * 4096)
            assert f.read(8192) == data[page * 4096 : page * 4096 + 8192]
    with open(m.p("d", "f"), "r+b", buffering=0) as f:
        f.seek(5 * 4096 + 10)
        f.write(b"lru")
    c = m.stats()["counters"]
    assert c["policy"] == "lru" and c["faults"]["xip_read"] == 0 and c["faults"]["readpage"] > 0
    assert c["frames_used"] <= 16 and c["struct_page_bytes_avoided"] == 0
    m.umount()
    r = replay(str(trace), summary=False).counters
    assert r["faults"] == c["faults"] and r["accesses"] == c["accesses"]
    m = mounter(image, "ro")
    assert (m.p("d", "f")).read_bytes()[5 * 4096 + 10 : 5 * 4096 + 13] == b"lru"
    m.umount()
    # static: the profile's pages are in frames before their first access, and stay.
    prof = tmp_path / "hot.profile"
    prof.write_text("./d/f,0,50\n./d/f,4096,40\n/d/f,40960,100\n./missing,0,4096\n")
    trace = tmp_path / "static.trace"
    m = mounter(image, f"dram=256K,static={prof},trace={trace}")
    with open(m.p("d", "f"), "rb", buffering=0) as f:
        for _ in range(3):
            for page in (0, 1, 10, 2, 3):
                f.seek(page * 4096)
                f.read(4096)
    c = m.stats()["counters"]
    assert c["policy"] == "static"
    assert c["migrations"]["promote"] == {"readpage": 3} and not c["migrations"]["demote"]
    assert c["faults"]["pagecache_hit"] == 9  # pages 0, 1, 10, three times each
    m.umount()
    r = replay(str(trace), summary=False)
    assert r.config["policy"] == "static" and r.config["static"] == str(prof)
    assert r.counters["faults"] == c["faults"]
