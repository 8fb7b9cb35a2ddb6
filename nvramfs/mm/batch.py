"""A batch of one-page loads: what a trace replay feeds mm for a run of 4 KiB reads.

`load_pages(mm, ino, indices)` has exactly the effect of

    for index in indices:
        mm.read(ino, index << PAGE_SHIFT, 1)

(one load of each page, in order; the buffers are not built). Loads never
unmap a pte (a read fault maps XIP pfns, the zero page or an existing frame,
and allocates no frame, so reclaim never runs), so a pte present when the
batch looks at it stays present for the whole batch: the hits among a window
of loads are accounted at once (young bit, the interval's read counters,
`accesses.read`, `pagecache_hit`), and only the pages that were not present go
through `mm.read`, in order. Counting is commutative (saturating sums), so the
order of hits and faults within a window changes nothing.

The backing sees exactly the calls of the loop above, in the same order (only
faults call it): a trace replay keys the image's changes by backing call
number. tests/trace/test_batch.py holds this equal to the loop above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .flags import _PAGE_ACCESSED, _PAGE_PRESENT, PAGE_SHIFT, PTE_PFN_SHIFT
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
        # Hits first, all at once: they commute with the faults (module docstring).
        present = _hits(mm, vma, w)
        for page in w[~present].tolist():
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


def _hits(mm: MemoryManager, vma: VMA, pages: np.ndarray) -> np.ndarray:
    """Account the loads of `pages` whose ptes are present (read()'s fast path, batched);
    returns which loads those were (the rest must fault).

    The page-table chunks the window names are gathered once (one array of
    their ptes, row after row); a load's pte is found at row * 512 + slot.
    Loads of the same page add up (bincount), the counters saturate as one by
    one would, and each chunk hit gets its ptes (young bit) and read counters
    back in one copy each."""
    pgd = vma.vm_mm.pgd
    nos, row = _rows(pages >> PTE_SHIFT)
    chunks = [pgd.get(no) for no in nos.tolist()]
    ptes = np.concatenate([_NO_PTES if c is None else c.pte_np for c in chunks])
    flat = (row << PTE_SHIFT) | (pages & PTE_INDEX_MASK)
    p = ptes[flat]
    present = (p & _PAGE_PRESENT) != 0
    flat = flat[present]
    if not len(flat):
        return present
    pfns = p[present] >> PTE_PFN_SHIFT
    frame_hits = int(np.count_nonzero((pfns > 0) & (pfns < mm._nr_frames)))
    counts = np.bincount(flat, minlength=len(ptes))
    hit = counts > 0
    ptes[hit] |= _PAGE_ACCESSED
    reads = np.concatenate([_NO_COUNTS if c is None else c.reads_np for c in chunks])
    reads = np.minimum(reads + counts, _SAT).astype(np.uint16)
    gen = mm._gen
    touched = mm._touched
    for k in np.flatnonzero(hit.reshape(-1, PTRS_PER_PTE).any(axis=1)).tolist():
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
    return present
