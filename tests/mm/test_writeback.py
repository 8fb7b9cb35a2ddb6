"""Batched writeback: reclaim, the flusher's batches, the dirty thresholds, ordered sizes."""

from __future__ import annotations

import numpy as np
import pytest
from mm_helpers import PAGE, check_invariants, pattern

from nvramfs.events import schema
from nvramfs.mm import manager as mm_manager
from nvramfs.mm.machine import PG_DIRTY
from nvramfs.mm.manager import BDP_BACKGROUND, BDP_OK, BDP_THROTTLE, SWAP_CLUSTER_MAX


def test_reclaim_writes_dirty_victims_back_together(make_mm) -> None:
    """A file twice the budget, written with no flusher: reclaim's pageout writes its
    dirty victims back in batches (one write_pages each), never one page at a time."""
    mm, backing, ev = make_mm(dram_pages=128)
    data = pattern(256)
    for off in range(0, len(data), 8 * PAGE):
        mm.write(2, off, data[off : off + 8 * PAGE])
    written = backing.writes
    assert written >= 128
    assert backing.write_calls * 16 <= written  # at least 16 pages per transaction
    mm.close()
    check_invariants(mm)
    assert backing.read_file(2, 256) == data
    assert backing.sizes[2] == len(data)
    # Every page demoted by reclaim was written back first, reason demote.
    assert {e["reason"] for e in ev.of(schema.WRITEBACK)} <= {"demote", "unmount"}


def test_reclaim_prefers_clean_victims(make_mm) -> None:
    mm, backing, ev = make_mm(dram_pages=64)
    backing.create(2, pattern(64))
    backing.create(3, pattern(8, seed=2))
    mm.write(2, 0, b"x" * (64 * PAGE))  # the budget full: half clean, half dirty
    mm.fsync(2)
    mm.write(2, 0, b"y" * (32 * PAGE))  # redirty the first 32
    m = mm.machine
    mm.write(3, 0, b"z")  # one frame needed: reclaim isolates a batch
    demoted = [e for e in ev.of(schema.MIGRATE) if e["to"] == "xip"]
    assert len(demoted) == SWAP_CLUSTER_MAX // 2  # min(32, 64 // 4)
    assert all(e["index"] >= 32 for e in demoted)  # the clean ones
    assert not [e for e in ev.of(schema.WRITEBACK) if e["reason"] == "demote"]
    assert int(np.count_nonzero(m.flags & PG_DIRTY)) == 33


def test_balance_dirty_pages_thresholds_and_throttle_event(make_mm) -> None:
    mm, backing, ev = make_mm(dram_pages=100, dirty_background_ratio=0.1, dirty_ratio=0.2)
    assert (mm.dirty_background_thresh, mm.dirty_thresh) == (10, 20)
    mm.write(2, 0, bytes(10 * PAGE))
    assert mm.balance_dirty_pages(2) == BDP_OK
    mm.write(2, 10 * PAGE, b"a")
    assert mm.balance_dirty_pages(2) == BDP_BACKGROUND and mm.over_background_thresh()
    mm.write(2, 11 * PAGE, bytes(9 * PAGE))
    assert mm.over_dirty_limit()
    assert mm.balance_dirty_pages(2) == BDP_THROTTLE
    (t,) = ev.of(schema.THROTTLE)
    assert (t["ino"], t["dirty"], t["background"], t["limit"]) == (2, 20, 10, 20)
    assert mm.stats()["throttles"] == 1
    # The flusher's batch: everything dirty here (fewer than MAX_WRITEBACK_PAGES).
    assert mm.writeback_batch() == 20
    assert mm.balance_dirty_pages(2) == BDP_OK
    assert {e["reason"] for e in ev.of(schema.WRITEBACK)} == {"background"}
    assert mm.writeback_batch() == 0


def test_bad_dirty_thresholds_are_refused(make_mm) -> None:
    with pytest.raises(ValueError, match="dirty_background"):
        make_mm(dirty_background_ratio=0.3, dirty_ratio=0.2)


def test_writeback_batch_takes_the_oldest_and_is_deterministic(make_mm, clock, monkeypatch) -> None:
    monkeypatch.setattr(mm_manager, "MAX_WRITEBACK_PAGES", 4)

    def run() -> list[tuple[int, int]]:
        mm, backing, ev = make_mm(dram_pages=64)
        for i, (ino, page) in enumerate([(3, 5), (2, 0), (2, 1), (3, 0), (2, 7), (2, 2)]):
            clock.advance(0.25)
            mm.write(ino, page * PAGE + i, b"w")
        assert mm.writeback_batch() == 4
        first = [(e["ino"], e["index"]) for e in ev.of(schema.WRITEBACK)]
        assert mm.writeback_batch() == 2
        return first

    first = run()
    # The four oldest, written back per file in index order.
    assert sorted(first) == [(2, 0), (2, 1), (3, 0), (3, 5)]
    assert run() == first


def test_ordered_size_never_covers_a_dirty_page(make_mm, clock, monkeypatch) -> None:
    """An append whose last page is written back first: the device's size waits for
    the pages before it, then advances with the writeback that covers them."""
    monkeypatch.setattr(mm_manager, "MAX_WRITEBACK_PAGES", 1)
    mm, backing, ev = make_mm(dram_pages=64)
    backing.create(2, b"a" * 5000)
    mm.write(2, 5 * PAGE, b"late")  # oldest dirty page, past a gap
    clock.advance(1)
    mm.write(2, 5000, b"b" * (3 * PAGE))  # pages 1..4 (page 1 straddles the old size)
    assert mm.writeback_batch() == 1  # page 5
    assert backing.sizes[2] == 5000  # page 1 (at the old size) is still dirty
    assert mm.writeback_batch() == 1  # page 1
    assert backing.sizes[2] == 2 * PAGE  # clamped at page 2, still dirty
    assert mm.writeback_batch() == 1  # page 2
    assert backing.sizes[2] == 3 * PAGE
    while mm.writeback_batch():
        pass
    assert backing.sizes[2] == 5 * PAGE + 4
    assert mm.dirty_indices(2).tolist() == []


def test_truncate_sets_i_size_for_writeback(make_mm) -> None:
    mm, backing, ev = make_mm(dram_pages=16)
    backing.create(2, b"q" * (3 * PAGE))
    mm.write(2, 0, b"r" * (3 * PAGE))
    mm.truncate(2, 5000)
    backing.truncate(2, 2)  # the image's share of the truncate
    backing.sizes[2] = 5000
    mm.fsync(2)
    assert backing.sizes[2] == 5000  # not the 8192 the tail's zeroing store reached


def test_demote_all_and_sync_write_back_in_one_batch(make_mm) -> None:
    mm, backing, ev = make_mm(dram_pages=64)
    backing.create(2, pattern(40))
    mm.write(2, 0, pattern(40, seed=3))
    calls = backing.write_calls
    assert mm.demote_all() == 40
    assert backing.write_calls == calls + 1
    assert backing.read_file(2, 40) == pattern(40, seed=3)
    check_invariants(mm)
