#!/usr/bin/env python3
"""fio against nvramfs with the simulation, nvramfs with sim=off, and kernel tmpfs.

    tools/bench_fio.py [--runtime 5] [--repeats 3] [--size 128M] [--dram 64M]
                       [--jobs randread,seqread,...] [-o OPTIONS]

One image (on /dev/shm, standing for NVRAM) is made with random data files
in it, so every job starts from XIP pages in both nvramfs runs. Jobs, each
time-based, `--repeats` rounds, the targets alternated within a round
(medians reported):

    randread   psync, 4 KiB, one job, the --size file
    seqread    psync, 128 KiB, one job, the --size file
    seqwrite   psync, 128 KiB, one job, a file 16x the DRAM budget (COW of XIP
               pages past the budget: reclaim, flusher and throttle at work)
    randwrite  psync, 4 KiB, one job, a file 4x the DRAM budget
    fsyncwrite psync, 4 KiB random writes with an fsync after every write,
               on the 4x file
    mixed      psync, 4 KiB random reads and writes (70/30), four jobs at
               once on the 4x file (IOPS: reads and writes together)

Then the price of recording: the sim mount against a copy mounted with
`-o trace=DIR`, 4 KiB randread zipf:1.2, alternated ABBA over at least 9 rounds of
at most 3 s, medians; and the trace's bytes on disk per page access (--no-trace skips it).

The nvramfs mounts use the default cache=direct, so every request reaches the
daemon (kernel tmpfs is shown for scale, not as a competitor). A second table
gives the daemon's CPU per request (utime+stime of the daemon process, all its
threads, over the requests fio completed; medians), for sim and sim=off, and
their difference, what the simulation costs a request; and the CPU of the sim
mount's event-log sink process (docs/EVENTS.md) per request. Unlike IOPS, CPU
time does not change when other processes share the machine. The ratio
column is the price of the simulation: sim / sim=off, in IOPS. For the write
jobs the sim mount's `msync/page` is printed: msync calls of the image
(`writeback.msyncs` in .nvramfs/stats) per page written back
(`writeback.pages`) during the job's rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> (fio rw, block size, label, file, extra fio options)
JOBS = {
    "randread": ("randread", "4k", "randread 4 KiB", "bench.dat", []),
    "seqread": ("read", "128k", "seqread 128 KiB", "bench.dat", []),
    "seqwrite": ("write", "128k", "seqwrite 128 KiB 16x", "seq.dat", []),
    "randwrite": ("randwrite", "4k", "randwrite 4 KiB 4x", "rand.dat", []),
    "fsyncwrite": ("randwrite", "4k", "randwrite+fsync 4x", "rand.dat", ["--fsync=1"]),
    "mixed": (
        "randrw",
        "4k",
        "randrw 70/30 4 jobs 4x",
        "rand.dat",
        ["--numjobs=4", "--rwmixread=70", "--group_reporting=1"],
    ),
}


def nvramfs(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "nvramfs", *args], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        sys.exit(f"bench_fio: nvramfs {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def fio_job(
    directory: Path, rw: str, bs: str, filename: str, size: int, runtime: float, extra: list[str]
) -> dict:
    cmd = [
        "fio",
        "--output-format=json",
        "--name=bench",
        f"--directory={directory}",
        f"--filename={filename}",
        "--ioengine=psync",
        "--fallocate=none",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--size={size}",
        "--numjobs=1",
        *extra,  # after the defaults: fio takes an option's last value
        f"--runtime={runtime}",
        "--time_based=1",
        "--randrepeat=0",
        "--invalidate=0",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime * 4 + 120)
    if out.returncode != 0:
        sys.exit(f"bench_fio: fio failed on {directory}: {out.stderr.strip()[-500:]}")
    job = json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]
    names = ("read", "write") if rw == "randrw" else ("write" if "write" in rw else "read",)
    sides = [job[name] for name in names]
    return {
        "iops": sum(x["iops"] for x in sides),
        "mbs": sum(x["bw_bytes"] for x in sides) / 1e6,
        "ios": sum(x["total_ios"] for x in sides),
    }


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """utime+stime of process `pid` (all its threads) and of its child processes (the
    mount's event-log sink), in seconds: what a request costs the daemon, whatever
    else the shared machine runs meanwhile."""

    def of(stat: str) -> tuple[int, float]:
        f = stat.rsplit(")", 1)[1].split()
        return int(f[1]), (int(f[11]) + int(f[12])) / _TICK  # ppid, utime + stime

    try:
        own = of(Path(f"/proc/{pid}/stat").read_text())[1]
    except OSError:
        return 0.0, 0.0
    kids = 0.0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid, t = of((d / "stat").read_text())
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                kids += t
    return own, kids


def wb_stats(mnt: Path) -> dict:
    """The sim mount's writeback object of .nvramfs/stats (pages, msyncs)."""
    return json.loads((mnt / ".nvramfs" / "stats").read_bytes()).get("writeback", {})


def run_targets(
    targets: dict[str, Path], args: argparse.Namespace, sizes: dict[str, int]
) -> dict[str, dict]:
    """Each job on every target in turn, `repeats` rounds: drift on a busy machine
    (other processes, the sim's own policy passes) hits all targets alike."""
    res: dict[str, dict] = {name: {} for name in targets}
    res["msync"] = {}
    pids = {
        name: int(json.loads((d / ".nvramfs" / "stats").read_bytes())["pid"])
        for name, d in targets.items()
        if name != "tmpfs"
    }
    for job in args.jobs:
        rw, bs, label, filename, extra = JOBS[job]
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        before = wb_stats(targets["sim"])
        for _ in range(args.repeats):
            for name, directory in targets.items():
                c0 = cpu_seconds(pids[name]) if name in pids else (0.0, 0.0)
                r = fio_job(directory, rw, bs, filename, sizes[filename], args.runtime, extra)
                if name in pids:
                    c1 = cpu_seconds(pids[name])
                    r["cpu_us"] = (c1[0] - c0[0]) * 1e6 / max(r["ios"], 1)
                    r["sink_us"] = (c1[1] - c0[1]) * 1e6 / max(r["ios"], 1)
                runs[name].append(r)
        after = wb_stats(targets["sim"])
        pages = after.get("pages", 0) - before.get("pages", 0)
        msyncs = after.get("msyncs", 0) - before.get("msyncs", 0)
        res["msync"][label] = (msyncs, pages)
        for name in targets:
            res[name][label] = {
                "iops": statistics.median(r["iops"] for r in runs[name]),
                "mbs": statistics.median(r["mbs"] for r in runs[name]),
                "runs": [round(r["iops"]) for r in runs[name]],
            }
            if name in pids:
                for key in ("cpu_us", "sink_us"):
                    res[name][label][key] = statistics.median(r[key] for r in runs[name])
            print(
                f"  {name:<8} {label:<16} {res[name][label]['iops']:>12,.0f} IOPS "
                f"{res[name][label]['mbs']:>9,.1f} MB/s   runs {res[name][label]['runs']}",
                file=sys.stderr,
                flush=True,
            )
    return res


def mounted(image: Path, mnt: Path, options: str):
    class _Mount:
        def __enter__(self) -> Path:
            mnt.mkdir(exist_ok=True)
            nvramfs("mount", str(image), str(mnt), "-o", options)
            return mnt

        def __exit__(self, *exc: object) -> None:
            subprocess.run(
                [sys.executable, "-m", "nvramfs", "umount", str(mnt)], capture_output=True
            )
            if any(line.split()[1] == str(mnt) for line in open("/proc/mounts")):
                subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)

    return _Mount()


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not m:
        sys.exit(f"bench_fio: bad size {text!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def zipf_randread(directory: Path, size: str, runtime: float) -> dict:
    """4 KiB randread, Zipf(1.2) over the file: the recording-cost job."""
    cmd = ["fio", "--output-format=json", "--name=bench", f"--directory={directory}",
           "--filename=bench.dat", "--ioengine=psync", "--rw=randread", "--bs=4k",
           "--random_distribution=zipf:1.2", f"--size={size}", f"--runtime={runtime}",
           "--time_based=1", "--randrepeat=0", "--invalidate=0"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime * 4 + 120)
    if out.returncode != 0:
        sys.exit(f"bench_fio: fio failed on {directory}: {out.stderr.strip()[-500:]}")
    return {"iops": json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]["read"]["iops"]}


def trace_cost(work: Path, image: Path, args: argparse.Namespace, extra: str) -> dict:
    """The price of `-o trace=DIR`: the same mount with and without it, zipf randread,
    alternated (ABBA: which goes first changes every round), at least 9 rounds of at
    most 3 s, since a 5% difference is within the noise of 3 rounds on a shared
    machine; and the trace's bytes on disk per page access."""
    image_t = work / "bench-trace.nvram"
    subprocess.run(["cp", "--sparse=always", str(image), str(image_t)], check=True)
    trace = work / "bench.trace"
    runs: dict[str, list[float]] = {"sim": [], "sim+trace": []}
    with (
        mounted(image, work / "mnt-sim", f"dram={args.dram}{extra}") as sim,
        mounted(image_t, work / "mnt-trace", f"dram={args.dram},trace={trace}{extra}") as traced,
    ):
        pair = [("sim", sim), ("sim+trace", traced)]
        for r in range(max(args.repeats, 9)):
            for name, d in pair if r % 2 == 0 else pair[::-1]:
                runs[name].append(zipf_randread(d, args.size, min(args.runtime, 3.0))["iops"])
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = sorted(trace.glob("part-*.parquet"))
    reads = sum(
        int(pc.sum(pc.equal(pq.read_table(p, columns=["op"]).column("op").cast("string"),
                            "read")).as_py() or 0)
        for p in parts
    )  # fmt: skip
    size = sum(p.stat().st_size for p in trace.iterdir())
    out = {name: statistics.median(v) for name, v in runs.items()}
    out["runs"] = {name: [round(x) for x in v] for name, v in runs.items()}
    out["ratio"] = out["sim+trace"] / max(out["sim"], 1e-9)
    out["bytes_per_access"] = size / max(reads, 1)
    out["accesses"] = reads
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runtime", type=float, default=5.0, help="seconds per fio job (5)")
    p.add_argument("--repeats", type=int, default=3, help="runs per job; the median is shown (3)")
    p.add_argument("--size", default="128M", help="size of the data file (128M)")
    p.add_argument("--dram", default="64M", help="DRAM budget of the sim mount (64M)")
    p.add_argument(
        "--jobs",
        default=",".join(JOBS),
        help=f"comma-separated jobs to run, in this order (default: {','.join(JOBS)})",
    )
    p.add_argument("-o", "--options", default="", help="extra mount options for both mounts")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument(
        "--no-trace", dest="trace", action="store_false",
        help="skip the recording-cost job (-o trace=DIR against the same mount without it)",
    )  # fmt: skip
    args = p.parse_args()
    args.jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    bad = [j for j in args.jobs if j not in JOBS]
    if bad or not args.jobs:
        sys.exit(f"bench_fio: unknown job {', '.join(bad) or '(none)'} (one of {', '.join(JOBS)})")
    if not shutil.which("fio"):
        sys.exit("bench_fio: fio not found (apt install fio)")
    base_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="nvramfs-bench-", dir=base_dir))
    try:
        tree = work / "tree"
        tree.mkdir()
        size = parse_bytes(args.size)
        dram = parse_bytes(args.dram)
        sizes = {"bench.dat": size}
        wanted = {JOBS[j][3] for j in args.jobs}
        if "seq.dat" in wanted:
            sizes["seq.dat"] = 16 * dram
        if "rand.dat" in wanted:
            sizes["rand.dat"] = 4 * dram
        chunk = os.urandom(1 << 20)
        for name, n in sizes.items():
            with open(tree / name, "wb") as f:
                for _ in range(n >> 20):
                    f.write(chunk)
                f.write(chunk[: n & ((1 << 20) - 1)])
        image = work / "bench.nvram"
        img_size = f"{(sum(sizes.values()) * 3 // 2 >> 20) + 64}M"
        nvramfs("mkfs", str(image), "--from", str(tree), "--size", img_size, "--quiet")
        image2 = work / "bench-nosim.nvram"
        subprocess.run(["cp", "--sparse=always", str(image), str(image2)], check=True)
        tmpfs = work / "tmpfs"
        tmpfs.mkdir()
        for name in sizes:
            shutil.copyfile(tree / name, tmpfs / name)
            (tree / name).unlink()
        extra = ("," + args.options) if args.options else ""
        t0 = time.monotonic()
        print(
            f"bench_fio: {args.size} read file, dram={args.dram}, {args.runtime:g} s x "
            f"{args.repeats} per job, jobs {','.join(args.jobs)}",
            file=sys.stderr,
        )
        with (
            mounted(image, work / "mnt-sim", f"dram={args.dram}{extra}") as sim,
            mounted(image2, work / "mnt-nosim", f"sim=off{extra}") as nosim,
        ):
            results = run_targets({"sim": sim, "sim=off": nosim, "tmpfs": tmpfs}, args, sizes)
            stats = json.loads((sim / ".nvramfs" / "stats").read_bytes())
        cost = trace_cost(work, image, args, extra) if args.trace else None
        elapsed = time.monotonic() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"fio psync, one job unless named, dram={args.dram}, reads on a {args.size} file, "
        f"{args.runtime:g} s per run, median of {args.repeats} alternated rounds"
    )
    print(
        f"{'job':<22}{'sim':>22}{'sim=off':>22}{'tmpfs':>22}{'sim/sim=off':>13}{'msync/page':>12}"
    )
    for job in args.jobs:
        label = JOBS[job][2]
        cells = []
        for t in ("sim", "sim=off", "tmpfs"):
            r = results[t][label]
            cells.append(f"{r['iops']:>9,.0f} IOPS {r['mbs']:>6,.0f} MB/s")
        ratio = results["sim"][label]["iops"] / max(results["sim=off"][label]["iops"], 1e-9)
        msyncs, pages = results["msync"][label]
        per = f"{msyncs / pages:.4f}" if pages else "-"
        print(f"{label:<22}" + "".join(f"{c:>22}" for c in cells) + f"{ratio:>12.2f}x{per:>12}")
    print()
    print(
        "CPU per request: utime+stime of the daemon (all its threads) over the requests "
        "fio made; sink: the sim mount's event-log process"
    )
    print(f"{'job':<22}{'sim':>12}{'sim=off':>12}{'sim-sim=off':>13}{'sink':>10}")
    for job in args.jobs:
        label = JOBS[job][2]
        a, b = results["sim"][label], results["sim=off"][label]
        print(
            f"{label:<22}{a['cpu_us']:>9,.0f} us{b['cpu_us']:>9,.0f} us"
            f"{a['cpu_us'] - b['cpu_us']:>10,.0f} us{a['sink_us']:>7,.0f} us"
        )
    c = stats.get("counters", {})
    print(
        f"sim mount after the runs: promotions {c.get('migrations', {}).get('promote', {})}, "
        f"demotions {c.get('migrations', {}).get('demote', {})}, cow {c.get('faults', {}).get('cow', 0)}, "
        f"frames used {c.get('frames_used', 0)} of {c.get('dram_pages', 0)}"
    )
    if cost is not None:
        print(
            f"recording (-o trace=DIR), randread 4 KiB zipf:1.2: sim {cost['sim']:,.0f} IOPS, "
            f"sim+trace {cost['sim+trace']:,.0f} IOPS ({cost['ratio']:.3f}x; runs {cost['runs']}); "
            f"trace {cost['bytes_per_access']:.2f} bytes per page access "
            f"({cost['accesses']:,} accesses)"
        )
    print(f"(total {elapsed:.0f} s)")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
