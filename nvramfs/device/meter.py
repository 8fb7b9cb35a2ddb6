"""How the device model hears what mm moved, without mm knowing of it.

Two taps, both outside mm:

- the **counters** mm already keeps (page accesses, faults by kind,
  promotions, demotions, COW): `Meter.account(counters)` prices what changed
  since the last call. The event writer handed to mm is wrapped
  (`Meter.events`) so that every `counters` event is accounted first and
  carries `modelled_ns`;
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

from ..events import schema
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

    def free_blocks(self, blocks: Sequence[int] | np.ndarray) -> None:
        self.model.free(np.asarray(blocks, dtype=np.int64))

    def events(self, writer: Any) -> MeteredEvents:
        return MeteredEvents(writer, self)

    def backing(self, backing: Any) -> MeteredBacking:
        return MeteredBacking(backing, self)


class MeteredEvents:
    """An event writer that accounts every `counters` event and adds `modelled_ns` to it."""

    def __init__(self, inner: Any, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter

    def emit(self, ev: str, **fields: Any) -> Any:
        if ev == schema.COUNTERS:
            fields["modelled_ns"] = self._meter.account(fields)
        return self._inner.emit(ev, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class MeteredBacking:
    """A backing whose every `write_pages` batch is priced as one writeback."""

    def __init__(self, inner: Any, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter

    def write_pages(self, ino: int, indices: np.ndarray, pages: Sequence[Any]) -> np.ndarray:
        blocks = self._inner.write_pages(ino, indices, pages)
        self._meter.model.writeback(np.asarray(blocks, dtype=np.int64))
        return blocks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
