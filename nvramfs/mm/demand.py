"""Demand paging for the policies that decide at every page access (lru, opt, opt-nox).

The tick policies see accesses once a second, through the pte young bits
and the interval's counters; these see each one, in order. With such a
policy MemoryManager.read and .write come here, one page at a time:

- a page in a frame is a hit (`pagecache_hit` for a load, `write_reuse` for a
  store); the policy is told (`accessed`: mark_page_accessed for lru, the
  page's next use for opt);
- a miss the policy admits (every miss for `lru` and `opt-nox`, a load whose
  next use is sooner than the furthest one in frames for `opt`) is read into
  a frame first (page_cache_read: the NVRAM block, or zeroes for a hole),
  counted `readpage` (`hole` for a hole); a store miss is always admitted:
  readpage for the policies without XIP, the COW of the XIP page for `opt`;
- any other miss is served by the XIP fault path (`xip_read`, `hole`).

When the budget is full, a frame is freed by `reclaim_one`: exactly one,
the policy's victim, so that `lru` is exactly LRU (the batched direct
reclaim of the tick policies would evict several at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import schema
from .bug import BUG_ON
from .filemap import delete_from_page_cache, page_cache_read
from .flags import (
    _PAGE_ACCESSED,
    _PAGE_BMAP,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_PFN_SHIFT,
)
from .machine import PG_DIRTY
from .memory import log_page_event, unmap_mapping_pages
from .stats import FK_HOLE, FK_READPAGE, Stats

if TYPE_CHECKING:
    from .filemap import AddressSpace
    from .manager import MemoryManager
    from .vma import VMA


def demand_access(
    mm: MemoryManager, vma: VMA, mapping: AddressSpace, index: int, write: bool
) -> int:
    """One load or store of file page `index` under a per-access policy; returns the pfn
    that served it (a frame, an NVRAM pfn or the zero page)."""
    policy = mm.policy
    st = mm.stats_
    addr = index << PAGE_SHIFT
    chunk, slot = vma.vm_mm.get_locked_pte(addr)
    pte = chunk.pte[slot]
    page = mapping.pages.get(index)
    if page is not None and pte & _PAGE_PRESENT and (not write or pte & _PAGE_RW):
        chunk.pte[slot] = pte | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
        if write:
            st.write_reuse += 1
        else:
            st.pagecache_hit += 1
        pfn = pte >> PTE_PFN_SHIFT
    elif page is None and (
        policy.readpage or (not write and policy.admit_read(mm, mapping.host, index))
    ):
        new = page_cache_read(mapping, index)
        if new is None:
            raise OSError(12, "mm: DRAM budget exhausted, nothing reclaimable")
        kinds = FK_READPAGE if mm.machine.page_block[new] else FK_HOLE
        pfn = mm._fault(vma, addr, write, kinds)
    else:
        # A hit that must fault (a store to a clean page), a bypassed load (XIP),
        # or opt's store miss (the COW: its allocation reclaims one frame).
        if page is None and not write and pte & _PAGE_PRESENT:
            chunk.pte[slot] = pte | _PAGE_ACCESSED  # an XIP or zero-page pte
            pfn = pte >> PTE_PFN_SHIFT
        else:
            pfn = mm._fault(vma, addr, write)
    mm._count(chunk, slot, write)
    policy.accessed(mapping.host, index, mapping.pages.get(index, 0))
    return pfn


def demand_read(mm: MemoryManager, ino: int, offset: int, length: int) -> memoryview | bytes:
    """MemoryManager.read under a per-access policy: the pages in order."""
    mapping = mm.address_space(ino)
    vma = mm._vmas[ino]
    st = mm.stats_
    out = []
    pos = 0
    while pos < length:
        at = offset + pos
        index = at >> PAGE_SHIFT
        off = at & (PAGE_SIZE - 1)
        k = min(PAGE_SIZE - off, length - pos)
        pfn = demand_access(mm, vma, mapping, index, False)
        st.reads += 1
        if pfn < mm._nr_frames:
            view = mm._data_view[(pfn << 12) + off : (pfn << 12) + off + k]
        else:
            view = mm._block_view(pfn - mm._base)[off : off + k]
        if k == length:
            return view
        out.append(bytes(view))  # a later page's miss may evict this frame
        pos += k
    return b"".join(out)


def demand_write(mm: MemoryManager, ino: int, offset: int, mv: memoryview) -> None:
    """MemoryManager.write under a per-access policy: the pages in order."""
    mapping = mm.address_space(ino)
    vma = mm._vmas[ino]
    st = mm.stats_
    rw = mm._data_rw
    n = len(mv)
    pos = 0
    while pos < n:
        at = offset + pos
        index = at >> PAGE_SHIFT
        off = at & (PAGE_SIZE - 1)
        k = min(PAGE_SIZE - off, n - pos)
        pfn = demand_access(mm, vma, mapping, index, True)
        BUG_ON(
            not 0 < pfn < mm._nr_frames,
            "store through a writable pte that maps no frame",
            f"ino {ino} index {index} pfn {pfn:#x}",
        )
        start = (pfn << 12) + off
        rw[start : start + k] = mv[pos : pos + k]
        st.writes += 1
        pos += k


def reclaim_one(mm: MemoryManager) -> bool:
    """Free exactly one frame, the policy's victim (reason dram_budget). False: none
    could be freed. A clean frame that was read from a hole has no block: it is
    dropped, and the page is a hole again."""
    m = mm.machine
    page = mm.policy.victim(mm)
    if page is None:
        return False
    if m.page_block[page] == 0 and not m.flags[page] & PG_DIRTY:
        _drop_hole_page(mm, page)
        return True
    return mm._demote(page, schema.REASON_DRAM_BUDGET)


def _drop_hole_page(mm: MemoryManager, page: int) -> None:
    m = mm.machine
    mapping = mm._spaces[int(m.mapping[page])]
    index = int(m.index[page])
    unmap_mapping_pages(mapping, index, 1, False)
    if m.flags[page] & PG_DIRTY:  # a dirty pte folded in by the unmap: a real writeback
        mm._demote(page, schema.REASON_DRAM_BUDGET)
        return
    delete_from_page_cache(mapping, page)
    vma = mapping.fs_vma
    if vma is not None:
        chunk, slot = vma.vm_mm.get_locked_pte(vma.page_address(index))
        if not chunk.pte[slot] & _PAGE_PRESENT:
            chunk.pte[slot] = _PAGE_BMAP  # a hole: pfn 0
    Stats.bump(m.stats.demote, schema.REASON_DRAM_BUDGET)
    log_page_event(
        m,
        schema.MIGRATE,
        mapping,
        index,
        page,
        0,
        schema.PAGECACHE,
        schema.ZERO,
        schema.REASON_DRAM_BUDGET,
        page,
    )


def pin_pages(mm: MemoryManager, mapping: AddressSpace, indices: list[int]) -> int:
    """static: read the profile's pages of a file into frames, pinned (never evicted),
    while frames remain beyond the write reserve. Returns how many were pinned."""
    policy = mm.policy
    m = mm.machine
    done = 0
    for index in indices:
        if policy.nr_pinned >= policy.max_pinned or not m.free_list:
            break
        if index in mapping.pages:
            continue
        page = page_cache_read(mapping, index)
        if page is None:
            break
        policy.pin(page)
        done += 1
    return done
