"""The writeback batch's cheaper parts leave exactly what the plain rules leave.

- `_mkclean_fs_ptes` (page_mkclean of a batch through the filesystem's vma)
  cleans exactly the present ptes that map the batch's pages, whichever path
  it takes (sorted runs as slices, sorted with gaps, unsorted).
- `FrameRows.page_rows()` names the frames, so a batch written back to a real
  image lands there byte for byte, frames scattered or not.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from nvramfs.image import Image
from nvramfs.image.mkfs import mkfs
from nvramfs.mm import MemoryManager
from nvramfs.mm.filemap import FrameRows, _mkclean_fs_ptes
from nvramfs.mm.flags import _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, PTE_PFN_SHIFT
from nvramfs.mm.vma import PTE_SHIFT, PTRS_PER_PTE

PAGE = 4096


class _Chunk:
    def __init__(self) -> None:
        self.pte_np = np.zeros(PTRS_PER_PTE, dtype=np.int64)


class _MM:
    def __init__(self, nchunks: int) -> None:
        self.pgd = {no: _Chunk() for no in range(nchunks)}


class _VMA:
    def __init__(self, nchunks: int) -> None:
        self.vm_mm = _MM(nchunks)


def _expected(ptes: dict[int, np.ndarray], pages: np.ndarray, indices: np.ndarray) -> None:
    """The rule, one pte at a time: present and mapping the page -> not RW, not dirty."""
    for page, index in zip(pages.tolist(), indices.tolist(), strict=True):
        chunk = ptes.get(index >> PTE_SHIFT)
        if chunk is None:
            continue
        slot = index & (PTRS_PER_PTE - 1)
        pte = int(chunk[slot])
        if pte & _PAGE_PRESENT and pte >> PTE_PFN_SHIFT == page:
            chunk[slot] = pte & ~(_PAGE_RW | _PAGE_DIRTY)


@pytest.mark.parametrize("seed", range(40))
def test_mkclean_of_a_batch_is_the_per_pte_rule(seed: int) -> None:
    rnd = random.Random(seed)
    nchunks = 4
    vma = _VMA(nchunks)
    del vma.vm_mm.pgd[rnd.randrange(nchunks)]  # a chunk never allocated
    span = nchunks * PTRS_PER_PTE
    shape = rnd.choice(["run", "gaps", "unsorted", "one"])
    n = 1 if shape == "one" else rnd.randint(2, 900)
    if shape == "run":
        first = rnd.randrange(span - n)
        indices = np.arange(first, first + n, dtype=np.int64)
    else:
        indices = np.array(sorted(rnd.sample(range(span), n)), dtype=np.int64)
        if shape == "unsorted":
            indices = indices[np.random.default_rng(seed).permutation(n)]
    pages = np.array(rnd.sample(range(1, 50_000), n), dtype=np.int64)
    bits = _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
    for chunk_no, chunk in vma.vm_mm.pgd.items():
        for slot in range(PTRS_PER_PTE):
            r = rnd.random()
            index = chunk_no * PTRS_PER_PTE + slot
            if r < 0.6:  # maps the batch's page when the index is in the batch
                hit = np.flatnonzero(indices == index)
                pfn = int(pages[hit[0]]) if len(hit) else rnd.randrange(1, 50_000)
                chunk.pte_np[slot] = (pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT | bits
            elif r < 0.75:  # another pfn: left alone
                chunk.pte_np[slot] = (60_000 << PTE_PFN_SHIFT) | _PAGE_PRESENT | bits
            elif r < 0.85:  # not present (a bmap hint): left alone
                chunk.pte_np[slot] = (int(pages[0]) << PTE_PFN_SHIFT) | bits
    want = {no: c.pte_np.copy() for no, c in vma.vm_mm.pgd.items()}
    _expected(want, pages, indices)
    _mkclean_fs_ptes(vma, pages, indices)
    for no, chunk in vma.vm_mm.pgd.items():
        assert np.array_equal(chunk.pte_np, want[no]), (shape, no)


def test_frame_rows_name_the_frames_without_copying() -> None:
    class _M:
        data = np.arange(8 * PAGE, dtype=np.uint32).astype(np.uint8).reshape(8, PAGE)

    frames = np.array([5, 1, 6])
    src, rows = FrameRows(_M, frames).page_rows()
    assert src is _M.data and rows is frames
    assert np.array_equal(np.asarray(FrameRows(_M, frames)), _M.data[frames])


def test_a_batch_of_scattered_frames_reaches_the_image_byte_for_byte(tmp_path: Path) -> None:
    """Frames scattered by reclaim (a budget a quarter of the file), flusher batches
    and an fsync: the image holds exactly what was written."""
    path = tmp_path / "i.img"
    mkfs(path, size=8 << 20)
    img = Image.open(path)
    f = img.create(1, b"f", 0o644, 0, 0)
    img.reserve(256)
    mm = MemoryManager(img, 64)
    rnd = random.Random(3)
    want = bytearray(256 * PAGE)
    for _ in range(300):
        off = rnd.randrange(0, len(want) - 3 * PAGE)
        chunk = rnd.randbytes(rnd.randint(1, 3 * PAGE))
        mm.write(f, off, chunk)
        want[off : off + len(chunk)] = chunk
        if rnd.random() < 0.1:
            mm.writeback_batch()
    size = max(i + 1 for i in range(len(want)) if want[i]) if any(want) else 0
    mm.fsync(f)
    img.setattr(f, ordered_size=size, still_dirty=mm.dirty_indices(f))
    mm.close()
    n = -(-size // PAGE)
    blocks = img.bmap(f, 0, n)
    got = b"".join(bytes(img.block_view(int(b))) if b else bytes(PAGE) for b in blocks)
    assert got[:size] == bytes(want[:size])
    img.close()


def test_bench_writeback_times_batches_of_exactly_the_dirtied_pages(tmp_path: Path, capsys) -> None:
    """tools/bench_writeback.py: every timed batch is the 1024 pages its round
    dirtied (it exits otherwise), and it prints the three rows it documents."""
    import importlib.util

    tool = Path(__file__).resolve().parents[2] / "tools" / "bench_writeback.py"
    spec = importlib.util.spec_from_file_location("bench_writeback", tool)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    assert mod.main(["--dram", "16M", "--rounds", "3", "--dir", str(where)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"batch", "gather", "memcpy"} <= rows and "batch/gather" in out
