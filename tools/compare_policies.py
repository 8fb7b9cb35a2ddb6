#!/usr/bin/env python3
"""Every policy on one trace, side by side with libCacheSim: hit ratio, NVRAM accesses, speed.

    tools/compare_policies.py [TRACE] [--dram 64,512,4096] [--accesses 200000] [--pages 16384]

Without TRACE a synthetic one is made (nvramfs.trace.synth: one file read 4 KiB
at a time, Zipf(--theta) over --pages pages). For each DRAM budget, each
policy's replay prints: the hit ratio (events.numbers.hit_ratio: pagecache_hit over page
accesses, docs/EVENTS.md), the page accesses not served by a frame
(docs/POLICIES.md: what opt bounds), its promotions at ticks (the slack of the
bound for the tick policies), and page accesses per CPU second of the replay.
libCacheSim's LRU and Belady run on the same accesses (`nvramfs trace export`)
with a cache of dram x 4096 bytes of 4096-byte objects: their hit ratios print
beside lru and opt-nox, which must be equal (tests/trace/test_policies.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nvramfs.events.numbers import hit_ratio  # noqa: E402
from nvramfs.trace import replay, synth  # noqa: E402
from nvramfs.trace.convert import export_trace, libcachesim_reader  # noqa: E402

POLICIES = ("none", "clock", "mq", "2q", "lru", "opt-nox", "opt")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("trace", nargs="?", help="a trace directory (default: a synthetic one)")
    p.add_argument("--dram", default="64,512,4096", help="budgets in frames, comma-separated")
    p.add_argument("--accesses", type=int, default=200_000)
    p.add_argument("--pages", type=int, default=16384)
    p.add_argument("--theta", type=float, default=0.9)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="nvramfs-cmp-") as tmp:
        trace = args.trace
        if trace is None:
            trace = os.path.join(tmp, "zipf.trace")
            pages = synth.zipf_pages(args.pages, args.accesses, args.theta)
            synth.read_trace(trace, pages, args.pages, tick_every=20_000)
            print(f"synthetic trace: {args.accesses:,} reads, Zipf({args.theta}) over "
                  f"{args.pages:,} pages, a tick every 20,000")  # fmt: skip
        oracle = Path(tmp) / "t.oracle"
        export_trace(trace, "oracle", str(oracle))
        try:
            import libcachesim as lcs
        except ImportError:
            lcs = None
        for frames in [int(x) for x in args.dram.split(",")]:
            print(f"\nDRAM {frames:,} frames")
            print(f"{'policy':<10}{'hit ratio':>11}{'libCacheSim':>13}{'not in frame':>14}"
                  f"{'tick promos':>13}{'accesses/s':>12}")  # fmt: skip
            for name in POLICIES:
                cpu = time.process_time()
                r = replay(trace, {"dram_pages": frames, "policy": name}, summary=False)
                cpu = time.process_time() - cpu
                c = r.counters
                n = c["accesses"]["read"] + c["accesses"]["write"]
                hits = c["faults"]["pagecache_hit"]
                served = n - hits - c["faults"]["write_reuse"]
                promos = c["migrations"]["promote"].get("policy", 0)
                ref = ""
                if lcs is not None and name in ("lru", "opt-nox"):
                    algo = lcs.LRU if name == "lru" else lcs.Belady
                    miss, _ = algo(frames * 4096).process_trace(
                        libcachesim_reader(str(oracle), "oracle")
                    )
                    ref = f"{1 - miss:.4f}"
                print(f"{name:<10}{hit_ratio(c):>11.4f}{ref:>13}{served:>14,}{promos:>13,}"
                      f"{n / cpu if cpu else 0:>12,.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
