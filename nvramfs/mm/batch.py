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
from .vma import PTE_INDEX_MASK, PTE_SHIFT

if TYPE_CHECKING:
    from .manager import MemoryManager
    from .vma import VMA

WINDOW = 1 << 16
# Fewer loads than this: plain mm.read calls are cheaper.
SMALL = 48
_SAT = 0xFFFF


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
        present = _present(vma, w)
        # Hits first, all at once: they commute with the faults (module docstring).
        _hits(mm, vma, w[present])
        for page in w[~present].tolist():
            read(ino, page << PAGE_SHIFT, 1)
        pos += len(w)


def _groups(chunks: np.ndarray) -> tuple[np.ndarray, list[int], list[int], list[int]]:
    """Sort order and [lo, hi) bounds of each run of equal chunk numbers."""
    order = np.argsort(chunks, kind="stable")
    cs = chunks[order]
    cut = np.flatnonzero(cs[1:] != cs[:-1]) + 1
    lo = [0, *cut.tolist()]
    hi = [*cut.tolist(), len(cs)]
    return order, lo, hi, cs[lo].tolist() if len(cs) else []


def _present(vma: VMA, pages: np.ndarray) -> np.ndarray:
    out = np.zeros(len(pages), dtype=bool)
    if not len(pages):
        return out
    pgd = vma.vm_mm.pgd
    order, lo, hi, nos = _groups(pages >> PTE_SHIFT)
    slots = pages & PTE_INDEX_MASK
    for a, b, no in zip(lo, hi, nos, strict=True):
        chunk = pgd.get(no)
        if chunk is not None:
            sel = order[a:b]
            out[sel] = (chunk.pte_np[slots[sel]] & _PAGE_PRESENT) != 0
    return out


def _hits(mm: MemoryManager, vma: VMA, pages: np.ndarray) -> None:
    """Account loads of pages whose ptes are all present (read()'s fast path, batched)."""
    if not len(pages):
        return
    uniq, counts = np.unique(pages, return_counts=True)
    pgd = vma.vm_mm.pgd
    nos = uniq >> PTE_SHIFT
    cut = np.flatnonzero(nos[1:] != nos[:-1]) + 1
    lo = [0, *cut.tolist()]
    hi = [*cut.tolist(), len(uniq)]
    nr_frames = mm._nr_frames
    frame_hits = 0
    gen = mm._gen
    for a, b in zip(lo, hi, strict=True):
        chunk = pgd[int(nos[a])]
        s = uniq[a:b] & PTE_INDEX_MASK
        c = counts[a:b]
        p = chunk.pte_np
        p[s] |= _PAGE_ACCESSED
        r = chunk.reads_np
        r[s] = np.minimum(r[s].astype(np.int64) + c, _SAT)
        pfns = p[s] >> PTE_PFN_SHIFT
        frame_hits += int(c[(pfns > 0) & (pfns < nr_frames)].sum())
        if chunk.gen != gen:
            chunk.gen = gen
            mm._touched.append(chunk)
    st = mm.stats_
    st.reads += len(pages)
    st.pagecache_hit += frame_hits
