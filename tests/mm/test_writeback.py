"""Batched writeback: reclaim, the flusher's batches, the dirty thresholds, ordered sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mm_helpers import PAGE, check_invariants, pattern

from nvramfs.events import schema
from nvramfs.mm import manager as mm_manager
from nvramfs.mm.flags import _PAGE_ACCESSED, _PAGE_PRESENT
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


def _state(mm) -> dict:
    m = mm.machine
    out = {
        name: getattr(m, name).copy()
        for name in ("_refcount", "_mapcount", "flags", "mapping", "index", "page_block", "data")
    }
    for ino, vma in mm._vmas.items():
        for no, chunk in vma.vm_mm.pgd.items():
            p = chunk.pte_np
            out[f"pte{ino}:{no}"] = np.where(p & 1, p, 0)  # present ptes (hints are a cache)
            out[f"w{ino}:{no}"] = chunk.writes_np.copy()
    return out


@pytest.mark.parametrize("pte_special", [True, False])
def test_batched_store_faults_leave_the_state_of_page_by_page_faults(make_mm, pte_special) -> None:
    """Multi-page stores over holes, unmapped blocks and read-mapped XIP pages, at
    page-aligned and unaligned offsets: the batched path and the per-page faults
    end in the same struct pages, ptes, counters, events and file contents."""
    runs = []
    for batching in (False, True):
        mm, backing, ev = make_mm(dram_pages=512, pte_special=pte_special)
        mm.store_batching = batching
        backing.create(2, pattern(300), holes=list(range(40, 80)))
        rng = np.random.default_rng(11)
        mm.read(2, 100 * PAGE, 20 * PAGE)  # XIP ptes present, read-only
        for _ in range(60):
            off = int(rng.integers(0, 280 * PAGE))
            n = int(rng.integers(1, 40 * PAGE))
            if rng.random() < 0.2:
                off &= ~(PAGE - 1)
                n = (n + PAGE - 1) & ~(PAGE - 1)
            mm.write(2, off, rng.integers(1, 256, n, dtype=np.uint8).tobytes())
            r = rng.random()
            if r < 0.1:
                mm.fsync(2)
            elif r < 0.4:
                mm.demote_all()  # back to XIP: the next stores COW again
                mm.read(2, off, min(n, 8 * PAGE))  # some of them read-mapped first
        check_invariants(mm)
        st = mm.stats()
        st.pop("tick")
        events = [{k: v for k, v in e.items() if k not in ("t", "seq")} for e in ev.events]
        runs.append((_state(mm), st, events, mm))
        mm.close()
        runs[-1] = (*runs[-1], backing.read_file(2, 330), backing.sizes[2])
    (a, sa, ea, _, fa, za), (b, sb, eb, _, fb, zb) = runs
    assert sa == sb
    assert sa["faults"]["cow"] > 100 and sa["faults"]["hole"] > 20
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    key = lambda e: (e["ev"], e.get("ino"), e.get("index"), e.get("pfn_to"))  # noqa: E731
    assert sorted(ea, key=key) == sorted(eb, key=key)
    assert fa == fb and za == zb


def test_batched_stores_under_reclaim_keep_the_data(make_mm) -> None:
    mm, backing, ev = make_mm(dram_pages=48)
    data = bytearray(pattern(200))
    backing.create(2, bytes(data), holes=list(range(0, 200, 3)))
    for i in range(0, 200, 3):
        data[i * PAGE : (i + 1) * PAGE] = bytes(PAGE)
    rng = np.random.default_rng(5)
    for _ in range(80):
        off = int(rng.integers(0, 190 * PAGE))
        n = int(rng.integers(PAGE, 30 * PAGE))
        buf = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        mm.write(2, off, buf)
        data[off : off + n] = buf
        assert mm.machine.frames_used <= 48
        if rng.random() < 0.3:
            while mm.over_background_thresh():
                mm.writeback_batch()
    check_invariants(mm)
    assert bytes(mm.read(2, 0, 200 * PAGE)) == bytes(data[: 200 * PAGE])
    mm.close()
    assert backing.read_file(2, 200) == bytes(data[: 200 * PAGE])


def test_page_events_are_logged_as_the_json_encoder_would(tmp_path) -> None:
    """The log's fast format of migrate/writeback/cow lines is byte for byte JSON's."""
    import json

    from nvramfs.events.reader import read_events
    from nvramfs.events.writer import EventWriter

    base = dict(ino=2, index=5, pfn_from=3, pfn_to=1 << 20, refcount=1, mapcount=0)
    base.update({"from": "pagecache", "to": "xip"})
    recs = [
        (schema.WRITEBACK, dict(base, reason="background")),
        (schema.COW, dict(base, reason="write", via="pfn_mkwrite")),
        (schema.MIGRATE, dict(base, reason='odd "word"')),  # not a schema word: encoder
        (schema.MIGRATE, dict(base, reason="policy", ino=True)),  # a bool: encoder
    ]
    w = EventWriter(tmp_path / "log.jsonl")
    for ev, fields in recs:
        w.emit(ev, **fields)
    w.close()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    for line in lines:
        assert line == json.dumps(json.loads(line), separators=(",", ":"))
    assert len(lines) == 4 and '"ino":true' in lines[3]
    got = list(read_events(tmp_path / "log.jsonl"))  # (the reader skips the bool ino)
    assert [e["reason"] for e in got[:3]] == ["background", "write", 'odd "word"']
    assert got[1]["via"] == "pfn_mkwrite"


def test_emit_pages_writes_the_lines_emit_would(tmp_path) -> None:
    from nvramfs.events.writer import EventWriter

    class Clock:
        now = 5.0

        def __call__(self) -> float:
            return self.now

    batches = [
        (schema.WRITEBACK, 2, [0, 1], [7, 8], [1 << 20, (1 << 20) + 1], "pagecache", "xip",
         "background", [1, 1], [0, 0], None),
        (schema.COW, 3, [4], [(1 << 20) + 9], [9], "xip", "pagecache", "write", [1], [0],
         "pfn_mkwrite"),
        (schema.MIGRATE, 2, [5], [3], [11], "pagecache", "xip", 'not "a word"', [0], [0], None),
    ]  # fmt: skip
    out = []
    for use_batch in (False, True):
        w = EventWriter(tmp_path / f"{use_batch}.jsonl", clock=Clock())
        for ev, ino, idx, pf, pt, hf, ht, reason, ref, mc, via in batches:
            if use_batch:
                w.emit_pages(ev, ino, idx, pf, pt, hf, ht, reason, ref, mc, via)
            else:
                for k in range(len(idx)):
                    extra = {} if via is None else {"via": via}
                    w.emit(ev, ino=ino, index=idx[k], pfn_from=pf[k], pfn_to=pt[k],
                           **{"from": hf, "to": ht}, reason=reason, refcount=ref[k],
                           mapcount=mc[k], **extra)  # fmt: skip
        assert w.pending == 4
        w.close()
        out.append((tmp_path / f"{use_batch}.jsonl").read_text())
    assert out[0] == out[1] and out[0].count("\n") == 4


def test_balance_dirty_pages_is_ratelimited(make_mm) -> None:
    """The dirty count (a pass over every struct page) is taken once per
    ratelimit_pages pages written, as balance_dirty_pages_ratelimited does."""
    mm, backing, ev = make_mm(dram_pages=1000, dirty_background_ratio=0.1, dirty_ratio=0.2)
    assert mm.ratelimit_pages == 12
    mm.write(2, 0, bytes(150 * PAGE))
    assert mm.balance_dirty_pages(2) == BDP_BACKGROUND
    got = []
    for i in range(12):
        mm.write(2, (150 + i) * PAGE, b"x")
        got.append(mm.balance_dirty_pages(2))
    assert got == [BDP_OK] * 11 + [BDP_BACKGROUND]


def _demote_clean_page_by_page(mapping, pages, reason) -> int:
    """The old per-page demotion of clean pages (demote() of each, in order)."""
    from nvramfs.mm.machine import PG_ANON, PG_LOCKED, PG_WRITEBACK
    from nvramfs.mm.migrate import demote

    m = mapping.machine
    pages = np.asarray(pages, dtype=np.int64)
    busy = PG_ANON | PG_DIRTY | PG_LOCKED | PG_WRITEBACK
    ok = ((m.flags[pages] & busy) == 0) & (m.page_block[pages] > 0)
    ok &= m.mapping[pages] == mapping.host
    return sum(demote(mapping, p, reason) for p in pages[ok].tolist())


def _policy_demoted_page_by_page(self, mapping, indices, all_gone=False) -> None:
    """The old per-page on_demote of each demoted page's policy word."""
    pgd = mapping.fs_vma.vm_mm.pgd
    for index in indices.tolist():
        if index in mapping.pages:
            continue
        chunk = pgd.get(index >> 9)
        if chunk is not None:
            chunk.state[index & 511] = self.policy.on_demote(int(chunk.state[index & 511]))


def _reclaim_page_by_page(monkeypatch, check_isolated: bool = False) -> None:
    """The reference reclaim: each victim demoted by itself, the policy told page by
    page, and shrink_page_list recomputing the victims' dirty mask (`check_isolated`:
    also asserting that every victim reclaim isolated is reclaimable)."""
    from nvramfs.mm.manager import MemoryManager
    from nvramfs.mm.migrate import reclaimable_frames

    monkeypatch.setattr(mm_manager, "demote_clean_pages", _demote_clean_page_by_page)
    # No batch taken whole by _shrink_isolated's one-chunk path: all go page by page.
    monkeypatch.setattr(mm_manager, "demote_clean_chunk", lambda mapping, pages, reason: None)
    monkeypatch.setattr(MemoryManager, "_policy_demoted", _policy_demoted_page_by_page)
    shrink = MemoryManager._shrink_isolated

    def recomputed(self, pages, reason, dirty=None):
        if check_isolated:
            assert len(reclaimable_frames(self.machine, pages)) == len(pages)
        return shrink(self, pages, reason)  # its own dirty mask, grouped

    monkeypatch.setattr(MemoryManager, "_shrink_isolated", recomputed)


@pytest.mark.parametrize("policy", ["2q", "mq", "clock"])
def test_vectorised_reclaim_leaves_the_state_of_per_page_demotion(
    make_mm, clock, monkeypatch, policy
) -> None:
    """Streaming and random stores, reads, fsyncs, flusher batches and ticks over a
    file 8x the budget: reclaim's batched demotion (demote_clean_pages, the policy
    words of a chunk at once, no re-filter of the victims it just isolated) ends in
    the same struct pages, ptes, policy words, counters, events and file bytes as
    demoting each page by itself."""

    runs = []
    for vectorised in (True, False):
        clock.now = 100.0
        if not vectorised:
            _reclaim_page_by_page(monkeypatch, check_isolated=True)
        mm, backing, ev = make_mm(dram_pages=128, policy=policy, nr_blocks=2048)
        backing.create(2, pattern(1024), holes=list(range(500, 540)))
        rng = np.random.default_rng(8)
        for step in range(400):
            if step % 3:
                off = (step * 32 % 1024) * PAGE
                mm.write(2, off, rng.integers(1, 256, 32 * PAGE, dtype=np.uint8).tobytes())
            else:
                off = int(rng.integers(0, 1023 * PAGE))
                mm.write(
                    2, off, rng.integers(1, 256, int(rng.integers(1, 3 * PAGE)), np.uint8).tobytes()
                )
            if step % 7 == 0:
                mm.read(2, int(rng.integers(0, 1000)) * PAGE, 8 * PAGE)
            if step % 5 == 0:
                mm.writeback_batch()
            if step % 41 == 0:
                mm.fsync(2)
            if step % 13 == 0:
                clock.now += 1.0
                mm.tick()
        check_invariants(mm)
        st = mm.stats()
        words = {no: c.state.copy() for no, c in mm._vmas[2].vm_mm.pgd.items()}
        events = [{k: v for k, v in e.items() if k not in ("t", "seq")} for e in ev.events]
        state = _state(mm)
        state["rss"] = np.array([mm._vmas[2].vm_mm.rss_file])
        free = list(mm.machine.free_list)
        mm.close()
        runs.append((state, st, words, events, free, backing.read_file(2, 1024)))
        monkeypatch.undo()
    (a, sa, wa, ea, fa, da), (b, sb, wb, eb, fb, db) = runs
    assert sa == sb and sa["migrations"]["demote"]["dram_budget"] > 1000
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert ea == eb and fa == fb and da == db


def test_emit_pages_with_one_count_for_every_page(tmp_path, monkeypatch) -> None:
    """Counts given once (mm's batches whose pages all have the same) write the lines
    the per-page lists write, in pieces of any size."""
    from nvramfs.events import writer as writer_mod
    from nvramfs.events.writer import EventWriter

    monkeypatch.setattr(writer_mod, "_WRITE_LINES", 100)  # the flush in several writes
    idx = list(range(10_000, 10_000 + 300))
    pf = [7 * i for i in range(300)]
    pt = [(1 << 20) + i for i in range(300)]
    out = []
    for counts in ((2, 1), ([2] * 300, [1] * 300)):
        w = EventWriter(tmp_path / f"{type(counts[0]).__name__}.jsonl", clock=lambda: 5.0)
        w.emit_pages(
            schema.COW, 4, idx, pf, pt, "xip", "pagecache", "write", *counts, "pfn_mkwrite"
        )
        w.emit(schema.THROTTLE, ino=4, dirty=1, background=2, limit=3)
        w.emit_pages(schema.WRITEBACK, 4, idx, pt, pf, "pagecache", "xip", "fsync", *counts)
        w.close()
        out.append((tmp_path / f"{type(counts[0]).__name__}.jsonl").read_text())
    assert out[0] == out[1] and out[0].count("\n") == 601
    lines = out[0].splitlines()
    assert [json.loads(x)["seq"] for x in lines] == list(range(601))
    assert json.loads(lines[0])["refcount"] == 2 and json.loads(lines[-1])["mapcount"] == 1


@pytest.mark.parametrize("policy", ["2q", "clock"])
def test_sparse_demotion_zaps_as_the_chunked_one(make_mm, clock, monkeypatch, policy) -> None:
    """Random one-page stores over a file of 32 page-table chunks: reclaim's batches
    span nearly a chunk a page, and demote_clean_pages zaps their ptes page by page
    (`_zap_fs_ptes_sparse`). The same run with the chunk-at-a-time zap ends in the
    same struct pages, every pte (hints too), rss, counters, events and bytes."""
    from nvramfs.mm import migrate

    runs, taken = [], []
    for sparse in (True, False):
        clock.now = 100.0
        if sparse:
            real = migrate._zap_fs_ptes_sparse

            def counted(*a, real=real):
                taken.append(len(a[2]))
                return real(*a)

            monkeypatch.setattr(migrate, "_zap_fs_ptes_sparse", counted)
        else:

            def chunked(m, vma, pages, idx, pfns):
                return migrate._zap_fs_ptes(m, vma, pages, idx, pfns, idx >> 9)

            monkeypatch.setattr(migrate, "_zap_fs_ptes_sparse", chunked)
        mm, backing, ev = make_mm(dram_pages=96, policy=policy, nr_blocks=17000)
        npages = 32 * 512
        backing.create(2, pattern(npages), holes=list(range(700, 760)))
        rng = np.random.default_rng(3)
        recent: list[int] = []
        for step in range(1500):
            page = int(rng.integers(0, npages))
            mm.write(2, page * PAGE + int(rng.integers(0, 64)), bytes([step % 251 + 1]) * 100)
            recent = [*recent[-40:], page]
            if step % 3 == 0:  # young ptes on frames reclaim will take
                mm.read(2, recent[int(rng.integers(0, len(recent)))] * PAGE, PAGE)
            if step % 9 == 0:
                mm.read(2, int(rng.integers(0, npages)) * PAGE, PAGE)
            if step % 50 == 0:
                mm.writeback_batch()
            if step % 97 == 0:
                clock.now += 1.0
                mm.tick()
        # Then every clean frame at once, half of their ptes young (the policy's
        # demote-all path; reclaim's victims are rarely young).
        mm.fsync(2)
        m, vma = mm.machine, mm._vmas[2]
        cached = np.flatnonzero(m.mapping == 2)
        young = 0
        for k, page in enumerate(cached.tolist()):
            index = int(m.index[page])
            chunk = vma.vm_mm.pgd.get(index >> 9)
            if k % 2 and chunk is not None and chunk.pte[index & 511] & _PAGE_PRESENT:
                chunk.pte[index & 511] |= _PAGE_ACCESSED
                young += 1
        assert young > 8
        assert migrate.demote_clean_pages(mm._spaces[2], cached, "policy") > 16
        check_invariants(mm)
        st = mm.stats()
        ptes = {no: c.pte_np.copy() for no, c in vma.vm_mm.pgd.items()}
        rss = vma.vm_mm.rss_file
        events = [{k: v for k, v in e.items() if k not in ("t", "seq")} for e in ev.events]
        state = _state(mm)
        mm.close()
        runs.append((state, st, ptes, rss, events, backing.read_file(2, npages)))
        monkeypatch.undo()
    (a, sa, pa, ra, ea, da), (b, sb, pb, rb, eb, db) = runs
    assert taken and max(taken) >= 16, "the sparse zap never ran"
    assert sa == sb and sa["migrations"]["demote"]["dram_budget"] > 500
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert ra == rb and ea == eb and da == db


@pytest.mark.parametrize("policy", ["2q", "clock"])
def test_reclaim_of_mixed_batches_leaves_the_state_of_per_page_demotion(
    make_mm, clock, monkeypatch, policy
) -> None:
    """Reclaim's special cases (a batch of one file and one page-table chunk; the
    dirty victims handed to shrink_page_list; the migrate events' counts given
    when every frame was freed) against the general path, on random inputs that
    also reach the others: two files written in turn (batches of both files),
    streaming stores across chunk boundaries, scattered small stores, dirty victims
    (no flusher for long stretches), young ptes, and a process vma on one file for
    a while (its pages demoted one by one). The run demoting each page by itself,
    recomputing every mask, ends in the same struct pages, ptes, policy words,
    free list, counters, events and file bytes."""
    from nvramfs.mm.flags import VM_READ, VM_SHARED

    runs = []
    for vectorised in (True, False):
        clock.now = 100.0
        if not vectorised:
            _reclaim_page_by_page(monkeypatch)
        mm, backing, ev = make_mm(dram_pages=96, policy=policy, nr_blocks=4096)
        backing.create(2, pattern(1500), holes=list(range(600, 650)))
        backing.create(3, pattern(900, seed=2))
        rng = np.random.default_rng(21)
        vma = None
        for step in range(500):
            ino = 2 if step % 2 else 3
            npages = 1500 if ino == 2 else 900
            if rng.random() < 0.6:
                n = int(rng.integers(2, 40))
                off = int(rng.integers(0, npages - n)) * PAGE + int(rng.integers(0, 2)) * 100
                buf = rng.integers(1, 256, n * PAGE, dtype=np.uint8).tobytes()
            else:
                off = int(rng.integers(0, npages - 1)) * PAGE + int(rng.integers(0, PAGE))
                buf = bytes([step % 250 + 1]) * int(rng.integers(1, 300))
            mm.write(ino, off, buf)
            if step % 4 == 0:
                mm.read(ino, int(rng.integers(0, npages - 8)) * PAGE, 8 * PAGE)
            if step % 25 == 0 and step % 50:
                mm.writeback_batch()
            if step % 10 == 5:
                # The frames of one chunk of the file, some of their ptes young, out
                # at once (the policy's path; reclaim's victims are rarely young).
                m = mm.machine
                frames = np.flatnonzero(m.mapping == ino)
                if len(frames):
                    nos = m.index[frames] >> 9
                    one = frames[nos == nos[int(rng.integers(0, len(nos)))]]
                    for page in one[::2].tolist():
                        mm.read(ino, int(m.index[page]) * PAGE, 10)
                    mm.shrink_page_list(one, "policy")
            if step == 150:
                vma = mm.mmap(3, 0, 900, VM_READ | VM_SHARED)
            if vma is not None and step < 300 and step % 3 == 0:
                mm.access(vma, vma.vm_start + int(rng.integers(0, 900)) * PAGE, False)
            if step == 300:
                mm.munmap(vma)
                vma = None
            if step % 37 == 0:
                clock.now += 1.0
                mm.tick()
        check_invariants(mm)
        st = mm.stats()
        words = {
            (ino, no): c.state.copy()
            for ino, v in mm._vmas.items()
            for no, c in v.vm_mm.pgd.items()
        }
        events = [{k: v for k, v in e.items() if k not in ("t", "seq")} for e in ev.events]
        state = _state(mm)
        state["rss"] = np.array([v.vm_mm.rss_file for _, v in sorted(mm._vmas.items())])
        free = list(mm.machine.free_list)
        mm.close()
        runs.append(
            (state, st, words, events, free, backing.read_file(2, 1500), backing.read_file(3, 900))
        )
        monkeypatch.undo()
    (a, sa, wa, ea, fa, *da), (b, sb, wb, eb, fb, *db) = runs
    assert sa == sb and sa["migrations"]["demote"]["dram_budget"] > 1000
    assert sum(1 for e in ea if e["ev"] == "writeback" and e["reason"] == "demote") > 20
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert ea == eb and fa == fb and da == db


def _isolate_4n(self, n):
    """The reclaim candidates as the whole window of 4n entries gives them (the
    reference for _isolate, which looks in the first 2n first)."""
    m = self.machine
    busy = mm_manager.PG_ANON | mm_manager.PG_LOCKED | mm_manager.PG_WRITEBACK
    fresh = False
    while True:
        if self._inactive is None or self._inactive_pos >= len(self._inactive[0]):
            if fresh:
                return np.zeros(0, dtype=np.int64)
            frames = self.policy.victims(self._cache_frames())
            self._inactive = (frames, self._lru_seq[frames])
            self._inactive_pos = 0
            fresh = True
        frames, seqs = self._inactive
        pos = self._inactive_pos
        w = frames[pos : pos + 4 * n]
        ok = (self._lru_seq[w] == seqs[pos : pos + len(w)]) & (m.mapping[w] != 0)
        ok &= (m.flags[w] & busy) == 0
        ok &= m._refcount[w] == 1 + (m._mapcount[w] + 1)
        good = np.flatnonzero(ok)
        if not len(good):
            self._inactive_pos = pos + len(w)
            continue
        self._inactive_pos = pos + int(good[0])
        return w[good[:n]]


def _reclaim_victims_ref(self):
    """Reclaim's victims as the general path chooses them: the first 4*batch valid
    candidates of the whole window, clean ones first, then dirty ones."""
    m = self.machine
    batch = min(SWAP_CLUSTER_MAX, max(1, m.dram_pages // 4))
    victims = _isolate_4n(self, 4 * batch)
    isdirty = (m.flags[victims] & PG_DIRTY) != 0
    clean = victims[~isdirty][:batch]
    dirty = victims[isdirty][: batch - len(clean)] if len(clean) < batch else victims[:0]
    return np.concatenate([clean, dirty]), dirty


@pytest.mark.parametrize("policy", ["2q", "clock", "none"])
def test_reclaim_takes_the_victims_of_the_whole_window(make_mm, clock, monkeypatch, policy) -> None:
    """At every reclaim pass of a mixed run (streaming and scattered stores, reads,
    fsyncs, flusher batches, ticks, truncates that leave stale entries in the ranked
    list), the victims (_isolate_clean's quick look, or _isolate's 2n then 4n
    windows) and the position left in the ranked list are those of a look at the
    whole window of 4*batch entries, clean ones first."""
    from nvramfs.mm.manager import MemoryManager

    real = MemoryManager._reclaim_victims
    calls = {"n": 0, "general": 0}
    isolate = MemoryManager._isolate

    def counted(self, n):
        calls["general"] += 1
        return isolate(self, n)

    def both(self):
        saved = (self._inactive, self._inactive_pos)
        want = _reclaim_victims_ref(self)
        want_state = (self._inactive, self._inactive_pos)
        self._inactive, self._inactive_pos = saved
        got = real(self)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert self._inactive_pos == want_state[1]
        assert all(np.array_equal(x, y) for x, y in zip(self._inactive, want_state[0], strict=True))
        calls["n"] += 1
        return got

    monkeypatch.setattr(MemoryManager, "_isolate", counted)
    monkeypatch.setattr(MemoryManager, "_reclaim_victims", both)
    clock.now = 100.0
    mm, backing, _ = make_mm(dram_pages=640, policy=policy, nr_blocks=8192)
    backing.create(2, pattern(3000), holes=list(range(300, 340)))
    rng = np.random.default_rng(4)
    for step in range(400):
        if step % 3:
            mm.write(2, (step * 24 % 2976) * PAGE, bytes([step % 250 + 1]) * (24 * PAGE))
        else:
            off = int(rng.integers(0, 2999 * PAGE))
            mm.write(2, off, bytes([7]) * int(rng.integers(1, 3 * PAGE)))
        if step % 5 == 0:
            mm.read(2, int(rng.integers(0, 2990)) * PAGE, 8 * PAGE)
        if step % 11 == 0:
            mm.writeback_batch()
        if step % 53 == 0:
            mm.fsync(2)
        if step % 29 == 0:
            clock.now += 1.0
            mm.tick()
        if step % 29 == 7:
            # Frames freed mid-interval and taken again (the file extended by a
            # scattered write): stale entries in the ranked list, at times more
            # than half of the first 2n.
            mm.truncate(2, int(rng.integers(500, 2900)) * PAGE)
            mm.write(2, 2999 * PAGE, bytes([5]) * PAGE)  # the size back, a hole between
            for _ in range(40):
                mm.write(2, int(rng.integers(0, 2999)) * PAGE, bytes([5]) * (4 * PAGE))
    check_invariants(mm)
    mm.close()
    assert calls["n"] > 100 and 0 < calls["general"] < calls["n"]
