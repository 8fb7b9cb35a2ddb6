"""The meter prices what a real MemoryManager did, from its counters and its writebacks."""

from __future__ import annotations

import numpy as np
import pytest

from nvramfs.device import DeviceModel, kernel_costs, load_medium
from nvramfs.device.meter import Meter
from nvramfs.events import schema
from nvramfs.mm import MemoryManager
from nvramfs.mm.backing import MemBacking

PAGE = 4096
K = kernel_costs()


class ListEvents:
    trace_faults = False
    t0 = 0.0

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def emit(self, ev: str, **fields):
        self.events.append((ev, fields))

    def flush(self, wait: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def setup(medium: str = "optane", dram_pages: int = 64):
    backing = MemBacking(512)
    backing.create(1, bytes(range(256)) * 16 * 8)  # 8 pages of data
    programmed = np.zeros(512, dtype=bool)
    programmed[backing.bmap(1, 0, 8)] = True
    model = DeviceModel(load_medium(medium), backing.nr_blocks, programmed=programmed)
    meter = Meter(model)
    sink = ListEvents()
    mm = MemoryManager(meter.backing(backing), dram_pages, policy="none", events=sink, device=meter)
    return mm, meter, model, sink


def test_xip_reads_and_a_cow_priced_from_the_counters():
    mm, meter, model, _ = setup()
    for i in range(4):
        mm.read(1, i * PAGE, PAGE)  # 4 XIP faults and reads
    mm.read(1, 0, PAGE)  # a fifth XIP read, no fault
    mm.write(1, 5 * PAGE, b"x")  # a COW of an XIP page into a frame, one store
    ns = mm.stats()["modelled_ns"]
    medium = load_medium("optane")
    dram = load_medium("dram")
    assert ns["xip_read"] == round(5 * medium.read_ns())
    assert ns["fault"] == round(5 * K.minor_fault_ns)  # 4 xip_read faults + the COW
    assert ns["cow"] == round(medium.read_ns() + K.copy_4k_ns)
    assert ns["hit"] == round(dram.read_ns())  # the store into the frame
    assert ns["writeback"] == 0
    # Reading the counters again with nothing new adds nothing.
    assert mm.stats()["modelled_ns"] == ns


def test_fsync_is_one_batch_and_nor_erases_once_per_sector():
    mm, meter, model, _ = setup("nor")
    for i in range(3):
        mm.write(1, i * PAGE, b"y" * 10)
    mm.fsync(1)
    assert model.erases == 1  # three rewritten pages of one sector: one erase cycle
    assert model.bytes_written_back == 3 * PAGE
    # The sector's other 5 live pages were read out and programmed back.
    assert model.bytes_programmed == 8 * PAGE
    assert model.modelled_ns["erase"] > 0 and model.modelled_ns["writeback"] > 0


def test_counters_events_carry_modelled_ns_and_the_total_is_the_sum():
    mm, meter, model, sink = setup()
    mm.read(1, 0, 2 * PAGE)
    mm.tick()
    counters = [f for ev, f in sink.events if ev == schema.COUNTERS]
    assert counters, "the tick emits counters"
    ns = counters[-1]["modelled_ns"]
    assert ns["xip_read"] == pytest.approx(model.modelled_ns["xip_read"], abs=1)
    assert model.total_ns == pytest.approx(sum(model.modelled_ns.values()))
