"""Every row of the kernel's decision tables: vm_normal_page (both rule sets), the BUG_ONs of
vm_insert_pfn / vm_insert_mixed, and the cases of do_wp_page."""

from __future__ import annotations

import numpy as np
import pytest
from mm_helpers import PAGE, pattern

from nvramfs.events import schema
from nvramfs.mm import (
    VMA,
    ZERO_PFN,
    Machine,
    MMBug,
    MMStruct,
    VMOperations,
    handle_mm_fault,
    is_cow_mapping,
    vm_insert_mixed,
    vm_insert_pfn,
    vm_normal_page,
)
from nvramfs.mm.flags import (
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    EBUSY,
    EFAULT,
    FAULT_FLAG_WRITE,
    VM_FAULT_NOPAGE,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_MIXEDMAP,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
    pfn_pte,
    pte_pfn,
)
from nvramfs.mm.machine import PG_ANON, PG_DIRTY

START = 0x4000_0000
SHARED_RW = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_SHARED | VM_MAYSHARE
PRIVATE_RW = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE


RC1, K2626, MODERN = "2.6.26-rc1", "2.6.26", "modern"


def raw_vma(flags: int, *, pte_special=None, pgoff: int = 0, ops=None, kernel: str = MODERN):
    m = Machine(8, pte_special=pte_special, kernel=kernel)
    mm = MMStruct(m)
    vma = VMA(
        vm_mm=mm,
        vm_start=START,
        vm_end=START + 16 * PAGE,
        vm_pgoff=pgoff,
        vm_flags=flags,
        vm_ops=ops,
    )
    mm.vmas.append(vma)
    return m, vma


# -- is_cow_mapping ---------------------------------------------------------------


@pytest.mark.parametrize(
    "flags,cow",
    [
        (VM_MAYWRITE, True),
        (VM_MAYWRITE | VM_WRITE, True),
        (VM_MAYWRITE | VM_SHARED, False),
        (0, False),
        (VM_READ, False),
    ],
)
def test_is_cow_mapping(flags: int, cow: bool) -> None:
    assert is_cow_mapping(flags) is cow


# -- vm_normal_page with pte_special -------------------------------------------------


@pytest.mark.parametrize("kind", [VM_MIXEDMAP, VM_PFNMAP])
def test_special_pte_in_pfnmap_or_mixedmap_has_no_page(kind: int) -> None:
    m, vma = raw_vma(kind | VM_READ | VM_SHARED | VM_MAYSHARE)
    page = m.alloc_page()  # even a pfn_valid pfn under a special pte is not a page
    for pfn in (page, m.nvram_base_pfn + 3):
        assert vm_normal_page(vma, START, pfn_pte(pfn, _PAGE_PRESENT | _PAGE_SPECIAL)) is None


def test_special_zero_pfn_in_normal_vma_has_no_page() -> None:
    m, vma = raw_vma(VM_READ | VM_MAYWRITE)
    assert vm_normal_page(vma, START, pfn_pte(ZERO_PFN, _PAGE_PRESENT | _PAGE_SPECIAL)) is None


def test_other_special_pte_in_normal_vma_is_a_bad_pte() -> None:
    m, vma = raw_vma(VM_READ | VM_MAYWRITE)
    page = m.alloc_page()
    with pytest.raises(MMBug, match="print_bad_pte"):
        vm_normal_page(vma, START, pfn_pte(page, _PAGE_PRESENT | _PAGE_SPECIAL))


@pytest.mark.parametrize("kind", [VM_MIXEDMAP, VM_PFNMAP, 0])
def test_normal_pte_with_pte_special_returns_its_page(kind: int) -> None:
    m, vma = raw_vma(kind | VM_READ | VM_MAYWRITE)
    page = m.alloc_page()
    assert vm_normal_page(vma, START, pfn_pte(page, _PAGE_PRESENT)) == page


def test_normal_pte_without_struct_page_is_a_bad_pte() -> None:
    m, vma = raw_vma(VM_MIXEDMAP | VM_READ)
    with pytest.raises(MMBug, match="print_bad_pte"):
        vm_normal_page(vma, START, pfn_pte(m.nvram_base_pfn + 1, _PAGE_PRESENT))


# -- vm_normal_page without pte_special (the 2008 rules) -------------------------------


def test_2008_mixedmap_returns_page_iff_pfn_valid() -> None:
    m, vma = raw_vma(VM_MIXEDMAP | VM_READ | VM_MAYWRITE, kernel=RC1)
    page = m.alloc_page()
    assert vm_normal_page(vma, START, pfn_pte(page, _PAGE_PRESENT)) == page
    assert vm_normal_page(vma, START, pfn_pte(ZERO_PFN, _PAGE_PRESENT)) == ZERO_PFN
    nv = m.nvram_base_pfn + 7
    assert not m.pfn_valid(nv)
    assert vm_normal_page(vma, START, pfn_pte(nv, _PAGE_PRESENT)) is None


def test_2008_pfnmap_linear_pfn_is_raw() -> None:
    m, _ = raw_vma(0, kernel=RC1)
    first = m.nvram_base_pfn + 100
    _, vma = raw_vma(VM_PFNMAP | VM_READ | VM_MAYWRITE, kernel=RC1, pgoff=first)
    addr = START + 3 * PAGE
    assert vm_normal_page(vma, addr, pfn_pte(first + 3, _PAGE_PRESENT)) is None
    # Linear even if the pfn has a struct page (/dev/mem-style mappings of RAM).
    _, vma0 = raw_vma(VM_PFNMAP | VM_READ | VM_MAYWRITE, kernel=RC1, pgoff=2)
    assert vm_normal_page(vma0, START + PAGE, pfn_pte(3, _PAGE_PRESENT)) is None


def test_2008_pfnmap_not_cowable_is_raw() -> None:
    m, vma = raw_vma(VM_PFNMAP | VM_READ | VM_SHARED | VM_MAYWRITE, kernel=RC1, pgoff=500)
    page = m.alloc_page()
    assert vm_normal_page(vma, START, pfn_pte(page, _PAGE_PRESENT)) is None


def test_2008_pfnmap_cowed_page_is_normal() -> None:
    m, vma = raw_vma(VM_PFNMAP | VM_READ | VM_MAYWRITE, kernel=RC1, pgoff=500)
    page = m.alloc_page()
    assert vm_normal_page(vma, START, pfn_pte(page, _PAGE_PRESENT)) == page


def test_2008_normal_vma_returns_page() -> None:
    m, vma = raw_vma(VM_READ | VM_MAYWRITE, kernel=RC1)
    page = m.alloc_page()
    assert vm_normal_page(vma, START, pfn_pte(page, _PAGE_PRESENT)) == page


# -- vm_insert_pfn ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags,valid,what",
    [
        (VM_READ | VM_SHARED, False, "neither VM_PFNMAP nor VM_MIXEDMAP"),
        (VM_PFNMAP | VM_MIXEDMAP | VM_READ | VM_SHARED, False, "both VM_PFNMAP and VM_MIXEDMAP"),
        (VM_PFNMAP | VM_READ | VM_MAYWRITE, False, "VM_PFNMAP on a COW mapping"),
        (VM_MIXEDMAP | VM_READ | VM_SHARED, True, "VM_MIXEDMAP given a pfn_valid pfn"),
    ],
)
@pytest.mark.parametrize("pte_special", [True, False])
def test_vm_insert_pfn_bug_ons(flags: int, valid: bool, what: str, pte_special: bool) -> None:
    m, vma = raw_vma(flags, pte_special=pte_special)
    pfn = m.alloc_page() if valid else m.nvram_base_pfn + 1
    with pytest.raises(MMBug, match=what) as exc:
        vm_insert_pfn(vma, START, pfn)
    assert exc.value.invariant.startswith("vm_insert_pfn")
    assert vma.vm_mm.pte_at(START) == 0


@pytest.mark.parametrize(
    "flags", [VM_PFNMAP | VM_READ | VM_SHARED | VM_MAYWRITE, VM_MIXEDMAP | VM_READ | VM_MAYWRITE]
)
def test_vm_insert_pfn_inserts_raw_pfn(flags: int) -> None:
    m, vma = raw_vma(flags)
    pfn = m.nvram_base_pfn + 9
    assert vm_insert_pfn(vma, START + PAGE, pfn) == 0
    pte = vma.vm_mm.pte_at(START + PAGE)
    assert pte & _PAGE_PRESENT and pte & _PAGE_SPECIAL and not pte & _PAGE_RW
    assert pte_pfn(pte) == pfn
    assert vm_insert_pfn(vma, START + PAGE, pfn) == -EBUSY
    assert vm_insert_pfn(vma, START + 16 * PAGE, pfn) == -EFAULT
    assert vm_insert_pfn(vma, START - PAGE, pfn) == -EFAULT


# -- vm_insert_mixed ----------------------------------------------------------------------


@pytest.mark.parametrize("pte_special", [True, False])
def test_vm_insert_mixed_bug_on_without_mixedmap(pte_special: bool) -> None:
    m, vma = raw_vma(VM_PFNMAP | VM_READ | VM_SHARED, pte_special=pte_special)
    with pytest.raises(MMBug, match="without VM_MIXEDMAP"):
        vm_insert_mixed(vma, START, m.nvram_base_pfn + 1)


@pytest.mark.parametrize("pte_special", [True, False])
def test_vm_insert_mixed_is_legal_on_cow_mapping(pte_special: bool) -> None:
    m, vma = raw_vma(VM_MIXEDMAP | VM_READ | VM_MAYWRITE, pte_special=pte_special)
    assert is_cow_mapping(vma.vm_flags)
    pfn = m.nvram_base_pfn + 4
    assert vm_insert_mixed(vma, START, pfn) == 0
    pte = vma.vm_mm.pte_at(START)
    assert pte_pfn(pte) == pfn
    assert bool(pte & _PAGE_SPECIAL) == pte_special
    assert vm_normal_page(vma, START, pte) is None
    assert vm_insert_mixed(vma, START, pfn) == -EBUSY
    assert vm_insert_mixed(vma, START + 16 * PAGE, pfn) == -EFAULT


def test_vm_insert_mixed_without_pte_special_refcounts_valid_pfn() -> None:
    m, vma = raw_vma(VM_MIXEDMAP | VM_READ | VM_MAYWRITE, pte_special=False)
    page = m.alloc_page()
    assert m.page_ref_count(page) == 1 and m.page_mapcount(page) == 0
    assert vm_insert_mixed(vma, START, page) == 0
    pte = vma.vm_mm.pte_at(START)
    assert not pte & _PAGE_SPECIAL
    assert m.page_ref_count(page) == 2 and m.page_mapcount(page) == 1
    assert vm_normal_page(vma, START, pte) == page


def test_vm_insert_mixed_with_pte_special_does_not_refcount_valid_pfn() -> None:
    m, vma = raw_vma(VM_MIXEDMAP | VM_READ | VM_MAYWRITE, pte_special=True)
    page = m.alloc_page()
    assert vm_insert_mixed(vma, START, page) == 0
    pte = vma.vm_mm.pte_at(START)
    assert pte & _PAGE_SPECIAL
    assert m.page_ref_count(page) == 1 and m.page_mapcount(page) == 0
    assert vm_normal_page(vma, START, pte) is None


# -- do_wp_page ----------------------------------------------------------------------------


def test_shared_special_page_goes_through_pfn_mkwrite_no_copy() -> None:
    calls = []

    def fault(vmf):
        vm_insert_mixed(vmf.vma, vmf.address, vmf.vma.vm_mm.machine.nvram_base_pfn + 5)
        return VM_FAULT_NOPAGE

    def pfn_mkwrite(vmf):
        calls.append(vmf.address)
        return 0

    ops = VMOperations(fault=fault, pfn_mkwrite=pfn_mkwrite)
    m, vma = raw_vma(VM_MIXEDMAP | SHARED_RW, ops=ops)
    free_before = len(m.free_list)
    assert handle_mm_fault(vma, START, 0) == VM_FAULT_NOPAGE
    assert handle_mm_fault(vma, START, FAULT_FLAG_WRITE) == 0
    assert calls == [START]
    pte = vma.vm_mm.pte_at(START)
    assert pte & _PAGE_RW and pte_pfn(pte) == m.nvram_base_pfn + 5  # made writable in place
    assert len(m.free_list) == free_before  # the core VM copied nothing


def test_shared_special_page_without_pfn_mkwrite_is_reused() -> None:
    def fault(vmf):
        vm_insert_mixed(vmf.vma, vmf.address, vmf.vma.vm_mm.machine.nvram_base_pfn + 5)
        return VM_FAULT_NOPAGE

    m, vma = raw_vma(VM_MIXEDMAP | SHARED_RW, ops=VMOperations(fault=fault))
    handle_mm_fault(vma, START, 0)
    assert handle_mm_fault(vma, START, FAULT_FLAG_WRITE) == 0
    pte = vma.vm_mm.pte_at(START)
    assert pte & _PAGE_RW and pte_pfn(pte) == m.nvram_base_pfn + 5


def test_fs_xip_store_is_cow_via_pfn_mkwrite(make_mm) -> None:
    mm, backing, ev = make_mm()
    data = pattern(4)
    backing.create(2, data)
    assert bytes(mm.read(2, PAGE, 10)) == data[PAGE : PAGE + 10]
    block = int(backing.bmap(2, 1, 1)[0])
    mm.write(2, PAGE + 3, b"abc")
    cows = ev.of(schema.COW)
    assert len(cows) == 1
    c = cows[0]
    assert c["via"] == "pfn_mkwrite" and c["from"] == "xip" and c["to"] == "pagecache"
    assert c["pfn_from"] == mm.machine.nvram_base_pfn + block
    frame = c["pfn_to"]
    assert mm.machine.pfn_valid(frame)
    assert mm.machine.flags[frame] & PG_DIRTY
    # NVRAM is untouched until writeback.
    assert bytes(backing.block_view(block)) == data[PAGE : 2 * PAGE]
    vma = mm.address_space(2).fs_vma
    pte = vma.vm_mm.pte_at(PAGE)
    assert pte_pfn(pte) == frame and pte & _PAGE_RW and not pte & _PAGE_SPECIAL
    assert c["refcount"] == 1 and c["mapcount"] == 0  # right after the copy, before the retry
    assert mm.machine.page_ref_count(frame) == 2 and mm.machine.page_mapcount(frame) == 1
    s = mm.stats()["faults"]
    assert s["cow"] == 1
    mm.write(2, PAGE + 6, b"d")
    assert mm.stats()["faults"]["write_reuse"] == 1
    assert len(ev.of(schema.COW)) == 1
    assert bytes(mm.read(2, PAGE, 8)) == data[PAGE : PAGE + 3] + b"abcd" + data[PAGE + 7 : PAGE + 8]


def test_private_special_page_is_copied_source_untouched(make_mm) -> None:
    mm, backing, ev = make_mm()
    data = pattern(2)
    backing.create(3, data)
    vma = mm.mmap(3, 0, 2, PRIVATE_RW)
    pfn = mm.access(vma, vma.vm_start, False)
    m = mm.machine
    assert not m.pfn_valid(pfn)
    new = mm.access(vma, vma.vm_start, True)
    assert m.pfn_valid(new) and new != ZERO_PFN
    assert m.flags[new] & PG_ANON and m.page_mapcount(new) == 1 and m.page_ref_count(new) == 1
    cow = ev.of(schema.COW)[-1]
    assert cow["via"] == "wp_page_copy" and cow["from"] == "xip" and cow["to"] == "anon"
    m.data[new, :4] = 0xEE
    assert bytes(backing.block_view(pfn - m.nvram_base_pfn)) == data[:PAGE]
    assert bytes(mm.read(3, 0, 4)) == data[:4]
    # The anon copy is never written back.
    mm.sync_all()
    assert not ev.of(schema.WRITEBACK)


def test_private_pagecache_page_is_copied_and_loses_the_mapping(make_mm) -> None:
    mm, backing, ev = make_mm()
    data = pattern(2)
    backing.create(3, data)
    assert mm.promote(3, 0)
    m = mm.machine
    frame = mm.address_space(3).pages[0]
    vma = mm.mmap(3, 0, 2, PRIVATE_RW)
    assert mm.access(vma, vma.vm_start, False) == frame
    assert m.page_mapcount(frame) == 1 and m.page_ref_count(frame) == 2
    new = mm.access(vma, vma.vm_start, True)
    assert new != frame and m.flags[new] & PG_ANON
    assert m.page_mapcount(frame) == 0 and m.page_ref_count(frame) == 1
    assert bytes(m.data[frame]) == data[:PAGE]
    cow = ev.of(schema.COW)[-1]
    assert cow["via"] == "wp_page_copy" and cow["from"] == "pagecache" and cow["pfn_from"] == frame


def test_private_zero_page_copy_is_zeroed(make_mm) -> None:
    mm, backing, ev = make_mm()
    backing.create(4, pattern(2), holes=[1])
    vma = mm.mmap(4, 0, 2, PRIVATE_RW)
    assert mm.access(vma, vma.vm_start + PAGE, False) == ZERO_PFN
    mm.machine.data[mm.machine.free_list[-1]] = 0x55  # garbage in the next frame
    new = mm.access(vma, vma.vm_start + PAGE, True)
    assert not mm.machine.data[new].any()
    assert ev.of(schema.COW)[-1]["from"] == "zero"


def test_exclusive_anon_page_is_reused(make_mm) -> None:
    mm, backing, ev = make_mm()
    backing.create(3, pattern(1))
    vma = mm.mmap(3, 0, 1, PRIVATE_RW)
    anon = mm.access(vma, vma.vm_start, True)
    ncow = len(ev.of(schema.COW))
    chunk, slot = vma.vm_mm.get_locked_pte(vma.vm_start)
    chunk.pte[slot] &= ~_PAGE_RW  # write-protected, as after a fork whose child exited
    assert mm.access(vma, vma.vm_start, True) == anon
    assert vma.vm_mm.pte_at(vma.vm_start) & _PAGE_RW
    assert len(ev.of(schema.COW)) == ncow


def test_shared_anon_page_is_copied(make_mm) -> None:
    mm, backing, ev = make_mm()
    backing.create(3, pattern(1))
    vma = mm.mmap(3, 0, 1, PRIVATE_RW)
    anon = mm.access(vma, vma.vm_start, True)
    mm.machine.get_page(anon)  # someone else holds it (e.g. the other side of a fork)
    chunk, slot = vma.vm_mm.get_locked_pte(vma.vm_start)
    chunk.pte[slot] &= ~_PAGE_RW
    new = mm.access(vma, vma.vm_start, True)
    assert new != anon
    assert mm.machine.page_ref_count(anon) == 1 and mm.machine.page_mapcount(anon) == 0
    assert ev.of(schema.COW)[-1]["from"] == "anon"


def test_shared_file_page_goes_through_page_mkwrite(make_mm) -> None:
    mm, backing, ev = make_mm()
    backing.create(3, pattern(1))
    mm.write(3, 0, b"x")
    frame = mm.address_space(3).pages[0]
    m = mm.machine
    assert mm.fsync(3) == 1
    vma = mm.address_space(3).fs_vma
    pte = vma.vm_mm.pte_at(0)
    assert pte_pfn(pte) == frame and not pte & _PAGE_RW  # page_mkclean write-protected it
    assert not m.flags[frame] & PG_DIRTY
    reuse = mm.stats()["faults"]["write_reuse"]
    mm.write(3, 1, b"y")
    assert vma.vm_mm.pte_at(0) & _PAGE_RW
    assert m.flags[frame] & PG_DIRTY
    assert mm.address_space(3).pages[0] == frame  # no copy
    assert mm.stats()["faults"]["write_reuse"] == reuse + 1
    assert len(ev.of(schema.COW)) == 1  # only the first store's pfn_mkwrite


def test_hole_store_allocates_dirty_zero_frame_and_writeback_allocates_block(make_mm) -> None:
    mm, backing, ev = make_mm()
    backing.create(6, pattern(2), holes=[1])
    assert bytes(mm.read(6, PAGE, 16)) == bytes(16)
    assert mm.stats()["faults"]["hole"] == 1
    mm.write(6, PAGE + 8, b"zz")
    frame = mm.address_space(6).pages[1]
    assert mm.machine.flags[frame] & PG_DIRTY
    assert int(backing.bmap(6, 1, 1)[0]) == 0
    assert mm.fsync(6) == 1
    block = int(backing.bmap(6, 1, 1)[0])
    assert block > 0
    assert bytes(backing.block_view(block))[:16] == bytes(8) + b"zz" + bytes(6)
    wb = ev.of(schema.WRITEBACK)[-1]
    assert wb["pfn_to"] == mm.machine.nvram_base_pfn + block and wb["reason"] == "fsync"


@pytest.mark.parametrize("pte_special,kernel", [(True, MODERN), (False, MODERN), (None, K2626)])
def test_hole_and_xip_through_fs_vma_both_rule_sets(make_mm, pte_special, kernel) -> None:
    mm, backing, ev = make_mm(pte_special=pte_special, kernel=kernel)
    data = pattern(3)
    backing.create(9, data, holes=[2])
    expect = bytearray(data)
    expect[2 * PAGE :] = bytes(PAGE)
    assert bytes(mm.read(9, 0, 3 * PAGE)) == expect
    m = mm.machine
    if kernel != MODERN:
        # 2.6.26 refcounts the zero page: the fs vma's pte holds a reference.
        assert m.page_mapcount(ZERO_PFN) == 1 and m.page_ref_count(ZERO_PFN) == 2
    else:
        # Today it is is_zero_pfn, never a normal page, with or without pte_special.
        assert m.page_mapcount(ZERO_PFN) == 0 and m.page_ref_count(ZERO_PFN) == 1
    mm.write(9, 2 * PAGE, b"q")
    mm.write(9, 0, b"r")
    expect[2 * PAGE] = ord("q")
    expect[0] = ord("r")
    assert bytes(mm.read(9, 0, 3 * PAGE)) == expect
    assert m.page_mapcount(ZERO_PFN) == 0 and m.page_ref_count(ZERO_PFN) == 1
    mm.close()
    assert backing.read_file(9, 3) == bytes(expect)


def test_put_page_underflow_is_a_bug() -> None:
    m = Machine(2)
    page = m.alloc_page()
    m.put_page(page)
    assert page in m.free_list
    with pytest.raises(MMBug, match="underflow"):
        m.put_page(page)


def test_freeing_a_mapped_page_is_a_bug() -> None:
    m = Machine(2)
    page = m.alloc_page()
    m._mapcount[page] = 0
    with pytest.raises(MMBug, match="freeing a mapped page"):
        m.put_page(page)


def test_zero_page_is_never_freed() -> None:
    m = Machine(2)
    with pytest.raises(MMBug, match="reserved"):
        m.put_page(ZERO_PFN)


def test_store_to_readonly_vma_is_sigsegv(make_mm) -> None:
    mm, backing, _ = make_mm()
    backing.create(3, pattern(1))
    vma = mm.mmap(3, 0, 1, VM_READ | VM_MAYREAD | VM_SHARED | VM_MAYSHARE)
    from nvramfs.mm.flags import VM_FAULT_SIGSEGV

    assert handle_mm_fault(vma, vma.vm_start, FAULT_FLAG_WRITE) == VM_FAULT_SIGSEGV
    assert handle_mm_fault(vma, vma.vm_start, 0) == VM_FAULT_NOPAGE


def test_bmap_is_cached_in_the_ptes(make_mm) -> None:
    mm, backing, _ = make_mm()
    backing.create(3, pattern(8))
    mm.read(3, 0, 8 * PAGE)
    calls = backing.bmap_calls
    for _ in range(3):
        mm.read(3, 0, 8 * PAGE)
        mm.read(3, 5 * PAGE, 100)
    assert backing.bmap_calls == calls
    assert mm.promote(3, 5)
    mm.demote_all()
    mm.read(3, 0, 8 * PAGE)
    assert backing.bmap_calls == calls
    mm.truncate(3, 2 * PAGE)
    backing.truncate(3, 2)
    mm.truncate(3, 4 * PAGE)  # grown again: pages 2-3 are holes, their old hints gone
    assert bytes(mm.read(3, 0, 4 * PAGE))[2 * PAGE :] == bytes(2 * PAGE)
    assert backing.bmap_calls > calls


def test_read_returns_one_zero_copy_view_for_contiguous_xip(make_mm) -> None:
    mm, backing, _ = make_mm()
    data = pattern(32)
    backing.create(3, data)
    r = mm.read(3, 100, 32 * PAGE - 200)
    assert isinstance(r, memoryview) and r.readonly
    assert r.obj is backing.block_view(1).obj
    assert bytes(r) == data[100 : 32 * PAGE - 100]
    mm.write(3, 5 * PAGE, b"w")
    r2 = mm.read(3, 0, 32 * PAGE)
    assert isinstance(r2, bytes) and r2[5 * PAGE] == ord("w")
    r3 = mm.read(3, 5 * PAGE, PAGE)
    assert isinstance(r3, memoryview) and r3[0] == ord("w")
    assert np.shares_memory(np.frombuffer(r3, dtype=np.uint8), mm.machine.data)


def test_unmap_mapping_range_rounds_like_linux_and_keeps_cows(make_mm) -> None:
    from nvramfs.mm import unmap_mapping_range

    mm, backing, _ = make_mm()
    backing.create(3, pattern(6))
    mm.read(3, 0, 6 * PAGE)
    vma = mm.mmap(3, 0, 6, PRIVATE_RW)
    for i in range(6):
        mm.access(vma, vma.vm_start + i * PAGE, i == 2)  # page 2 COWed into an anon page
    fs = mm.address_space(3).fs_vma
    # hba = holebegin >> PAGE_SHIFT = 1, hlen = (holelen + PAGE_SIZE - 1) >> PAGE_SHIFT = 2:
    # pages 1 and 2, not 1..3 (the end is not rounded up on its own).
    unmap_mapping_range(mm.address_space(3), PAGE + 1, 2 * PAGE, False)
    present = [bool(fs.vm_mm.pte_at(i * PAGE) & _PAGE_PRESENT) for i in range(6)]
    assert present == [True, False, False, True, True, True]
    private = [bool(vma.vm_mm.pte_at(vma.vm_start + i * PAGE) & _PAGE_PRESENT) for i in range(6)]
    assert private == [True, False, True, True, True, True]  # the COWed page stays
    unmap_mapping_range(mm.address_space(3), 4 * PAGE, 0, False)  # holelen 0: to the end
    present = [bool(fs.vm_mm.pte_at(i * PAGE) & _PAGE_PRESENT) for i in range(6)]
    assert present == [True, False, False, True, False, False]
    unmap_mapping_range(mm.address_space(3), 0, 0, True)  # everything, COWs too
    assert not any(vma.vm_mm.pte_at(vma.vm_start + i * PAGE) & _PAGE_PRESENT for i in range(6))
    assert mm.machine.frames_used == 0


def test_shared_vma_calls_pfn_mkwrite_then_page_mkwrite(make_mm) -> None:
    from nvramfs.mm import xip_file_fault, xip_page_mkwrite, xip_pfn_mkwrite

    mm, backing, ev = make_mm()
    backing.create(3, pattern(2))
    calls: list[str] = []

    def spy(name, fn):
        def wrapped(vmf):
            calls.append(name)
            return fn(vmf)

        return wrapped

    vma = mm.mmap(3, 0, 2, SHARED_RW)
    vma.vm_ops = VMOperations(
        fault=spy("fault", xip_file_fault),
        page_mkwrite=spy("page_mkwrite", xip_page_mkwrite),
        pfn_mkwrite=spy("pfn_mkwrite", xip_pfn_mkwrite),
    )
    m = mm.machine
    assert not m.pfn_valid(mm.access(vma, vma.vm_start, False))
    assert calls == ["fault"]
    frame = mm.access(vma, vma.vm_start, True)
    # read-only raw pfn -> wp_pfn_shared -> ->pfn_mkwrite (copy, NOPAGE) -> ->fault finds
    # the new page-cache page -> do_shared_fault -> ->page_mkwrite
    assert calls == ["fault", "pfn_mkwrite", "fault", "page_mkwrite"]
    assert m.pfn_valid(frame) and m.flags[frame] & PG_DIRTY
    assert ev.of(schema.COW)[-1]["via"] == "pfn_mkwrite"
    assert mm.fsync(3) == 1
    calls.clear()
    assert mm.access(vma, vma.vm_start, True) == frame
    assert calls == ["page_mkwrite"]  # wp_page_shared, no copy
    assert m.flags[frame] & PG_DIRTY
