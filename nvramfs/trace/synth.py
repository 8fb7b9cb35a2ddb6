"""Synthetic traces in the trace format: for benchmarks and tests, no mount needed.

`read_trace` writes what a mount would record for one file read 4 KiB at a
time with a given page sequence (a tick every `tick_every` accesses, a close
at the end): the file is fully mapped on NVRAM from block 1 on.
"""

from __future__ import annotations

import numpy as np

from .format import OP, Buffer, encode_runs, write_header, write_part

PAGE = 4096


def zipf_pages(npages: int, count: int, theta: float, seed: int = 1) -> np.ndarray:
    """`count` page indices in [0, npages), Zipf(theta) by popularity rank, ranks scattered
    over the file by a fixed permutation (hot pages are not neighbours)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, npages + 1, dtype=np.float64) ** theta
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(count), side="right")
    ranks = np.minimum(ranks, npages - 1)
    return rng.permutation(npages)[ranks].astype(np.int64)


def uniform_pages(npages: int, count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, npages, count, dtype=np.int64)


def read_trace(
    directory: str,
    pages: np.ndarray,
    npages: int,
    *,
    dram_pages: int = 16384,
    policy: str = "2q",
    ino: int = 2,
    gap_us: int = 50,
    tick_every: int = 20_000,
    part_rows: int = 1 << 20,
    seed: int = 1,
) -> None:
    """Write a read-only trace of one file (`npages` pages) read page by page."""
    rng = np.random.default_rng(seed)
    t0 = 1_000_000_000
    config = {
        "dram_pages": dram_pages,
        "policy": policy,
        "writeback_seconds": 5.0,
        "tick_seconds": gap_us * tick_every / 1e6,
        "cache": "direct",
        "pte_special": True,
        "nr_blocks": npages + 16,
        "image": None,
        "synthetic": True,
    }
    write_header(directory, t0, config)
    n = len(pages)
    # Request arrival times: jittered gaps, as a recorded fio run has.
    t = t0 + np.cumsum(rng.integers(gap_us // 2, gap_us * 3 // 2 + 1, n, dtype=np.int64))
    part = 0
    buf = Buffer()
    buf.add(t0, OP["file"], ino, 0, 0)
    buf.sparse["arg"][0] = npages * PAGE
    buf.sparse["text"][0] = "/synthetic"
    buf.sparse["runs"][0] = encode_runs(0, np.arange(1, npages + 1, dtype=np.int64))
    for start in range(0, n, tick_every):
        end = min(n, start + tick_every)
        _extend(buf, t[start:end], OP["read"], ino, pages[start:end], 0, PAGE)
        _extend(buf, t[end - 1 : end] + 1, OP["tick"], 0, np.zeros(1, np.int64), 0, 0)
        if len(buf) >= part_rows:
            write_part(directory, part, buf.table())
            part += 1
            buf = Buffer()
    _extend(buf, np.array([int(t[-1]) + gap_us]), OP["close"], 0, np.zeros(1, np.int64), 0, 0)
    write_part(directory, part, buf.table())


def _extend(
    buf: Buffer, t: np.ndarray, op: int, ino: int, page: np.ndarray, pgoff: int, nbytes: int
) -> None:
    n = len(t)
    rows = np.empty((n, 5), dtype=np.int64)
    rows[:, 0] = t
    rows[:, 1] = op
    rows[:, 2] = ino
    rows[:, 3] = (np.asarray(page, dtype=np.int64) << 12) + pgoff
    rows[:, 4] = nbytes
    buf.data.frombytes(rows.tobytes())
