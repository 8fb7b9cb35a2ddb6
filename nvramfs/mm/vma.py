"""mm_struct, vm_area_struct and page tables.

Page tables are allocated in chunks of PTRS_PER_PTE entries on first touch
(one chunk stands for one page-table page), kept in a dict keyed by
`vpn >> PTE_SHIFT`, so an untouched range costs nothing: a file truncated to
10**15 bytes has no chunks until someone touches a page.

A chunk holds, for its 512 pages, 16 bytes each:
  pte     int64   the pte (pfn << 12 | bits, see flags.py)
  reads   uint16  loads in the current interval (saturating at 65535)
  writes  uint16  stores in the current interval (saturating)
  state   uint32  the replacement policy's per-page word
`pte`, `reads` and `writes` are `array.array`s (fast scalar access from the
plain-Python fast path) with numpy views over the same memory (`*_np`) for
the vectorised batch path; nothing per page is a Python object.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .flags import PAGE_SHIFT, VM_MAYSHARE, VM_SHARED

if TYPE_CHECKING:
    from .filemap import AddressSpace
    from .machine import Machine

PTE_SHIFT = 9
PTRS_PER_PTE = 1 << PTE_SHIFT
PTE_INDEX_MASK = PTRS_PER_PTE - 1

_ZERO_PTES = bytes(8 * PTRS_PER_PTE)
_ZERO_COUNTS = bytes(2 * PTRS_PER_PTE)


class Chunk:
    """One page-table page: 512 ptes plus the access counters and policy word of those pages."""

    __slots__ = (
        "no",
        "owner",
        "pte",
        "pte_np",
        "reads",
        "reads_np",
        "writes",
        "writes_np",
        "state",
        "gen",
    )

    def __init__(self, no: int, owner: Any) -> None:
        self.no = no  # vpn >> PTE_SHIFT
        self.owner = owner  # the mm_struct
        self.pte = array("q", _ZERO_PTES)
        self.pte_np = np.frombuffer(self.pte, dtype=np.int64)
        self.reads = array("H", _ZERO_COUNTS)
        self.reads_np = np.frombuffer(self.reads, dtype=np.uint16)
        self.writes = array("H", _ZERO_COUNTS)
        self.writes_np = np.frombuffer(self.writes, dtype=np.uint16)
        self.state = np.zeros(PTRS_PER_PTE, dtype=np.uint32)
        # The interval in which this chunk was last counted as touched.
        self.gen = -1

    @property
    def first_vpn(self) -> int:
        return self.no << PTE_SHIFT


class MMStruct:
    """An address space: its vmas and its page table (chunk number -> Chunk)."""

    def __init__(self, machine: Machine, name: str = "") -> None:
        self.machine = machine
        self.name = name
        self.pgd: dict[int, Chunk] = {}
        self.vmas: list[VMA] = []
        # rss counters (MM_FILEPAGES, MM_ANONPAGES).
        self.rss_file = 0
        self.rss_anon = 0

    # get_locked_pte: the chunk and slot holding the pte of `addr`, allocating
    # the page-table page on first touch. (No locks: one thread.)
    def get_locked_pte(self, addr: int) -> tuple[Chunk, int]:
        vpn = addr >> PAGE_SHIFT
        no = vpn >> PTE_SHIFT
        chunk = self.pgd.get(no)
        if chunk is None:
            chunk = self.pgd[no] = Chunk(no, self)
        return chunk, vpn & PTE_INDEX_MASK

    # The pte of `addr` without allocating: 0 (pte_none) when no table.
    def pte_at(self, addr: int) -> int:
        vpn = addr >> PAGE_SHIFT
        chunk = self.pgd.get(vpn >> PTE_SHIFT)
        return 0 if chunk is None else chunk.pte[vpn & PTE_INDEX_MASK]

    def set_pte_at(self, addr: int, pte: int) -> None:
        chunk, slot = self.get_locked_pte(addr)
        chunk.pte[slot] = pte

    def find_vma(self, addr: int) -> VMA | None:
        for vma in self.vmas:
            if vma.vm_start <= addr < vma.vm_end:
                return vma
        return None


@dataclass
class VMOperations:
    """vm_operations_struct: the handlers a file's vmas fault through."""

    fault: Callable[[Any], int] | None = None
    page_mkwrite: Callable[[Any], int] | None = None
    pfn_mkwrite: Callable[[Any], int] | None = None
    name: str = ""


@dataclass(eq=False)
class VMA:
    """vm_area_struct: [vm_start, vm_end) of `vm_mm`, mapping file pages from `vm_pgoff` on."""

    vm_mm: MMStruct
    vm_start: int
    vm_end: int
    vm_pgoff: int
    vm_flags: int
    vm_ops: VMOperations | None = None
    vm_file: AddressSpace | None = None
    # The filesystem's own per-inode vma (it keeps bmap hints in its ptes).
    fs_owned: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def linear_page_index(self, addr: int) -> int:
        """The file page index `addr` maps (linear_page_index)."""
        return ((addr - self.vm_start) >> PAGE_SHIFT) + self.vm_pgoff

    def page_address(self, index: int) -> int:
        """The address in this vma of file page `index` (vma_address)."""
        return self.vm_start + ((index - self.vm_pgoff) << PAGE_SHIFT)

    @property
    def nr_pages(self) -> int:
        return (self.vm_end - self.vm_start) >> PAGE_SHIFT

    @property
    def shared(self) -> bool:
        return bool(self.vm_flags & (VM_SHARED | VM_MAYSHARE))
