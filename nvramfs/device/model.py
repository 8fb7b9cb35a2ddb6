"""The device model: what the mm's page movements would cost on a medium, and the wear.

mm decides; this module only prices. It is told what moved (a page served
from DRAM or from NVRAM, a fault, a page copied into a frame, a frame
unmapped, blocks programmed by writeback, blocks freed) and keeps:

- `modelled_ns`: nanoseconds per kind (`KINDS`), from the medium's figures
  and the host kernel's measured costs, never from wall time;
- wear per erase sector: programs and erases (numpy arrays, one slot per
  sector), and bytes programmed, erased and written back.

NOR cannot rewrite a programmed block: a writeback to a block that is not
erased reads the sector's other live blocks, erases the sector and programs
them back with the new page (a read-modify-erase-write). Blocks free at mkfs
are erased; a freed block is erased only when its sector is. Media that write
in place (PCM, Optane, DRAM) just program.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .media import PAGE_SIZE, KernelCosts, Medium, kernel_costs

KINDS = ("hit", "xip_read", "fault", "promote", "cow", "demote", "writeback", "erase")
SECONDS_PER_YEAR = 365.25 * 86400


class DeviceModel:
    """Prices page movements on `medium` for a device of `nr_blocks` 4 KiB blocks."""

    def __init__(
        self,
        medium: Medium,
        nr_blocks: int,
        *,
        programmed: np.ndarray | None = None,
        kernel: KernelCosts | None = None,
        dram: Medium | None = None,
    ) -> None:
        from .media import load_medium

        self.medium = medium
        self.kernel = kernel or kernel_costs()
        self.dram = dram or load_medium("dram")
        self.nr_blocks = int(nr_blocks)
        spp = medium.sector_pages
        self.sector_pages = spp
        self.nr_sectors = -(-self.nr_blocks // spp)
        # Per block: holds programmed data (live or stale) -> must be erased
        # before a rewrite on a medium that cannot write in place.
        self.programmed = np.zeros(self.nr_sectors * spp, dtype=bool)
        # Per block: the data is live (not freed since it was programmed).
        self.live = np.zeros(self.nr_sectors * spp, dtype=bool)
        if programmed is not None:
            n = min(len(programmed), self.nr_blocks)
            self.programmed[:n] = programmed[:n]
            self.live[:n] = programmed[:n]
        self.sector_programs = np.zeros(self.nr_sectors, dtype=np.int64)
        self.sector_erases = np.zeros(self.nr_sectors, dtype=np.int64)
        self.modelled_ns = dict.fromkeys(KINDS, 0.0)
        self.bytes_written_back = 0
        self.bytes_programmed = 0
        self.bytes_erased = 0
        self.erases = 0
        # Cached per-page prices (the hot path multiplies counts by these).
        self._page_hit_ns = self.dram.read_ns(PAGE_SIZE)
        self._page_nvram_read_ns = medium.read_ns(PAGE_SIZE)
        self._page_program_ns = medium.program_ns(PAGE_SIZE)

    # What the mm tells it ------------------------------------------------
    def hit(self, pages: int = 1) -> None:
        """Page accesses served by a pagecache frame: a DRAM read of the page."""
        self.modelled_ns["hit"] += pages * self._page_hit_ns

    def xip_read(self, pages: int = 1) -> None:
        """Page accesses served from NVRAM with no copy: a medium read of the page."""
        self.modelled_ns["xip_read"] += pages * self._page_nvram_read_ns

    def fault(self, n: int = 1) -> None:
        """Page faults taken (each maps one pte): the kernel's minor-fault cost."""
        self.modelled_ns["fault"] += n * self.kernel.minor_fault_ns

    def copy_in(self, kind: str, pages: int = 1) -> None:
        """`promote` or `cow`: a page read from NVRAM and stored into a DRAM frame."""
        if kind not in ("promote", "cow"):
            raise ValueError(f"copy_in kind must be promote or cow, not {kind!r}")
        self.modelled_ns[kind] += pages * (self._page_nvram_read_ns + self.kernel.copy_4k_ns)

    def demote(self, pages: int = 1) -> None:
        """Frames unmapped and freed back to XIP: one pte zapped each (writeback is apart)."""
        self.modelled_ns["demote"] += pages * self.kernel.unmap_ns

    def free(self, blocks: np.ndarray) -> None:
        """Blocks the image freed: their data is stale (still programmed until an erase)."""
        b = np.asarray(blocks, dtype=np.int64)
        b = b[(b >= 0) & (b < self.nr_blocks)]
        self.live[b] = False

    def writeback(self, blocks: np.ndarray) -> None:
        """Dirty pages programmed into `blocks` (one page each), in one batch."""
        b = np.asarray(blocks, dtype=np.int64)
        if len(b) == 1:  # an fsync of one page: the same prices, without the array steps
            self._writeback_one(int(b[0]))
            return
        if len(b) > 1 and not bool((b[1:] > b[:-1]).all()):
            b = np.unique(b)  # (mm's batches come sorted and unique)
        if len(b) and (int(b[0]) < 0 or int(b[-1]) >= self.nr_blocks):
            b = b[(b >= 0) & (b < self.nr_blocks)]
        if not len(b):
            return
        m = self.medium
        self.bytes_written_back += len(b) * PAGE_SIZE
        if m.in_place:
            self._program(b, "writeback")
            return
        # A sector whose targets are all erased is programmed; a sector with
        # a target that is not costs one erase cycle, which covers all of its
        # targets: read its other live pages out, erase, program them back
        # (the erase's price) and program the new pages (the writeback's).
        spp = self.sector_pages
        sectors = b // spp
        dirty_sectors = sectors[self.programmed[b]]  # sorted, as b is
        if len(dirty_sectors) > 1:
            dirty_sectors = dirty_sectors[np.r_[True, dirty_sectors[1:] != dirty_sectors[:-1]]]
        if not len(dirty_sectors):
            self._program(b, "writeback")
            return
        k = len(dirty_sectors)
        rows = np.searchsorted(dirty_sectors, sectors)
        in_erase = dirty_sectors[np.minimum(rows, k - 1)] == sectors
        if not in_erase.all():
            self._program(b[~in_erase], "writeback")
            rows = rows[in_erase]
        # Every sector to erase at once, as (sector, page-in-sector) masks.
        targets = np.zeros((k, spp), dtype=bool)
        targets[rows, b[in_erase] % spp] = True
        keep = self.live.reshape(-1, spp)[dirty_sectors] & ~targets
        nkeep = keep.sum(axis=1)
        ntarget = targets.sum(axis=1)
        ns = self.modelled_ns
        read_ns, program_ns, erase_ns = self._page_nvram_read_ns, self._page_program_ns, m.erase_ns
        # The prices added sector by sector, in the order a sector loop adds them
        # (floating-point sums: a replay must get the same bits).
        for nk, nt in zip(nkeep.tolist(), ntarget.tolist(), strict=True):
            ns["erase"] += nk * read_ns + erase_ns
            if nk:
                ns["erase"] += nk * program_ns
            ns["writeback"] += nt * program_ns
        self.sector_erases[dirty_sectors] += 1
        self.erases += k
        self.bytes_erased += k * m.erase_sector
        after = keep | targets  # erased, then the kept pages and the targets programmed
        self.programmed.reshape(-1, spp)[dirty_sectors] = after
        self.live.reshape(-1, spp)[dirty_sectors] = after
        self.sector_programs[dirty_sectors] += nkeep + ntarget
        self.bytes_programmed += int(nkeep.sum() + ntarget.sum()) * PAGE_SIZE

    def _writeback_one(self, block: int) -> None:
        """`writeback` of one block, summed in the same order (the same bits)."""
        if not 0 <= block < self.nr_blocks:
            return
        m = self.medium
        self.bytes_written_back += PAGE_SIZE
        ns = self.modelled_ns
        spp = self.sector_pages
        sector = block // spp
        if m.in_place or not self.programmed[block]:
            ns["writeback"] += 1 * self._page_program_ns
            self.bytes_programmed += PAGE_SIZE
            self.programmed[block] = True
            self.live[block] = True
            self.sector_programs[sector] += 1
            return
        lo = sector * spp
        live = self.live[lo : lo + spp]
        nkeep = int(np.count_nonzero(live)) - int(live[block - lo])
        ns["erase"] += nkeep * self._page_nvram_read_ns + m.erase_ns
        if nkeep:
            ns["erase"] += nkeep * self._page_program_ns
        ns["writeback"] += 1 * self._page_program_ns
        self.sector_erases[sector] += 1
        self.erases += 1
        self.bytes_erased += m.erase_sector
        live[block - lo] = True  # erased, then the kept pages and the target programmed
        self.programmed[lo : lo + spp] = live
        self.sector_programs[sector] += nkeep + 1
        self.bytes_programmed += (nkeep + 1) * PAGE_SIZE

    def _program(self, blocks: np.ndarray, kind: str) -> None:
        self.modelled_ns[kind] += len(blocks) * self._page_program_ns
        self.bytes_programmed += len(blocks) * PAGE_SIZE
        self.programmed[blocks] = True
        self.live[blocks] = True
        np.add.at(self.sector_programs, blocks // self.sector_pages, 1)

    # What it reports -----------------------------------------------------
    @property
    def total_ns(self) -> float:
        return float(sum(self.modelled_ns.values()))

    def write_amplification(self) -> dict[str, float | None]:
        """Bytes programmed and bytes erased, each over bytes written back."""
        wb = self.bytes_written_back
        if not wb:
            return {"programmed": None, "erased": None}
        return {"programmed": self.bytes_programmed / wb, "erased": self.bytes_erased / wb}

    def worst_sectors(self, n: int = 5) -> list[dict[str, int]]:
        """The most worn sectors: erases (NOR) or programs (in-place media) first."""
        wear = self.sector_erases if not self.medium.in_place else self.sector_programs
        if not wear.any():
            return []
        order = np.argsort(-wear, kind="stable")[:n]
        return [
            {
                "sector": int(s),
                "first_block": int(s) * self.sector_pages,
                "erases": int(self.sector_erases[s]),
                "programs": int(self.sector_programs[s]),
            }
            for s in order
            if wear[s]
        ]

    def lifetime_years(self, seconds: float) -> float | None:
        """Years until the first sector reaches its endurance (or the module its rating),
        if the workload's write rate over `seconds` went on; None when nothing wore."""
        if seconds <= 0:
            return None
        m = self.medium
        if m.wear_levelled:
            if not m.endurance_pbw or not self.bytes_programmed:
                return None
            rate = self.bytes_programmed / seconds
            return m.endurance_pbw * 1e15 / rate / SECONDS_PER_YEAR
        if not m.endurance_cycles:
            return None
        wear = self.sector_erases if not m.in_place else self.sector_programs
        # In-place media wear per cell: a sector's programs spread over its pages.
        worst = float(wear.max()) if not m.in_place else float(wear.max()) / self.sector_pages
        if worst <= 0:
            return None
        return m.endurance_cycles / (worst / seconds) / SECONDS_PER_YEAR

    def summary(self, seconds: float | None = None) -> dict[str, Any]:
        """JSON-able: the medium, modelled time by kind, wear and write amplification."""
        out: dict[str, Any] = {
            "medium": self.medium.name,
            "modelled_ns": {k: round(v) for k, v in self.modelled_ns.items()},
            "modelled_ns_total": round(self.total_ns),
            "bytes_written_back": self.bytes_written_back,
            "bytes_programmed": self.bytes_programmed,
            "bytes_erased": self.bytes_erased,
            "erases": self.erases,
            "write_amplification": self.write_amplification(),
            "worst_sectors": self.worst_sectors(),
        }
        if seconds is not None:
            out["lifetime_years"] = self.lifetime_years(seconds)
        return out
