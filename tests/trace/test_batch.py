"""mm.batch.load_pages has exactly the effect of one mm.read per page, in order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvramfs.events.writer import ListEventWriter
from nvramfs.mm import MemBacking, MemoryManager
from nvramfs.mm.batch import load_pages
from nvramfs.mm.flags import VM_MAYREAD, VM_READ, VM_SHARED

PAGE = 4096


def _pair(
    seed: int, dram: int, pte_special: bool = True, trace_faults: bool = False
) -> tuple[MemoryManager, MemoryManager, list, list]:
    out = []
    for _ in range(2):
        rng = np.random.default_rng(seed)
        backing = MemBacking(8192)
        backing.create(2, bytes(3000 * PAGE), holes=set(rng.integers(0, 3000, 300).tolist()))
        ev = ListEventWriter(clock=lambda: 0.0, trace_faults=trace_faults)
        mm = MemoryManager(
            backing, dram, "2q", events=ev, clock=lambda: 0.0, pte_special=pte_special
        )
        out.append((mm, ev))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def _state(mm: MemoryManager) -> dict:
    vma = mm._vmas[2]
    chunks = {
        no: (c.pte_np.copy(), c.reads_np.copy(), c.state.copy()) for no, c in vma.vm_mm.pgd.items()
    }
    m = mm.machine
    frames = (m._refcount, m._mapcount, m.flags, m.mapping, m.index, m.page_block)
    return {
        "stats": mm.stats(),
        "chunks": chunks,
        "frames": [a.tobytes() for a in frames],
        "rss": (vma.vm_mm.rss_file, vma.vm_mm.rss_anon),
    }


@pytest.mark.parametrize(
    ("seed", "pte_special", "trace_faults"),
    [(1, True, False), (2, True, False), (3, True, False), (4, False, False), (5, True, True)],
)
def test_load_pages_equals_a_read_per_page(
    seed: int, pte_special: bool, trace_faults: bool
) -> None:
    a, b, ev_a, ev_b = _pair(seed, 64, pte_special, trace_faults)
    slow = []  # the loads that faulted through mm.read
    read_slow = b._read_slow
    b._read_slow = lambda *args: slow.append(args) or read_slow(*args)  # type: ignore[method-assign]
    rng = np.random.default_rng(seed + 100)
    for _ in range(12):
        # zipf-ish pages with a cold tail, some of them repeated, some writes between
        ranks = np.minimum(rng.zipf(1.2, 5000), 3000) - 1
        pages = rng.permutation(3000)[ranks]
        for p in pages.tolist():
            a.read(2, p * PAGE, PAGE)
        load_pages(b, 2, pages)
        w = int(rng.integers(0, 3000))
        for mm in (a, b):
            mm.write(2, w * PAGE + 5, b"x" * 100)
            mm.tick()
    sa, sb = _state(a), _state(b)
    assert sa["stats"] == sb["stats"]
    assert sa["frames"] == sb["frames"] and sa["rss"] == sb["rss"]
    # The batch met every case: frames hit, XIP hits, faults, holes.
    f = sa["stats"]["faults"]
    assert f["pagecache_hit"] > 0 and f["xip_read"] > 0 and f["hole"] > 0
    # The backing was asked the same questions.
    assert a.backing.bmap_calls == b.backing.bmap_calls
    # Faults whose block the bmap hint knew were taken in the batch (with per-fault
    # events on, every fault goes through mm.read so the events keep their order).
    assert all(type(v) is int for v in sb["stats"]["faults"].values())  # JSON-able
    assert a.stats_.xip_mapped == b.stats_.xip_mapped
    if trace_faults:
        assert len(slow) >= f["hole"] + f["xip_read"]
    else:
        assert len(slow) < f["hole"] + f["xip_read"] // 2
    assert sa["chunks"].keys() == sb["chunks"].keys()
    for no in sa["chunks"]:
        for x, y in zip(sa["chunks"][no], sb["chunks"][no], strict=True):
            assert np.array_equal(x, y), no
    strip = [{k: v for k, v in e.items() if k not in ("seq", "t")} for e in ev_a.events]
    assert strip == [{k: v for k, v in e.items() if k not in ("seq", "t")} for e in ev_b.events]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    pte_special=st.booleans(),
    dram=st.integers(4, 96),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["load", "load", "write", "truncate", "tick", "promote", "mmap"]),
            st.integers(0, 2999),
        ),
        min_size=1,
        max_size=14,
    ),
)
def test_load_pages_equals_a_read_per_page_on_random_histories(
    seed: int, pte_special: bool, dram: int, steps: list[tuple[str, int]]
) -> None:
    """Windows of loads between writes, truncates, ticks, ctl promotions and a process
    mapping the file: the same state after every step (frames, ptes, counters, events)."""
    a, b, ev_a, ev_b = _pair(seed, dram, pte_special)
    a.address_space(2)
    b.address_space(2)
    rng = np.random.default_rng(seed)
    proc: dict[int, Any] = {}
    recent: list[int] = []
    for kind, arg in steps:
        size = a.i_size(2) or 0
        if kind == "load":
            n = int(rng.integers(1, 3000))
            ranks = np.minimum(rng.zipf(1.2, n), 3000) - 1
            pages = rng.permutation(3000)[ranks]
            # The pages just written or promoted, again (page-cache pages to map).
            pages = rng.permutation(
                np.concatenate([pages, np.repeat(np.asarray(recent, dtype=np.int64), 3)])
            )
            pages = pages[pages * PAGE < size]  # the caller clamps reads to EOF
            for p in pages.tolist():
                a.read(2, p * PAGE, PAGE)
            load_pages(b, 2, pages)
            continue
        if kind in ("write", "promote"):
            recent.append(arg)
        for k, mm in enumerate((a, b)):
            if kind == "write":
                if arg * PAGE + 64 > size:
                    mm.set_size(2, arg * PAGE + 64)
                mm.write(2, arg * PAGE, b"y" * 64)
            elif kind == "truncate":
                mm.truncate(2, arg * PAGE + 100)
            elif kind == "tick":
                mm.tick()
            elif kind == "promote":
                mm.promote(2, arg)
            else:  # a process maps the file and loads a page: a second mapcount
                if k not in proc:
                    proc[k] = mm.mmap(2, 0, 3000, VM_READ | VM_MAYREAD | VM_SHARED)
                v = proc[k]
                if arg * PAGE < size:
                    mm.access(v, v.vm_start + arg * PAGE, False)
        _same(_state(a), _state(b))
    assert _strip(ev_a.events) == _strip(ev_b.events)


def _same(sa: dict, sb: dict) -> None:
    assert sa["stats"] == sb["stats"]
    assert sa["frames"] == sb["frames"] and sa["rss"] == sb["rss"]
    assert sa["chunks"].keys() == sb["chunks"].keys()
    for no in sa["chunks"]:
        for x, y in zip(sa["chunks"][no], sb["chunks"][no], strict=True):
            assert np.array_equal(x, y), no


def _strip(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("seq", "t")} for e in events]
