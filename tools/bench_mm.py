#!/usr/bin/env python3
"""Cost of the simulated VM on the read path, against plain memoryview slices of an mmap.

One run prints, side by side: 4 KiB and 128 KiB random reads through
`MemoryManager.read` on a warm XIP mapping, a warm page cache and a cold
start (every request faults), and the same reads as memoryview slices of the
mmap (the floor: what a read costs with no simulation at all). Figures are
medians of several repeats; "ratio" is mm time / floor time; "faults/s" is
simulated faults handled per second; the last column projects the mount's
IOPS relative to no simulation, given pyfuse3's ~85 us per request.

    python tools/bench_mm.py [--pages N] [--reqs N] [--repeats N] [--policy NAME]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nvramfs.mm import MemoryManager  # noqa: E402

PAGE = 4096
FUSE_US = 85.0  # pyfuse3's own cost per request (DESIGN.md)


class MmapBacking:
    """A file laid out contiguously on an mmap'ed device: page i of ino 2 is block i + 1."""

    def __init__(self, path: str, npages: int) -> None:
        self.nr_blocks = npages + 1
        self._fd = os.open(path, os.O_RDWR)
        self._mmap = mmap.mmap(self._fd, self.nr_blocks * PAGE)
        self.view = memoryview(self._mmap).toreadonly()
        self.npages = npages

    def bmap(self, ino: int, first: int, count: int) -> np.ndarray:
        idx = np.arange(first, first + count, dtype=np.int64)
        return np.where(idx < self.npages, idx + 1, 0)

    def block_view(self, block: int, count: int = 1) -> memoryview:
        return self.view[block * PAGE : (block + count) * PAGE]

    def write_pages(self, ino: int, indices: np.ndarray, pages: Sequence[Any]) -> np.ndarray:
        out = np.asarray(indices, dtype=np.int64) + 1
        for b, p in zip(out.tolist(), pages, strict=True):
            self._mmap[b * PAGE : (b + 1) * PAGE] = bytes(p)
        return out

    def close(self) -> None:
        self.view.release()
        self._mmap.close()
        os.close(self._fd)


def timed(fn: Callable[[], int], repeats: int) -> tuple[float, float]:
    """Median seconds of `fn()` and the median of what it returns (a fault count)."""
    times, counts = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
        counts.append(n)
    return statistics.median(times), statistics.median(counts)


def faults(mm: MemoryManager) -> int:
    s = mm.stats()["faults"]
    return s["xip_read"] + s["hole"] + s["cow"] + s["write_reuse"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=16384, help="file size in pages (64 MiB)")
    ap.add_argument("--reqs", type=int, default=20000, help="requests per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--policy", default="none")
    args = ap.parse_args(argv)
    npages = args.pages

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nvram.img")
        with open(path, "wb") as f:
            f.truncate((npages + 1) * PAGE)
        backing = MmapBacking(path, npages)
        rng = np.random.default_rng(1)
        rows = []
        for size in (PAGE, 32 * PAGE):
            span = size // PAGE
            nreq = args.reqs if size == PAGE else max(args.reqs // 8, 100)
            offs = (rng.integers(0, npages - span, nreq) * PAGE).tolist()
            floor_view = backing.view

            def floor(offs=offs, size=size, floor_view=floor_view) -> int:
                for o in offs:
                    floor_view[PAGE + o : PAGE + o + size]
                return 0

            t_floor, _ = timed(floor, args.repeats)

            # warm XIP: every page mapped (special ptes), no frames.
            mm = MemoryManager(backing, 1024, policy=args.policy)
            for o in range(0, npages * PAGE, 32 * PAGE):
                mm.read(2, o, 32 * PAGE)

            def run(mm=mm, offs=offs, size=size) -> int:
                f0 = faults(mm)
                read = mm.read
                for o in offs:
                    read(2, o, size)
                return faults(mm) - f0

            t_xip, f_xip = timed(run, args.repeats)

            # warm page cache: the requests' pages promoted and mapped.
            hot = npages // 16
            offs_pc = (rng.integers(0, hot - span, nreq) * PAGE).tolist()
            mm_pc = MemoryManager(backing, hot + 64, policy=args.policy)
            for i in range(hot):
                mm_pc.promote(2, i)
            for o in range(0, hot * PAGE, 32 * PAGE):
                mm_pc.read(2, o, 32 * PAGE)

            def run_pc(mm=mm_pc, offs=offs_pc, size=size) -> int:
                f0 = faults(mm)
                read = mm.read
                for o in offs:
                    read(2, o, size)
                return faults(mm) - f0

            def floor_pc(offs=offs_pc, size=size, floor_view=floor_view) -> int:
                for o in offs:
                    floor_view[PAGE + o : PAGE + o + size]
                return 0

            t_pc, f_pc = timed(run_pc, args.repeats)
            t_floor_pc, _ = timed(floor_pc, args.repeats)

            # cold: a fresh manager each repeat, every request faults its pages in.
            cold_offs = (
                rng.permutation(npages // span)[: min(nreq, npages // span)] * size
            ).tolist()

            def run_cold(offs=cold_offs, size=size) -> int:
                mm = MemoryManager(backing, 1024, policy=args.policy)
                read = mm.read
                for o in offs:
                    read(2, o, size)
                return faults(mm)

            def floor_cold(offs=cold_offs, size=size, floor_view=floor_view) -> int:
                for o in offs:
                    floor_view[PAGE + o : PAGE + o + size]
                return 0

            t_cold, f_cold = timed(run_cold, args.repeats)
            t_floor_cold, _ = timed(floor_cold, args.repeats)

            label = "4 KiB" if size == PAGE else "128 KiB"
            for name, t, tf, n, nf in (
                ("warm xip", t_xip, t_floor, len(offs), f_xip),
                ("warm pagecache", t_pc, t_floor_pc, len(offs_pc), f_pc),
                ("cold", t_cold, t_floor_cold, len(cold_offs), f_cold),
            ):
                us = t / n * 1e6
                us_floor = tf / n * 1e6
                rows.append(
                    (
                        label,
                        name,
                        us,
                        us_floor,
                        us / us_floor if us_floor else float("inf"),
                        size * n / t / 2**20,
                        size * n / tf / 2**20 if tf else float("inf"),
                        nf / t,
                        FUSE_US / (FUSE_US + us - us_floor),
                    )
                )
        backing.close()

    hdr = (
        f"{'request':<8} {'pagecache':<15} {'mm us/req':>10} {'floor us':>9} {'ratio':>7} "
        f"{'mm MiB/s':>9} {'floor MiB/s':>12} {'faults/s':>10} {'IOPS vs nosim':>14}"
    )
    print(
        f"bench_mm: {npages} pages, {args.reqs} requests, median of {args.repeats}, policy {args.policy}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r[0]:<8} {r[1]:<15} {r[2]:>10.2f} {r[3]:>9.3f} {r[4]:>6.1f}x "
            f"{r[5]:>9.0f} {r[6]:>12.0f} {r[7]:>10.0f} {r[8]:>13.2f}x"
        )
    print(
        f"(IOPS vs nosim = {FUSE_US:.0f} us / ({FUSE_US:.0f} us + mm us - floor us): the mount's"
        " projected IOPS for that request relative to sim=off, counting pyfuse3's ~85 us as"
        " all that sim=off costs: a lower bound)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
