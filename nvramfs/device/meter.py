"""How the device model hears what mm moved, without mm knowing of it.

Two taps:

- the **counters** mm already keeps (page accesses, faults by kind,
  promotions, demotions, COW): a MemoryManager built with `device=meter`
  calls `Meter.account(counters)` each time it reads its counters (every
  tick's `counters` event, `stats()`, unmount), which prices what changed
  since the last call and answers `modelled_ns`;
- the **backing**: every `write_pages` call is one writeback batch, and its
  answer names the blocks programmed (`Meter.backing`), which is what NOR's
  erase accounting needs. `free_blocks` tells the model of blocks the image
  freed, where the caller knows them.

A live mount and a replay of its trace run the same mm calls, so they give
the same counters and the same batches: the same modelled time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .model import DeviceModel

# The counters a price is computed from (docs/COSTS.md, "From counters").
_TAPPED = ("reads", "writes", "pagecache_hit", "xip_read", "cow", "hole", "promote", "demote")


def _flat(counters: dict[str, Any]) -> dict[str, int]:
    """The tapped counters out of a `counters` object (docs/EVENTS.md)."""
    faults = counters.get("faults", {})
    acc = counters.get("accesses", {})
    mig = counters.get("migrations", {})
    return {
        "reads": int(acc.get("read", 0)),
        "writes": int(acc.get("write", 0)),
        "pagecache_hit": int(faults.get("pagecache_hit", 0)),
        "xip_read": int(faults.get("xip_read", 0)),
        "cow": int(faults.get("cow", 0)),
        "hole": int(faults.get("hole", 0)),
        "promote": int(sum(mig.get("promote", {}).values())),
        "demote": int(sum(mig.get("demote", {}).values())),
    }


class Meter:
    """Feeds a `DeviceModel` from mm's counters and the backing's writebacks."""

    def __init__(self, model: DeviceModel) -> None:
        self.model = model
        self._last = dict.fromkeys(_TAPPED, 0)

    def account(self, counters: dict[str, Any]) -> dict[str, int]:
        """Price what changed since the last call; returns `modelled_ns` (rounded, by kind)."""
        now = _flat(counters)
        d = {k: now[k] - self._last[k] for k in _TAPPED}
        self._last = now
        m = self.model
        # Every store lands in a frame (a COW or a hole fill first makes one):
        # stores and frame-served loads are DRAM page accesses.
        m.hit(d["pagecache_hit"] + d["writes"])
        # Loads not served by a frame read NVRAM, but for the zero page.
        m.xip_read(max(0, d["reads"] - d["pagecache_hit"] - d["hole"]))
        m.fault(d["xip_read"] + d["cow"] + d["hole"])
        m.copy_in("promote", d["promote"])
        m.copy_in("cow", d["cow"])
        m.demote(d["demote"])
        return self.modelled_ns()

    def modelled_ns(self) -> dict[str, int]:
        return {k: round(v) for k, v in self.model.modelled_ns.items()}

    def wear(self, seconds: float) -> dict[str, Any]:
        """The `wear` event for a session of `seconds`."""
        return wear_event(self.model, seconds)

    def free_blocks(self, blocks: Sequence[int] | np.ndarray) -> None:
        self.model.free(np.asarray(blocks, dtype=np.int64))

    def backing(self, backing: Any) -> MeteredBacking:
        return MeteredBacking(backing, self)


class MeteredBacking:
    """A backing whose every `write_pages` batch is priced as one writeback."""

    def __init__(self, inner: Any, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter
        # The read path's calls go straight to the backing.
        self.bmap = inner.bmap
        self.block_view = inner.block_view

    def write_pages(
        self, ino: int, indices: np.ndarray, pages: Sequence[Any], **kw: Any
    ) -> np.ndarray:
        blocks = self._inner.write_pages(ino, indices, pages, **kw)
        self._meter.model.writeback(np.asarray(blocks, dtype=np.int64))
        return blocks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


WEAR_BINS = 1024


def wear_bins(per_sector: np.ndarray, nbins: int = WEAR_BINS) -> tuple[list[int], int]:
    """Per-sector counts summed into at most `nbins` bins; returns (bins, sectors per bin)."""
    n = len(per_sector)
    per_bin = max(1, -(-n // nbins))
    padded = np.zeros(-(-n // per_bin) * per_bin, dtype=np.int64)
    padded[:n] = per_sector
    return padded.reshape(-1, per_bin).sum(axis=1).tolist(), per_bin


def wear_event(model: DeviceModel, seconds: float) -> dict[str, Any]:
    """The `wear` event's fields (docs/EVENTS.md): the model's summary and binned wear."""
    out = model.summary(seconds)
    out["seconds"] = seconds
    out["sector_pages"] = model.sector_pages
    out["nr_sectors"] = model.nr_sectors
    out["erase_bins"], out["sectors_per_bin"] = wear_bins(model.sector_erases)
    out["program_bins"], _ = wear_bins(model.sector_programs)
    return out
