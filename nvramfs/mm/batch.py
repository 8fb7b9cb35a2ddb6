"""A batch of one-page loads: what a trace replay feeds mm for a run of 4 KiB reads.

`load_pages(mm, ino, indices)` has exactly the effect of

    for index in indices:
        mm.read(ino, index << PAGE_SHIFT, 1)

(one load of each page, in order; the buffers are not built). Loads never
unmap a pte (a read fault maps XIP pfns, the zero page or an existing frame,
and allocates no frame, so reclaim never runs), so a pte present when the
batch looks at it stays present for the whole batch: the hits among a window
of loads are accounted at once (young bit, the interval's read counters,
`accesses.read`, `pagecache_hit`). So are the read faults that need nothing
but the pte (the fault-around of xip_map_pages, for scattered pages): a page
whose NVRAM block the filesystem vma's bmap hint knows, that has no
page-cache page and lies before the end of the file gets exactly the pte
vm_insert_mixed installs, one `xip_read` fault and `xip_mapped`, and its
later loads in the window are hits. Only the other loads (no hint: the
backing's bmap; a hole; a page-cache page to map) go through `mm.read`, in
order. Counting is commutative (saturating sums), and none of those faults
changes what another page's fault does (a read fault only fills hints where
a pte is empty), so the order of hits and faults within a window changes
nothing. With per-fault events on (`trace_faults`) every fault goes through
`mm.read`, so the events keep their order.

The backing sees exactly the calls of the loop above, in the same order (only
faults without a hint call it): a trace replay keys the image's changes by
backing call number. tests/trace/test_batch.py holds this equal to the loop above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .flags import (
    _PAGE_ACCESSED,
    _PAGE_BMAP,
    _PAGE_PRESENT,
    _PAGE_SPECIAL,
    PAGE_SHIFT,
    PTE_FLAGS_MASK,
    PTE_PFN_SHIFT,
)
from .machine import PG_LOCKED
from .memory import vm_page_prot_rw
from .vma import PTE_INDEX_MASK, PTE_SHIFT, PTRS_PER_PTE

if TYPE_CHECKING:
    from .manager import MemoryManager
    from .vma import VMA

WINDOW = 1 << 16
# Fewer loads than this: plain mm.read calls are cheaper.
SMALL = 48
_SAT = 0xFFFF
# The ptes and counters of a chunk that does not exist (nothing present).
_NO_PTES = np.zeros(PTRS_PER_PTE, dtype=np.int64)
_NO_COUNTS = np.zeros(PTRS_PER_PTE, dtype=np.uint16)


def load_pages(mm: MemoryManager, ino: int, indices: np.ndarray) -> None:
    """One load of each page of `ino` in `indices`, in order (see the module docstring)."""
    idx = np.asarray(indices, dtype=np.int64)
    n = len(idx)
    read = mm.read
    pos = 0
    if getattr(mm, "_demand", False):
        # A per-access policy may evict at any load (lru, opt): one by one.
        for page in idx.tolist():
            read(ino, page << PAGE_SHIFT, 1)
        return
    while pos < n:
        vma = mm._vmas.get(ino)
        if vma is None or n - pos < SMALL:
            read(ino, int(idx[pos]) << PAGE_SHIFT, 1)
            pos += 1
            continue
        w = idx[pos : pos + WINDOW]
        # Hits and hinted XIP faults first, all at once: they commute with the
        # other faults (module docstring).
        rest = _window(mm, vma, w)
        for page in w[rest].tolist():
            read(ino, page << PAGE_SHIFT, 1)
        pos += len(w)


def _rows(nos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct chunk numbers among `nos`, ascending, and the row of each element
    among them. A bitmap over their span when it is small (no sort), else np.unique."""
    lo = int(nos.min())
    span = int(nos.max()) - lo + 1
    if span > 4 * len(nos) + 4096:
        u, inv = np.unique(nos, return_inverse=True)
        return u, inv.reshape(-1)
    rel = nos - lo
    used = np.zeros(span, dtype=bool)
    used[rel] = True
    rank = np.cumsum(used, dtype=np.int64) - 1
    return np.flatnonzero(used) + lo, rank[rel]


def _window(mm: MemoryManager, vma: VMA, pages: np.ndarray) -> np.ndarray:
    """Account the loads of `pages` that hit or whose fault the window takes (read()'s
    fast path and the fault-around of _fault_around, batched); returns which loads
    are left to fault through mm.read, in order.

    The page-table chunks the window names are gathered once (one array of
    their ptes, row after row); a load's pte is found at row * 512 + slot.
    Loads of the same page add up, the counters saturate as one by one
    would, and each chunk used gets its ptes and read counters back in one
    copy each."""
    pgd = vma.vm_mm.pgd
    nos, row = _rows(pages >> PTE_SHIFT)
    chunks = [pgd.get(no) for no in nos.tolist()]
    ptes = np.concatenate([_NO_PTES if c is None else c.pte_np for c in chunks])
    flat = (row << PTE_SHIFT) | (pages & PTE_INDEX_MASK)
    p = ptes[flat]
    present = (p & _PAGE_PRESENT) != 0
    pfns = p[present] >> PTE_PFN_SHIFT
    frame_hits = int(np.count_nonzero((pfns > 0) & (pfns < mm._nr_frames)))
    new = p | _PAGE_ACCESSED  # each load's pte after it
    served = present
    nr_xip = 0
    frames = None
    if not mm.trace_faults:
        exists = np.fromiter((c is not None for c in chunks), dtype=bool, count=len(chunks))
        around = _fault_around(mm, vma, pages, p, exists[row])
        if around is not None:
            xip, cached, frame = around
            # The faults, one per page: a raw NVRAM pfn (vm_insert_mixed's pte)...
            if xip.any():
                bits = _PAGE_PRESENT | (_PAGE_SPECIAL if mm.machine.pte_special else 0)
                bits |= vm_page_prot_rw(vma) | _PAGE_ACCESSED
                new[xip] = (p[xip] & ~PTE_FLAGS_MASK) | bits
                nr_xip = len(np.unique(flat[xip]))
            # ... or the page-cache page, refcounted (finish_fault's pte).
            if cached.any():
                new[cached] = (frame[cached] << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED
                frames = np.unique(frame[cached])
                frame_hits += int(np.count_nonzero(cached))  # the fault and the hits after
            served = present | xip | cached
    flat = flat[served]
    if not len(flat):
        return ~served
    ptes[flat] = new[served]  # every load of a page leaves the same pte
    # The pages loaded (ascending) and how many loads each.
    if len(ptes) <= 8 * len(flat):
        counts = np.bincount(flat, minlength=len(ptes))
        at = np.flatnonzero(counts)
        counts = counts[at]
    else:
        at, counts = np.unique(flat, return_counts=True)
    reads = np.concatenate([_NO_COUNTS if c is None else c.reads_np for c in chunks])
    reads[at] = np.minimum(reads[at] + counts, _SAT)
    ks = at >> PTE_SHIFT
    gen = mm._gen
    touched = mm._touched
    for k in ks[np.flatnonzero(np.diff(ks, prepend=-1))].tolist():
        chunk = chunks[k]
        a = k << PTE_SHIFT
        chunk.pte_np[:] = ptes[a : a + PTRS_PER_PTE]
        chunk.reads_np[:] = reads[a : a + PTRS_PER_PTE]
        if chunk.gen != gen:
            chunk.gen = gen
            touched.append(chunk)
    st = mm.stats_
    st.reads += len(flat)
    st.pagecache_hit += frame_hits
    if nr_xip:
        st.xip_read += nr_xip  # the faults' kind (Stats.count_fault)
        st.xip_mapped += nr_xip  # insert_pfn of an NVRAM pfn in the filesystem's vma
    if frames is not None:
        # find_get_page's reference becomes the pte's; page_add_file_rmap; the rss.
        m = mm.machine
        m._refcount[frames] += 1
        m._mapcount[frames] += 1
        vma.vm_mm.rss_file += len(frames)
    return ~served


def _fault_around(
    mm: MemoryManager, vma: VMA, pages: np.ndarray, p: np.ndarray, exists: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The loads whose read fault needs nothing the window has not got (filemap's
    fault-around, map_pages, for scattered pages): the pte not present, before the
    end of the file (else SIGBUS), in a page-table chunk that `exists`, and either a
    page-cache page that is not locked (xip_file_fault maps it: `cached`, with its
    `frame`) or, with no page-cache page, an NVRAM block the bmap hint knows
    (vm_insert_mixed maps it raw: `xip`). A hole, an unknown block or a locked page
    is left to mm.read. None: no such load."""
    mapping = vma.vm_file
    if mapping is None or not vma.fs_owned:
        return None
    miss = exists & ((p & _PAGE_PRESENT) == 0)
    max_idx = mapping.max_idx
    if max_idx is not None:
        miss &= pages < max_idx
    at = np.flatnonzero(miss)
    if not len(at):
        return None
    frame = np.zeros(len(pages), dtype=np.int64)
    cache = mapping.pages
    if cache:
        get = cache.get
        f = np.fromiter((get(i, 0) for i in pages[at].tolist()), dtype=np.int64, count=len(at))
        frame[at] = f  # ZERO_PFN (0) is never a page-cache page
        miss[at[f > 0]] = False  # a page-cache page is never mapped raw
        busy = np.flatnonzero(f > 0)
        busy = busy[(mm.machine.flags[f[busy]] & PG_LOCKED) != 0]
        frame[at[busy]] = 0
    cached = frame > 0
    xip = miss & ((p & _PAGE_BMAP) != 0) & ((p >> PTE_PFN_SHIFT) >= mm._base)
    if not (xip.any() or cached.any()):
        return None
    return xip, cached, frame
