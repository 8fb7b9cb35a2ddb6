"""`MemoryManager.dirty_counts`: what a crash now would lose, per inode (the image's dirty summary)."""

from __future__ import annotations


def test_dirty_counts_follow_writes_and_writeback(make_mm) -> None:
    mm, backing, _ = make_mm(dram_pages=16)
    assert mm.dirty_counts() == {}
    mm.write(5, 0, b"a" * 4096 * 3)
    mm.write(9, 4096, b"b")
    assert mm.dirty_counts() == {5: 3, 9: 1}
    mm.fsync(5)
    assert mm.dirty_counts() == {9: 1}
    mm.sync_all()
    assert mm.dirty_counts() == {}
