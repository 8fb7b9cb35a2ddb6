#!/usr/bin/env python3
"""Soak: one mount under a mixed load for N seconds, watched for leaks, then checked.

    tools/soak.py --seconds 600 [--dram 64M] [--interval 5] [--dir /dev/shm] [--keep]

One image (on /dev/shm, standing for NVRAM) is mounted with `-o dram=SIZE`.
Against it, for `--seconds`:

    fio, four jobs (psync, time-based, crc32c verify of everything written,
    checked while running with verify_backlog, fatal on a mismatch):
      read      randread 4 KiB over a file of 2 x the DRAM budget
      write     randwrite 4 KiB over a file of 1 x the budget
      fsync     write 4 KiB with fsync after every write, a file of budget/4
      stream    write 128 KiB sequentially over a file of 2 x the budget
    churn, a loop beside fio: create files (0-64 KiB), unlink the oldest,
      mkdir/rmdir, so inodes, directory blocks and orphans come and go

Every `--interval` seconds one line: the daemon's RssAnon and RssFile
(/proc/PID/status: XIP reads map the image file, which RSS would count, so
anonymous memory is the leak signal), its open descriptors, the RssAnon of
its event-log sink (docs/EVENTS.md; bounded by its RssAnon at mount +
ALLOWANCE_MIB, and gone after the unmount), the event log's
size and growth, and counters from `.nvramfs/stats` (faults, writebacks,
migrations, frames used, dirty, errors).

At the end: fio must have passed its verify, churn must have seen no error,
the daemon's `errors` counter must be 0, the unmount clean, `nvramfs fsck`
clean, open descriptors back to where they started, and

    max RssAnon <= DRAM budget + constant
    constant    = RssAnon right after the mount (interpreter, libraries, the
                  image's and mm's fixed arrays) + ALLOWANCE_MIB (Python heap
                  and allocator slack; printed)

Exit 0 when all hold, 1 (after saying which) otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MIB = 1 << 20
ALLOWANCE_MIB = 64
FD_SLACK = 8


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not m:
        sys.exit(f"soak: bad size {text!r} (try 64M)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def nvramfs(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nvramfs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def proc_status(pid: int) -> dict[str, int]:
    """RssAnon, RssFile (bytes) and open descriptors of the daemon, and the RssAnon of
    its event-log sink (`sink`: its child process; 0 when it has none)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                out[key] = int(val.split()[0]) * 1024
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    out["sink"] = 0
    for child in children(pid):
        try:
            with open(f"/proc/{child}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        out["sink"] += int(line.split()[1]) * 1024
        except OSError:
            pass
    return out


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the daemon's: its event-log sink)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def fio_jobfile(mnt: Path, dram: int) -> str:
    """The four fio jobs (sizes relative to the DRAM budget)."""
    common = (
        "ioengine=psync\ntime_based=1\nrandrepeat=0\ninvalidate=0\nfallocate=none\n"
        "verify=crc32c\nverify_backlog=256\nverify_fatal=1\ndo_verify=1\n"
    )
    return (
        f"[global]\ndirectory={mnt}\n{common}\n"
        f"[read]\nfilename=read.dat\nrw=randread\nbs=4k\nsize={2 * dram}\nverify=0\n"
        "do_verify=0\n\n"
        f"[write]\nfilename=write.dat\nrw=randwrite\nbs=4k\nsize={dram}\n\n"
        f"[fsync]\nfilename=fsync.dat\nrw=write\nbs=4k\nfsync=1\nsize={max(dram // 4, MIB)}\n\n"
        f"[stream]\nfilename=stream.dat\nrw=write\nbs=128k\nsize={2 * dram}\n"
    )


class Churn(threading.Thread):
    """Create, write, unlink files and make/remove directories until stopped."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.ops = 0
        self.errors: list[str] = []

    def run(self) -> None:
        d = self.root / "churn"
        d.mkdir(exist_ok=True)
        live: list[Path] = []
        n = 0
        rnd = os.urandom(64 * 1024)
        while not self.stop.is_set():
            try:
                p = d / f"f{n}"
                size = (n * 7919) % (64 * 1024)
                with open(p, "wb") as f:
                    f.write(rnd[:size])
                live.append(p)
                if len(live) > 200:
                    live.pop(0).unlink()
                if n % 50 == 0:
                    sub = d / f"d{n}"
                    sub.mkdir()
                    (sub / "x").write_bytes(rnd[:4096])
                    (sub / "x").unlink()
                    sub.rmdir()
                n += 1
                self.ops += 1
            except OSError as exc:
                self.errors.append(f"{exc.filename}: {exc.strerror}")
                if len(self.errors) > 10:
                    return
                time.sleep(0.1)


def total(d: object) -> int:
    """Sum of the numbers in a (nested) counters dict."""
    if isinstance(d, dict):
        return sum(total(v) for v in d.values())
    return int(d) if isinstance(d, int | float) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60, help="how long the load runs")
    ap.add_argument("--dram", default="64M", help="DRAM budget of the mount (default 64M)")
    ap.add_argument("--interval", type=float, default=5, help="seconds between samples")
    ap.add_argument("--dir", default="/dev/shm", help="where the image and its log go")
    ap.add_argument("--keep", action="store_true", help="keep the image and the event log")
    args = ap.parse_args()
    if args.seconds <= 0 or args.interval <= 0:
        ap.error("--seconds and --interval must be positive")
    if shutil.which("fio") is None:
        print("soak: fio is not installed (tools/setup-system.sh)", file=sys.stderr)
        return 2
    dram = parse_size(args.dram)
    work = Path(tempfile.mkdtemp(prefix="nvramfs-soak-", dir=args.dir))
    mnt = Path(tempfile.mkdtemp(prefix="nvramfs-soak-mnt-"))
    image, log = work / "soak.img", work / "soak.events.jsonl"
    img_size = max(256 * MIB, 8 * dram)
    out = nvramfs("mkfs", image, "--size", str(img_size), "-q")
    if out.returncode:
        print(f"soak: mkfs failed: {out.stderr.strip()}", file=sys.stderr)
        return 1
    out = nvramfs("mount", image, mnt, "-o", f"dram={dram},log={log}")
    m = re.search(r"\(pid (\d+)\)", out.stdout)
    if out.returncode or not m:
        print(f"soak: mount failed: {out.stderr.strip()}", file=sys.stderr)
        return 1
    pid = int(m.group(1))
    sinks = children(pid)
    failures: list[str] = []
    fio = None
    churn = Churn(mnt)
    try:
        base = proc_status(pid)
        constant = base["RssAnon"] + ALLOWANCE_MIB * MIB
        bound = dram + constant
        print(
            f"soak: pid {pid}, DRAM budget {dram / MIB:.0f} MiB, {args.seconds:.0f} s; "
            f"RssAnon at mount {base['RssAnon'] / MIB:.1f} MiB, fds {base['fds']}; "
            f"event-log sink {sinks or 'none'}, RssAnon {base['sink'] / MIB:.1f} MiB"
        )
        jobfile = work / "soak.fio"
        jobfile.write_text(fio_jobfile(mnt, dram))
        fio = subprocess.Popen(
            ["fio", f"--runtime={args.seconds}", "--output-format=json", str(jobfile)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        churn.start()
        samples = []
        t0 = time.monotonic()
        log0 = log.stat().st_size if log.exists() else 0
        print(
            f"{'t':>6} {'RssAnon':>8} {'RssFile':>8} {'fds':>4} {'sink':>6} {'log MiB':>8} {'KiB/s':>7} "
            f"{'faults':>9} {'wback':>8} {'migr':>7} {'frames':>6} {'dirty':>6} {'churn':>6} err"
        )
        last_log, last_t = log0, t0
        while fio.poll() is None:
            time.sleep(args.interval)
            now = time.monotonic()
            try:
                st = proc_status(pid)
                stats = json.loads((mnt / ".nvramfs" / "stats").read_bytes())
            except (OSError, ValueError) as exc:
                failures.append(f"the daemon stopped answering: {exc}")
                break
            size = log.stat().st_size
            c = stats.get("counters", {})
            samples.append((now - t0, st))
            print(
                f"{now - t0:6.0f} {st['RssAnon'] / MIB:8.1f} {st['RssFile'] / MIB:8.1f} "
                f"{st['fds']:4d} {st['sink'] / MIB:6.1f} {size / MIB:8.1f} {(size - last_log) / 1024 / (now - last_t):7.0f} "
                f"{total(c.get('faults', {})):9d} {total(c.get('writebacks', {})):8d} "
                f"{total(c.get('migrations', {})):7d} {c.get('frames_used', 0):6d} "
                f"{c.get('dirty', 0):6d} {churn.ops:6d} {stats.get('errors', 0)}",
                flush=True,
            )
            last_log, last_t = size, now
        fio_out, fio_err = fio.communicate(timeout=args.seconds + 600)
        churn.stop.set()
        churn.join(60)
        final = json.loads((mnt / ".nvramfs" / "stats").read_bytes())
        end = proc_status(pid)
        samples.append((time.monotonic() - t0, end))
        # fio: its exit status and every job's error (verify_fatal stops a job on a mismatch).
        try:
            jobs = json.loads(fio_out[fio_out.index("{") :])["jobs"]
        except ValueError:
            jobs = []
            failures.append(f"fio gave no result (exit {fio.returncode}): {fio_err.strip()[-300:]}")
        for job in jobs:
            verified = job["read"]["io_bytes"] if job["jobname"] != "read" else 0
            print(
                f"fio {job['jobname']:>6}: error {job['error']}, "
                f"written {job['write']['io_bytes'] / MIB:.0f} MiB, "
                f"read {job['read']['io_bytes'] / MIB:.0f} MiB"
                + (f" (verify reads {verified / MIB:.0f} MiB)" if verified else "")
            )
            if job["error"]:
                failures.append(f"fio job {job['jobname']}: error {job['error']}")
        if fio.returncode:
            failures.append(f"fio exited {fio.returncode}: {fio_err.strip()[-300:]}")
        if churn.errors:
            failures.append(f"churn: {len(churn.errors)} errors, first: {churn.errors[0]}")
        print(f"churn: {churn.ops} files created and unlinked")
        if final.get("errors"):
            failures.append(f"the daemon counted {final['errors']} errors (see its log)")
        # Memory: the bound, and the trend over the second half.
        peak_t, peak = max(samples, key=lambda s: s[1]["RssAnon"])
        half = [s for s in samples if s[0] >= samples[-1][0] / 2]
        slope = 0.0
        if len(half) >= 2 and half[-1][0] > half[0][0]:
            slope = (half[-1][1]["RssAnon"] - half[0][1]["RssAnon"]) / MIB
            slope /= (half[-1][0] - half[0][0]) / 60
        ok = peak["RssAnon"] <= bound
        print(
            f"RssAnon: max {peak['RssAnon'] / MIB:.1f} MiB at t={peak_t:.0f} s <= "
            f"DRAM budget {dram / MIB:.1f} MiB + constant {constant / MIB:.1f} MiB "
            f"(RssAnon at mount {base['RssAnon'] / MIB:.1f} + allowance {ALLOWANCE_MIB}) "
            f"= {bound / MIB:.1f} MiB: {'ok' if ok else 'VIOLATED'}; "
            f"second half {slope:+.2f} MiB/min"
        )
        if not ok:
            failures.append("RssAnon exceeded the DRAM budget plus the constant")
        sink_peak = max(s[1]["sink"] for s in samples)
        sink_bound = base["sink"] + ALLOWANCE_MIB * MIB
        print(
            f"event-log sink RssAnon: max {sink_peak / MIB:.1f} MiB <= at mount "
            f"{base['sink'] / MIB:.1f} + allowance {ALLOWANCE_MIB} MiB: "
            f"{'ok' if sink_peak <= sink_bound else 'VIOLATED'}"
        )
        if sink_peak > sink_bound:
            failures.append("the event-log sink's RssAnon exceeded its constant")
        elapsed = samples[-1][0]
        growth = (log.stat().st_size - log0) / max(elapsed, 1e-9)
        print(
            f"event log: {log.stat().st_size / MIB:.1f} MiB, {growth / 1024:.0f} KiB/s; "
            f"fds {base['fds']} at mount, {end['fds']} at the end"
        )
        if end["fds"] > base["fds"] + FD_SLACK:
            failures.append(f"open descriptors grew from {base['fds']} to {end['fds']}")
    finally:
        churn.stop.set()
        if fio is not None and fio.poll() is None:
            fio.send_signal(signal.SIGINT)
            try:
                fio.wait(60)
            except subprocess.TimeoutExpired:
                fio.kill()
        um = nvramfs("umount", mnt)
        if um.returncode:
            failures.append(f"umount failed: {um.stderr.strip()}")
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        if os.path.exists(f"/proc/{pid}"):
            failures.append("the daemon outlived its unmount")
            os.kill(pid, signal.SIGKILL)
        for sink in sinks:
            while os.path.exists(f"/proc/{sink}") and time.monotonic() < deadline:
                time.sleep(0.1)
            if os.path.exists(f"/proc/{sink}"):
                failures.append(f"the event-log sink (pid {sink}) outlived the unmount")
                os.kill(sink, signal.SIGKILL)
        mnt.rmdir()
    fs = nvramfs("fsck", image)
    print(f"fsck: {fs.stdout.strip() or fs.stderr.strip()}")
    if fs.returncode:
        failures.append(f"fsck exit {fs.returncode}")
    if args.keep:
        print(f"kept {image} and {log}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print(f"soak: FAIL: {f}", file=sys.stderr)
    print("soak: ok" if not failures else f"soak: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
