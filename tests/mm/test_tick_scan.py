"""The tick's policy scan, vectorised over every touched chunk at once, decides exactly what
the scan one page-table chunk at a time decided: same promotions and demotions in the same
order, same policy words, same young bits cleared, same access events.

`reference_tick` below is the per-chunk tick as it stood before the scan was vectorised
(kept here as the reference); each random history is run on managers that differ only in
which tick they call, and on one whose event writer keeps nothing (the scan then builds no
access events).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mm_helpers import PAGE, FakeClock, check_invariants

from nvramfs.events import schema
from nvramfs.events.writer import ListEventWriter, NullEventWriter
from nvramfs.mm import MemBacking, MemoryManager
from nvramfs.mm.bug import VMFaultSignal
from nvramfs.mm.flags import _PAGE_ACCESSED, _PAGE_PRESENT, PTE_PFN_SHIFT, VM_MAYREAD, VM_READ
from nvramfs.mm.vma import PTE_SHIFT

INOS = (2, 3)
NPAGES = 1100  # three page-table chunks per file


def reference_end_interval(mm: MemoryManager, now: float) -> list[tuple[Any, Any, bool, Any]]:
    touched, mm._touched = mm._touched, []
    mm._gen += 1
    t0, t1 = mm._t_interval - mm.events_t0, now - mm.events_t0
    mm._t_interval = now
    per_file: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    out = []
    for chunk in sorted(touched, key=lambda c: (c.owner.name, c.no)):
        reads = chunk.reads_np.astype(np.int64)
        writes = chunk.writes_np.astype(np.int64)
        hits = reads + writes
        idx = np.flatnonzero(hits)
        vma = chunk.owner.vmas[0] if chunk.owner.vmas else None
        live = vma is not None and vma.vm_mm.pgd.get(chunk.no) is chunk
        if len(idx) and vma is not None and vma.vm_file is not None:
            f = vma.vm_file
            per_file.setdefault((f.host, f.i_generation), []).append(
                ((chunk.no << PTE_SHIFT) + idx, reads[idx], writes[idx])
            )
        chunk.reads_np[:] = 0
        chunk.writes_np[:] = 0
        out.append((chunk, vma, live, hits))
    for ino, gen in sorted(per_file):
        parts = per_file[(ino, gen)]
        mm.events.emit(
            schema.ACCESS,
            ino=ino,
            gen=gen,
            t0=round(t0, 6),
            t1=round(t1, 6),
            pages=np.concatenate([p[0] for p in parts]).tolist(),
            reads=np.concatenate([p[1] for p in parts]).tolist(),
            writes=np.concatenate([p[2] for p in parts]).tolist(),
        )
    return out


def reference_tick(mm: MemoryManager) -> None:
    """The tick with the policy's scan called once per touched chunk (the reference)."""
    m = mm.machine
    now = mm.clock()
    mm._tick += 1
    policy = mm.policy
    policy.begin_tick(mm._tick)
    mm._inactive = None
    dirty = mm._dirty_frames()
    if len(dirty):
        old = dirty[m.dirtied_at[dirty] <= now - mm.writeback_seconds]
        mm._writeback(old, schema.REASON_DIRTY_EXPIRE)
    cands = []
    for chunk, vma, live, hits in reference_end_interval(mm, now):
        if not live:
            continue
        ptes = chunk.pte_np
        present = (ptes & _PAGE_PRESENT) != 0
        young = present & ((ptes & _PAGE_ACCESSED) != 0)
        pfns = ptes >> PTE_PFN_SHIFT
        frames = np.where(present & (pfns < mm._nr_frames), pfns, 0)
        promotable = pfns >= mm._base
        scores = policy.scan_chunk(chunk.state, hits, young, frames, promotable)
        ptes &= ~_PAGE_ACCESSED
        c = np.flatnonzero(scores > 0)
        if len(c):
            cands.append(((chunk.no << PTE_SHIFT) + c, vma.vm_file.host, scores[c]))
    if cands:
        idx = np.concatenate([c[0] for c in cands])
        inos = np.concatenate([np.full(len(c[0]), c[1], dtype=np.int64) for c in cands])
        scores = np.concatenate([c[2] for c in cands])
    else:
        idx = inos = np.zeros(0, dtype=np.int64)
        scores = np.zeros(0, dtype=np.float32)
    mm._run_policy(idx, inos, scores)
    policy.end_tick()
    mm.events.emit(schema.COUNTERS, **mm._counters())
    mm.events.flush()


def _make(policy: str, dram: int, events: Any, clock: FakeClock) -> MemoryManager:
    backing = MemBacking(2 * NPAGES + 64)
    for ino in INOS:
        backing.create(ino, bytes(NPAGES * PAGE), holes=set(range(600, 640)))
    return MemoryManager(backing, dram, policy, events=events, clock=clock)


def _snapshot(mm: MemoryManager) -> dict[str, Any]:
    m, p = mm.machine, mm.policy
    chunks = {}
    for ino, vma in mm._vmas.items():
        for no, c in vma.vm_mm.pgd.items():
            chunks[(ino, no)] = (c.pte_np.tobytes(), c.reads_np.tobytes(), c.state.tobytes())
    return {
        "stats": mm.stats(),
        "chunks": chunks,
        "frames": (m.mapping.tobytes(), m.index.tobytes(), list(m.free_list)),
        "policy": (p.frame_score.tobytes(), p.frame_ref.tobytes(), p.frame_since.tobytes()),
        "refbit": getattr(p, "refbit", np.zeros(0)).tobytes(),
    }


def _strip(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("seq", "t")} for e in events]


op = st.one_of(
    st.tuples(
        st.just("read"), st.sampled_from(INOS), st.integers(0, NPAGES - 1), st.integers(1, 3)
    ),
    st.tuples(st.just("hot"), st.sampled_from(INOS), st.integers(0, 15), st.integers(1, 6)),
    st.tuples(st.just("write"), st.sampled_from(INOS), st.integers(0, NPAGES - 1), st.just(1)),
    st.tuples(st.just("truncate"), st.sampled_from(INOS), st.integers(0, NPAGES), st.just(0)),
    st.tuples(st.just("mapped"), st.sampled_from(INOS), st.integers(0, 63), st.just(0)),
    st.tuples(st.just("load"), st.sampled_from(INOS), st.integers(0, 15), st.just(0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from(["none", "mq", "2q", "clock"]),
    dram=st.integers(4, 24),
    ticks=st.lists(st.lists(op, max_size=40), min_size=1, max_size=8),
)
def test_vectorised_scan_decides_as_the_per_chunk_scan(
    policy: str, dram: int, ticks: list[list[tuple[str, int, int, int]]]
) -> None:
    clock = FakeClock()
    runs = [
        (_make(policy, dram, ListEventWriter(clock=clock), clock), MemoryManager.tick),
        (_make(policy, dram, ListEventWriter(clock=clock), clock), reference_tick),
        (_make(policy, dram, NullEventWriter(), clock), MemoryManager.tick),
    ]
    procs: list[dict[int, Any]] = [{} for _ in runs]
    for interval in ticks:
        for (mm, _), vmas in zip(runs, procs, strict=True):
            for kind, ino, page, n in interval:
                size = mm.i_size(ino) or 0
                if kind == "hot":  # a small hot set, read again and again
                    page, n = page * 37 % NPAGES, n
                    for _ in range(n - 1):
                        if page * PAGE < size:
                            mm.read(ino, page * PAGE, PAGE)
                    n = 1
                if kind in ("read", "hot"):
                    length = min(n * PAGE, size - page * PAGE)  # the caller clamps to EOF
                    if length > 0:
                        mm.read(ino, page * PAGE, length)
                elif kind == "write":
                    if page * PAGE + 71 > size:
                        mm.set_size(ino, page * PAGE + 71)
                    mm.write(ino, page * PAGE + 7, b"w" * 64)
                elif kind == "truncate":
                    mm.truncate(ino, page * PAGE)
                elif kind == "load":
                    # A load through the filesystem's vma that no read counts (as a
                    # process's access to a shared mapping): a young pte with no hits.
                    mm.address_space(ino)
                    if page * 37 * PAGE < size:
                        mm.access(mm._vmas[ino], page * 37 * PAGE, False)
                else:  # a process's private mapping of the file's first pages
                    if ino not in vmas:
                        vmas[ino] = mm.mmap(ino, 0, 64, VM_READ | VM_MAYREAD)
                    v = vmas[ino]
                    try:
                        mm.access(v, v.vm_start + page * PAGE, False)
                    except VMFaultSignal as exc:  # past EOF: the same in every run
                        vmas.setdefault(-1, []).append(str(exc))
        clock.advance(1.0)
        for mm, tick in runs:
            tick(mm)
        snaps = [_snapshot(mm) for mm, _ in runs]
        assert snaps[0] == snaps[1], "vectorised scan and per-chunk scan differ"
        assert snaps[2] == snaps[0], "the scan decides differently without an event log"
    evs = [_strip(mm.events.events) for mm, _ in runs[:2]]
    assert evs[0] == evs[1]
    assert procs[0].get(-1) == procs[1].get(-1) == procs[2].get(-1)
    for mm, _ in runs:
        check_invariants(mm)


def test_scan_promotes_the_hot_pages_of_every_chunk(make_mm, clock) -> None:
    """A hot page in each of several page-table chunks: one tick promotes them all,
    best score first, and clears every young bit it swept."""
    mm, backing, ev = make_mm(dram_pages=64, policy="mq", nr_blocks=4096)
    backing.create(2, bytes(3000 * PAGE))
    hot = [5, 700, 1500, 2600]  # chunks 0, 1, 2, 5
    for _ in range(2):
        for k, page in enumerate(hot):
            for _ in range(8 + k):
                mm.read(2, page * PAGE, PAGE)
        clock.advance(1.0)
        mm.tick()
    promoted = [e["index"] for e in ev.of(schema.MIGRATE) if e["to"] == "pagecache"]
    assert promoted == hot[::-1]  # the most read first
    for chunk in mm._vmas[2].vm_mm.pgd.values():
        assert not np.any(chunk.pte_np & _PAGE_ACCESSED)
