"""MemoryManager.set_dram_budget: frames offlined and onlined as memory hot-(un)plug does."""

from __future__ import annotations

import pytest
from mm_helpers import PAGE, pattern

from nvramfs.events import schema
from nvramfs.mm.machine import PG_RESERVED


def test_shrink_demotes_the_coldest_and_grow_gives_frames_back(make_mm) -> None:
    mm, backing, ev = make_mm(dram_pages=8, policy="none")
    m = mm.machine
    backing.create(2, pattern(8))
    for i in range(8):
        assert mm.promote(2, i)
    mm.write(2, 0, b"dirty")
    assert m.frames_used == 8 and not m.free_list
    assert mm.set_dram_budget(3) == 3
    assert m.dram_pages == 3 and m.frames_used == 3 and not m.free_list
    assert mm.stats()["dram_pages"] == 3
    demoted = [e for e in ev.of(schema.MIGRATE) if e["reason"] == schema.REASON_DRAM_BUDGET]
    assert len(demoted) == 5
    offline = [p for p in range(1, m.nr_frames) if m.flags[p] & PG_RESERVED]
    assert len(offline) == 5 and all(m._refcount[p] == 1 for p in offline)
    # Every page still reads its data, whatever moved (the dirty one was written back).
    data = mm.read(2, 0, 8 * PAGE)
    assert bytes(data[:5]) == b"dirty" and bytes(data[PAGE:]) == pattern(8)[PAGE:]
    assert m.frames_used <= m.dram_pages
    assert mm.set_dram_budget(8) == 8
    assert len(m.free_list) == 8 - m.frames_used
    assert not any(m.flags[p] & PG_RESERVED for p in range(1, m.nr_frames))


def test_the_budget_cannot_grow_past_the_machine(make_mm) -> None:
    mm, _, _ = make_mm(dram_pages=8)
    for bad in (0, 9):
        with pytest.raises(ValueError):
            mm.set_dram_budget(bad)
    assert mm.machine.dram_pages == 8
