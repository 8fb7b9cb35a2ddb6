"""The machine: DRAM frames, each with a struct page, and the NVRAM pfns that have none.

Struct page is a structure of numpy arrays indexed by pfn (frame number):
`_refcount`, `_mapcount` (-1 when unmapped, as in the kernel), `flags`
(PG_* bits), `mapping` (the inode number of the file the page caches, 0 for
none), `index` (page index in that file), plus two fields the kernel keeps
elsewhere: `page_block` (the NVRAM block that holds the page's data on the
device, as a buffer_head's b_blocknr; 0 = none) and `dirtied_at` (when the
page last went from clean to dirty, for dirty expiry). Frame data is one
uint8 array [nr_frames, PAGE_SIZE].

pfn 0 is the zero page (PG_reserved, never freed). Frames 1..dram_pages are
the DRAM budget. NVRAM pfns are `nvram_base_pfn + block`, above every frame:
`pfn_valid` is false for them, they have no struct page.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .bug import VM_BUG_ON_PAGE, MMBug
from .flags import PAGE_SIZE

# Page flag bits (include/linux/page-flags.h names; numbers are ours).
PG_locked = 0
PG_referenced = 1
PG_uptodate = 2
PG_dirty = 3
PG_lru = 4
PG_reserved = 5
PG_writeback = 6
# PAGE_MAPPING_ANON: the kernel tags page->mapping; we keep it as a flag.
PG_anon = 7

PG_LOCKED = 1 << PG_locked
PG_REFERENCED = 1 << PG_referenced
PG_UPTODATE = 1 << PG_uptodate
PG_DIRTY = 1 << PG_dirty
PG_LRU = 1 << PG_lru
PG_RESERVED = 1 << PG_reserved
PG_WRITEBACK = 1 << PG_writeback
PG_ANON = 1 << PG_anon

_FLAG_NAMES = (
    (PG_LOCKED, "locked"),
    (PG_REFERENCED, "referenced"),
    (PG_UPTODATE, "uptodate"),
    (PG_DIRTY, "dirty"),
    (PG_LRU, "lru"),
    (PG_RESERVED, "reserved"),
    (PG_WRITEBACK, "writeback"),
    (PG_ANON, "anon"),
)

_DIRTY_ANON = PG_DIRTY | PG_ANON

ZERO_PFN = 0
STRUCT_PAGE_SIZE = 64
# The memmap of a ZONE_DEVICE namespace is allocated per 2 MiB subsection.
PAGES_PER_SUBSECTION = 512

# The rule sets a machine can run (docs/ARCHITECTURE.md, "Kernels"):
#   2.6.26-rc1  the tree of commit b379d790 (VM_MIXEDMAP introduced): no
#               pte_special on x86, no ->pfn_mkwrite; do_wp_page copies a raw
#               pfn into an anonymous page even in a shared mapping.
#   2.6.26      the release (commit 251b97f552, "dirty page accounting vs
#               VM_MIXEDMAP"): a store to a raw pfn of a shared writable
#               mapping makes the pte writable in place.
#   modern      today: pte_special (x86), ->pfn_mkwrite, wp_pfn_shared, and
#               the zero page never refcounted (is_zero_pfn).
KERNEL_2626_RC1 = "2.6.26-rc1"
KERNEL_2626 = "2.6.26"
KERNEL_MODERN = "modern"
KERNELS = (KERNEL_2626_RC1, KERNEL_2626, KERNEL_MODERN)


class Machine:
    """DRAM frames with struct pages, and the NVRAM pfn range; the per-machine pte rule set."""

    def __init__(
        self, dram_pages: int, *, pte_special: bool | None = None, kernel: str = KERNEL_MODERN
    ) -> None:
        if dram_pages < 1:
            raise ValueError("dram_pages must be at least 1")
        if kernel not in KERNELS:
            raise ValueError(f"kernel {kernel!r}: use one of {', '.join(KERNELS)}")
        if kernel != KERNEL_MODERN and pte_special:
            raise ValueError(f"kernel {kernel}: x86 had no pte_special before 2.6.27")
        self.dram_pages = dram_pages
        self.nr_frames = dram_pages + 1  # + the zero page
        self.kernel = kernel
        self.modern = kernel == KERNEL_MODERN
        self.pte_special = self.modern if pte_special is None else pte_special
        # ->pfn_mkwrite exists (Linux 4.1 on); older kernels never call it.
        self.has_pfn_mkwrite = self.modern
        # Before is_zero_pfn (2.6.26) the zero page was an ordinary refcounted
        # page to vm_normal_page; today it never is.
        self.zero_page_refcounted = not self.modern
        # NVRAM sits above all DRAM, at a power of two like a real memory map.
        self.nvram_base_pfn = 1 << max(20, self.nr_frames.bit_length())
        n = self.nr_frames
        self._refcount = np.zeros(n, dtype=np.int32)
        self._mapcount = np.full(n, -1, dtype=np.int32)
        self.flags = np.zeros(n, dtype=np.uint32)
        self.mapping = np.zeros(n, dtype=np.int64)
        self.index = np.zeros(n, dtype=np.int64)
        self.page_block = np.zeros(n, dtype=np.int64)
        self.dirtied_at = np.zeros(n, dtype=np.float64)
        self.data = np.zeros((n, PAGE_SIZE), dtype=np.uint8)
        # A read-only flat byte view of all frames: the zero-copy read path.
        self.data_view = memoryview(self.data.reshape(-1)).toreadonly()
        self.data_rw = memoryview(self.data.reshape(-1))
        self._refcount[ZERO_PFN] = 1
        self.flags[ZERO_PFN] = PG_RESERVED | PG_UPTODATE
        # NR_FILE_DIRTY: how many frames have PG_dirty without PG_anon (dirty
        # page-cache pages), kept as the kernel keeps it, moved where PG_dirty or
        # PG_anon changes (set_page_flags and the batched sites that set or clear
        # PG_dirty), so that balance_dirty_pages does not count every struct page.
        self.nr_file_dirty = 0
        # Free frames, a stack (LIFO: a just-freed frame is cache-warm).
        self.free_list: list[int] = list(range(n - 1, 0, -1))
        # Direct reclaim: called by alloc_page when no frame is free; returns
        # True when it freed at least one frame.
        self.reclaim: Callable[[], bool] | None = None
        # The rest of the "kernel globals" the mm functions reach through
        # vma->vm_mm->machine: counters, the event log, the clock, and the
        # NVRAM contents (block -> read-only memoryview), for copies.
        from ..events.writer import NullEventWriter
        from .stats import Stats

        self.stats = Stats()
        self.events: Any = NullEventWriter()
        self.clock: Callable[[], float] = time.monotonic
        self.nvram_view: Callable[[int], memoryview] | None = None
        self.nr_nvram_pages: int | None = None  # device size in blocks, when known
        # Fault kinds noted by the handlers during one access (bit per kind).
        self.fault_kinds = 0
        # The frames a failed alloc_pages took (the caller puts them back).
        self.partial = np.zeros(0, dtype=np.int64)

    # pfn_valid: true exactly for pfns that have a struct page (DRAM frames,
    # the zero page included); NVRAM pfns are not valid.
    def pfn_valid(self, pfn: int) -> bool:
        return 0 <= pfn < self.nr_frames

    def is_nvram_pfn(self, pfn: int) -> bool:
        return pfn >= self.nvram_base_pfn

    def block_to_pfn(self, block: int) -> int:
        return self.nvram_base_pfn + block

    def pfn_to_block(self, pfn: int) -> int:
        return pfn - self.nvram_base_pfn

    @property
    def frames_used(self) -> int:
        return self.dram_pages - len(self.free_list)

    def page_ref_count(self, pfn: int) -> int:
        return int(self._refcount[pfn])

    # page_mapcount: how many ptes map the page (_mapcount + 1).
    def page_mapcount(self, pfn: int) -> int:
        return int(self._mapcount[pfn]) + 1

    def page_mapped(self, pfn: int) -> bool:
        return int(self._mapcount[pfn]) >= 0

    def test_flag(self, pfn: int, mask: int) -> bool:
        return bool(int(self.flags[pfn]) & mask)

    def set_flag(self, pfn: int, mask: int) -> None:
        self.set_page_flags(pfn, int(self.flags[pfn]) | mask)

    def clear_flag(self, pfn: int, mask: int) -> None:
        self.set_page_flags(pfn, int(self.flags[pfn]) & ~mask)

    # set_page_flags: the page's flags word becomes `new`, NR_FILE_DIRTY moved
    # if that makes it a dirty page-cache page or stops it being one. Every
    # store of flags that may change PG_dirty or PG_anon of one page goes
    # through here.
    def set_page_flags(self, pfn: int, new: int) -> None:
        old = int(self.flags[pfn])
        self.flags[pfn] = new
        self.nr_file_dirty += ((new & _DIRTY_ANON) == PG_DIRTY) - ((old & _DIRTY_ANON) == PG_DIRTY)

    # The full count NR_FILE_DIRTY stands for (one pass over every struct page):
    # for tests and debug checks, which tie the running count to it.
    def count_file_dirty(self) -> int:
        return int(np.count_nonzero((self.flags & _DIRTY_ANON) == PG_DIRTY))

    def dump_page(self, pfn: int) -> str:
        """The struct page of `pfn` in one line, as dump_page() prints it."""
        if not self.pfn_valid(pfn):
            return f"pfn {pfn:#x} has no struct page"
        f = int(self.flags[pfn])
        names = "|".join(name for bit, name in _FLAG_NAMES if f & bit) or "none"
        return (
            f"page pfn:{pfn:#x} refcount:{int(self._refcount[pfn])} "
            f"mapcount:{int(self._mapcount[pfn]) + 1} mapping:{int(self.mapping[pfn])} "
            f"index:{int(self.index[pfn])} flags:{names}"
        )

    # alloc_page: a frame off the free list with refcount 1, unmapped, no
    # flags; direct reclaim runs when the free list is empty. None means the
    # allocation failed (the caller returns VM_FAULT_OOM).
    def alloc_page(self) -> int | None:
        if not self.free_list:
            reclaim = self.reclaim
            while not self.free_list:
                if reclaim is None or not reclaim():
                    return None
        pfn = self.free_list.pop()
        if self._refcount[pfn] != 0 or self._mapcount[pfn] != -1:
            raise MMBug("free frame in use", self.dump_page(pfn))
        self._refcount[pfn] = 1
        self.flags[pfn] = 0
        self.mapping[pfn] = 0
        self.index[pfn] = 0
        self.page_block[pfn] = 0
        return pfn

    # alloc_pages: `n` frames, the same ones in the same order as `n` calls of
    # alloc_page would give (direct reclaim runs whenever the free list is
    # empty), set up with array stores. None when reclaim cannot free enough;
    # the frames taken by then stay allocated, and are returned in `partial`
    # for the caller to put back.
    def alloc_pages(self, n: int) -> np.ndarray | None:
        free = self.free_list
        parts: list[np.ndarray] = []
        got = 0
        self.partial = np.zeros(0, dtype=np.int64)
        while got < n:
            if not free:
                reclaim = self.reclaim
                if reclaim is None or not reclaim():
                    self.partial = np.concatenate(parts) if parts else self.partial
                    return None
                continue
            k = min(n - got, len(free))
            take = np.array(free[: -k - 1 : -1], dtype=np.int64)
            del free[-k:]
            if np.count_nonzero(self._refcount[take]) or np.count_nonzero(
                self._mapcount[take] != -1
            ):
                bad = int(take[(self._refcount[take] != 0) | (self._mapcount[take] != -1)][0])
                raise MMBug("free frame in use", self.dump_page(bad))
            self._refcount[take] = 1
            self.flags[take] = 0
            self.mapping[take] = 0
            self.index[take] = 0
            self.page_block[take] = 0
            parts.append(take)
            got += k
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # get_page: take a reference. The page must already be referenced: a
    # get_page on a free page is a use-after-free.
    def get_page(self, pfn: int) -> None:
        VM_BUG_ON_PAGE(self._refcount[pfn] <= 0, self, pfn, "get_page on a free page")
        self._refcount[pfn] += 1

    # put_page: drop a reference; the last one frees the frame. A page must
    # not be freed while mapped, locked, under writeback or in a page cache;
    # the refcount going below zero is a bug; the zero page is never freed.
    def put_page(self, pfn: int) -> None:
        rc = int(self._refcount[pfn]) - 1
        VM_BUG_ON_PAGE(rc < 0, self, pfn, "put_page: _refcount underflow")
        self._refcount[pfn] = rc
        if rc == 0:
            self.__free_page(pfn)

    def __free_page(self, pfn: int) -> None:
        f = int(self.flags[pfn])
        VM_BUG_ON_PAGE(f & PG_RESERVED, self, pfn, "freeing a reserved page")
        VM_BUG_ON_PAGE(self._mapcount[pfn] != -1, self, pfn, "freeing a mapped page")
        VM_BUG_ON_PAGE(f & (PG_LOCKED | PG_WRITEBACK | PG_LRU), self, pfn, "bad page state at free")
        VM_BUG_ON_PAGE(
            self.mapping[pfn] != 0 and not f & PG_ANON,
            self,
            pfn,
            "freeing a page still in the page cache",
        )
        if (f & _DIRTY_ANON) == PG_DIRTY:
            self.nr_file_dirty -= 1
        self.flags[pfn] = 0
        self.mapping[pfn] = 0
        self.page_block[pfn] = 0
        self.free_list.append(pfn)

    def frame_data(self, pfn: int) -> np.ndarray:
        return self.data[pfn]
