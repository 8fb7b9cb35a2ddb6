"""An extent map's lookup of one page (fsync's usual batch, bmap of one page) gives
the block the vectorised lookup of many pages gives, holes and ends included."""

from __future__ import annotations

import numpy as np

from nvramfs.image.extents import _Ext


def test_one_page_lookup_is_the_batch_lookup() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        n = int(rng.integers(0, 12))
        lens = rng.integers(1, 9, n)
        gaps = rng.integers(0, 5, n)
        lblk = np.cumsum(gaps + np.r_[0, lens[:-1]]).astype(np.int64)
        pblk = rng.integers(1, 10_000, n).astype(np.int64)
        e = _Ext(lblk, lens.astype(np.int64), pblk, [])
        pages = np.arange(0, int(lblk[-1] + lens[-1]) + 3 if n else 5, dtype=np.int64)
        batch = e.lookup(pages)
        one = [int(e.lookup(pages[k : k + 1])[0]) for k in range(len(pages))]
        assert one == batch.tolist() == [e.lookup_one(int(p)) if n else 0 for p in pages]
        if n:  # every mapped page found, every gap a hole
            assert np.count_nonzero(batch) == int(lens.sum())
