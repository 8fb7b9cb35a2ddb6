"""MemoryManager: the data path the FUSE layer calls."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mm_helpers import PAGE, check_invariants, pattern

from nvramfs.events import schema
from nvramfs.mm import MMBug
from nvramfs.mm.flags import VM_MAYREAD, VM_MAYWRITE, VM_READ, VM_WRITE
from nvramfs.mm.vma import PTRS_PER_PTE, Chunk


def test_read_write_roundtrip_and_close_writes_back(make_mm) -> None:
    mm, backing, ev = make_mm(dram_pages=4)
    data = bytearray(pattern(16))
    backing.create(2, bytes(data), holes=[5, 6])
    data[5 * PAGE : 7 * PAGE] = bytes(2 * PAGE)
    rng = np.random.default_rng(0)
    for _ in range(200):
        off = int(rng.integers(0, 16 * PAGE - 1))
        n = int(rng.integers(1, min(3 * PAGE, 16 * PAGE - off) + 1))
        if rng.random() < 0.3:
            buf = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            mm.write(2, off, buf)
            data[off : off + n] = buf
        else:
            assert bytes(mm.read(2, off, n)) == bytes(data[off : off + n])
        assert mm.machine.frames_used <= 4
    check_invariants(mm)
    mm.close()
    assert backing.read_file(2, 16) == bytes(data)
    assert mm.stats()["dirty"] == 0
    assert ev.of(schema.COUNTERS)


def test_fsync_counts_and_reason(make_mm) -> None:
    mm, backing, ev = make_mm()
    backing.create(2, pattern(4))
    assert mm.fsync(2) == 0
    mm.write(2, 0, b"a" * (2 * PAGE + 1))
    assert mm.fsync(2) == 3
    assert mm.fsync(2) == 0
    assert [e["reason"] for e in ev.of(schema.WRITEBACK)] == ["fsync"] * 3
    assert mm.fsync(99) == 0


def test_dirty_expire_from_tick(make_mm, clock) -> None:
    mm, backing, ev = make_mm(writeback_seconds=5.0)
    backing.create(2, pattern(2))
    mm.write(2, 0, b"a")
    clock.advance(3.0)
    mm.tick()
    assert not ev.of(schema.WRITEBACK)
    clock.advance(2.5)
    mm.tick()
    wb = ev.of(schema.WRITEBACK)
    assert len(wb) == 1 and wb[0]["reason"] == "dirty_expire"
    assert backing.read_file(2, 1)[:1] == b"a"


def test_truncate_zeroes_tail_and_drops_pages(make_mm) -> None:
    mm, backing, _ = make_mm()
    data = pattern(4)
    backing.create(2, data)
    mm.read(2, 0, 4 * PAGE)
    mm.write(2, 3 * PAGE, b"dirty")
    mm.truncate(2, PAGE + 10)
    backing.set_size(2, PAGE + 10)  # the image's setattr(size): zeroes the block's tail
    assert 3 not in mm.address_space(2).pages
    assert bytes(mm.read(2, PAGE, PAGE)) == data[PAGE : PAGE + 10] + bytes(PAGE - 10)
    mm.truncate(2, 4 * PAGE)
    assert bytes(mm.read(2, 2 * PAGE, 2 * PAGE)) == bytes(2 * PAGE)
    mm.close()
    assert backing.read_file(2, 4) == data[: PAGE + 10] + bytes(3 * PAGE - 10)
    check_invariants(mm)


def test_huge_sparse_file_costs_nothing(make_mm) -> None:
    mm, backing, _ = make_mm()
    backing.create(2, pattern(1))
    mm.truncate(2, 10**15)
    vma = mm.address_space(2).fs_vma
    assert len(vma.vm_mm.pgd) <= 1
    assert bytes(mm.read(2, 10**15 - 100, 100)) == bytes(100)
    assert bytes(mm.read(2, 10**15 - 3 * PAGE, 3 * PAGE)) == bytes(3 * PAGE)
    assert len(vma.vm_mm.pgd) <= 3
    mm.write(2, 10**15 - 1, b"e")
    mm.truncate(2, 0)
    assert len(vma.vm_mm.pgd) == 0
    check_invariants(mm)


def test_metadata_is_16_bytes_per_page() -> None:
    c = Chunk(0, None)
    total = c.pte_np.nbytes + c.reads_np.nbytes + c.writes_np.nbytes + c.state.nbytes
    assert total == 16 * PTRS_PER_PTE


def test_evict_inode_drops_everything_without_writeback(make_mm) -> None:
    mm, backing, ev = make_mm()
    backing.create(2, pattern(3))
    mm.write(2, 0, b"x" * 3 * PAGE)
    vma = mm.mmap(2, 0, 3, VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE)
    mm.access(vma, vma.vm_start, True)
    used = mm.machine.frames_used
    assert used == 4
    mm.evict_inode(2)
    assert mm.machine.frames_used == 0
    assert not ev.of(schema.WRITEBACK)
    assert mm.residency(2) == {"pages": 0, "xip": 0, "pagecache": 0, "dirty": 0}
    mm.evict_inode(2)
    check_invariants(mm)


def test_residency_and_stats_are_json(make_mm) -> None:
    mm, backing, _ = make_mm()
    backing.create(2, pattern(6))
    mm.read(2, 0, 6 * PAGE)
    mm.write(2, PAGE, b"z")
    assert mm.residency(2) == {"pages": 6, "xip": 5, "pagecache": 1, "dirty": 1}
    s = mm.stats()
    json.dumps(s)
    assert s["faults"]["xip_read"] == 6 and s["faults"]["cow"] == 1
    assert s["struct_page_bytes_avoided"] == 5 * 64
    assert s["struct_page_bytes_used"] == 64
    assert s["frames_used"] == 1 and s["dram_pages"] == 8
    assert s["residency"]["pagecache"] == 1 and s["policy"] == "none"


def test_promote_demote_events_and_hint(make_mm) -> None:
    mm, backing, ev = make_mm()
    backing.create(2, pattern(4))
    mm.read(2, 0, 4 * PAGE)
    calls = backing.bmap_calls
    assert mm.promote(2, 1)
    frame = mm.address_space(2).pages[1]
    p = ev.of(schema.MIGRATE)[-1]
    assert (p["from"], p["to"], p["reason"], p["pfn_to"]) == ("xip", "pagecache", "ctl", frame)
    assert p["refcount"] == 1 and p["mapcount"] == 0
    assert bytes(mm.read(2, PAGE, PAGE)) == pattern(4)[PAGE : 2 * PAGE]
    assert mm.machine.page_mapcount(frame) == 1
    mm.write(2, PAGE, b"Q")
    assert mm.demote_all() == 1
    d = [e for e in ev.events if e["ev"] in ("migrate", "writeback")][-2:]
    assert [e["ev"] for e in d] == ["writeback", "migrate"]
    assert d[0]["reason"] == "demote" and d[1]["reason"] == "ctl"
    assert d[1]["refcount"] == 0 and d[1]["mapcount"] == 0
    assert bytes(mm.read(2, PAGE, 1)) == b"Q"
    assert backing.bmap_calls == calls
    check_invariants(mm)


def test_folio_ref_freeze_refuses_a_page_held_elsewhere(make_mm) -> None:
    # __remove_mapping freezes the refcount at the references it accounts for; a page
    # someone else holds (e.g. a pinned user page) stays in the page cache.
    mm, backing, ev = make_mm()
    backing.create(2, pattern(2))
    assert mm.promote(2, 0)
    frame = mm.address_space(2).pages[0]
    mm.machine.get_page(frame)  # an extra reference
    assert mm.demote_all() == 0
    assert mm.address_space(2).pages[0] == frame and mm.machine.page_ref_count(frame) == 2
    assert not [e for e in ev.of(schema.MIGRATE) if e["to"] == "xip"]
    assert mm.stats()["migrations"]["demote"] == {}
    mm.machine.put_page(frame)
    assert mm.demote_all() == 1
    assert frame in mm.machine.free_list
    check_invariants(mm)


def test_pte_special_off_gives_same_data(make_mm) -> None:
    mm, backing, _ = make_mm(pte_special=False)
    data = pattern(8)
    backing.create(2, data, holes=[2])
    want = data[: 2 * PAGE] + bytes(PAGE) + data[3 * PAGE :]
    assert bytes(mm.read(2, 0, 8 * PAGE)) == want
    assert mm.promote(2, 4)
    assert bytes(mm.read(2, 0, 8 * PAGE)) == want
    check_invariants(mm)


def test_budget_exhausted_by_anon_pages_is_enomem(make_mm) -> None:
    mm, backing, _ = make_mm(dram_pages=2)
    backing.create(2, pattern(4))
    vma = mm.mmap(2, 0, 4, VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE)
    mm.access(vma, vma.vm_start, True)
    mm.access(vma, vma.vm_start + PAGE, True)
    with pytest.raises(OSError) as exc:
        mm.write(2, 0, b"x")
    assert exc.value.errno == 12
    check_invariants(mm)


def test_broken_invariant_raises_mmbug(make_mm) -> None:
    mm, backing, _ = make_mm()
    backing.create(2, pattern(1))
    mm.write(2, 0, b"x")
    frame = mm.address_space(2).pages[0]
    mm.machine._refcount[frame] = 1  # lose the pte's reference
    # The unmap drops the last reference of a page still in the page cache.
    with pytest.raises(MMBug, match="bad page state at free"):
        mm.truncate(2, 0)


def test_cold_batch_read_maps_xip_pages_in_one_go(make_mm) -> None:
    mm, backing, _ = make_mm(dram_pages=8)
    data = pattern(40)
    backing.create(2, data, holes=[7])
    assert mm.promote(2, 3)
    calls = backing.bmap_calls
    r = mm.read(2, 100, 32 * PAGE)
    assert bytes(r) == (data[: 7 * PAGE] + bytes(PAGE) + data[8 * PAGE :])[100 : 100 + 32 * PAGE]
    s = mm.stats()["faults"]
    assert s["xip_read"] == 31 and s["hole"] == 1 and s["pagecache_hit"] == 1
    assert backing.bmap_calls - calls <= 2
    assert mm.residency(2) == {"pages": 32, "xip": 31, "pagecache": 1, "dirty": 0}
    check_invariants(mm)


def test_manager_exposes_rule_set_budget_and_policy(make_mm) -> None:
    mm, _, _ = make_mm(dram_pages=12, pte_special=False, policy="clock")
    assert mm.pte_special is False and mm.dram_pages == 12 and mm.policy.name == "clock"
