"""mm.batch.load_pages has exactly the effect of one mm.read per page, in order."""

from __future__ import annotations

import numpy as np
import pytest

from nvramfs.events.writer import ListEventWriter
from nvramfs.mm import MemBacking, MemoryManager
from nvramfs.mm.batch import load_pages

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
    return {"stats": mm.stats(), "chunks": chunks}


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
