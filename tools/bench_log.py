"""Benchmark: `nvramfs log LOG summary` of a 10 M-event log (events/s, peak RSS).

    python tools/bench_log.py [--events N] [--repeat R] [--dir DIR] [--no-baseline]

Writes (once; reused while its size and seed match) a realistic log: several
mount sessions of one image, with per-fault tracing on (`-o trace_faults`,
the option that makes logs long), so most events are `fault`s, and every
second of a session has its counters, access histograms of the files it
touched, promotions, demotions, COWs and writebacks in the proportions a
zipf-hot fio run gives, each line as the writer writes it (its key order:
`LOG_FORMAT` 2; format 1 put the page events' keys in another order, which
the scan's fast path leaves to the NDJSON reader). Then runs `nvramfs log LOG summary --json` as a
child process R times and prints the median wall time, events per second
and the child's peak RSS (ru_maxrss), side by side with a baseline in the
same run: the streaming dict reader (`reader.read_events`, json.loads per
line, no analysis at all), the floor of any per-event Python approach.

Goal (issue 11): >= 1 M events/s, peak RSS <= 512 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_RATE = 1_000_000
GOAL_RSS_MIB = 512
# Bumped when the generated log changes (a log of an older format is not reused).
LOG_FORMAT = 2
UUID = "2b1f6c1e-0d3a-4c55-9a9e-5f1f3a7e8b01"


def generate(path: Path, n_events: int, seed: int = 1) -> int:
    """Write a log of about `n_events` events (whole sessions); returns the number written."""
    import numpy as np

    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    nfiles = 200
    sizes = [rng.choice((16, 64, 256, 1024, 4096)) for _ in range(nfiles)]
    weights = [1.0 / (i + 1) ** 1.1 for i in range(nfiles)]  # zipf-hot files
    kinds = ("xip_read", "pagecache_hit", "cow", "write_reuse", "hole")
    probs = np.asarray(weights) / sum(weights)
    size_arr = np.asarray(sizes, dtype=np.int64)
    kind_p = np.asarray((30, 55, 5, 8, 2), dtype=np.float64) / 100
    sessions = 3
    per_session = n_events // sessions
    written = 0
    wall = 1_700_000_000.0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for _s in range(sessions):
            seq = 0
            out: list[str] = []

            def emit(t: float, ev: str, body: str, out: list[str] = out) -> None:
                nonlocal seq
                out.append(f'{{"v":1,"seq":{seq},"t":{t:.6f},"ev":"{ev}"{body}}}\n')
                seq += 1

            emit(0.0, "mount", f',"image":"/bench.img","uuid":"{UUID}","dram_pages":16384,'
                 f'"page_size":4096,"policy":"2q","pte_special":true,"cache":"direct",'
                 f'"sim":true,"recovered":false,"wall":{wall:.3f}')  # fmt: skip
            for ino in range(2, 2 + nfiles):
                emit(0.0, "path", f',"ino":{ino},"gen":{ino * 7},"path":"/data/f{ino}.bin"')
            faults = dict.fromkeys(kinds, 0)
            reads = writes = 0
            prom: dict[str, int] = {}
            dem: dict[str, int] = {}
            wbs: dict[str, int] = {}
            frames = 0
            sec = 0
            while seq < per_session:
                t = float(sec)
                touched: dict[int, dict[int, list[int]]] = {}
                # 3000 per-fault events, drawn at once (zipf-hot files, pareto pages).
                inos = np_rng.choice(nfiles, 3000, p=probs) + 2
                idx = np.minimum(
                    size_arr[inos - 2] - 1, (np_rng.pareto(1.2, 3000)).astype(np.int64)
                )
                ws = np_rng.random(3000) < 0.1
                ks = np_rng.choice(5, 3000, p=kind_p)
                ts = t + np.sort(np_rng.random(3000))
                for ino, index, w, k, te in zip(
                    inos.tolist(), idx.tolist(), ws.tolist(), ks.tolist(), ts.tolist(), strict=True
                ):
                    kind = kinds[k]
                    faults[kind] += 1
                    cell = touched.setdefault(ino, {}).setdefault(index, [0, 0])
                    cell[1 if w else 0] += 1
                    out.append(f'{{"v":1,"seq":{seq},"t":{te:.6f},"ev":"fault","ino":{ino},'
                               f'"index":{index},"kind":"{kind}","write":{"true" if w else "false"}}}\n')  # fmt: skip
                    seq += 1
                t1 = t + 1.0
                for ino in sorted(touched):
                    pages = sorted(touched[ino])
                    r = [touched[ino][p][0] for p in pages]
                    wr = [touched[ino][p][1] for p in pages]
                    reads += sum(r)
                    writes += sum(wr)
                    emit(t1, "access", f',"ino":{ino},"gen":{ino * 7},"t0":{t:.6f},'
                         f'"t1":{t1:.6f},"pages":{json.dumps(pages, separators=(",", ":"))},'
                         f'"reads":{json.dumps(r, separators=(",", ":"))},'
                         f'"writes":{json.dumps(wr, separators=(",", ":"))}')  # fmt: skip
                for _ in range(rng.randint(50, 150)):
                    ino = rng.choices(range(nfiles), weights)[0] + 2
                    index = rng.randrange(sizes[ino - 2])
                    up = rng.random() < 0.55
                    reason = "policy" if up else rng.choice(("dram_budget", "policy"))
                    (prom if up else dem)[reason] = (prom if up else dem).get(reason, 0) + 1
                    frames = max(0, min(16384, frames + (1 if up else -1)))
                    src, dst = ("xip", "pagecache") if up else ("pagecache", "xip")
                    emit(t1, "migrate", f',"ino":{ino},"index":{index},'
                         f'"pfn_from":{1048576 + index},"pfn_to":{frames},"from":"{src}",'
                         f'"to":"{dst}","reason":"{reason}","refcount":1,"mapcount":1')  # fmt: skip
                for _ in range(rng.randint(20, 80)):
                    ino = rng.choices(range(nfiles), weights)[0] + 2
                    index = rng.randrange(sizes[ino - 2])
                    emit(t + rng.random(), "cow", f',"ino":{ino},"index":{index},'
                         f'"pfn_from":{1048576 + index},"pfn_to":{frames},"from":"xip",'
                         f'"to":"pagecache","reason":"write","refcount":1,"mapcount":1,'
                         f'"via":"pfn_mkwrite"')  # fmt: skip
                for _ in range(rng.randint(20, 80)):
                    ino = rng.choices(range(nfiles), weights)[0] + 2
                    index = rng.randrange(sizes[ino - 2])
                    reason = rng.choice(("dirty_expire", "demote", "fsync"))
                    wbs[reason] = wbs.get(reason, 0) + 1
                    emit(t1, "writeback", f',"ino":{ino},"index":{index},"pfn_from":{frames},'
                         f'"pfn_to":{1048576 + index},"from":"pagecache","to":"xip",'
                         f'"reason":"{reason}","refcount":1,"mapcount":1')  # fmt: skip
                counters = {
                    "faults": faults,
                    "accesses": {"read": reads, "write": writes},
                    "migrations": {"promote": prom, "demote": dem},
                    "writebacks": wbs,
                    "frames_used": frames,
                    "dram_pages": 16384,
                    "dirty": frames // 10,
                    "struct_page_bytes_used": 64 * frames,
                    "struct_page_bytes_avoided": 64 * 50000,
                }
                emit(t1, "counters", "," + json.dumps(counters, separators=(",", ":"))[1:-1])
                sec += 1
                if len(out) > 100_000:
                    f.writelines(out)
                    written += len(out)
                    out.clear()
            emit(float(sec), "unmount", ',"clean":true')
            f.writelines(out)
            written += len(out)
            wall += sec + 60.0
    os.replace(tmp, path)
    return written


def run_child(args: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system, all threads) and peak RSS (bytes) of one
    child process. CPU seconds matter on a shared machine, where wall time is mostly
    waiting for a core."""
    # RUSAGE_CHILDREN's ru_maxrss is the largest child so far: each run gets a fresh helper.
    code = (
        "import resource,subprocess,sys,time;"
        "t=time.perf_counter();"
        "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL);"
        "d=time.perf_counter()-t;"
        "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(r.returncode,d,u.ru_utime+u.ru_stime,u.ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    rc, secs, cpu, rss_kib = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"{' '.join(args)}: exit {rc}")
    return float(secs), float(cpu), int(rss_kib) * 1024


BASELINE = (
    "import sys\n"
    "from collections import Counter\n"
    "from nvramfs.events.reader import read_events\n"
    "c = Counter(ev['ev'] for ev in read_events(sys.argv[1]))\n"
    "print(sum(c.values()))\n"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000, help="log size (10 M)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the summary (median; 3)")
    ap.add_argument("--dir", default="/tmp/nvramfs-bench", help="where the log is kept")
    ap.add_argument("--no-baseline", action="store_true", help="skip the dict-reader baseline")
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    log = d / f"bench-{a.events}-v{LOG_FORMAT}.events.jsonl"
    if not log.exists():
        t = time.perf_counter()
        n = generate(log, a.events)
        print(f"generated {log}: {n:,} events, {log.stat().st_size / 2**20:,.0f} MiB "
              f"in {time.perf_counter() - t:.0f} s")  # fmt: skip
    n_events = sum(1 for _ in open(log, "rb"))
    print(f"log          {log}: {n_events:,} events, {log.stat().st_size / 2**20:,.0f} MiB")
    root = str(Path(__file__).resolve().parents[1])
    summary = [sys.executable, "-m", "nvramfs", "log", str(log), "summary", "--json"]
    runs = []
    cwd = os.getcwd()
    os.chdir(root)  # `-m nvramfs` imports this checkout
    try:
        for _ in range(max(1, a.repeat)):
            runs.append(run_child(summary))
        base = None
        if not a.no_baseline:
            base = run_child([sys.executable, "-c", BASELINE, str(log)])
    finally:
        os.chdir(cwd)
    secs = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    rss = max(r[2] for r in runs)
    rate = n_events / secs
    print(f"{'':<28} {'wall s':>8} {'events/s':>12} {'CPU s':>8} {'events/CPU s':>13} "
          f"{'peak RSS':>9}")  # fmt: skip
    print(f"{'log summary':<28} {secs:>8.2f} {rate:>12,.0f} {cpu:>8.2f} "
          f"{n_events / cpu:>13,.0f} {rss / 2**20:>5.0f} MiB   (median of {len(runs)})")  # fmt: skip
    if base is not None:
        brate = n_events / base[0]
        print(f"{'baseline: dict reader only':<28} {base[0]:>8.2f} {brate:>12,.0f} "
              f"{base[1]:>8.2f} {n_events / base[1]:>13,.0f} {base[2] / 2**20:>5.0f} MiB")  # fmt: skip
        print(f"ratio        summary/baseline: {rate / brate:.2f}x events per wall second, "
              f"{base[1] / cpu:.2f}x events per CPU second, {rss / base[2]:.1f}x peak RSS")  # fmt: skip
    try:
        load = os.getloadavg()[0]
        print(f"machine      {os.cpu_count()} cores, load average {load:.1f} during the run")
    except OSError:
        pass
    ok_rate = rate >= GOAL_RATE
    ok_rss = rss <= GOAL_RSS_MIB * 2**20
    print(f"goal         >= {GOAL_RATE:,} events/s: {'met' if ok_rate else 'NOT met'}; "
          f"peak RSS <= {GOAL_RSS_MIB} MiB: {'met' if ok_rss else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
