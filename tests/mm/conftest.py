"""Fixtures for the mm layer: a manager over an in-memory NVRAM, with a fake clock."""

from __future__ import annotations

import pytest
from mm_helpers import FakeClock

from nvramfs.events.writer import ListEventWriter
from nvramfs.mm import MemBacking, MemoryManager


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_mm(clock: FakeClock):
    def make(
        dram_pages: int = 8,
        policy: str = "none",
        pte_special: bool | None = None,
        nr_blocks: int = 1024,
        relocate: bool = False,
        **kw,
    ) -> tuple[MemoryManager, MemBacking, ListEventWriter]:
        backing = MemBacking(nr_blocks, relocate=relocate)
        ev = ListEventWriter(clock=clock)
        mm = MemoryManager(
            backing,
            dram_pages,
            policy=policy,
            events=ev,
            pte_special=pte_special,
            clock=clock,
            **kw,
        )
        return mm, backing, ev

    return make
