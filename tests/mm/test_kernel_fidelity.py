"""Kernel fidelity, round two: end of file, truncate, reclaim, unmap rounding, the three
kernels, struct page, and the smaller rules. Each test is named after the kernel function
whose behaviour it checks."""

from __future__ import annotations

import pytest
from mm_helpers import PAGE, check_invariants, pattern

from nvramfs.events import schema
from nvramfs.mm import VMA, Machine, MMStruct, VMOperations, vm_insert_mixed, vm_insert_pfn
from nvramfs.mm import vm_normal_page as vm_normal_page_fn
from nvramfs.mm.bug import VMFaultSignal
from nvramfs.mm.filemap import clear_page_dirty_for_io, xip_map_pages
from nvramfs.mm.flags import (
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    FAULT_FLAG_MKWRITE,
    FAULT_FLAG_WRITE,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_MIXEDMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
    pfn_pte,
    pte_pfn,
)
from nvramfs.mm.machine import PG_ANON, PG_DIRTY, PG_LOCKED, ZERO_PFN
from nvramfs.mm.memory import VMFault, do_page_mkwrite

SHARED_RW = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_SHARED | VM_MAYSHARE
PRIVATE_RW = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE
START = 0x4000_0000


def raw_vma(flags: int, ops=None, **machine):
    m = Machine(8, **machine)
    mm = MMStruct(m, "proc:test")
    vma = VMA(vm_mm=mm, vm_start=START, vm_end=START + 16 * PAGE, vm_pgoff=0, vm_flags=flags)
    vma.vm_ops = ops
    mm.vmas.append(vma)
    return m, vma


# -- 1. end of file --------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["modern", "2.6.26", "2.6.26-rc1"])
@pytest.mark.parametrize("flags", [SHARED_RW, PRIVATE_RW])
def test_filemap_fault_is_sigbus_at_max_idx(make_mm, kernel: str, flags: int) -> None:
    mm, backing, _ = make_mm(kernel=kernel)
    data = pattern(3)[: 2 * PAGE + 100]
    backing.create(2, data)  # i_size 2 pages + 100 bytes: max_idx 3
    vma = mm.mmap(2, 0, 5, flags)
    m = mm.machine
    # The last page, bytes past EOF included, is accessible.
    pfn = mm.access(vma, vma.vm_start + 2 * PAGE, False)
    page = (
        bytes(m.data[pfn])
        if m.pfn_valid(pfn)
        else bytes(backing.block_view(pfn - m.nvram_base_pfn))
    )
    assert page == data[2 * PAGE :] + bytes(PAGE - 100)
    for write in (False, True):
        with pytest.raises(VMFaultSignal) as exc:
            mm.access(vma, vma.vm_start + 3 * PAGE, write)
        assert exc.value.signal == "SIGBUS" and "process vma" in str(exc.value)
    assert not vma.vm_mm.pte_at(vma.vm_start + 3 * PAGE) & _PAGE_PRESENT
    assert mm.machine.frames_used <= 1
    check_invariants(mm)


def test_filemap_fault_write_extends_i_size_first(make_mm) -> None:
    # write(2) extends the file before its stores: an append never faults; the pages
    # it jumps over are holes inside the file now.
    mm, backing, _ = make_mm()
    backing.create(2, pattern(1))
    mm.write(2, 4 * PAGE + 5, b"tail")
    assert mm.i_size(2) == 4 * PAGE + 9
    vma = mm.mmap(2, 0, 6, PRIVATE_RW)
    assert mm.access(vma, vma.vm_start + 3 * PAGE, False) == ZERO_PFN
    with pytest.raises(VMFaultSignal):
        mm.access(vma, vma.vm_start + 5 * PAGE, False)
    mm.set_size(2, 6 * PAGE)
    assert mm.access(vma, vma.vm_start + 5 * PAGE, False) == ZERO_PFN


def test_filemap_map_pages_stops_at_max_idx(make_mm) -> None:
    mm, backing, _ = make_mm()
    backing.create(2, pattern(8))
    mm.truncate(2, 3 * PAGE)  # blocks 3..7 still allocated until the image frees them
    fs = mm.address_space(2).fs_vma
    mm._prefill_bmap(fs, 0, 8)
    assert xip_map_pages(fs, 0, 8).tolist() == [0, 1, 2]
    with pytest.raises(VMFaultSignal):
        mm.read(2, 2 * PAGE, 2 * PAGE)  # an unclamped read past EOF
    assert mm.stats()["residency"]["xip_mapped"] == 3


# -- 2. truncate zeroes the tail in place ------------------------------------------------


def test_truncate_inode_partial_folio_zeroes_the_frame_in_place(make_mm) -> None:
    mm, backing, ev = make_mm()
    data = pattern(3)
    backing.create(2, data)
    mm.write(2, PAGE + 100, b"dirty")  # page 1: COW into a dirty frame
    frame = mm.address_space(2).pages[1]
    before = mm.stats()
    ncow = len(ev.of(schema.COW))
    mm.truncate(2, PAGE + 10)
    after = mm.stats()
    assert len(ev.of(schema.COW)) == ncow
    assert after["accesses"] == before["accesses"] and after["faults"] == before["faults"]
    assert mm.address_space(2).pages[1] == frame and mm.machine.flags[frame] & PG_DIRTY
    assert bytes(mm.machine.data[frame]) == data[PAGE : PAGE + 10] + bytes(PAGE - 10)
    z = ev.of(schema.ZERO_EV)[-1]
    assert z == {
        **z,
        "ino": 2,
        "index": 1,
        "home": "pagecache",
        "pfn": frame,
        "offset": 10,
        "length": PAGE - 10,
        "reason": "truncate",
    }
    assert after["zeroed"] == {"truncate": 1}
    backing.set_size(2, PAGE + 10)
    mm.close()
    assert backing.read_file(2, 2) == data[: PAGE + 10] + bytes(PAGE - 10)


def test_dax_truncate_page_leaves_an_xip_tail_to_the_image(make_mm) -> None:
    mm, backing, ev = make_mm()
    data = pattern(3)
    backing.create(2, data)
    mm.read(2, 0, 3 * PAGE)
    mm.truncate(2, PAGE + 10)
    backing.set_size(2, PAGE + 10)  # the image zeroes the block's tail in its transaction
    assert mm.machine.frames_used == 0 and not ev.of(schema.COW)
    assert mm.stats()["accesses"]["write"] == 0
    z = ev.of(schema.ZERO_EV)[-1]
    block = int(backing.bmap(2, 1, 1)[0])
    assert z["home"] == "xip" and z["pfn"] == mm.machine.nvram_base_pfn + block
    assert z["offset"] == 10 and z["reason"] == "truncate"
    assert bytes(mm.read(2, PAGE, 10)) == data[PAGE : PAGE + 10]
    mm.truncate(2, 2 * PAGE)
    assert bytes(mm.read(2, PAGE, PAGE)) == data[PAGE : PAGE + 10] + bytes(PAGE - 10)


# -- 3. drop events ----------------------------------------------------------------------


def test_truncate_inode_pages_logs_a_drop(make_mm) -> None:
    mm, backing, ev = make_mm()
    backing.create(2, pattern(4))
    mm.read(2, 0, 4 * PAGE)  # pages 0..3 mapped XIP
    mm.write(2, 3 * PAGE, b"d")  # page 3: dirty frame
    assert mm.promote(2, 2)  # page 2: clean frame
    vma = mm.mmap(2, 0, 4, PRIVATE_RW)
    mm.access(vma, vma.vm_start + PAGE, False)  # page 1 XIP in a process vma too
    f2, f3 = mm.address_space(2).pages[2], mm.address_space(2).pages[3]
    mm.truncate(2, PAGE)
    d = ev.of(schema.DROP)[-1]
    assert d == {
        **d,
        "ino": 2,
        "reason": "truncate",
        "first": 1,
        "pages": [2, 3],
        "pfns": [f2, f3],
        "dirty": 1,
        "xip_unmapped": 2,  # page 1 in the fs vma and in the process vma
    }
    assert mm.stats()["drops"] == {"truncate": 2}
    mm.write(2, 0, b"o")
    mm.truncate(2, 0, reason=schema.REASON_O_TRUNC)
    d = ev.of(schema.DROP)[-1]
    assert d["reason"] == "o_trunc" and d["pages"] == [0] and d["dirty"] == 1
    backing.set_size(2, 0)
    mm.write(2, 0, b"e" * (2 * PAGE))
    mm.evict_inode(2)
    d = ev.of(schema.DROP)[-1]
    assert d["reason"] == "evict" and d["pages"] == [0, 1] and d["dirty"] == 2
    assert mm.stats()["drops"] == {"truncate": 2, "o_trunc": 1, "evict": 2}
    assert not ev.of(schema.WRITEBACK)
    check_invariants(mm)


# -- 4. reclaim skips pages held elsewhere ----------------------------------------------


def test___remove_mapping_skips_the_page_do_wp_page_holds(make_mm) -> None:
    # A budget of one frame: the private store's wp_page_copy needs a frame; the only
    # candidate is the page do_wp_page holds a reference on. Linux's folio_ref_freeze
    # refuses it: the store fails with ENOMEM and nothing was demoted.
    mm, backing, ev = make_mm(dram_pages=1)
    backing.create(2, pattern(2))
    assert mm.promote(2, 0)
    frame = mm.address_space(2).pages[0]
    vma = mm.mmap(2, 0, 2, PRIVATE_RW)
    assert mm.access(vma, vma.vm_start, False) == frame
    with pytest.raises(OSError) as exc:
        mm.access(vma, vma.vm_start, True)
    assert exc.value.errno == 12
    assert mm.address_space(2).pages.get(0) == frame
    assert not [e for e in ev.of(schema.MIGRATE) if e["to"] == "xip"]
    assert mm.stats()["migrations"]["demote"] == {}
    check_invariants(mm)


# -- 6. the three kernels ------------------------------------------------------------------


def test_do_wp_page_2626_rc1_copies_a_raw_pfn_even_in_a_shared_mapping(make_mm) -> None:
    mm, backing, ev = make_mm(kernel="2.6.26-rc1")
    data = pattern(2)
    backing.create(2, data)
    vma = mm.mmap(2, 0, 2, SHARED_RW)
    m = mm.machine
    raw = mm.access(vma, vma.vm_start, False)
    assert raw >= m.nvram_base_pfn
    new = mm.access(vma, vma.vm_start, True)
    assert m.pfn_valid(new) and m.flags[new] & PG_ANON
    c = ev.of(schema.COW)[-1]
    assert c["via"] == "wp_page_copy" and c["from"] == "xip" and c["to"] == "anon"
    m.data[new, 0] = 0xAA
    assert mm.fsync(2) == 0  # the store never reaches the file
    assert bytes(backing.block_view(raw - m.nvram_base_pfn)) == data[:PAGE]
    check_invariants(mm)


def test_do_wp_page_2626_makes_a_raw_pfn_writable_in_place(make_mm) -> None:
    calls = []
    mm, backing, ev = make_mm(kernel="2.6.26")
    backing.create(2, pattern(2))
    shared = mm.mmap(2, 0, 2, SHARED_RW)
    shared.vm_ops = VMOperations(
        fault=shared.vm_ops.fault,
        page_mkwrite=shared.vm_ops.page_mkwrite,
        pfn_mkwrite=lambda vmf: calls.append(vmf) or 0,
    )
    m = mm.machine
    raw = mm.access(shared, shared.vm_start, False)
    assert mm.access(shared, shared.vm_start, True) == raw  # no copy
    assert shared.vm_mm.pte_at(shared.vm_start) & _PAGE_RW
    assert calls == [] and m.frames_used == 0 and not ev.of(schema.COW)  # no ->pfn_mkwrite
    private = mm.mmap(2, 0, 2, PRIVATE_RW)
    mm.access(private, private.vm_start, False)
    assert m.flags[mm.access(private, private.vm_start, True)] & PG_ANON  # private: COW
    check_invariants(mm)


@pytest.mark.parametrize("relocate", [False, True])
def test___xip_file_write_2626_stores_into_nvram(make_mm, relocate: bool) -> None:
    mm, backing, ev = make_mm(kernel="2.6.26", relocate=relocate)
    data = bytearray(pattern(3))
    backing.create(2, bytes(data))
    mm.read(2, 0, 3 * PAGE)
    mm.write(2, PAGE + 5, b"nvram")
    data[PAGE + 5 : PAGE + 10] = b"nvram"
    assert mm.machine.frames_used == 0 and not ev.of(schema.COW)
    assert backing.read_file(2, 3) == bytes(data)  # durable at once
    x = ev.of(schema.XIP_WRITE)[-1]
    assert x["index"] == 1 and x["offset"] == 5 and x["length"] == 5
    assert x["via"] == "__xip_file_write" and x["reason"] == "write"
    assert x["pfn_to"] == mm.machine.nvram_base_pfn + int(backing.bmap(2, 1, 1)[0])
    mm.write(2, PAGE + 6, b"A")
    data[PAGE + 6] = ord("A")
    assert bytes(mm.read(2, 0, 3 * PAGE)) == bytes(data)
    assert mm.stats()["xip_writes"] == 2
    assert mm.stats()["faults"]["cow"] == 0
    check_invariants(mm)


def test_machine_kernel_rule_sets_are_whole() -> None:
    assert Machine(4).kernel == "modern" and Machine(4).pte_special
    old = Machine(4, kernel="2.6.26")
    assert not old.pte_special and not old.has_pfn_mkwrite and old.zero_page_refcounted
    with pytest.raises(ValueError, match="pte_special"):
        Machine(4, pte_special=True, kernel="2.6.26-rc1")
    with pytest.raises(ValueError, match="kernel"):
        Machine(4, kernel="2.6.27")


# -- 7. struct page ------------------------------------------------------------------------


def test_struct_page_figures_count_the_whole_device(make_mm) -> None:
    mm, backing, ev = make_mm(nr_blocks=1000, dram_pages=8)
    backing.create(2, pattern(4))
    mm.write(2, 0, b"x" * (3 * PAGE))
    mm.read(2, 3 * PAGE, PAGE)
    s = mm.stats()["struct_page"]
    # 1000 blocks: two 2 MiB subsections of memmap, 64 bytes per page.
    assert s["memmap_device_bytes"] == 64 * 1024
    assert s["mixedmap_bytes"] == 64 * 3
    assert s["saved_bytes"] == 64 * 1024 - 64 * 3
    mm.tick()
    assert ev.of(schema.COUNTERS)[-1]["struct_page"] == s


# -- 8. the smaller rules --------------------------------------------------------------------


def test_insert_pfn_honours_vm_page_prot() -> None:
    # Writable in a shared writable vma that wants no write notification ...
    m, vma = raw_vma(VM_MIXEDMAP | SHARED_RW)
    assert vm_insert_pfn(vma, START, m.nvram_base_pfn + 1) == 0
    assert vma.vm_mm.pte_at(START) & _PAGE_RW
    # ... read-only when it has ->pfn_mkwrite / ->page_mkwrite, and in a private vma.
    m, vma = raw_vma(VM_MIXEDMAP | SHARED_RW, ops=VMOperations(pfn_mkwrite=lambda vmf: 0))
    vm_insert_pfn(vma, START, m.nvram_base_pfn + 1)
    assert not vma.vm_mm.pte_at(START) & _PAGE_RW
    m, vma = raw_vma(VM_MIXEDMAP | PRIVATE_RW)
    vm_insert_pfn(vma, START, m.nvram_base_pfn + 1)
    assert not vma.vm_mm.pte_at(START) & _PAGE_RW


def test_insert_page_honours_vm_page_prot() -> None:
    m, vma = raw_vma(VM_MIXEDMAP | SHARED_RW, pte_special=False)
    page = m.alloc_page()
    assert vm_insert_mixed(vma, START, page) == 0
    pte = vma.vm_mm.pte_at(START)
    assert pte_pfn(pte) == page and pte & _PAGE_RW and m.page_ref_count(page) == 2
    m, vma = raw_vma(VM_MIXEDMAP | SHARED_RW, pte_special=False, ops=VMOperations(page_mkwrite=id))
    page = m.alloc_page()
    vm_insert_mixed(vma, START, page)
    assert not vma.vm_mm.pte_at(START) & _PAGE_RW


def test_clear_page_dirty_for_io_folds_page_mkclean_into_the_page(make_mm) -> None:
    mm, backing, _ = make_mm()
    backing.create(2, pattern(1))
    mm.write(2, 0, b"w")
    mapping = mm.address_space(2)
    frame = mapping.pages[0]
    m = mm.machine
    m.clear_flag(frame, PG_DIRTY)  # a store only the pte knows of
    assert clear_page_dirty_for_io(mapping, frame) is True
    pte = mapping.fs_vma.vm_mm.pte_at(0)
    assert not pte & (_PAGE_RW | _PAGE_DIRTY) and not m.flags[frame] & PG_DIRTY


def test_do_page_mkwrite_restores_flags_and_returns_0_for_a_truncated_page() -> None:
    seen = []

    def page_mkwrite(vmf):
        seen.append(vmf.flags)
        vmf.vma.vm_mm.machine.mapping[vmf.page] = 0  # truncated meanwhile
        return 0

    m, vma = raw_vma(VM_MIXEDMAP | SHARED_RW, ops=VMOperations(page_mkwrite=page_mkwrite))
    page = m.alloc_page()
    m.mapping[page] = 2
    vmf = VMFault(vma, START, FAULT_FLAG_WRITE)
    vmf.page = page
    assert do_page_mkwrite(vmf) == 0
    assert seen == [FAULT_FLAG_WRITE | FAULT_FLAG_MKWRITE]
    assert vmf.flags == FAULT_FLAG_WRITE
    assert not m.flags[page] & PG_LOCKED


@pytest.mark.parametrize("kernel,normal", [("modern", None), ("2.6.26", ZERO_PFN)])
def test_vm_normal_page_is_zero_pfn_in_mixedmap(kernel: str, normal) -> None:
    m, vma = raw_vma(VM_MIXEDMAP | VM_READ | VM_MAYWRITE, pte_special=False, kernel=kernel)
    assert vm_normal_page_fn(vma, START, pfn_pte(ZERO_PFN, _PAGE_PRESENT)) == normal
    assert vm_insert_mixed(vma, START, ZERO_PFN) == 0
    refs = 1 if normal is None else 2
    assert m.page_ref_count(ZERO_PFN) == refs


def test_handle_mm_fault_error_names_the_process_vma(make_mm) -> None:
    mm, backing, _ = make_mm()
    backing.create(3, pattern(1))
    vma = mm.mmap(3, 0, 1, VM_READ | VM_MAYREAD | VM_SHARED | VM_MAYSHARE)
    with pytest.raises(VMFaultSignal) as exc:
        mm.access(vma, vma.vm_start, True)
    msg = str(exc.value)
    assert exc.value.signal == "SIGSEGV" and "process vma proc:3" in msg
    assert "filesystem's own" not in msg
