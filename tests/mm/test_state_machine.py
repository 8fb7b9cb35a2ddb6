"""Random sequences of faults, writes, promotions, demotions, unmaps, truncates and evictions,
under each kernel's rules.

After every step: no refcount below zero, a frame free exactly when
unreferenced, every special pte at NVRAM, every normal pte's frame counting
it in its mapcount, the DRAM budget held; every file reads back as a
plain bytearray model of it says; a mapped access wholly past the end of a
file is SIGBUS; and the event log agrees with the counters and with the page
cache: replaying its migrate / cow / zero / writeback / drop events gives
exactly the page-cache pages mm holds, and every counter of a reason is the
number of its events.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)
from mm_helpers import PAGE, FakeClock, check_invariants, pattern

from nvramfs.events import schema
from nvramfs.events.writer import ListEventWriter
from nvramfs.mm import MemBacking, MemoryManager, unmap_mapping_pages
from nvramfs.mm.bug import VMFaultSignal
from nvramfs.mm.flags import VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_READ, VM_SHARED, VM_WRITE
from nvramfs.mm.machine import PG_ANON

INOS = (2, 3, 4)
MAXPAGES = 12
# Where each file's window of MAXPAGES pages starts: ino 4's straddles a page-table chunk
# boundary (512 pages), behind a long run of holes.
BASE = {2: 0, 3: 0, 4: 508}
RC1 = "2.6.26-rc1"


class MMMachine(RuleBasedStateMachine):
    vmas = Bundle("vmas")

    @initialize(
        rules=st.sampled_from([(True, "modern"), (False, "modern"), (None, "2.6.26"), (None, RC1)]),
        policy=st.sampled_from(["none", "mq", "2q", "clock"]),
        dram=st.integers(4, 10),
        relocate=st.booleans(),
        seed=st.integers(0, 1000),
    )
    def setup(self, rules, policy: str, dram: int, relocate: bool, seed: int) -> None:
        pte_special, kernel = rules
        self.clock = FakeClock()
        self.backing = MemBacking(512, relocate=relocate)
        self.events = ListEventWriter(clock=self.clock)
        self.mm = MemoryManager(
            self.backing,
            dram,
            policy=policy,
            events=self.events,
            pte_special=pte_special,
            clock=self.clock,
            kernel=kernel,
        )
        self.kernel = kernel
        # The page cache as the event log tells it: (ino, index) -> frame.
        self.logged: dict[tuple[int, int], int] = {}
        self.seen = 0
        rng = np.random.default_rng(seed)
        self.model: dict[int, bytearray] = {}
        for ino in INOS:
            self._create(ino, rng, seed)
        self.private: list = []

    def _create(self, ino: int, rng: np.random.Generator, seed: int) -> None:
        base = BASE[ino]
        npages = int(rng.integers(1, 8))
        data = bytearray(base * PAGE) + bytearray(pattern(npages, seed + ino))
        size = (base + npages) * PAGE - int(rng.integers(0, PAGE))
        data[size:] = bytes(len(data) - size)
        holes = list(range(base)) + [base + i for i in range(npages) if rng.random() < 0.25]
        for h in holes[base:]:
            data[h * PAGE : (h + 1) * PAGE] = bytes(PAGE)
        self.backing.create(ino, bytes(data), holes=holes)
        self.backing.set_size(ino, size)  # mm learns it when it first sees the file
        self.model[ino] = bytearray(data[:size])

    # -- the filesystem's data path --------------------------------------------------

    @rule(
        ino=st.sampled_from(INOS), off=st.integers(0, MAXPAGES * PAGE), n=st.integers(1, 3 * PAGE)
    )
    def read(self, ino: int, off: int, n: int) -> None:
        off += BASE[ino] * PAGE
        size = len(self.model[ino])
        if off >= size:
            return
        n = min(n, size - off)
        got = bytes(self.mm.read(ino, off, n))
        assert got == bytes(self.model[ino][off : off + n])

    @rule(
        ino=st.sampled_from(INOS),
        off=st.integers(0, MAXPAGES * PAGE - 1),
        data=st.binary(min_size=1, max_size=2 * PAGE + 10),
    )
    def write(self, ino: int, off: int, data: bytes) -> None:
        if self._anon() > self.mm.machine.dram_pages - 3 or self.kernel == RC1:
            return  # (2.6.26-rc1 mounts are read-only: its write fault loses the data)
        data = data[: MAXPAGES * PAGE - off]
        off += BASE[ino] * PAGE
        self.mm.write(ino, off, data)
        mod = self.model[ino]
        if off > len(mod):
            mod.extend(bytes(off - len(mod)))
        mod[off : off + len(data)] = data

    @rule(ino=st.sampled_from(INOS), size=st.integers(0, MAXPAGES * PAGE))
    def truncate(self, ino: int, size: int) -> None:
        size += BASE[ino] * PAGE
        mod = self.model[ino]
        self.mm.truncate(ino, size)
        self.backing.set_size(ino, size)
        if size < len(mod):
            del mod[size:]
        else:
            mod.extend(bytes(size - len(mod)))

    @rule(ino=st.sampled_from(INOS))
    def open_o_trunc(self, ino: int) -> None:
        self.mm.truncate(ino, 0, reason=schema.REASON_O_TRUNC)
        self.backing.set_size(ino, 0)
        del self.model[ino][:]

    @rule(ino=st.sampled_from(INOS))
    def fsync(self, ino: int) -> None:
        self.mm.fsync(ino)
        mod = self.model[ino]
        npages = (len(mod) + PAGE - 1) // PAGE
        first = min(BASE[ino], npages)
        disk = self.backing.read_file(ino, npages)[first * PAGE : len(mod)]
        assert disk == bytes(mod[first * PAGE :])

    @rule(ino=st.sampled_from(INOS), seed=st.integers(0, 1000))
    def evict_and_reuse(self, ino: int, seed: int) -> None:
        # The file is deleted (its inode number comes back with new contents).
        self.mm.evict_inode(ino)
        self.backing.remove(ino)
        self._create(ino, np.random.default_rng(seed), seed)

    # -- migration ---------------------------------------------------------------------

    @rule(ino=st.sampled_from(INOS), index=st.integers(0, MAXPAGES - 1))
    def promote(self, ino: int, index: int) -> None:
        self.mm.promote(ino, BASE[ino] + index)

    @rule(k=st.integers(0, 100))
    def demote_one(self, k: int) -> None:
        frames = self.mm._cache_frames()
        if len(frames):
            self.mm._demote(int(frames[k % len(frames)]), "ctl")

    @rule()
    def demote_all(self) -> None:
        self.mm.demote_all("ctl")

    @rule(
        ino=st.sampled_from(INOS),
        index=st.integers(0, MAXPAGES),
        nr=st.integers(0, 4),
        even=st.booleans(),
    )
    def unmap(self, ino: int, index: int, nr: int, even: bool) -> None:
        unmap_mapping_pages(self.mm.address_space(ino), BASE[ino] + index, nr, even)

    @rule(dt=st.sampled_from([0.5, 1.0, 6.0]))
    def tick(self, dt: float) -> None:
        self.clock.advance(dt)
        self.mm.tick()

    # -- simulated processes -----------------------------------------------------------

    @rule(
        target=vmas,
        ino=st.sampled_from(INOS),
        pgoff=st.integers(0, 6),
        npages=st.integers(1, 6),
        shared=st.booleans(),
    )
    def mmap(self, ino: int, pgoff: int, npages: int, shared: bool):
        flags = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE
        if shared:
            flags |= VM_SHARED | VM_MAYSHARE
        return self.mm.mmap(ino, BASE[ino] + pgoff, npages, flags)

    def _past_eof(self, vma, addr: int, write: bool) -> bool:
        """A page wholly past the end of the file: the access must be SIGBUS."""
        index = vma.linear_page_index(addr)
        if index < (len(self.model[vma.vm_file.host]) + PAGE - 1) // PAGE:
            return False
        with pytest.raises(VMFaultSignal) as exc:
            self.mm.access(vma, addr, write)
        assert exc.value.signal == "SIGBUS"
        return True

    @rule(vma=vmas, k=st.integers(0, 10))
    def load(self, vma, k: int) -> None:
        if vma not in vma.vm_file.i_mmap:
            return
        addr = vma.vm_start + (k % vma.nr_pages) * PAGE
        if self._past_eof(vma, addr, False):
            return
        pfn = self.mm.access(vma, addr, False)
        index = vma.linear_page_index(addr)
        mod = self.model[vma.vm_file.host]
        if not self._is_anon(pfn):
            page = self._page_bytes(pfn)
            want = bytes(mod[index * PAGE : (index + 1) * PAGE]).ljust(PAGE, b"\0")
            assert page == want

    @rule(vma=vmas, k=st.integers(0, 10), byte=st.integers(0, 255))
    def store(self, vma, k: int, byte: int) -> None:
        if vma not in vma.vm_file.i_mmap or self._anon() > self.mm.machine.dram_pages - 3:
            return
        addr = vma.vm_start + (k % vma.nr_pages) * PAGE
        ino = vma.vm_file.host
        index = vma.linear_page_index(addr)
        if self._past_eof(vma, addr, True):
            return
        if vma.shared:
            # A store through a shared mapping is a store to the file (byte 7 of the page
            # is past EOF only in the last page, where it must stay zero).
            if index * PAGE + 8 > len(self.model[ino]):
                return
            pfn = self.mm.access(vma, addr, True)
            m = self.mm.machine
            if self._is_anon(pfn):
                # 2.6.26-rc1: a raw pfn is copied into an anonymous page even here.
                assert self.kernel == RC1
                m.data[pfn, 7] = byte
                return
            if pfn >= m.nvram_base_pfn:
                # 2.6.26: the raw pfn was made writable in place: the store is to NVRAM.
                assert self.kernel == "2.6.26"
                self.backing._dev[pfn - m.nvram_base_pfn, 7] = byte
            else:
                assert m.pfn_valid(pfn) and pfn
                m.data[pfn, 7] = byte
            self.model[ino][index * PAGE + 7] = byte
            return
        pfn = self.mm.access(vma, addr, True)
        assert self._is_anon(pfn)
        self.mm.machine.data[pfn, 7] = byte  # private: the file must not see it

    @rule(vma=consumes(vmas))
    def munmap(self, vma) -> None:
        if vma in vma.vm_file.i_mmap:
            self.mm.munmap(vma)

    # -- helpers / invariants ------------------------------------------------------------

    def _anon(self) -> int:
        return int(np.count_nonzero(self.mm.machine.flags & PG_ANON))

    def _is_anon(self, pfn: int) -> bool:
        m = self.mm.machine
        return m.pfn_valid(pfn) and bool(m.flags[pfn] & PG_ANON)

    def _page_bytes(self, pfn: int) -> bytes:
        m = self.mm.machine
        if m.pfn_valid(pfn):
            return m.data[pfn].tobytes()
        return bytes(self.backing.block_view(pfn - m.nvram_base_pfn))

    def _replay_log(self) -> None:
        """Apply the events since the last step to the log's picture of the page cache."""
        logged = self.logged
        new = self.events.events[self.seen :]
        self.seen = len(self.events.events)
        for e in new:
            ev = e["ev"]
            if ev == schema.MIGRATE or ev == schema.COW and e["to"] == schema.PAGECACHE:
                key = (e["ino"], e["index"])
                if e["to"] == schema.PAGECACHE:
                    assert key not in logged, f"{ev} into a cached page {key}"
                    logged[key] = e["pfn_to"]
                else:
                    assert logged.pop(key) == e["pfn_from"], f"demote of {key}"
            elif ev == schema.ZERO_EV and e["reason"] == schema.REASON_WRITE:
                key = (e["ino"], e["index"])
                assert key not in logged
                logged[key] = e["pfn"]
            elif ev == schema.ZERO_EV and e["home"] == schema.PAGECACHE:
                assert logged[(e["ino"], e["index"])] == e["pfn"]
            elif ev == schema.WRITEBACK:
                assert logged[(e["ino"], e["index"])] == e["pfn_from"]
            elif ev == schema.DROP:
                assert len(e["pages"]) == len(e["pfns"]) and 0 <= e["dirty"] <= len(e["pages"])
                for index, pfn in zip(e["pages"], e["pfns"], strict=True):
                    assert index >= e["first"]
                    assert logged.pop((e["ino"], index)) == pfn
                assert not any(k[0] == e["ino"] and k[1] >= e["first"] for k in logged)

    def _check_log(self) -> None:
        self._replay_log()
        mm = self.mm
        cached = {(a.host, i): p for a in mm._spaces.values() for i, p in a.pages.items()}
        assert self.logged == cached
        c = mm.stats()
        assert c["frames_used"] - self._anon() == len(cached)
        evs = self.events.events

        def by_reason(kind: str, weight=lambda e: 1, where=lambda e: True) -> dict[str, int]:
            out: dict[str, int] = {}
            for e in evs:
                if e["ev"] == kind and where(e) and weight(e):
                    out[e["reason"]] = out.get(e["reason"], 0) + weight(e)
            return out

        assert c["migrations"]["promote"] == by_reason(
            schema.MIGRATE, where=lambda e: e["to"] == schema.PAGECACHE
        )
        assert c["migrations"]["demote"] == by_reason(
            schema.MIGRATE, where=lambda e: e["to"] == schema.XIP
        )
        assert c["writebacks"] == by_reason(schema.WRITEBACK)
        assert c["drops"] == by_reason(schema.DROP, weight=lambda e: len(e["pages"]))
        assert c["zeroed"] == by_reason(schema.ZERO_EV)
        assert c["xip_writes"] == len(self.events.of(schema.XIP_WRITE))
        sp = c["struct_page"]
        assert sp["mixedmap_bytes"] == 64 * c["frames_used"]
        assert sp["saved_bytes"] == sp["memmap_device_bytes"] - sp["mixedmap_bytes"]

    @invariant()
    def invariants(self) -> None:
        if hasattr(self, "mm"):
            check_invariants(self.mm)
            self._check_log()

    def teardown(self) -> None:
        if not hasattr(self, "mm"):
            return
        self.mm.close()
        check_invariants(self.mm)
        self._check_log()
        for ino, mod in self.model.items():
            npages = (len(mod) + PAGE - 1) // PAGE
            assert self.backing.read_file(ino, npages)[: len(mod)] == bytes(mod)


MMMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMM = MMMachine.TestCase
