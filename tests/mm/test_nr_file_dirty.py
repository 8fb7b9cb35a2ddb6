"""NR_FILE_DIRTY: the running count of dirty page-cache frames that balance_dirty_pages
and the flusher read, tied to a full count of the struct pages after every step.
(check_invariants makes the same check, after every step of the state-machine test.)"""

from __future__ import annotations

import numpy as np
import pytest
from mm_helpers import PAGE, check_invariants, pattern

from nvramfs.mm.flags import VM_MAYREAD, VM_MAYWRITE, VM_READ, VM_SHARED, VM_WRITE
from nvramfs.mm.machine import PG_ANON, PG_DIRTY

PRIVATE_RW = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE


def _full_count(mm) -> int:
    f = mm.machine.flags
    return int(np.count_nonzero((f & (PG_DIRTY | PG_ANON)) == PG_DIRTY))


def _tied(mm) -> int:
    n = mm.nr_dirty()
    assert n == _full_count(mm) == mm.machine.count_file_dirty()
    return n


@pytest.mark.parametrize(
    ("policy", "kernel"),
    [("2q", "modern"), ("clock", "modern"), ("lru", "modern"), ("2q", "2.6.26")],
)
def test_running_count_follows_random_writes_reclaim_and_writeback(
    make_mm, policy: str, kernel: str
) -> None:
    """Stores batched and page by page, direct reclaim (the tick policies' batches and
    lru's one frame at a time), the flusher, fsync, truncate, evict, under today's
    rules and 2008's: after each, the running count is the full count."""
    mm, backing, _ = make_mm(dram_pages=48, policy=policy, kernel=kernel)
    rng = np.random.default_rng(7)
    for ino in (2, 3):
        backing.create(ino, pattern(96, seed=ino), holes=[5, 40])
    for step in range(400):
        ino = int(rng.choice([2, 3]))
        op = int(rng.integers(0, 10))
        if op < 5:
            off = int(rng.integers(0, 96 * PAGE))
            n = int(rng.choice([1, 100, PAGE, 5 * PAGE, 17 * PAGE + 3]))
            mm.write(ino, off, bytes([step & 255]) * n)
            mm.balance_dirty_pages(ino)
        elif op == 5:
            mm.writeback_batch()
        elif op == 6:
            mm.fsync(ino)
        elif op == 7:
            mm.truncate(ino, int(rng.integers(0, 96 * PAGE)))
        elif op == 8:
            mm.tick()
        else:
            size = mm.i_size(ino) or 0
            if size:
                off = int(rng.integers(0, size))
                mm.read(ino, off, min(3 * PAGE, size - off))
        _tied(mm)
    mm.evict_inode(2)
    _tied(mm)
    mm.sync_all()
    assert _tied(mm) == 0
    check_invariants(mm)


def test_anonymous_dirty_pages_are_not_counted(make_mm) -> None:
    """A private store's COW page is dirty anonymous memory, not a file page to write back."""
    mm, backing, _ = make_mm(dram_pages=8)
    backing.create(2, pattern(4))
    vma = mm.mmap(2, 0, 4, PRIVATE_RW)
    mm.access(vma, vma.vm_start, True)
    mm.access(vma, vma.vm_start + PAGE, True)
    assert _tied(mm) == 0
    mm.write(2, 2 * PAGE, b"x")
    assert _tied(mm) == 1
    mm.munmap(vma)
    assert _tied(mm) == 1
    check_invariants(mm)


def test_failed_writeback_leaves_the_pages_counted_dirty(make_mm, monkeypatch) -> None:
    """write_pages fails (a full device): the pages stay dirty, and counted."""
    mm, backing, _ = make_mm(dram_pages=16)
    mm.write(2, 0, b"a" * (6 * PAGE))
    assert _tied(mm) == 6

    def full(*args, **kwargs):
        raise OSError(28, "no space left on device")

    monkeypatch.setattr(backing, "write_pages", full)
    with pytest.raises(OSError):
        mm.fsync(2)
    assert _tied(mm) == 6
    monkeypatch.undo()
    assert mm.fsync(2) == 6
    assert _tied(mm) == 0
    check_invariants(mm)


def test_dram_budget_shrink_and_grow_keep_the_count(make_mm) -> None:
    mm, _, _ = make_mm(dram_pages=32)
    mm.write(2, 0, b"b" * (30 * PAGE))
    assert _tied(mm) == 30
    mm.set_dram_budget(8)  # reclaim writes the dirty victims back first
    assert _tied(mm) <= 8
    mm.set_dram_budget(32)
    mm.write(3, 0, b"c" * (10 * PAGE))
    _tied(mm)
    check_invariants(mm)


def test_stores_under_2008_rules_keep_the_count(make_mm) -> None:
    """2.6.26-rc1 copies a raw pfn into an anonymous page even in a shared mapping:
    those pages are not dirty page-cache pages, and the count stays 0."""
    mm, backing, _ = make_mm(dram_pages=16, kernel="2.6.26-rc1")
    backing.create(2, pattern(8))
    mm.write(2, 0, b"r" * (3 * PAGE + 5))
    assert int(np.count_nonzero(mm.machine.flags & PG_ANON)) == 4
    assert _tied(mm) == 0
    vma = mm.mmap(2, 0, 8, VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_SHARED)
    mm.access(vma, vma.vm_start + 5 * PAGE, True)
    assert _tied(mm) == 0
    mm.munmap(vma)
    mm.sync_all()
    assert _tied(mm) == 0
    check_invariants(mm)
