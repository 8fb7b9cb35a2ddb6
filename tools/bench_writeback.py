#!/usr/bin/env python3
"""Cost of one flusher writeback batch, against the bare copy of its bytes.

A streaming write makes the flusher write back MAX_WRITEBACK_PAGES (1024)
dirty frames at a time: in-place rewrites of existing image blocks, one
`write_pages` each (`MemoryManager.writeback_batch` -> `write_cache_pages` ->
the device meter -> `Image.write_pages` -> `Persist`). Once reclaim has
churned the DRAM budget the batch's frames are scattered, so the least a
batch can cost is one gather of its 1024 frames into the image mapping.

Each round dirties 1024 pages of a file 4x the DRAM budget with one
`MemoryManager.write` (not timed), then times, in alternating order:

- `batch`: `writeback_batch()` of those 1024 pages, on a real image on tmpfs;
- `gather`: `np.take` of the same frames into a tmpfs mapping as big as the
  file, at the batch's offset in the file (the floor: one copy of the
  batch's bytes into memory not touched since the last pass, as the image's
  blocks are; nothing else);
- `memcpy`: one contiguous 4 MiB copy into a second such mapping (memory
  bandwidth).

Figures are medians over the rounds; `batch/gather` is the batch's cost in
floors, `over` the batch's time beyond the gather (what is not the copy).

    python tools/bench_writeback.py [--rounds N] [--dram 64M] [--file-mult 4]
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nvramfs.fuse.mount import make_mm  # noqa: E402
from nvramfs.fuse.options import parse_options  # noqa: E402
from nvramfs.image import Image  # noqa: E402
from nvramfs.image.mkfs import mkfs  # noqa: E402
from nvramfs.mm.machine import PG_ANON, PG_DIRTY  # noqa: E402

PAGE = 4096
BATCH = 1024  # MAX_WRITEBACK_PAGES
BATCH_BYTES = BATCH * PAGE


def _parse_size(s: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1].upper()] if s[-1].upper() in mult else int(s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200, help="timed batches (default 200)")
    ap.add_argument("--dram", default="64M", help="DRAM budget (default 64M)")
    ap.add_argument("--file-mult", type=int, default=4, help="file size / DRAM (default 4)")
    ap.add_argument("--dir", default="/dev/shm", help="where the image goes (default /dev/shm)")
    a = ap.parse_args(argv)
    dram = _parse_size(a.dram)
    fsize = dram * a.file_mult
    work = tempfile.mkdtemp(prefix="nvramfs-bench-wb-", dir=a.dir)
    try:
        return _run(work, a.dram, fsize, a.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work: str, dram: str, fsize: int, rounds: int) -> int:
    src = os.path.join(work, "tree")
    os.mkdir(src)
    rng = np.random.default_rng(1)
    with open(os.path.join(src, "f"), "wb") as f:
        for _ in range(fsize // (1 << 20)):
            f.write(rng.bytes(1 << 20))
    path = os.path.join(work, "img")
    mkfs(path, size=2 * fsize + (64 << 20), src=src)
    shutil.rmtree(src)
    img = Image.open(path)
    mm = make_mm(img, parse_options([f"dram={dram}"]), None)
    ino = img.lookup(img.root_ino, b"f")
    m = mm.machine
    bufs = [rng.bytes(BATCH_BYTES) for _ in range(4)]
    nbatch = fsize // BATCH_BYTES
    fd = os.open(os.path.join(work, "scratch"), os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 2 * fsize)
    smap = mmap.mmap(fd, 2 * fsize)
    scratch = np.frombuffer(smap, np.uint8).reshape(2, nbatch, BATCH, PAGE)
    scratch[...] = 1  # backed before timing
    times: dict[str, list[float]] = {"batch": [], "gather": [], "memcpy": []}
    try:
        for r in range(nbatch + rounds):  # one pass over the file first: frames scatter
            mm.write(ino, (r % nbatch) * BATCH_BYTES, bufs[r % 4])
            dirty = np.flatnonzero((m.flags & (PG_DIRTY | PG_ANON)) == PG_DIRTY)
            frames = dirty[np.argsort(m.index[dirty], kind="stable")]
            if len(frames) != BATCH:
                raise SystemExit(f"bench_writeback: {len(frames)} dirty frames, not {BATCH}")

            # gather and memcpy before or after the batch, alternately
            for step in ("memcpy", "batch", "gather") if r % 2 else ("gather", "batch", "memcpy"):
                t0 = time.perf_counter()
                if step == "batch":
                    done = mm.writeback_batch()
                    if done != BATCH:
                        raise SystemExit(f"bench_writeback: batch wrote {done} pages, not {BATCH}")
                elif step == "gather":
                    np.take(m.data, frames, axis=0, out=scratch[0, r % nbatch], mode="clip")
                else:
                    scratch[1, r % nbatch] = m.data[:BATCH]
                if r >= nbatch:
                    times[step].append(time.perf_counter() - t0)
    finally:
        del scratch
        smap.close()
        os.close(fd)
        mm.close()
        img.close(clean=True)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    mb = BATCH_BYTES / 1e6
    print(
        f"writeback batch of {BATCH} in-place pages ({BATCH_BYTES >> 20} MiB), DRAM {dram}, "
        f"file {fsize >> 20} MiB, medians of {rounds} rounds:"
    )
    print(f"{'':8} {'ms':>8} {'MB/s':>8}")
    for k in ("batch", "gather", "memcpy"):
        print(f"{k:8} {med[k]:8.3f} {mb / med[k] * 1e3:8.0f}")
    print(
        f"batch/gather {med['batch'] / med['gather']:.2f}x, "
        f"over the gather {med['batch'] - med['gather']:.3f} ms/batch"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
