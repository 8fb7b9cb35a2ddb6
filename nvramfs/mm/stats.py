"""Live counters: the `counters` object of docs/EVENTS.md.

Plain Python ints, bumped from the fast path; `snapshot()` builds the JSON
object (frames and dirty pages are counted from the struct page arrays).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..events import schema
from .machine import PAGES_PER_SUBSECTION, PG_ANON, PG_DIRTY, STRUCT_PAGE_SIZE

if TYPE_CHECKING:
    from .machine import Machine


class Stats:
    """Cumulative counters since the mount."""

    def __init__(self) -> None:
        # faults by kind (schema.FAULT_KINDS)
        self.xip_read = 0
        self.pagecache_hit = 0
        self.cow = 0
        self.write_reuse = 0
        self.hole = 0
        self.readpage = 0  # a miss read into a frame (lru, opt, opt-nox)
        # page accesses, hits included
        self.reads = 0
        self.writes = 0
        self.promote: dict[str, int] = {}
        self.demote: dict[str, int] = {}
        self.writebacks: dict[str, int] = {}
        self.cow_via: dict[str, int] = {}
        # page-cache pages dropped unwritten, by reason (truncate, o_trunc, evict)
        self.drops: dict[str, int] = {}
        # page tails zeroed in place, by reason (truncate)
        self.zeroed: dict[str, int] = {}
        # stores written straight into NVRAM (kernel=2.6.26), in page stores
        self.xip_writes = 0
        # XIP pages currently mapped by the filesystem's vmas (one vma per
        # inode, so these are distinct pages): served with no struct page.
        self.xip_mapped = 0

    def count_fault(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)

    @staticmethod
    def bump(table: dict[str, int], reason: str, n: int = 1) -> None:
        table[reason] = table.get(reason, 0) + n

    def snapshot(self, machine: Machine) -> dict[str, Any]:
        """The `counters` object of EVENTS.md, JSON-able."""
        used = machine.frames_used
        flags = machine.flags
        dirty = int(np.count_nonzero((flags & (PG_DIRTY | PG_ANON)) == PG_DIRTY))
        return {
            "faults": {k: getattr(self, k) for k in schema.FAULT_KINDS},
            "accesses": {"read": self.reads, "write": self.writes},
            "migrations": {"promote": dict(self.promote), "demote": dict(self.demote)},
            "writebacks": dict(self.writebacks),
            "frames_used": used,
            "dram_pages": machine.dram_pages,
            "dirty": dirty,
            "struct_page_bytes_used": STRUCT_PAGE_SIZE * used,
            "struct_page_bytes_avoided": STRUCT_PAGE_SIZE * self.xip_mapped,
            "struct_page": struct_page_figures(machine.nr_nvram_pages or 0, used),
            "drops": dict(self.drops),
            "zeroed": dict(self.zeroed),
            "xip_writes": self.xip_writes,
        }


def struct_page_figures(device_pages: int, frames_used: int) -> dict[str, int]:
    """What struct page costs, as commit b379d790 counts it (docs/EVENTS.md, `struct_page`).

    memmap_device_bytes: a memmap for the whole NVRAM device, 64 bytes per 4 KiB page,
    allocated whether mapped or not, in whole 2 MiB subsections (what DAX with ZONE_DEVICE
    pages pays today, in DRAM or carved out of the device with an altmap);
    mixedmap_bytes: under VM_MIXEDMAP only the DRAM frames in use have one;
    saved_bytes: the difference (per guest mounting the image)."""
    sections = -(-device_pages // PAGES_PER_SUBSECTION)
    memmap = STRUCT_PAGE_SIZE * PAGES_PER_SUBSECTION * sections
    mixed = STRUCT_PAGE_SIZE * frames_used
    return {"memmap_device_bytes": memmap, "mixedmap_bytes": mixed, "saved_bytes": memmap - mixed}


# Fault kinds as bits, noted by the handlers into machine.fault_kinds during
# one access (an access can take several faults: a store to an XIP page maps
# it, COWs it in pfn_mkwrite, then maps the frame); `fault_kind` picks the
# one the access is counted under.
FK_XIP_READ = 1
FK_PAGECACHE_HIT = 2
FK_COW = 4
FK_WRITE_REUSE = 8
FK_HOLE = 16
FK_READPAGE = 32

_KIND_ORDER = (
    (FK_COW, "cow"),
    (FK_HOLE, "hole"),
    (FK_READPAGE, "readpage"),
    (FK_WRITE_REUSE, "write_reuse"),
    (FK_XIP_READ, "xip_read"),
    (FK_PAGECACHE_HIT, "pagecache_hit"),
)


def fault_kind(bits: int) -> str | None:
    """The kind one access counts as, from the bits its faults noted."""
    for bit, name in _KIND_ORDER:
        if bits & bit:
            return name
    return None
