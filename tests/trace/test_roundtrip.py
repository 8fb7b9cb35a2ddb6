"""Record a MemoryManager driven in-process, replay the trace, compare everything.

The recorded mm runs on MemBacking (with relocation, so writeback moves pages
and the trace must carry `map` records); the replay has no backing data at
all. Counters, residency and the sequence of migrate/cow/writeback events must
be the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from nvramfs.events.writer import EventWriter
from nvramfs.mm import MemBacking, MemoryManager
from nvramfs.trace import Recorder, replay

PAGE = 4096


class UsClock:
    def __init__(self) -> None:
        self.us = 5_000_000

    def __call__(self) -> int:
        return self.us


def _events(path: Path, kinds=("migrate", "cow", "writeback", "counters", "access")) -> list:
    out = []
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        if ev["ev"] in kinds:
            for k in ("t", "seq", "v", "t0", "t1"):
                ev.pop(k, None)
            out.append(ev)
    return out


def record_random(
    tmp_path: Path,
    seed: int,
    *,
    dram: int = 24,
    policy: str = "2q",
    steps: int = 1500,
    relocate: bool = True,
    part_rows: int = 200,
    kernel: str = "modern",
) -> tuple[Path, dict, Path]:
    rng = np.random.default_rng(seed)
    backing = MemBacking(4096, relocate=relocate)
    sizes: dict[int, int] = {}
    for ino in (2, 3, 4):
        n = int(rng.integers(8, 64))
        data = rng.integers(0, 256, n * PAGE, dtype=np.uint8).tobytes()
        holes = set(rng.integers(0, n, 4).tolist())
        backing.create(ino, data, holes=holes)
        sizes[ino] = n * PAGE
    clock = UsClock()
    trace = tmp_path / f"t{seed}.trace"
    settings = {"policy": policy, "writeback_seconds": 3.0, "pte_special": None, "kernel": kernel}
    config = {"dram_pages": dram, "nr_blocks": 4096, "cache": "direct", "mm": settings}
    rec = Recorder(
        str(trace),
        backing,
        config,
        part_rows=part_rows,
        path_of=lambda ino: f"/f{ino}",
        size_of=lambda ino: sizes.get(ino, 0),
        now_ns=lambda: clock.us * 1000,
    )
    live_log = tmp_path / f"live{seed}.jsonl"
    events = EventWriter(live_log, clock=rec.clock)
    mm = rec.wrap(
        MemoryManager(
            rec.backing,
            dram,
            policy,
            events=events,
            writeback_seconds=3.0,
            clock=rec.clock,
            nr_nvram_pages=4096,
            kernel=kernel,
        )
    )
    for ino, size in sizes.items():
        mm.set_size(ino, size)  # as open() tells mm the size (a `set_size` record)
    for _ in range(steps):
        clock.us += int(rng.integers(1, 40_000))
        ino = int(rng.choice([2, 3, 4, 5]))
        size = sizes.get(ino, 0)
        r = rng.random()
        if r < 0.5 and size:
            # zipf-ish one-page reads, sometimes longer ones
            if rng.random() < 0.8:
                page = min(int(rng.zipf(1.3)) - 1, (size - 1) // PAGE)
                mm.read(ino, page * PAGE, min(PAGE, size - page * PAGE))
            else:
                off = int(rng.integers(0, size))
                mm.read(ino, off, min(int(rng.integers(1, 5 * PAGE)), size - off))
        elif r < 0.75:
            off = int(rng.integers(0, max(size, PAGE) + 2 * PAGE))
            n = int(rng.integers(1, 3 * PAGE))
            mm.write(ino, off, rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            sizes[ino] = max(size, off + n)
        elif r < 0.8:
            mm.fsync(ino)
        elif r < 0.85:
            new = int(rng.integers(0, max(size, 1) + PAGE))
            mm.truncate(ino, new)
            backing.truncate(ino, (new + PAGE - 1) // PAGE)  # the image frees the blocks
            sizes[ino] = new
        elif r < 0.95:
            mm.tick()
        elif r < 0.97:
            mm.demote_all("ctl")
        elif r < 0.98:
            mm.sync_all("sync")
        elif r < 0.985:
            mm.set_policy(str(rng.choice(["clock", "2q", "mq"])))
        elif r < 0.99:
            if rng.random() < 0.5:
                mm.max_promote_per_tick = int(rng.integers(1, 64))  # recorded as setattr
            elif size:
                mm.promote(ino, int(rng.integers(0, (size + PAGE - 1) // PAGE)))
        elif ino == 5:
            mm.evict_inode(ino)
            backing.remove(ino)
            sizes.pop(ino, None)
    clock.us += 1_000
    mm.close()
    events.close()
    return trace, mm.stats(), live_log


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_replay_reproduces_counters_and_events(tmp_path: Path, seed: int) -> None:
    trace, live, live_log = record_random(tmp_path, seed)
    assert len(list(trace.glob("part-*.parquet"))) > 1
    out = tmp_path / "replay.jsonl"
    res = replay(str(trace), log=str(out))
    assert res.complete
    assert res.counters == live
    assert _events(out) == _events(live_log)
    ops = set(pl.read_parquet(str(trace / "*.parquet"))["op"].to_list())
    assert {"setattr", "promote", "map", "file", "truncate", "evict_inode", "set_size"} <= ops
    assert res.summary is not None
    assert res.summary["faults"] == live["faults"]


def test_replay_with_another_configuration_changes_the_result(tmp_path: Path) -> None:
    trace, live, _ = record_random(tmp_path, 7, dram=24)
    res = replay(str(trace), {"dram_pages": 2048})
    assert res.counters["accesses"] == live["accesses"]
    assert res.counters["dram_pages"] == 2048
    assert res.counters["migrations"]["demote"].get("dram_budget", 0) == 0


def test_in_place_writeback_replays_exactly(tmp_path: Path) -> None:
    trace, live, live_log = record_random(tmp_path, 11, relocate=False, dram=8)
    res = replay(str(trace), log=str(tmp_path / "r.jsonl"))
    assert res.counters == live


def test_a_one_frame_budget_replays_to_the_end(tmp_path: Path) -> None:
    # With one frame, stores can fail with ENOMEM as they would live: the replay
    # counts them and goes on, as the mount answers the errno and goes on.
    trace, live, _ = record_random(tmp_path, 5, dram=24)
    res = replay(str(trace), {"dram_pages": 1}, summary=False)
    assert res.counters["dram_pages"] == 1
    assert res.counters["accesses"]["read"] > 0
    assert res.records > 0 and res.errors >= 0


def test_kernel_2_6_26_in_place_stores_replay_exactly(tmp_path: Path) -> None:
    # kernel=2.6.26: stores to XIP pages go to NVRAM in place (write_pages from the
    # write path), and the replay takes the kernel from the header's mm settings.
    trace, live, live_log = record_random(tmp_path, 13, kernel="2.6.26", relocate=False)
    res = replay(str(trace), log=str(tmp_path / "r.jsonl"))
    assert res.config["kernel"] == "2.6.26"
    assert res.counters == live
    assert _events(tmp_path / "r.jsonl") == _events(live_log)
