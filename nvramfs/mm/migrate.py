"""Migration between XIP backing and the page cache: what b379d790 predicted.

promote (xip -> pagecache): allocate a frame, copy the NVRAM block into it,
put it in the page cache, and unmap_mapping_pages over that page index (the
NVRAM pfn has no struct page, hence no reverse map: the file's mapping is
the only way to find its ptes), so the next fault maps the frame.

demote (pagecache -> xip): write the page back if dirty, unmap it from
every vma of the file, take it out of the page cache; the frame is freed
only when nothing else holds a reference. The filesystem's vma keeps the
block as a bmap hint, so the next fault maps the NVRAM pfn directly.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

from ..events import schema
from .bug import BUG_ON
from .filemap import (
    AddressSpace,
    beyond_eof,
    delete_from_page_cache,
    emit_page_events,
    groups_of,
    mapping_bmap,
    write_cache_pages,
)
from .flags import _PAGE_ACCESSED, _PAGE_BMAP, _PAGE_DIRTY, _PAGE_PRESENT, PTE_PFN_SHIFT
from .machine import (
    PG_ANON,
    PG_DIRTY,
    PG_LOCKED,
    PG_LRU,
    PG_REFERENCED,
    PG_RESERVED,
    PG_UPTODATE,
    PG_WRITEBACK,
)
from .memory import log_page_event, unmap_mapping_pages
from .stats import Stats
from .vma import PTE_INDEX_MASK, PTE_SHIFT

if TYPE_CHECKING:
    from .machine import Machine
    from .vma import VMA, Chunk


# page_freezable: could folio_ref_freeze(page, expected_refs) succeed, i.e.
# does nobody but the expected holders have a reference? __remove_mapping
# freezes a page-cache page's refcount at exactly the references it
# accounts for (the page cache's one, and reclaim's own isolation one)
# before it takes the page out of the cache, and keeps the page when that
# fails: someone else (a fault in progress, get_user_pages, do_wp_page's
# get_page on the page it is copying) holds it, so freeing would not free
# the frame. Before reclaim unmaps a page, its expected references are the
# page cache's plus one per pte (unmapping drops those): 1 + page_mapcount.
def page_freezable(m: Machine, pfn: int, expected_refs: int) -> bool:
    return int(m._refcount[pfn]) == expected_refs


def reclaimable_frames(m: Machine, pfns: np.ndarray) -> np.ndarray:
    """The page-cache frames among `pfns` that reclaim may take: page_freezable with
    1 + page_mapcount expected references (vectorised; the rest are skipped)."""
    expected = 1 + (m._mapcount[pfns] + 1)
    return pfns[m._refcount[pfns] == expected]


# promote: move file page `index` from its NVRAM block into a new
# page-cache frame. Returns the frame, or None when the page cannot be
# promoted (already cached, a hole, past the end of the file, or no free
# frame: promotion never reclaims; the caller makes room first if it
# wants to).
def promote(mapping: AddressSpace, index: int, reason: str) -> int | None:
    m = mapping.machine
    if index in mapping.pages or not m.free_list or beyond_eof(mapping, index):
        return None
    pfn = mapping_bmap(mapping, index)
    if not pfn:
        return None
    block = pfn - m.nvram_base_pfn
    page = m.alloc_page()
    BUG_ON(page is None, "promote: free list emptied under us")
    assert page is not None
    m.data[page] = np.frombuffer(mapping.backing.block_view(block), dtype=np.uint8)
    m.page_block[page] = block
    from .filemap import add_to_page_cache

    add_to_page_cache(mapping, page, index)
    m.flags[page] = int(m.flags[page]) | PG_UPTODATE
    m.put_page(page)  # the page cache's reference keeps it
    unmap_mapping_pages(mapping, index, 1, False)
    Stats.bump(m.stats.promote, reason)
    log_page_event(
        m, schema.MIGRATE, mapping, index, pfn, page, schema.XIP, schema.PAGECACHE, reason, page
    )
    return page


# demote: move page-cache page `page` of `mapping` back to XIP: writeback
# if dirty (reason `demote`), unmap it everywhere (private COWed copies are
# not the file's and stay), delete it from the page cache. False when the
# page is busy (locked or under writeback) and was left alone.
def demote(mapping: AddressSpace, page: int, reason: str) -> bool:
    m = mapping.machine
    f = int(m.flags[page])
    BUG_ON(f & PG_ANON or m.mapping[page] != mapping.host, "demote: not a page of this file")
    if f & (PG_LOCKED | PG_WRITEBACK):
        return False
    index = int(m.index[page])
    if f & PG_DIRTY:
        write_cache_pages(mapping, np.array([page], dtype=np.int64), schema.REASON_DEMOTE)
    unmap_mapping_pages(mapping, index, 1, False)
    if m.flags[page] & PG_DIRTY:
        # A dirty pte was folded into the page by the unmap.
        write_cache_pages(mapping, np.array([page], dtype=np.int64), schema.REASON_DEMOTE)
    block = int(m.page_block[page])
    if block <= 0:
        BUG_ON(True, "demote: page has no NVRAM block after writeback", m.dump_page(page))
    delete_from_page_cache(mapping, page)
    vma = mapping.fs_vma
    pfn = m.nvram_base_pfn + block
    if vma is not None:
        chunk, slot = vma.vm_mm.get_locked_pte(vma.page_address(index))
        if not chunk.pte[slot] & _PAGE_PRESENT:
            chunk.pte[slot] = (pfn << PTE_PFN_SHIFT) | _PAGE_BMAP
    Stats.bump(m.stats.demote, reason)
    log_page_event(
        m, schema.MIGRATE, mapping, index, page, pfn, schema.PAGECACHE, schema.XIP, reason, page
    )
    return True


# demote_clean_pages: demote() of many clean page-cache pages of one file at
# once, for reclaim and the policy (shrink_page_list after writeback). When
# the filesystem's own vma is the only one mapping the file, its ptes are
# torn down a page-table chunk at a time with exactly the state changes of
# zap_pte (mapcount and reference dropped, young bit -> PG_referenced, the
# NVRAM block kept as a bmap hint) and the frames leave the page cache
# together; otherwise (process vmas map the file too) page by page through
# demote(). A page whose pte is dirty (a store since its writeback), or that
# is dirty, locked, under writeback or has no block, is left alone. Returns
# the pages demoted.
def demote_clean_pages(mapping: AddressSpace, pages: np.ndarray, reason: str) -> int:
    m = mapping.machine
    pages = np.asarray(pages, dtype=np.int64)
    if demote_clean_chunk(mapping, pages, reason) is not None:
        return len(pages)
    busy = PG_ANON | PG_DIRTY | PG_LOCKED | PG_WRITEBACK
    blocks = m.page_block[pages]
    ok = ((m.flags[pages] & busy) == 0) & (blocks > 0)
    ok &= m.mapping[pages] == mapping.host
    if np.count_nonzero(ok) != len(ok):
        pages, blocks = pages[ok], blocks[ok]
    if not len(pages):
        return 0
    vma = mapping.fs_vma
    if vma is None or len(mapping.i_mmap) != 1 or mapping.i_mmap[0] is not vma:
        return sum(demote(mapping, p, reason) for p in pages.tolist())
    idx = m.index[pages]
    pfns = blocks + m.nvram_base_pfn
    nos = idx >> PTE_SHIFT
    no0 = int(nos[0])
    if no0 == int(nos[-1]) and not np.count_nonzero(nos != no0):
        # The usual batch: one page-table chunk (no grouping, no sort).
        chunk = vma.vm_mm.pgd.get(no0)
        dirty = None if chunk is None else _zap_chunk(m, vma, chunk, pages, idx, pfns)
        keep = None if dirty is None else ~dirty
    elif len(pages) > 8 and len(np.unique(nos)) * 4 > len(pages):
        keep = _zap_fs_ptes_sparse(m, vma, pages, idx, pfns)
    else:
        keep = _zap_fs_ptes(m, vma, pages, idx, pfns, nos)
    if keep is not None:
        pages, idx, pfns = pages[keep], idx[keep], pfns[keep]
    if not len(pages):
        return 0
    all_freed = _delete_from_page_cache_many(mapping, pages, idx)
    Stats.bump(m.stats.demote, reason, len(pages))
    emit_page_events(
        m,
        schema.MIGRATE,
        int(mapping.host),
        idx,
        pages,
        pfns,
        schema.PAGECACHE,
        schema.XIP,
        reason,
        pages,
        # Every frame freed: no reference, no pte (what the struct pages say).
        counts=(0, 0) if all_freed else None,
    )
    return len(pages)


# demote_clean_chunk: demote_clean_pages of the batch direct reclaim usually
# isolates, whose outcome is known before anything changes: distinct pages of
# one file that only the filesystem's vma maps, all in one page-table chunk,
# each clean, unlocked, not under writeback, with an NVRAM block, mapped by a
# present clean pte of its own and held by nothing but that pte and the page
# cache (refcount 2, one mapping). Every one is then zapped, leaves the page
# cache and is freed, so each struct page is written once with its final state
# (no reference, no pte, no flags: a young pte's PG_referenced goes with the
# rest; no mapping, no block), the ptes become bmap hints and the frames go
# onto the free list in batch order, with the same counters and events as
# demote_clean_pages. Returns the page-table chunk and the pages' slots in it
# (for the policy's words), or None, with nothing changed, when the batch is
# not in that state.
_CLEAN_PTE_MASK = ~((1 << PTE_PFN_SHIFT) - 1) | _PAGE_PRESENT | _PAGE_DIRTY
_BUSY_AT_FREE = PG_ANON | PG_DIRTY | PG_LOCKED | PG_WRITEBACK | PG_RESERVED


def demote_clean_chunk(
    mapping: AddressSpace, pages: np.ndarray, reason: str
) -> tuple[Chunk, np.ndarray] | None:
    m = mapping.machine
    vma = mapping.fs_vma
    if not len(pages) or vma is None or len(mapping.i_mmap) != 1 or mapping.i_mmap[0] is not vma:
        return None
    idx = m.index[pages]
    no = int(idx[0]) >> PTE_SHIFT
    if np.count_nonzero((idx >> PTE_SHIFT) != no):
        return None
    chunk = vma.vm_mm.pgd.get(no)
    host = mapping.host
    if chunk is None or np.count_nonzero(m.mapping[pages] != host):
        return None
    blocks = m.page_block[pages]
    if (
        np.count_nonzero(blocks <= 0)
        or np.count_nonzero(m.flags[pages] & _BUSY_AT_FREE)
        or np.count_nonzero(m._mapcount[pages])  # 0: mapped by one pte
        or np.count_nonzero(m._refcount[pages] != 2)
    ):
        return None
    slots = idx & PTE_INDEX_MASK
    p = chunk.pte_np[slots]
    # Present, clean, and mapping the page itself (p - (page << PTE_PFN_SHIFT)
    # is then just the pte's flag bits).
    if np.count_nonzero(((p - (pages << PTE_PFN_SHIFT)) & _CLEAN_PTE_MASK) != _PAGE_PRESENT):
        return None
    pages_l = _pop_from_cache(mapping, idx, pages)
    m._mapcount[pages] = -1
    m._refcount[pages] = 0
    m.flags[pages] = 0
    m.mapping[pages] = 0
    m.page_block[pages] = 0
    pfns = blocks + m.nvram_base_pfn
    chunk.pte_np[slots] = (pfns << PTE_PFN_SHIFT) | _PAGE_BMAP
    vma.vm_mm.rss_file -= len(pages_l)
    m.free_list.extend(pages_l)
    Stats.bump(m.stats.demote, reason, len(pages_l))
    emit_page_events(
        m,
        schema.MIGRATE,
        int(host),
        idx,
        pages,
        pfns,
        schema.PAGECACHE,
        schema.XIP,
        reason,
        pages,
        counts=(0, 0),  # every frame freed, no pte left
    )
    return chunk, slots


# The zap_pte of demote_clean_pages, a page-table chunk at a time (the usual
# batch: adjacent pages of one file). Returns the mask of the pages to demote
# (None: all), without those whose pte is dirty.
def _zap_fs_ptes(
    m: Machine, vma: VMA, pages: np.ndarray, idx: np.ndarray, pfns: np.ndarray, nos: np.ndarray
) -> np.ndarray | None:
    keep = None
    pgd = vma.vm_mm.pgd
    for no, sel in groups_of(nos):
        chunk = pgd.get(no)
        if chunk is None:
            continue
        dirty = _zap_chunk(m, vma, chunk, pages[sel], idx[sel], pfns[sel])
        if dirty is not None:
            if keep is None:
                keep = np.ones(len(pages), dtype=bool)
            keep[sel[dirty]] = False
    return keep


# zap_pte of the pages of one page-table chunk (`idx`: their page indices in
# it): a present pte of the page drops its mapcount and reference (its young
# bit goes to PG_referenced), and every pte but a dirty one becomes the bmap
# hint of the page's NVRAM pfn. Returns the mask of the pages whose pte is
# dirty (left as they are), None when there is none.
def _zap_chunk(
    m: Machine, vma: VMA, chunk: Chunk, pages: np.ndarray, idx: np.ndarray, pfns: np.ndarray
) -> np.ndarray | None:
    slots = idx & PTE_INDEX_MASK
    p = chunk.pte_np[slots]
    present = ((p & _PAGE_PRESENT) != 0) & ((p >> PTE_PFN_SHIFT) == pages)
    dirty = present & ((p & _PAGE_DIRTY) != 0)
    if np.count_nonzero(dirty):
        clean = ~dirty
        pages, slots, p, present, pfns = (
            pages[clean],
            slots[clean],
            p[clean],
            present[clean],
            pfns[clean],
        )
    else:
        dirty = None
    nmapped = np.count_nonzero(present)
    if nmapped:
        mapped = pages if nmapped == len(pages) else pages[present]
        mc = m._mapcount[mapped]
        BUG_ON(bool(np.count_nonzero(mc < 0)), "demote: present pte of an unmapped page")
        m._mapcount[mapped] = mc - 1
        m._refcount[mapped] -= 1
        vma.vm_mm.rss_file -= int(nmapped)
        young = present & ((p & _PAGE_ACCESSED) != 0)
        if np.count_nonzero(young):
            m.flags[pages[young]] |= PG_REFERENCED
    chunk.pte_np[slots] = (pfns << PTE_PFN_SHIFT) | _PAGE_BMAP
    return dirty


# The same zap, page by page on scalars, for a batch spread over many chunks
# (random writes: nearly one chunk a page), where a dozen numpy calls per
# chunk cost more than the Python of one page. Same state changes, same mask.
def _zap_fs_ptes_sparse(
    m: Machine, vma: VMA, pages: np.ndarray, idx: np.ndarray, pfns: np.ndarray
) -> np.ndarray | None:
    keep = None
    pgd = vma.vm_mm.pgd
    mapcount, refcount, flags = m._mapcount, m._refcount, m.flags
    mapped = 0
    for i, (page, index, pfn) in enumerate(
        zip(pages.tolist(), idx.tolist(), pfns.tolist(), strict=True)
    ):
        chunk = pgd.get(index >> PTE_SHIFT)
        if chunk is None:
            continue
        slot = index & PTE_INDEX_MASK
        p = chunk.pte[slot]
        present = p & _PAGE_PRESENT and (p >> PTE_PFN_SHIFT) == page
        if present:
            if p & _PAGE_DIRTY:
                if keep is None:
                    keep = np.ones(len(pages), dtype=bool)
                keep[i] = False
                continue
            BUG_ON(mapcount[page] < 0, "demote: present pte of an unmapped page")
            mapcount[page] -= 1
            refcount[page] -= 1
            mapped += 1
            if p & _PAGE_ACCESSED:
                flags[page] |= PG_REFERENCED
        chunk.pte[slot] = (pfn << PTE_PFN_SHIFT) | _PAGE_BMAP
    vma.vm_mm.rss_file -= mapped
    return keep


_NOT_LRU = np.uint32(~PG_LRU & 0xFFFFFFFF)


# The page-cache entries of `idx` out of `mapping` in one pass (a lookup each),
# checked after: each must have held its page of `pages` (else the cache is
# put back and it is a BUG). Returns `pages` as a list.
def _pop_from_cache(mapping: AddressSpace, idx: np.ndarray, pages: np.ndarray) -> list[int]:
    cache = mapping.pages
    idx_l = idx.tolist()
    pages_l = pages.tolist()
    taken = list(map(cache.pop, idx_l, repeat(None)))
    if taken != pages_l:
        cache.update((i, p) for i, p in zip(idx_l, taken, strict=True) if p is not None)
        BUG_ON(True, "delete_from_page_cache: not in this mapping", f"ino {mapping.host}")
    return pages_l


# delete_from_page_cache of many unmapped, clean pages of one mapping: the
# cache's reference dropped, and the frames it was the last of freed, in
# order (the free list ends as page-by-page put_page calls would leave it).
# True when every frame was freed (refcount 0, mapcount -1 each).
def _delete_from_page_cache_many(mapping: AddressSpace, pages: np.ndarray, idx: np.ndarray) -> bool:
    m = mapping.machine
    f = m.flags[pages]
    if np.count_nonzero(m._mapcount[pages] >= 0) or np.count_nonzero(f & PG_DIRTY):
        for page in pages.tolist():  # the BUG, with its page
            delete_from_page_cache(mapping, page)
        return False
    pages_l = _pop_from_cache(mapping, idx, pages)
    m.mapping[pages] = 0
    f &= _NOT_LRU
    rc = m._refcount[pages] - 1
    if np.count_nonzero(rc < 0):
        m.flags[pages] = f
        BUG_ON(True, "put_page: _refcount underflow", f"ino {mapping.host}")
    m._refcount[pages] = rc
    if np.count_nonzero(rc):  # some are held elsewhere: only the rest are freed
        m.flags[pages] = f
        freed = pages[rc == 0]
        f = m.flags[freed]
    else:
        freed = pages
    if len(freed):
        if np.count_nonzero(f & (PG_RESERVED | PG_LOCKED | PG_WRITEBACK | PG_LRU)):
            m.flags[pages] = m.flags[pages] & _NOT_LRU
            BUG_ON(True, "bad page state at free", f"ino {mapping.host}")
        m.flags[freed] = 0
        m.page_block[freed] = 0
        m.free_list.extend(pages_l if freed is pages else freed.tolist())
    return freed is pages
