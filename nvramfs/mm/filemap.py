"""The page cache of each file (address_space), writeback, and the XIP filesystem's vm_ops.

`AddressSpace.pages` maps page index -> frame for the file's page-cache
pages (at most one entry per DRAM frame in use). Dirty and writeback state
are PG_dirty / PG_writeback in the struct page arrays.

The vm_operations of the filesystem's files are named after the kernel's
XIP support of 2008 (mm/filemap_xip.c): `xip_file_fault` maps a page-cache
page if the page has one, else the NVRAM block with vm_insert_mixed (a raw
pfn, no struct page), else the zero page for a hole; `xip_pfn_mkwrite` is
the copy-on-write of an XIP page (NVRAM is never written in place: the block
is copied into a new page-cache frame, dirty, and the store is retried);
`xip_page_mkwrite` lets a clean page-cache page be redirtied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..events import schema
from .bug import BUG_ON, VM_BUG_ON_PAGE
from .flags import (
    _PAGE_BMAP,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    FAULT_FLAG_WRITE,
    PTE_FLAGS_MASK,
    PTE_PFN_SHIFT,
    VM_FAULT_LOCKED,
    VM_FAULT_NOPAGE,
    VM_FAULT_OOM,
    VM_FAULT_SIGBUS,
)
from .machine import PG_ANON, PG_DIRTY, PG_LOCKED, PG_LRU, PG_UPTODATE, PG_WRITEBACK, ZERO_PFN
from .memory import (
    VMFault,
    lock_page,
    log_page_event,
    set_page_dirty,
    unlock_page,
    unmap_mapping_pages,
    vm_insert_mixed,
)
from .stats import FK_COW, FK_HOLE, FK_PAGECACHE_HIT, FK_WRITE_REUSE, FK_XIP_READ, Stats
from .vma import PTE_INDEX_MASK, PTE_SHIFT, PTRS_PER_PTE, VMA, VMOperations

if TYPE_CHECKING:
    from .backing import Backing
    from .machine import Machine


class AddressSpace:
    """struct address_space of one file: its page-cache pages and the vmas mapping it."""

    def __init__(self, host: int, machine: Machine, backing: Backing) -> None:
        self.host = host  # the inode number
        # inode->i_generation: with the number, the file's identity in the log
        # (a number the filesystem frees and reuses names another file).
        self.i_generation = 0
        self.machine = machine
        self.backing = backing
        self.pages: dict[int, int] = {}
        self.i_mmap: list[VMA] = []
        # The filesystem's own shared VM_MIXEDMAP vma of this file (the one
        # FUSE reads and writes go through); its ptes keep bmap hints.
        self.fs_vma: VMA | None = None
        # inode->i_size, as far as mm knows it (None: not told; then no fault
        # is refused for being past the end of the file).
        self.i_size: int | None = None
        # The end of the furthest store since the mapping was made: the size
        # writeback hands the backing when i_size is not known (ordered data).
        self.written_end = 0

    @property
    def nrpages(self) -> int:
        return len(self.pages)

    @property
    def max_idx(self) -> int | None:
        """DIV_ROUND_UP(i_size, PAGE_SIZE): the first page index past the end of the file,
        at or beyond which a mapped access is VM_FAULT_SIGBUS (None: size unknown)."""
        size = self.i_size
        return None if size is None else (size + 4095) >> 12


def beyond_eof(mapping: AddressSpace, index: int) -> bool:
    """Is file page `index` wholly past the end of the file (filemap_fault's max_idx)?"""
    size = mapping.i_size
    return size is not None and index >= (size + 4095) >> 12


# find_get_page: the page-cache page of `index`, with a reference taken for
# the caller; None when the page is not cached.
def find_get_page(mapping: AddressSpace, index: int) -> int | None:
    page = mapping.pages.get(index)
    if page is not None:
        mapping.machine.get_page(page)
    return page


# add_to_page_cache: insert a fresh, unmapped page at `index` (the slot must
# be empty); the page cache takes its own reference; the page is uptodate.
def add_to_page_cache(mapping: AddressSpace, page: int, index: int) -> None:
    m = mapping.machine
    BUG_ON(index in mapping.pages, "add_to_page_cache: slot occupied", f"index {index}")
    VM_BUG_ON_PAGE(m.mapping[page] != 0, m, page, "add_to_page_cache: page already cached")
    m.get_page(page)
    m.mapping[page] = mapping.host
    m.index[page] = index
    m.flags[page] = int(m.flags[page]) | PG_UPTODATE | PG_LRU
    mapping.pages[index] = page


# delete_from_page_cache: take an unmapped, clean page out of the page
# cache and drop the cache's reference (the frame is freed if that was the
# last one).
def delete_from_page_cache(mapping: AddressSpace, page: int) -> None:
    m = mapping.machine
    VM_BUG_ON_PAGE(m._mapcount[page] >= 0, m, page, "delete_from_page_cache: page still mapped")
    VM_BUG_ON_PAGE(m.flags[page] & PG_DIRTY, m, page, "delete_from_page_cache: page dirty")
    idx = int(m.index[page])
    BUG_ON(mapping.pages.get(idx) != page, "delete_from_page_cache: not in this mapping")
    del mapping.pages[idx]
    m.mapping[page] = 0
    m.flags[page] = int(m.flags[page]) & ~PG_LRU
    m.put_page(page)


# cancel_dirty_page: the page's contents no longer matter (truncation).
def cancel_dirty_page(m: Machine, page: int) -> None:
    m.set_page_flags(page, int(m.flags[page]) & ~PG_DIRTY)


# page_mkclean: write-protect and clean every shared pte that maps `page`,
# so the next store faults (page_mkwrite) and redirties it. Returns how
# many ptes it cleaned. Private vmas map page-cache pages read-only already.
def page_mkclean(mapping: AddressSpace, page: int) -> int:
    m = mapping.machine
    index = int(m.index[page])
    cleaned = 0
    for vma in mapping.i_mmap:
        if not vma.shared:
            continue
        if not vma.vm_pgoff <= index < vma.vm_pgoff + vma.nr_pages:
            continue
        addr = vma.page_address(index)
        pte = vma.vm_mm.pte_at(addr)
        if pte & _PAGE_PRESENT and pte >> PTE_PFN_SHIFT == page:
            if pte & (_PAGE_RW | _PAGE_DIRTY):
                vma.vm_mm.set_pte_at(addr, pte & ~(_PAGE_RW | _PAGE_DIRTY))
                cleaned += 1
    return cleaned


# clear_page_dirty_for_io: before writing a page: write-protect its ptes
# (page_mkclean) and clear PG_dirty; True if it was dirty. A pte that was
# dirty or writable is a store the page has not heard of yet: its dirt is
# folded into the page first (folio_mkclean -> folio_mark_dirty), so it is
# written now, not lost.
def clear_page_dirty_for_io(mapping: AddressSpace, page: int) -> bool:
    m = mapping.machine
    if page_mkclean(mapping, page):
        set_page_dirty(m, page)
    if m.flags[page] & PG_DIRTY:
        m.set_page_flags(page, int(m.flags[page]) & ~PG_DIRTY)
        return True
    return False


# dirty_indices: the page indices of `mapping` dirty in DRAM, sorted.
def dirty_indices(mapping: AddressSpace) -> np.ndarray:
    m = mapping.machine
    if not mapping.pages:
        return np.zeros(0, dtype=np.int64)
    mask = (m.flags & (PG_DIRTY | PG_ANON)) == PG_DIRTY
    mask &= m.mapping == mapping.host
    return np.sort(m.index[mask])


# write_cache_pages (->writepages): write back the given page-cache pages of
# one file (they must be dirty, unlocked, not under writeback) in one call to
# the backing, which makes them durable in one transaction and says which
# NVRAM block now holds each; the file's size on the device advances in the
# same transaction, to i_size clamped before the first page still dirty
# (ordered data). Logs a `writeback` event per page. Returns the number written.
def write_cache_pages(mapping: AddressSpace, pages: np.ndarray, reason: str) -> int:
    m = mapping.machine
    if len(pages) == 0:
        return 0
    pages = pages[np.argsort(m.index[pages], kind="stable")]
    f = m.flags[pages]
    if bool((f & (PG_ANON | PG_WRITEBACK | PG_LOCKED)).any()) or bool(
        (m.mapping[pages] != mapping.host).any()
    ):
        for page in pages.tolist():  # the BUG, with the page that breaks it
            f1 = int(m.flags[page])
            VM_BUG_ON_PAGE(f1 & PG_ANON, m, page, "writeback of an anonymous page")
            VM_BUG_ON_PAGE(f1 & PG_WRITEBACK, m, page, "writeback: page already under writeback")
            VM_BUG_ON_PAGE(
                m.mapping[page] != mapping.host, m, page, "writeback: page not in mapping"
            )
            VM_BUG_ON_PAGE(f1 & PG_LOCKED, m, page, "lock_page: page already locked")
    # lock_page + clear_page_dirty_for_io (page_mkclean) + PG_writeback, for all.
    if len(mapping.i_mmap) == 1 and mapping.i_mmap[0] is mapping.fs_vma:
        _mkclean_fs_ptes(mapping.fs_vma, pages, m.index[pages])
    else:
        for page in pages.tolist():
            page_mkclean(mapping, page)
    m.flags[pages] = (f & ~np.uint32(PG_DIRTY)) | (PG_LOCKED | PG_WRITEBACK)
    m.nr_file_dirty -= int(np.count_nonzero(f & PG_DIRTY))  # none is anon (checked above)
    indices = m.index[pages].copy()
    views = FrameRows(m, pages)
    try:
        # The size on the device advances with this data (ordered data).
        i_size = mapping.i_size if mapping.i_size is not None else mapping.written_end
        if i_size:
            blocks = mapping.backing.write_pages(
                mapping.host,
                indices,
                views,
                size=i_size,
                still_dirty=dirty_indices(mapping),
            )
        else:
            blocks = mapping.backing.write_pages(mapping.host, indices, views)
        blocks = np.asarray(blocks)
    except BaseException:
        # The pages stay dirty for a later attempt.
        f = m.flags[pages]
        m.flags[pages] = (f & ~np.uint32(PG_WRITEBACK | PG_LOCKED)) | PG_DIRTY
        m.nr_file_dirty += int(np.count_nonzero((f & (PG_DIRTY | PG_ANON)) == 0))
        raise
    BUG_ON(len(blocks) != len(pages), "write_pages returned the wrong number of blocks")
    BUG_ON(bool((blocks <= 0).any()), "write_pages returned no block", f"ino {mapping.host}")
    m.page_block[pages] = blocks
    m.flags[pages] &= ~np.uint32(PG_WRITEBACK | PG_LOCKED)
    emit_page_events(
        m,
        schema.WRITEBACK,
        int(mapping.host),
        indices,
        pages,
        blocks + m.nvram_base_pfn,
        schema.PAGECACHE,
        schema.XIP,
        reason,
        pages,
    )
    Stats.bump(m.stats.writebacks, reason, len(pages))
    return len(pages)


class FrameRows:
    """The data of a batch of frames for `write_pages`: a sequence of page buffers
    (each a read-only view of its frame, taken when asked) that also names its
    rows of the frame array (`page_rows()`: the image gathers them straight into
    its mapping, one copy per page) and converts to one (n, PAGE_SIZE) array
    (`__array__`, a gather) for a backing that wants one. A backing that
    ignores the data (a trace replay's) copies nothing."""

    def __init__(self, m: Machine, frames: np.ndarray) -> None:
        self.m = m
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k: int) -> memoryview:
        p = int(self.frames[k])
        return self.m.data_view[p * 4096 : (p + 1) * 4096]

    def __iter__(self) -> Any:
        view = self.m.data_view
        return (view[p * 4096 : (p + 1) * 4096] for p in self.frames.tolist())

    def page_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(array, rows): page k of the batch is array[rows[k]] (no copy made)."""
        return self.m.data, self.frames

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.m.data[self.frames]
        return out if dtype is None else out.astype(dtype, copy=False)


# emit_page_events: one migrate/writeback/cow event per page of a batch of
# one file (log_page_event's fields; refcount and mapcount read from the
# struct pages of `counted`, or given as `counts`), handed to the log as one
# int64 array (emit_page_rows) when the log takes it.
def emit_page_events(
    m: Machine,
    ev: str,
    ino: int,
    indices: np.ndarray,
    pfn_from: np.ndarray,
    pfn_to: np.ndarray,
    home_from: str,
    home_to: str,
    reason: str,
    counted: np.ndarray,
    via: str | None = None,
    counts: tuple[int, int] | None = None,
) -> None:
    events = m.events
    emit_page_rows = getattr(events, "emit_page_rows", None)
    if emit_page_rows is not None:
        rows = np.empty((3 if counts is not None else 5, len(indices)), dtype=np.int64)
        rows[0] = indices
        rows[1] = pfn_from
        rows[2] = pfn_to
        if counts is None:
            rows[3] = m._refcount[counted]
            np.add(m._mapcount[counted], 1, out=rows[4])
        emit_page_rows(ev, ino, rows, home_from, home_to, reason, counts, via)
        return
    index_l = np.asarray(indices).tolist()
    from_l = np.asarray(pfn_from).tolist()
    to_l = np.asarray(pfn_to).tolist()
    if counts is None:
        ref = m._refcount[counted].tolist()
        mc = (m._mapcount[counted] + 1).tolist()
    else:  # the counts every page had at the moment the event stands for
        ref, mc = [counts[0]] * len(index_l), [counts[1]] * len(index_l)
    extra = {} if via is None else {"via": via}
    for k in range(len(index_l)):
        events.emit(
            ev,
            ino=ino,
            index=index_l[k],
            pfn_from=from_l[k],
            pfn_to=to_l[k],
            **{"from": home_from, "to": home_to},
            reason=reason,
            refcount=ref[k],
            mapcount=mc[k],
            **extra,
        )


def groups_of(keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(key, positions) for each distinct value of a non-empty `keys`, in ascending
    order; one group without sorting when all are equal (the usual batch: one file,
    one page-table chunk)."""
    k0 = int(keys[0])
    if k0 == int(keys[-1]) and bool((keys == k0).all()):
        return [(k0, np.arange(len(keys)))]
    return [(k, np.flatnonzero(keys == k)) for k in np.unique(keys).tolist()]


def _mkclean_fs_ptes(vma: VMA, pages: np.ndarray, indices: np.ndarray) -> None:
    """page_mkclean of many pages that only the filesystem's vma maps: their present
    ptes lose RW and dirty, a page-table chunk at a time. Indices in ascending order
    (writeback's batches) split into chunks without sorting, and a chunk's run of
    consecutive indices is cleaned through a slice of its ptes."""
    pgd = vma.vm_mm.pgd
    n = len(indices)
    if not n:
        return
    keys = indices >> PTE_SHIFT
    if n > 1 and not bool((indices[1:] > indices[:-1]).all()):
        for no, sel in groups_of(keys):
            _mkclean_chunk(pgd.get(no), indices[sel] & PTE_INDEX_MASK, pages[sel])
        return
    cut = (np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist()
    for a, b in zip([0, *cut], [*cut, n], strict=True):
        chunk = pgd.get(int(keys[a]))
        if chunk is None:
            continue
        s0 = int(indices[a]) & PTE_INDEX_MASK
        if (int(indices[b - 1]) & PTE_INDEX_MASK) - s0 == b - a - 1:  # consecutive
            p = chunk.pte_np[s0 : s0 + b - a]  # a view: cleaned in place
            hit = ((p & _PAGE_PRESENT) != 0) & ((p >> PTE_PFN_SHIFT) == pages[a:b])
            if hit.any():
                p[hit] &= ~(_PAGE_RW | _PAGE_DIRTY)
        else:
            _mkclean_chunk(chunk, indices[a:b] & PTE_INDEX_MASK, pages[a:b])


def _mkclean_chunk(chunk: Any, slots: np.ndarray, pages: np.ndarray) -> None:
    """Clear RW and dirty on the present ptes at `slots` of `chunk` that map `pages`."""
    if chunk is None:
        return
    p = chunk.pte_np[slots]
    hit = ((p & _PAGE_PRESENT) != 0) & ((p >> PTE_PFN_SHIFT) == pages)
    if hit.any():
        chunk.pte_np[slots[hit]] = p[hit] & ~(_PAGE_RW | _PAGE_DIRTY)


# mapping_bmap: the NVRAM pfn of file page `index` (0 for a hole), from the
# hint the filesystem's vma keeps in its pte, else from the backing (and
# the hint is stored, so a later fault does not ask again).
def mapping_bmap(mapping: AddressSpace, index: int) -> int:
    m = mapping.machine
    vma = mapping.fs_vma
    if vma is None:
        return _bmap_pfns(mapping, index, 1)[0]
    chunk, slot = vma.vm_mm.get_locked_pte(vma.page_address(index))
    pte = chunk.pte[slot]
    if pte & (_PAGE_BMAP | _PAGE_PRESENT):
        pfn = pte >> PTE_PFN_SHIFT
        if pfn >= m.nvram_base_pfn or (pfn == 0 and pte & _PAGE_BMAP):
            return pfn
    # Ask for the aligned window of BMAP_AHEAD pages around it (one call costs
    # about the same) and keep hints for the window's untouched ptes.
    first = index & ~(BMAP_AHEAD - 1)
    pfns = np.asarray(_bmap_pfns(mapping, first, BMAP_AHEAD), dtype=np.int64)
    s0 = slot - (index - first)
    p = chunk.pte_np[s0 : s0 + BMAP_AHEAD]
    p[:] = np.where(p == 0, (pfns << PTE_PFN_SHIFT) | _PAGE_BMAP, p)
    pfn = int(pfns[index - first])
    if not chunk.pte[slot] & _PAGE_PRESENT:
        chunk.pte[slot] = (pfn << PTE_PFN_SHIFT) | _PAGE_BMAP
    return pfn


# How many pages one bmap call of the fault path asks about (a power of two
# dividing PTRS_PER_PTE, so the window stays in one page-table chunk).
BMAP_AHEAD = 64


def _bmap_pfns(mapping: AddressSpace, first: int, count: int) -> list[int]:
    """The backing's bmap as NVRAM pfns (0 for holes), checked against the device."""
    m = mapping.machine
    blocks = np.asarray(mapping.backing.bmap(mapping.host, first, count), dtype=np.int64)
    BUG_ON(
        len(blocks) != count
        or int(blocks.min()) < 0
        or (m.nr_nvram_pages is not None and int(blocks.max()) >= m.nr_nvram_pages),
        "bmap returned a block outside the NVRAM device",
        f"ino {mapping.host} pages {first}+{count}",
    )
    return np.where(blocks > 0, blocks + m.nvram_base_pfn, 0).tolist()


def _new_cache_page(mapping: AddressSpace, index: int, src_pfn: int) -> int | None:
    """A new page-cache page at `index`, filled from `src_pfn` (NVRAM, or ZERO_PFN for zeroes:
    the fill of a hole by a store, logged as a `zero` event, reason `write`); returned with
    the allocation's reference still held by the caller."""
    m = mapping.machine
    page = m.alloc_page()
    if page is None:
        return None
    if src_pfn == ZERO_PFN:
        m.data[page] = 0
    else:
        block = src_pfn - m.nvram_base_pfn
        m.data[page] = np.frombuffer(mapping.backing.block_view(block), dtype=np.uint8)
        m.page_block[page] = block
    add_to_page_cache(mapping, page, index)
    if src_pfn == ZERO_PFN:
        Stats.bump(m.stats.zeroed, schema.REASON_WRITE)
        m.events.emit(
            schema.ZERO_EV,
            ino=mapping.host,
            index=index,
            home=schema.PAGECACHE,
            pfn=page,
            offset=0,
            length=4096,
            reason=schema.REASON_WRITE,
        )
    return page


# page_cache_read: read file page `index` into a new page-cache frame, as
# ->readpage would (the NVRAM block copied, or zeroes for a hole), clean and
# uptodate, and tear down the ptes of its old pfn (XIP or the zero page) so
# that the next fault maps the frame. The page cache without XIP reads every
# page it serves this way (the per-access policies, demand.py). Allocation
# may reclaim. Returns the frame (the page cache holds it), None if no frame.
def page_cache_read(mapping: AddressSpace, index: int) -> int | None:
    m = mapping.machine
    BUG_ON(index in mapping.pages, "page_cache_read: page already cached", f"index {index}")
    pfn = mapping_bmap(mapping, index)
    page = m.alloc_page()
    if page is None:
        return None
    if pfn:
        block = pfn - m.nvram_base_pfn
        m.data[page] = np.frombuffer(mapping.backing.block_view(block), dtype=np.uint8)
        m.page_block[page] = block
    else:
        m.data[page] = 0  # a hole reads as zeroes (no `zero` event: nothing was written)
    add_to_page_cache(mapping, page, index)
    m.put_page(page)  # the page cache's reference keeps it
    unmap_mapping_pages(mapping, index, 1, False)
    Stats.bump(m.stats.promote, schema.REASON_READPAGE)
    log_page_event(
        m,
        schema.MIGRATE,
        mapping,
        index,
        pfn,
        page,
        schema.XIP if pfn else schema.ZERO,
        schema.PAGECACHE,
        schema.REASON_READPAGE,
        page,
    )
    return page


# xip_file_fault (->fault): VM_FAULT_SIGBUS for a page wholly past the end
# of the file (index >= DIV_ROUND_UP(i_size, PAGE_SIZE), as filemap_fault,
# dax_iomap_pte_fault and 2.6.26's xip_file_fault answer; the bytes past
# EOF inside the last page stay accessible). Else a page-cache page if the
# file page has one
# (returned locked, with a reference: the core maps it refcounted);
# else its NVRAM block, mapped with vm_insert_mixed (raw, read-only:
# VM_FAULT_NOPAGE); else, for a hole, the zero page (read-only), except
# for a store through a shared vma, which gets a new zeroed page-cache
# page (blocks are allocated at writeback; other vmas' zero-page ptes of the
# hole are torn down).
def xip_file_fault(vmf: VMFault) -> int:
    vma = vmf.vma
    mapping = vma.vm_file
    assert mapping is not None
    m = mapping.machine
    index = vmf.pgoff
    if beyond_eof(mapping, index):
        return VM_FAULT_SIGBUS
    write = vmf.flags & FAULT_FLAG_WRITE
    page = find_get_page(mapping, index)
    if page is not None:
        lock_page(m, page)
        vmf.page = page
        m.fault_kinds |= FK_WRITE_REUSE if write else FK_PAGECACHE_HIT
        return VM_FAULT_LOCKED
    pfn = mapping_bmap(mapping, index)
    if pfn:
        ret = vm_insert_mixed(vma, vmf.address, pfn)
        if ret == -14:
            return VM_FAULT_SIGBUS
        m.fault_kinds |= FK_XIP_READ
        return VM_FAULT_NOPAGE
    m.fault_kinds |= FK_HOLE
    if write and vma.shared:
        page = _new_cache_page(mapping, index, ZERO_PFN)
        if page is None:
            return VM_FAULT_OOM
        # Other vmas may map the zero page for this hole: the file has a
        # page now, so they must fault it in (as DAX does on a hole fill).
        unmap_mapping_pages(mapping, index, 1, False)
        lock_page(m, page)
        vmf.page = page
        return VM_FAULT_LOCKED
    if vm_insert_mixed(vma, vmf.address, ZERO_PFN) == -14:
        return VM_FAULT_SIGBUS
    return VM_FAULT_NOPAGE


# _cow_xip_page: the COW of an XIP page (or the fill of a hole) in the page
# cache: the NVRAM block (or zeroes) copied into a new dirty page-cache
# frame, and every pte of the old pfn torn down (unmap_mapping_pages: a pfn
# with no struct page has no reverse map), so the retried store faults the
# frame in. Returns VM_FAULT_NOPAGE.
def _cow_xip_page(vmf: VMFault, src_pfn: int) -> int:
    vma = vmf.vma
    mapping = vma.vm_file
    assert mapping is not None
    m = mapping.machine
    index = vmf.pgoff
    BUG_ON(
        index in mapping.pages,
        "pfn_mkwrite: a raw pfn is mapped over a page that has a page-cache page",
        f"ino {mapping.host} index {index}",
    )
    page = _new_cache_page(mapping, index, src_pfn)
    if page is None:
        return VM_FAULT_OOM
    set_page_dirty(m, page)
    m.put_page(page)
    unmap_mapping_pages(mapping, index, 1, False)
    if src_pfn == ZERO_PFN:
        m.fault_kinds |= FK_HOLE
    else:
        m.fault_kinds |= FK_COW
        Stats.bump(m.stats.cow_via, schema.VIA_PFN_MKWRITE)
        log_page_event(
            m,
            schema.COW,
            mapping,
            index,
            src_pfn,
            page,
            schema.XIP,
            schema.PAGECACHE,
            schema.REASON_WRITE,
            page,
            via=schema.VIA_PFN_MKWRITE,
        )
    return VM_FAULT_NOPAGE


# xip_pfn_mkwrite (->pfn_mkwrite): a store to a raw pfn of the file in a
# shared vma: an NVRAM block (copied on write) or the zero page of a hole;
# VM_FAULT_SIGBUS past the end of the file (as xfs_dax_pfn_mkwrite).
def xip_pfn_mkwrite(vmf: VMFault) -> int:
    mapping = vmf.vma.vm_file
    assert mapping is not None
    if beyond_eof(mapping, vmf.pgoff):
        return VM_FAULT_SIGBUS
    return _cow_xip_page(vmf, vmf.orig_pte >> PTE_PFN_SHIFT)


# xip_page_mkwrite (->page_mkwrite): a store to a read-only page of the
# file in a shared vma. A page-cache page may simply be written (returned
# locked); the zero page, which a machine without pte_special maps as a
# refcounted page, is a hole: filled like pfn_mkwrite. A page truncated
# meanwhile: VM_FAULT_NOPAGE (retry).
def xip_page_mkwrite(vmf: VMFault) -> int:
    page = vmf.page
    assert page is not None
    if page == ZERO_PFN:
        return _cow_xip_page(vmf, ZERO_PFN)
    mapping = vmf.vma.vm_file
    assert mapping is not None
    m = mapping.machine
    lock_page(m, page)
    if m.mapping[page] != mapping.host:
        unlock_page(m, page)
        return VM_FAULT_NOPAGE
    m.fault_kinds |= FK_WRITE_REUSE
    return VM_FAULT_LOCKED


# xip_map_pages (->map_pages, the fault-around of a read fault): map in one
# go the raw NVRAM pfns of the not-yet-mapped pages of [first, first + nr)
# of the filesystem's vma whose block the vma's bmap hints already know and
# that have no page-cache page (a page-cache page, a hole or an unknown
# block is left to the ->fault of that page). Read-only, exactly the ptes
# vm_insert_mixed would install; never past the end of the file (as
# filemap_map_pages stops at max_idx - 1). Returns the page indices it mapped.
def xip_map_pages(vma: VMA, first: int, nr: int) -> np.ndarray:
    mapping = vma.vm_file
    assert mapping is not None and vma.fs_owned
    m = mapping.machine
    max_idx = mapping.max_idx
    if max_idx is not None and first + nr > max_idx:
        nr = max(0, max_idx - first)
    mm = vma.vm_mm
    base = m.nvram_base_pfn
    bits = _PAGE_PRESENT | (_PAGE_SPECIAL if m.pte_special else 0)
    done = []
    pos, last = first, first + nr - 1
    while pos <= last:
        chunk = mm.pgd.get(pos >> PTE_SHIFT)
        s = pos & PTE_INDEX_MASK
        e = min(PTRS_PER_PTE, s + last - pos + 1)
        if chunk is not None:
            p = chunk.pte_np[s:e]
            cand = ((p & (_PAGE_PRESENT | _PAGE_BMAP)) == _PAGE_BMAP) & (
                (p >> PTE_PFN_SHIFT) >= base
            )
            idx = np.flatnonzero(cand)
            if len(idx) and mapping.pages:
                keep = [i for i in idx.tolist() if pos + i not in mapping.pages]
                idx = np.asarray(keep, dtype=np.int64)
            if len(idx):
                p[idx] = (p[idx] & ~PTE_FLAGS_MASK) | bits
                done.append(idx + pos)
        pos += e - s
    if not done:
        return np.zeros(0, dtype=np.int64)
    out = np.concatenate(done)
    m.stats.xip_mapped += len(out)
    return out


xip_file_vm_ops = VMOperations(
    fault=xip_file_fault,
    page_mkwrite=xip_page_mkwrite,
    pfn_mkwrite=xip_pfn_mkwrite,
    name="xip_file_vm_ops",
)
