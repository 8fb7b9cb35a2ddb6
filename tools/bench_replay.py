#!/usr/bin/env python3
"""Replay speed: page accesses per second of `nvramfs replay`, batched against one call per record.

    tools/bench_replay.py [--accesses 3000000] [--repeats 3] [--pages 65536] [--dram 16384]

Two synthetic traces in the trace format (nvramfs.trace.synth), one file read
4 KiB at a time, a policy tick every `--tick-every` accesses (20,000: what a
mount serving 20 k IOPS records between two ticks):

    hot   Zipf(theta 1.2) over --pages pages, DRAM budget --dram frames, default policy
    cold  uniform over --cold-pages pages (4 GiB by default): nearly every access faults

Rates are page accesses per second of the replaying process's CPU time
(time.process_time: on a shared machine wall time counts other processes).
Each trace is replayed `--repeats` times batched (runs of one-page reads go
to mm.batch.load_pages, the default) and as many times with one mm call per
record (the baseline), alternated; medians, and the ratio. The two must give
the same counters (checked). Then a cProfile of one batched hot replay: where
the time goes. The default run takes about two minutes on an idle core.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nvramfs.trace import replay, synth  # noqa: E402


def make(directory: Path, kind: str, args: argparse.Namespace) -> int:
    if kind == "hot":
        pages = synth.zipf_pages(args.pages, args.accesses, args.theta)
        npages = args.pages
    else:
        pages = synth.uniform_pages(args.cold_pages, args.cold_accesses)
        npages = args.cold_pages
    synth.read_trace(
        str(directory), pages, npages, dram_pages=args.dram, tick_every=args.tick_every
    )
    return sum(p.stat().st_size for p in directory.iterdir())


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--accesses", type=int, default=3_000_000, help="hot trace length (3 M)")
    p.add_argument("--cold-accesses", type=int, default=300_000, help="cold trace length (300 k)")
    p.add_argument("--pages", type=int, default=65536, help="hot file, pages (65536: 256 MiB)")
    p.add_argument("--cold-pages", type=int, default=1 << 20, help="cold file, pages (4 GiB)")
    p.add_argument("--dram", type=int, default=16384, help="DRAM budget, frames (16384: 64 MiB)")
    p.add_argument("--theta", type=float, default=1.2, help="Zipf parameter (1.2)")
    p.add_argument("--tick-every", type=int, default=20_000, help="accesses per tick (20000)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each; medians (3)")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    args = p.parse_args()

    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="nvramfs-bench-replay-", dir=base))
    t_start = time.monotonic()
    rows = []
    try:
        for kind in ("hot", "cold"):
            d = work / f"{kind}.trace"
            size = make(d, kind, args)
            runs: dict[str, list[float]] = {"batched": [], "per record": []}
            counters = {}
            for _ in range(args.repeats):
                for mode in ("batched", "per record"):
                    cpu = time.process_time()
                    res = replay(str(d), summary=False, batch=mode == "batched")
                    cpu = time.process_time() - cpu
                    runs[mode].append(res.accesses / cpu)
                    c = res.counters
                    counters[mode] = (c["faults"], c["accesses"], c["migrations"])
                    print(
                        f"  {kind:<5} {mode:<11} {res.accesses / cpu:>12,.0f} accesses per CPU s"
                        f"  ({cpu:.2f} s CPU, {res.seconds:.2f} s wall)",
                        file=sys.stderr,
                        flush=True,
                    )
            if counters["batched"] != counters["per record"]:
                sys.exit(f"bench_replay: batched and per-record replays differ on {kind}")
            faults = sum(counters["batched"][0].values()) - counters["batched"][0]["pagecache_hit"]
            n = res.accesses
            rows.append((kind, n, size / n, faults / n, runs))
        print()
        print(
            f"replay, one core, default policy, DRAM {args.dram:,} frames, "
            f"a tick every {args.tick_every:,} accesses, median of {args.repeats}; "
            "page accesses per second of the process's CPU time (the machine may be shared)"
        )
        print(
            f"{'trace':<7}{'accesses':>11}{'B/access':>10}{'faulting':>10}"
            f"{'batched/s':>14}{'per record/s':>14}{'ratio':>8}"
        )
        for kind, n, bpa, fr, runs in rows:
            b = statistics.median(runs["batched"])
            s = statistics.median(runs["per record"])
            print(f"{kind:<7}{n:>11,}{bpa:>10.2f}{fr:>9.1%}{b:>14,.0f}{s:>14,.0f}{b / s:>7.2f}x")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            replay(str(work / "hot.trace"), summary=False)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
            text = out.getvalue()
            print("\nwhere the time goes (cProfile, one batched hot replay, by own time):")
            print(text[text.index("ncalls") - 3 :].rstrip())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"(total {time.monotonic() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
