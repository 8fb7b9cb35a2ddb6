"""`nvramfs demo`: mount the default image, run fio, and show what the memory manager did.

The whole story in about a minute (`--quick`: about 15 s):

  1. warm       zipf random reads of the biggest file: a hot set is promoted
                from XIP into pagecache and the hit ratio climbs
  2. scan       one sequential pass over another file larger than the DRAM
                budget: a scan-resistant policy serves it from XIP
  3. hot again  the zipf reads once more: the hot set survived the scan
  4. write      random reads and writes: every first store to an XIP page is
                a copy-on-write into a frame; dirty frames are written back
  5. verify     random writes, then fio reads them back and checks crc32c

The image is built from images/default.json when it is missing; the mount is
always unmounted (also on an error or Ctrl-C) before the summary, which is
computed by the same functions as `nvramfs log LOG summary` over the same
log, so the numbers are the same. The event log, fio's JSON, the summary
JSON and the plots are kept in the output directory.
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn

import nvramfs
from nvramfs.cli.log import (
    PAGE_SIZE,
    format_summary,
)
from nvramfs.device import DEFAULT_MEDIUM
from nvramfs.errors import NvramfsError, UsageError
from nvramfs.events import schema
from nvramfs.events.reader import ReadReport, parse_line
from nvramfs.units import format_bytes as human_bytes

DEFAULT_DRAM = "8M"  # the zipf hot set of the default image is a little bigger: it fills
QUICK_DRAM = "2M"  # the quick phases warm fewer pages; a smaller budget still fills
LOG_NAME = "demo.events.jsonl"
TRACE_NAME = "demo.trace"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="build, mount, run fio, unmount, and summarize (the README's main job)",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--image",
        metavar="PATH",
        help="the image (default images/build/default.img; built from images/default.json "
        "when missing, and, for the default one, rebuilt when fsck rejects it). The write "
        "phases overwrite part of one of its big files.",
    )
    p.add_argument(
        "--dram",
        metavar="SIZE",
        help=f"DRAM budget ({DEFAULT_DRAM}; {QUICK_DRAM} with --quick)",
    )
    p.add_argument("--policy", metavar="NAME", help="migration policy (default: mm's default)")
    p.add_argument("--quick", action="store_true", help="short phases (about 15 s, for tests)")
    p.add_argument(
        "--keep-mounted",
        choices=("no", "yes"),
        default="no",
        help="yes: leave the mount up after a successful run to look around "
        "(the summary is then of the log so far); on an error or Ctrl-C it is "
        "always unmounted (default no)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where the log, fio output, summary and plots go (default: demo/ beside the image)",
    )
    p.add_argument("--mountpoint", metavar="DIR", help="mount here (default: a new temp dir)")
    p.add_argument(
        "--sweep-seconds",
        type=float,
        default=20.0,
        metavar="S",
        help="end with a sweep of the demo's trace, at most S seconds (20; 0: none)",
    )
    p.set_defaults(func=main)
    return p


# --------------------------------------------------------------------------- locating things


def repo_dir(name: str) -> Path:
    """`images/` or `tools/fio/` of the nvramfs checkout: beside the package, or in the CWD."""
    candidates = [Path(nvramfs.__file__).resolve().parent.parent / name, Path.cwd() / name]
    for c in candidates:
        if c.is_dir():
            return c
    raise NvramfsError(
        f"cannot find the repository's {name}/ (looked in "
        + " and ".join(str(c) for c in candidates)
        + "): run the demo from a clone of nvramfs"
    )


def _nvramfs(*args: str, capture: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an nvramfs command in a child process (the same Python, this package)."""
    return subprocess.run(
        [sys.executable, "-m", "nvramfs", *args],
        capture_output=capture,
        text=True,
        timeout=timeout,
    )


def _last_line(text: str) -> str:
    """The last line a child command printed, without its `nvramfs: ` prefix."""
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "failed"
    return last.removeprefix("nvramfs: ")


def ensure_image(image: Path | None) -> Path:
    """The image to mount, checked by fsck first.

    The default image is a build output of images/default.json: it is built
    when missing and rebuilt when fsck rejects it (e.g. made by an nvramfs
    whose on-NVRAM format has changed since). An image the user names is
    built from the default recipe only when it does not exist, and never
    rebuilt: fsck's verdict is the error.
    """
    default = image is None
    if image is None:
        image = repo_dir("images") / "build" / "default.img"
    if not image.exists():
        what = "the default image" if default else f"{image} from the default recipe"
        build_image(image, what)
        return image
    problem = fsck_problem(image)
    if problem is None:
        return image
    if not default:
        raise NvramfsError(f"{image}: {problem} (nvramfs fsck {image} says what)")
    print(f"the default image {problem}; rebuilding it", flush=True)
    build_image(image, "the default image")
    return image


def fsck_problem(image: Path) -> str | None:
    """None when `nvramfs fsck` passes the image, else what it says, in a few words."""
    out = _nvramfs("fsck", "--json", str(image), timeout=300)
    if out.returncode == 0:
        return None
    try:
        res = json.loads(out.stdout)
        errors = res.get("errors") or []
        first = errors[0].get("what") if errors and isinstance(errors[0], dict) else None
        n = len(errors)
        what = f"does not pass fsck: {n} error{'s' if n != 1 else ''}"
        return what + (f", e.g. {first}" if first else "")
    except (ValueError, AttributeError):
        return f"does not pass fsck: {_last_line(out.stderr or out.stdout)}"


def build_image(image: Path, what: str) -> None:
    """`nvramfs mkfs IMAGE --recipe images/default.json`, all or nothing."""
    recipe = repo_dir("images") / "default.json"
    if not recipe.is_file():
        raise NvramfsError(f"{recipe}: the default image's recipe is missing")
    print(f"building {what}: nvramfs mkfs {image} --recipe {recipe}", flush=True)
    # Built under another name and renamed when whole: an interrupted build
    # never leaves a half-made image where the next demo would mount it.
    partial = image.with_name(image.name + ".building")
    try:
        out = _nvramfs("mkfs", str(partial), "--recipe", str(recipe), "--quiet", "--force")
        if out.returncode != 0:
            raise NvramfsError(f"cannot build {image}: {_last_line(out.stderr)}")
        os.replace(partial, image)
    finally:
        partial.unlink(missing_ok=True)


# --------------------------------------------------------------------------- fio


@dataclass
class Phase:
    """One fio run of the demo."""

    name: str
    job: str  # file name in tools/fio/
    what: str  # what it shows, for the progress line
    env: dict[str, str]
    runtime: float | None = None  # seconds, for time_based jobs (the progress bar)
    result: dict[str, Any] = field(default_factory=dict)  # filled after the run
    stats: dict[str, Any] = field(default_factory=dict)  # mm counters delta over the phase
    seconds: float = 0.0
    wall: tuple[float, float] = (0.0, 0.0)  # Unix time of its start and end


def find_targets(mnt: Path) -> list[tuple[Path, int]]:
    """Regular files of the mount, biggest first (fio's targets)."""
    files = []
    for root, dirs, names in os.walk(mnt):
        dirs[:] = [d for d in dirs if d != ".nvramfs"]
        for n in names:
            p = Path(root) / n
            try:
                st = p.lstat()
            except OSError:
                continue
            if p.is_file() and not p.is_symlink():
                files.append((p, st.st_size))
    files.sort(key=lambda x: (-x[1], str(x[0])))
    return files


def plan_phases(mnt: Path, quick: bool) -> list[Phase]:
    """The phases, on the mount's biggest files (hot, scan and write targets)."""
    files = [(p, s) for p, s in find_targets(mnt) if s >= (1 << 20)]
    if not files:
        raise NvramfsError(f"the image has no file of at least 1 MiB under {mnt} to run fio on")
    hot, hot_size = files[0]
    scan, scan_size = files[1] if len(files) > 1 else files[0]
    write, write_size = files[2] if len(files) > 2 else files[-1]
    t_warm, t_again, t_write = (3, 2, 2) if quick else (20, 10, 10)
    w_size = min(write_size, (1 << 20) if quick else (4 << 20))
    rel = lambda p: "/" + str(p.relative_to(mnt))  # noqa: E731
    hot_env = {"FILENAME": str(hot), "SIZE": str(_floor(hot_size, PAGE_SIZE))}
    return [
        Phase(
            "warm",
            "zipf-randread.fio",
            f"zipf 4k random reads of {rel(hot)}: a hot set is promoted",
            {**hot_env, "RUNTIME": str(t_warm)},
            t_warm,
        ),
        Phase(
            "scan",
            "seqread.fio",
            f"one sequential pass over {rel(scan)} ({human_bytes(scan_size)})",
            {"FILENAME": str(scan), "SIZE": str(_floor(scan_size, 128 << 10))},
        ),
        Phase(
            "hot again",
            "zipf-randread.fio",
            f"the zipf reads of {rel(hot)} again: did the hot set survive the scan?",
            {**hot_env, "RUNTIME": str(t_again)},
            t_again,
        ),
        Phase(
            "write",
            "randrw.fio",
            f"4k random reads and writes (70/30) of {rel(write)}: COW, dirty frames, writeback",
            {
                "FILENAME": str(write),
                "SIZE": str(_floor(write_size, PAGE_SIZE)),
                "RUNTIME": str(t_write),
            },
            t_write,
        ),
        Phase(
            "verify",
            "randwrite-verify.fio",
            f"4k random writes to {rel(write)} ({human_bytes(w_size)}), then a crc32c read-back",
            {"FILENAME": str(write), "SIZE": str(_floor(w_size, PAGE_SIZE))},
        ),
    ]


def _floor(n: int, unit: int) -> int:
    return max(unit, n - n % unit)


def fio_numbers(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per direction with I/O: MiB/s, IOPS, mean and p99 completion latency (µs), from fio JSON."""
    out: dict[str, dict[str, float]] = {}
    jobs = result.get("jobs") or []
    if not jobs:
        return out
    job = jobs[0]
    for d in ("read", "write"):
        x = job.get(d) or {}
        if not x.get("io_bytes"):
            continue
        clat = x.get("clat_ns") or {}
        pct = clat.get("percentile") or {}
        p99 = pct.get("99.000000")
        out[d] = {
            "mib_s": x.get("bw_bytes", x.get("bw", 0) * 1024) / (1 << 20),
            "iops": float(x.get("iops", 0.0)),
            "lat_mean_us": (x.get("lat_ns") or {}).get("mean", clat.get("mean", 0.0)) / 1000,
            "lat_p99_us": (p99 / 1000) if p99 is not None else float("nan"),
            "io_mib": x["io_bytes"] / (1 << 20),
        }
    return out


# --------------------------------------------------------------------------- live view


class LogTail:
    """Reads whole new lines of a growing log; keeps the last `counters` event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.pending = b""
        self.counters: dict[str, Any] | None = None
        self.report = ReadReport()

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except OSError:
            return
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        for raw in lines:
            ev = parse_line(raw, self.report)
            if ev is not None and ev["ev"] == schema.COUNTERS:
                self.counters = ev


def read_counters(mnt: Path) -> dict[str, Any] | None:
    """The live counters of `.nvramfs/stats` (None if the mount does not say)."""
    try:
        with open(mnt / ".nvramfs" / "stats", "rb") as f:
            stats = json.loads(f.read())
    except (OSError, ValueError):
        return None
    c = stats.get("counters")
    return c if isinstance(c, dict) else None


def counters_delta(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    """What happened between two counters snapshots: hit ratio, promote/demote, cow, faults."""
    if not b:
        return {}
    a = a or {}

    def tot(c: dict[str, Any], k: str) -> int:
        v = c.get(k) or {}
        return sum(int(x) for x in v.values()) if isinstance(v, dict) else 0

    def mig(c: dict[str, Any], d: str) -> int:
        return sum(int(x) for x in ((c.get("migrations") or {}).get(d) or {}).values())

    from nvramfs.events.numbers import hit_ratio

    acc = tot(b, "accesses") - tot(a, "accesses")
    return {
        "accesses": acc,
        "hit_ratio": hit_ratio(b, a),
        "promote": mig(b, "promote") - mig(a, "promote"),
        "demote": mig(b, "demote") - mig(a, "demote"),
        "cow": (b.get("faults") or {}).get("cow", 0) - (a.get("faults") or {}).get("cow", 0),
        "writebacks": tot(b, "writebacks") - tot(a, "writebacks"),
        "frames_used": b.get("frames_used"),
        "modelled_ns": {
            k: int(v) - int((a.get("modelled_ns") or {}).get(k, 0))
            for k, v in (b.get("modelled_ns") or {}).items()
        },
    }


def _status(before: dict[str, Any] | None, c: dict[str, Any] | None) -> str:
    """The live line: this phase's hit ratio, the frames in use, migrations and COW so far."""
    if not c:
        return ""
    d = counters_delta(before, c)
    hit = f"hit {100 * d['hit_ratio']:5.1f}%" if d.get("hit_ratio") is not None else "hit     -"
    f = c.get("faults") or {}
    m = c.get("migrations") or {}
    pro = sum((m.get("promote") or {}).values())
    dem = sum((m.get("demote") or {}).values())
    return (
        f"{hit}  frames {c.get('frames_used', 0):,}/{c.get('dram_pages', 0):,}  "
        f"promote {pro:,}  demote {dem:,}  cow {f.get('cow', 0):,}"
    )


def run_phase(
    phase: Phase, i: int, n: int, fio_dir: Path, outdir: Path, mnt: Path, tail: LogTail
) -> None:
    """Run one fio job with a progress line; fill phase.result (fio JSON) and phase.stats."""
    tty = sys.stdout.isatty()
    print(f"[{i}/{n}] {phase.name}: {phase.what}", flush=True)
    try:  # the phase starts: `log summary` prices it from this mark on (docs/COSTS.md)
        (mnt / ".nvramfs" / "ctl").write_text(f"mark {phase.name}\n")
    except OSError:
        pass
    before = read_counters(mnt)
    out_json = outdir / f"fio-{i}-{phase.name.replace(' ', '-')}.json"
    err_path = outdir / f"fio-{i}-{phase.name.replace(' ', '-')}.stderr"
    cmd = ["fio", "--output-format=json", f"--output={out_json}", str(fio_dir / phase.job)]
    t0 = time.monotonic()
    wall0 = time.time()
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **phase.env},
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=outdir,  # fio's own leftovers (if any) go there, not into the CWD
        )
        # The live line (a tty only): rich's bar over the phase's runtime, then mm's
        # figures so far; transient, so the phase's result line replaces it.
        bar = Progress(
            TextColumn("  "),
            BarColumn(bar_width=20),
            TextColumn("{task.fields[clock]}"),
            TextColumn("{task.fields[status]}"),
            transient=True,
            disable=not tty,
        )
        task = bar.add_task(phase.name, total=phase.runtime or None, clock="", status="")
        try:
            with bar:
                while proc.poll() is None:
                    if tty:
                        tail.poll()
                        el = time.monotonic() - t0
                        clock = (
                            f"{el:4.1f}/{phase.runtime:g} s" if phase.runtime else f"{el:5.1f} s"
                        )
                        status = _status(before, read_counters(mnt) or tail.counters)
                        bar.update(task, completed=el, clock=clock, status=status)
                    time.sleep(0.25)
        except BaseException:
            _stop(proc)
            raise
    phase.seconds = time.monotonic() - t0
    phase.wall = (wall0, time.time())
    if proc.returncode != 0:
        text = err_path.read_text(errors="replace")
        raise NvramfsError(
            f"fio {phase.job} failed (exit {proc.returncode}): {_last_line(text)} (see {err_path})"
        )
    try:
        phase.result = json.loads(out_json.read_text())
    except (OSError, ValueError) as exc:
        raise NvramfsError(
            f"fio {phase.job}: cannot read its JSON output {out_json}: {exc}"
        ) from None
    phase.stats = counters_delta(before, read_counters(mnt))
    print("  " + _phase_line(phase), flush=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lat(us: float) -> str:
    if us != us:  # nan
        return "-"
    return f"{us:,.0f} µs" if us < 1000 else f"{us / 1000:,.2f} ms"


def _phase_line(phase: Phase) -> str:
    nums = fio_numbers(phase.result)
    parts = [
        f"{d} {x['mib_s']:,.1f} MiB/s {x['iops']:,.0f} IOPS lat {_lat(x['lat_mean_us'])} "
        f"p99 {_lat(x['lat_p99_us'])}"
        for d, x in nums.items()
    ]
    s = phase.stats
    if s.get("hit_ratio") is not None:
        parts.append(f"hit {100 * s['hit_ratio']:.1f}%")
    return f"{phase.seconds:.1f} s: " + "; ".join(parts)


def phase_table(phases: list[Phase]) -> str:
    """Throughput and latency per phase (fio), with what mm did during it (counters);
    a rich table, rendered to text."""
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (
        ("phase", "left"),
        ("", "left"),
        ("MiB/s", "right"),
        ("IOPS", "right"),
        ("mean lat", "right"),
        ("p99 lat", "right"),
        ("hit", "right"),
        ("promote", "right"),
        ("demote", "right"),
        ("cow", "right"),
    ):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for ph in phases:
        nums = fio_numbers(ph.result)
        s = ph.stats
        hit = f"{100 * s['hit_ratio']:.1f}%" if s.get("hit_ratio") is not None else "-"
        first = True
        for d, x in nums.items():
            label = "verify" if ph.job.startswith("randwrite-verify") and d == "read" else d
            mm = (
                [hit, f"{s.get('promote', 0):,}", f"{s.get('demote', 0):,}", f"{s.get('cow', 0):,}"]
                if first and s
                else ["", "", "", ""]
            )
            t.add_row(
                ph.name if first else "",
                label,
                f"{x['mib_s']:,.1f}",
                f"{x['iops']:,.0f}",
                _lat(x["lat_mean_us"]),
                _lat(x["lat_p99_us"]),
                *mm,
            )
            first = False
    console = Console(width=200, color_system=None, highlight=False)
    with console.capture() as cap:
        console.print(t)
    return "\n".join(line.rstrip() for line in cap.get().splitlines())


def modelled_lines(phases: list[Phase], medium: str) -> list[str]:
    """Modelled time per phase on the demo's medium (docs/COSTS.md), and what share
    of each writing phase went to COW, writeback and erase."""
    from nvramfs.cli.log import _dur, _shares

    rows = [(ph, ph.stats.get("modelled_ns") or {}) for ph in phases]
    if not any(ns for _, ns in rows):
        return []
    out = [f"modelled time on {medium} (the device model, not the daemon's wall time):"]
    for ph, ns in rows:
        total = sum(ns.values())
        out.append(f"  {ph.name:<10} {_dur(total):>10}   {_shares(ns)}")
        writes = ns.get("cow", 0) + ns.get("writeback", 0) + ns.get("erase", 0)
        if total and ns.get("cow", 0) + ns.get("writeback", 0):
            out.append(
                f"  {'':<10} {'':>10}   COW {100 * ns.get('cow', 0) / total:.0f}%, writeback "
                f"{100 * ns.get('writeback', 0) / total:.0f}%, erase "
                f"{100 * ns.get('erase', 0) / total:.0f}%: {100 * writes / total:.0f}% of "
                f"this phase's modelled time went to writing"
            )
    return out


def phase_spans(
    sessions: list[Any], phases: list[Phase], *, on_log_axis: bool = True
) -> list[tuple[str, float, float]]:
    """The phases on the plots' time axis, from wall clock times: seconds since the
    mount of the last session (placed at its offset when several sessions share the axis)."""
    mount = sessions[-1].mount if sessions else None
    if not mount or not isinstance(mount.get("wall"), int | float):
        return []
    offset = sessions[-1].offset if on_log_axis else 0.0
    base = float(mount["wall"]) - float(mount.get("t", 0.0)) - offset
    return [(ph.name, ph.wall[0] - base, ph.wall[1] - base) for ph in phases if ph.wall[1] > 0]


# --------------------------------------------------------------------------- mount


def is_mounted(mnt: Path) -> bool:
    from nvramfs.fuse.mount import unescape_mounts_field

    path = str(mnt.resolve())
    try:
        with open("/proc/mounts") as f:
            return any(unescape_mounts_field(ln.split()[1]) == path for ln in f if ln.strip())
    except OSError:
        return os.path.ismount(path)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def mount(
    image: Path, mnt: Path, dram: str, policy: str | None, log: Path, trace: Path | None = None
) -> tuple[int | None, bool]:
    """`nvramfs mount` (returns once the mount is ready): the daemon's pid, and whether
    Ctrl-C was pressed meanwhile.

    Ctrl-C is held back until `nvramfs mount` has answered: killed half-way, it
    would leave a daemon that mounts after the demo has looked for a mount to
    take down.
    """
    opts = f"dram={dram},log={log}" + (f",policy={policy}" if policy else "")
    if trace is not None:
        opts += f",trace={trace}"  # every MemoryManager call, for `nvramfs replay`
    interrupted: list[int] = []
    old = signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
    try:
        out = subprocess.run(
            [sys.executable, "-m", "nvramfs", "mount", str(image), str(mnt), "-o", opts],
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C is ours
        )
    finally:
        signal.signal(signal.SIGINT, old)
    if out.returncode != 0:
        if interrupted:
            # Ctrl-C can still reach the child between fork and setsid (and kill
            # it before it runs): then nothing was mounted, and Ctrl-C is the news.
            raise KeyboardInterrupt
        raise NvramfsError(f"cannot mount {image}: {_last_line(out.stderr)}", out.returncode)
    m = re.search(r"\(pid (\d+)\)", out.stdout)
    return (int(m.group(1)) if m else None), bool(interrupted)


def unmount(mnt: Path, pid: int | None) -> str | None:
    """Unmount and wait for the daemon's writeback; returns a warning or None. Never raises."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
    try:
        warning = None
        if is_mounted(mnt):
            try:
                out = _nvramfs("umount", str(mnt), timeout=330)
                if out.returncode != 0:
                    warning = f"nvramfs umount {mnt}: {_last_line(out.stderr)}"
            except subprocess.TimeoutExpired:
                warning = f"nvramfs umount {mnt} timed out"
            if is_mounted(mnt):
                tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
                subprocess.run([tool, "-u", "-z", str(mnt)], capture_output=True)
                warning = (warning or "") + f"; lazily unmounted {mnt}"
        if pid is not None:
            deadline = time.monotonic() + 120
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                warning = f"the mount daemon (pid {pid}) is still running"
        return warning
    finally:
        signal.signal(signal.SIGINT, old)


# --------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> int:
    from nvramfs.units import parse_size

    dram = args.dram or (QUICK_DRAM if args.quick else DEFAULT_DRAM)
    parse_size(dram)  # a bad size is a usage error before anything happens
    if shutil.which("fio") is None:
        raise NvramfsError("fio is not installed: apt-get install fio (make demo installs it)")
    fio_dir = repo_dir(os.path.join("tools", "fio"))
    image = ensure_image(Path(args.image) if args.image else None).resolve()
    outdir = Path(args.out) if args.out else image.parent / "demo"
    outdir.mkdir(parents=True, exist_ok=True)
    outdir = outdir.resolve()
    log = outdir / LOG_NAME
    plots = outdir / "plots"
    trace = outdir / TRACE_NAME
    for stale in (log, outdir / "summary.json"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(plots, ignore_errors=True)
    shutil.rmtree(trace, ignore_errors=True)

    own_mnt = args.mountpoint is None
    mnt = Path(tempfile.mkdtemp(prefix="nvramfs-demo-")) if own_mnt else Path(args.mountpoint)
    if not own_mnt and not mnt.is_dir():
        raise UsageError(f"--mountpoint {mnt}: no such directory")
    t_start = time.monotonic()
    pid = None
    phases: list[Phase] = []
    keep = False
    print(f"nvramfs demo: mounting {image} on {mnt} (DRAM {dram}"
          f"{', policy ' + args.policy if args.policy else ''})", flush=True)  # fmt: skip
    try:
        pid, interrupted = mount(image, mnt, dram, args.policy, log, trace)
        if interrupted:
            raise KeyboardInterrupt
        phases = plan_phases(mnt, args.quick)
        tail = LogTail(log)
        for i, ph in enumerate(phases, 1):
            run_phase(ph, i, len(phases), fio_dir, outdir, mnt, tail)
        keep = args.keep_mounted == "yes"
    finally:
        if not keep:
            warning = unmount(mnt, pid)
            if own_mnt:
                try:
                    mnt.rmdir()
                except OSError:
                    pass
            if warning:
                print(f"nvramfs demo: {warning}", file=sys.stderr)
    if keep:
        time.sleep(1.2)  # one tick: the log holds the last second's events
    elapsed = time.monotonic() - t_start

    from nvramfs.events.analysis import summarize_log

    summary, scan = summarize_log(log)
    report = scan.report
    if not scan.sessions.infos:
        raise NvramfsError(f"{log}: the mount wrote no events")
    summary["demo"] = {
        "elapsed_s": round(elapsed, 2),
        "phases": [
            {
                "name": ph.name,
                "job": ph.job,
                "seconds": round(ph.seconds, 2),
                "fio": fio_numbers(ph.result),
                "mm": ph.stats,
            }
            for ph in phases
        ],
    }
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_paths: list[Path] = []
    plot_note = None
    try:
        from nvramfs.cli.plot import load_view, make_plots

        view = load_view(log, "all", ReadReport())
        if view is not None:
            spans = phase_spans(view.sessions, phases, on_log_axis=view.time == "t_log")
            plot_paths = make_plots(view, plots, per_file=1, spans=spans)
    except NvramfsError as exc:
        plot_note = str(exc)

    print()
    print(f"nvramfs demo: {len(phases)} phases in {elapsed:.0f} s")
    print(phase_table(phases))
    lines = modelled_lines(phases, DEFAULT_MEDIUM)
    if lines:
        print()
        print("\n".join(lines))
    print()
    print(format_summary(summary, timeline=False))
    print()
    if keep:
        print(f"still mounted at {mnt}: nvramfs umount {mnt} ends it")
    print(f"same numbers nvramfs log {log} summary")
    print(f"summary      {outdir / 'summary.json'}")
    if (trace / "header.json").exists():
        print(f"trace        {trace} (nvramfs replay {trace} -o dram=...,policy=...)")
    if plot_paths:
        print("plots        " + "\n             ".join(str(p) for p in plot_paths))
    elif plot_note:
        print(f"plots        none: {plot_note}")
    if report.describe():
        print(f"note         {report.describe()}")
    if args.sweep_seconds > 0 and (trace / "header.json").exists():
        print(demo_sweep(trace, args.policy, parse_size(dram), args.sweep_seconds))
    return 0


def demo_sweep(trace: Path, policy: str | None, dram_bytes: int, seconds: float) -> str:
    """The demo's closing line: its trace replayed for the default policy at its budget
    with XIP and without, and under opt (nvramfs.trace.sweep, bounded to `seconds`)."""
    import inspect

    from nvramfs.mm import MemoryManager
    from nvramfs.trace import sweep

    name = policy or inspect.signature(MemoryManager).parameters["policy"].default
    pages = max(1, dram_bytes // PAGE_SIZE)
    configs = [sweep.Config(name, pages, True), sweep.Config(name, pages, False)]
    has_opt = "opt" in sweep.known_policies()
    if has_opt:
        configs.append(sweep.Config("opt", pages, True))
    rows = sweep.run_bounded(str(trace), configs, seconds)
    missing = (
        f"not finished in {seconds:g} s (--sweep-seconds)" if has_opt else "not in this nvramfs"
    )
    return "sweep        " + sweep.xip_line(
        name, pages, rows[0], rows[1], rows[2] if has_opt else None, missing
    )
