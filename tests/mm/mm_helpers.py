"""Helpers shared by the mm tests."""

from __future__ import annotations

import numpy as np

PAGE = 4096


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def pattern(npages: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, npages * PAGE, dtype=np.uint8).tobytes()


def check_invariants(mm) -> None:
    """The machine-wide invariants the issue names, plus page-cache consistency."""
    from nvramfs.mm import ZERO_PFN, vm_normal_page
    from nvramfs.mm.flags import _PAGE_PRESENT, _PAGE_RW, _PAGE_SPECIAL
    from nvramfs.mm.machine import PG_ANON, PG_DIRTY, PG_LOCKED, PG_WRITEBACK

    m = mm.machine
    n = m.nr_frames
    ref = m._refcount
    # No refcount below zero, no _mapcount below -1.
    assert (ref >= 0).all(), "refcount < 0"
    assert (m._mapcount >= -1).all(), "_mapcount < -1"
    # A frame is free exactly when unreferenced.
    free = set(m.free_list)
    assert len(free) == len(m.free_list), "frame twice on the free list"
    unref = {p for p in range(1, n) if ref[p] == 0}
    assert free == unref, f"free list {sorted(free)} != unreferenced {sorted(unref)}"
    # The DRAM budget holds.
    assert m.frames_used <= m.dram_pages
    assert m.frames_used == sum(1 for p in range(1, n) if ref[p] > 0)
    # NR_FILE_DIRTY, kept as a running count, is the count of dirty page-cache frames.
    assert m.nr_file_dirty == m.count_file_dirty() == mm.nr_dirty(), (
        f"NR_FILE_DIRTY {m.nr_file_dirty} != {m.count_file_dirty()} dirty frames"
    )
    # Nothing locked or under writeback at rest.
    assert not (m.flags & (PG_LOCKED | PG_WRITEBACK)).any(), "page left locked"
    # Walk every pte of every vma of every file.
    maps = np.zeros(n, dtype=np.int64)
    mms = {}
    for mapping in mm._spaces.values():
        for vma in mapping.i_mmap:
            mms[id(vma.vm_mm)] = vma.vm_mm
        for idx, page in mapping.pages.items():
            assert m.mapping[page] == mapping.host and m.index[page] == idx
            assert not m.flags[page] & PG_ANON
    cached = {}
    for mapping in mm._spaces.values():
        for idx, page in mapping.pages.items():
            cached[(mapping.host, idx)] = page
    for vmm in mms.values():
        for chunk in vmm.pgd.values():
            for slot in np.flatnonzero(chunk.pte_np & _PAGE_PRESENT).tolist():
                pte = int(chunk.pte[slot])
                addr = (chunk.first_vpn + slot) << 12
                vma = vmm.find_vma(addr)
                assert vma is not None, "present pte outside every vma"
                pfn = pte >> 12
                page = vm_normal_page(vma, addr, pte)
                if pfn == ZERO_PFN and vma.vm_file is not None:
                    key = (vma.vm_file.host, vma.linear_page_index(addr))
                    assert key not in cached, "zero page mapped over a cached page"
                if pte & _PAGE_SPECIAL:
                    assert pfn >= m.nvram_base_pfn or pfn == ZERO_PFN, "special pte not at NVRAM"
                if page is None:
                    assert pfn >= m.nvram_base_pfn or pfn == ZERO_PFN, "raw pte at a frame"
                    index = vma.linear_page_index(addr)
                    if pfn != ZERO_PFN:
                        assert (vma.vm_file.host, index) not in cached, "XIP pfn over a cached page"
                    if m.kernel != "2.6.26":
                        # 2.6.26 makes a raw pfn of a shared writable vma writable in place.
                        assert not pte & _PAGE_RW or not vma.fs_owned, "writable XIP pte"
                else:
                    assert m.pfn_valid(page) and ref[page] > 0, "normal pte at a free frame"
                    maps[page] += 1
                    # (an anonymous page in a shared vma: 2.6.26-rc1's COW of a raw pfn)
                    anon = m.flags[page] & PG_ANON
                    if vma.shared and pte & _PAGE_RW and page != ZERO_PFN and not anon:
                        assert m.flags[page] & PG_DIRTY, "writable shared pte, clean page"
    # Every normal pte's frame counts it in its mapcount; refcount = ptes + page cache.
    for p in range(n):
        assert m._mapcount[p] + 1 == maps[p], f"mapcount of {p}: {m.dump_page(p)} vs {maps[p]} ptes"
        in_cache = 1 if (m.mapping[p] != 0 and not m.flags[p] & PG_ANON) else 0
        base = 1 if p == ZERO_PFN else 0
        if p == ZERO_PFN and not m.zero_page_refcounted:
            assert ref[p] == 1
        else:
            assert ref[p] == maps[p] + in_cache + base, f"refcount of {m.dump_page(p)}"
