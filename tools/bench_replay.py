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
the same counters (checked). Then a cProfile of one batched replay of each:
where the time goes. The default run takes about a minute on an idle core.

    tools/bench_replay.py --sweep [--jobs N]

The sweep benchmark (docs/TRACE.md, "Sweeps"): 6 policies (none, mq, 2q,
clock, lru, opt) x 8 DRAM sizes (256 KiB to 32 MiB) over a Zipf(theta 1.2)
read trace of 1 M page accesses over 64 MiB, one configuration per process
(nvramfs.trace.sweep.run_local). Prints the sweep's wall time beside its
baseline, the same replays one after the other (the sum of their wall times),
and the CPU seconds of the worker processes (the goal: under 3 minutes on 2 cores).
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
    p.add_argument("--sweep", action="store_true", help="the sweep benchmark (see above)")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="sweep processes (cores)")
    args = p.parse_args()
    if args.sweep:
        return bench_sweep(args)

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
        for kind, lines in (("hot", 15), ("cold", 10)) if args.profile else ():
            prof = cProfile.Profile()
            prof.enable()
            replay(str(work / f"{kind}.trace"), summary=False)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(lines)
            text = out.getvalue().replace(str(Path(__file__).resolve().parent.parent) + "/", "")
            text = text.replace("tools/../", "")
            print(f"\nwhere the time goes (cProfile, one batched {kind} replay, by own time):")
            print(text[text.index("ncalls") - 3 :].rstrip())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"(total {time.monotonic() - t_start:.0f} s)")
    return 0


SWEEP_POLICIES = ("none", "mq", "2q", "clock", "lru", "opt")
SWEEP_SIZES_KIB = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def bench_sweep(args: argparse.Namespace) -> int:
    import resource

    from nvramfs.trace.sweep import configurations, known_policies, run_local

    policies = [p for p in SWEEP_POLICIES if p in known_policies()]
    missing = [p for p in SWEEP_POLICIES if p not in policies]
    npages, accesses = 16384, 1_000_000  # 64 MiB, 1 M page accesses
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="nvramfs-bench-sweep-", dir=base))
    try:
        d = work / "zipf.trace"
        pages = synth.zipf_pages(npages, accesses, 1.2)
        synth.read_trace(str(d), pages, npages, dram_pages=4096, tick_every=args.tick_every)
        configs = configurations(policies, [k * 1024 // 4096 for k in SWEEP_SIZES_KIB])
        print(
            f"sweep: {len(policies)} policies x {len(SWEEP_SIZES_KIB)} sizes = {len(configs)} "
            f"configurations, {accesses:,} accesses over {npages * 4 // 1024} MiB, "
            f"{args.jobs} processes"
            + (f" (not in this nvramfs: {', '.join(missing)})" if missing else ""),
            flush=True,
        )

        def progress(done: int, total: int) -> None:
            print(f"  {done}/{total} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        rows = run_local(str(d), configs, jobs=args.jobs, progress=progress)
        wall = time.monotonic() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in rows if r["error"]]
    if bad:
        sys.exit(f"bench_replay: {len(bad)} configurations failed: {bad[0]['error']}")
    serial = sum(r["seconds"] for r in rows)
    print(
        f"\n{'policy':<8}" + "".join(f"{k // 1024 if k >= 1024 else k:>8}" for k in SWEEP_SIZES_KIB)
    )
    print(f"{'':<8}" + "".join(f"{'MiB' if k >= 1024 else 'KiB':>8}" for k in SWEEP_SIZES_KIB))
    for p in policies:
        hr = [r["hit_ratio"] for r in rows if r["policy"] == p]
        print(f"{p:<8}" + "".join(f"{h:>8.3f}" for h in hr) + "   hit ratio")
    print("\nreplay seconds per configuration (median over sizes), accesses/s:")
    for p in policies:
        secs = [r["seconds"] for r in rows if r["policy"] == p]
        aps = [r["accesses_per_s"] for r in rows if r["policy"] == p]
        print(f"  {p:<8}{statistics.median(secs):>8.1f} s  {statistics.median(aps):>12,.0f}/s")
    print(
        f"\nsweep wall {wall:.1f} s ({args.jobs} processes)  |  baseline, one after the other: "
        f"{serial:.1f} s (sum of the replays' wall times)  |  ratio {serial / wall:.2f}x  |  "
        f"worker CPU {cpu:.1f} s  |  goal < 180 s: {'met' if wall < 180 else 'NOT met'}"
        f"  |  load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
