"""`nvramfs sweep TRACE [--policy LIST] [--dram SPEC] [--xip on,off] [--guests LIST] ...`.

Replays one recorded trace under every combination of the axes, one
configuration per process on the local cores (or on a Dask cluster with
--scheduler), prints a table and writes PREFIX.csv, PREFIX.json and
PREFIX-*.png (the miss-ratio curve, copies, writes, frames; with several
guest counts the struct page bytes of all guests against the image's size).
Every column is defined in docs/TRACE.md, "Sweeps".

Exit codes: 0 ok (a configuration that failed is reported in its row); 1 a
trace that cannot be read, an unreachable scheduler, workers of another
nvramfs version; 2 a usage error (an unknown policy, a DRAM size of 0,
--guests 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from nvramfs.errors import UsageError

PAGE = 4096


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep",
        help="replay a trace under many configurations (policy x DRAM x XIP x guests)",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[2],
    )
    p.add_argument("traces", nargs="+", metavar="TRACE", help="the trace directory")
    p.add_argument(
        "--policy",
        metavar="LIST",
        help="comma list of policies (default: every one mm has: none,mq,2q,clock,lru,opt)",
    )
    p.add_argument(
        "--dram",
        metavar="SPEC",
        help="DRAM budgets: a comma list (64M,256M) or a geometric range FROM:TO:xFACTOR "
        "(1M:1G:x2); default: the recorded budget /8 to x4, by x2",
    )
    p.add_argument("--xip", default="on", metavar="on,off", help="XIP on, off or both (on,off)")
    p.add_argument("--guests", default="1", metavar="LIST", help="guest counts (1,10,100)")
    p.add_argument(
        "--medium",
        metavar="LIST",
        help="device-model media (nor,pcm,optane,dram or .toml files): modelled time and "
        "wear per configuration (default: the trace's own medium; docs/COSTS.md)",
    )
    p.add_argument(
        "--guest-variants",
        type=int,
        default=8,
        metavar="V",
        help="distinct starting points of the guests' reads (guest k starts k mod V / V "
        "into them; 1: all guests identical, computed once); default 8",
    )
    p.add_argument(
        "--trace-per-guest",
        action="store_true",
        help="several TRACEs: guest k replays the reads of TRACE k mod their number",
    )
    p.add_argument("--jobs", "-j", type=int, metavar="N", help="local processes (default: cores)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask cluster")
    p.add_argument(
        "--out", "-o", default="sweep", metavar="PREFIX", help="write PREFIX.csv/.json/-*.png"
    )
    p.add_argument("--no-plot", action="store_true", help="write no pictures")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=main)
    return p


def parse_dram(spec: str) -> list[int]:
    """`1M:1G:x2` (FROM, then xFACTOR while <= TO) or `64M,256M` -> budgets in pages.
    Sizes use the project's one size parser (nvramfs.units.parse_size)."""
    from nvramfs.units import parse_size

    spec = spec.strip()
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3 or not parts[2].lower().startswith("x"):
            raise UsageError(f"--dram {spec}: give FROM:TO:xFACTOR, e.g. 1M:1G:x2")
        lo, hi = parse_size(parts[0]), parse_size(parts[1])
        try:
            factor = float(parts[2][1:])
        except ValueError:
            raise UsageError(f"--dram {spec}: the factor must be a number (x2)") from None
        if factor <= 1:
            raise UsageError(f"--dram {spec}: the factor must be more than 1")
        if lo < PAGE or hi < lo:
            raise UsageError(f"--dram {spec}: FROM must hold a 4 KiB frame and be <= TO")
        sizes = []
        s = float(lo)
        while s <= hi * (1 + 1e-9):
            sizes.append(int(s))
            s *= factor
    else:
        sizes = [parse_size(w) for w in spec.split(",") if w.strip()]
    for s in sizes:
        if s < PAGE:
            raise UsageError(
                f"--dram: {s} bytes holds no 4 KiB frame (a budget of 0 is meaningless)"
            )
    pages = sorted({s // PAGE for s in sizes})
    if not pages:
        raise UsageError("--dram: no size given")
    return pages


def parse_xip(text: str) -> list[bool]:
    out = []
    for w in text.split(","):
        w = w.strip().lower()
        if w not in ("on", "off"):
            raise UsageError(f"--xip {text}: give on, off or on,off")
        out.append(w == "on")
    return list(dict.fromkeys(out))


def parse_guests(text: str) -> list[int]:
    out = []
    for w in text.split(","):
        try:
            n = int(w)
        except ValueError:
            raise UsageError(f"--guests {text}: give whole numbers (1,10,100)") from None
        if n < 1:
            raise UsageError(f"--guests {n}: give at least 1 guest")
        out.append(n)
    return sorted(set(out))


def default_policies() -> list[str]:
    from nvramfs.trace.sweep import known_policies

    return [p for p in known_policies() if p != "opt-nox"]


def build(args: argparse.Namespace) -> tuple[str, list[Any], dict[str, Any]]:
    """The trace, the configurations and the run's keywords, checked."""
    from nvramfs.trace.format import read_header
    from nvramfs.trace.sweep import configurations

    trace = args.traces[0]
    if len(args.traces) > 1 and not args.trace_per_guest:
        raise UsageError("several traces need --trace-per-guest (one trace per guest)")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs: give at least 1")
    if args.guest_variants < 1:
        raise UsageError("--guest-variants: give at least 1")
    policies = [p.strip() for p in (args.policy or "").split(",") if p.strip()]
    policies = policies or default_policies()
    xips = parse_xip(args.xip)
    guests = parse_guests(args.guests)
    header = read_header(trace)  # TraceError (exit 1) before anything runs
    if args.dram:
        drams = parse_dram(args.dram)
    else:
        rec = int(header.config.get("dram_pages") or 16384)
        drams = sorted({max(1, rec * k // 8) for k in (1, 2, 4, 8, 16, 32)})
    media: list[str | None] = [m.strip() for m in (args.medium or "").split(",") if m.strip()]
    configs = configurations(policies, drams, xips, guests, list(dict.fromkeys(media)) or [None])
    kw: dict[str, Any] = {"variants": args.guest_variants}
    if args.trace_per_guest:
        for t in args.traces:
            read_header(t)
        kw["guest_traces"] = list(args.traces)
    return trace, configs, kw


def main(args: argparse.Namespace) -> int:
    from nvramfs.trace import sweep

    trace, configs, kw = build(args)
    client = sweep.connect(args.scheduler) if args.scheduler else None
    start = time.perf_counter()
    try:
        with _progress(args.quiet, len(configs)) as progress:
            if client is not None:
                rows = sweep.run_dask(trace, configs, client, progress, **kw)
            else:
                rows = sweep.run_local(trace, configs, args.jobs, progress, **kw)
    finally:
        if client is not None:
            client.close()
    wall = time.perf_counter() - start
    print_table(rows)
    meta = {
        "trace": os.path.abspath(trace),
        "where": args.scheduler or f"local, {args.jobs or os.cpu_count()} processes",
        "wall_seconds": round(wall, 3),
        "configurations": len(rows),
    }
    sweep.write_csv(rows, args.out + ".csv")
    sweep.write_json(rows, args.out + ".json", meta)
    written = [args.out + ".csv", args.out + ".json"]
    if not args.no_plot:
        written += sweep.plot(rows, args.out)
    failed = sum(1 for r in rows if r["error"])
    note = f", {failed} failed (see their rows)" if failed else ""
    print(f"{len(rows)} configurations in {wall:.1f} s{note}; wrote {', '.join(written)}")
    return 0


class _progress:
    """A rich progress bar on stderr (nothing with --quiet or when stderr is no terminal
    and rich cannot draw)."""

    def __init__(self, quiet: bool, total: int) -> None:
        self.quiet = quiet
        self.total = total
        self.bar: Any = None

    def __enter__(self) -> Any:
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.bar = Progress(
            "sweep",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.start()
        task = self.bar.add_task("sweep", total=self.total)

        def update(done: int, total: int) -> None:
            self.bar.update(task, completed=done, total=total)

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _mib(n: Any) -> str:
    if n is None:
        return ""
    return f"{n / 2**20:.4g}M" if n >= 2**20 else f"{n / 2**10:.4g}K"


def print_table(rows: list[dict[str, Any]]) -> None:
    """The table (rich): one row per configuration; guest columns when guests > 1."""
    from rich.console import Console
    from rich.table import Table

    many = any(r["guests"] > 1 for r in rows)
    t = Table(title="sweep (docs/TRACE.md, Sweeps)", show_lines=False)
    heads = ["policy", "xip", "dram", "guests", "hit ratio", "promote", "demote", "cow",
             "wb", "peak", "mixedmap", "saved"]  # fmt: skip
    if many:
        heads += ["all: mixedmap", "all: memmap", "all: dram", "image"]
    priced = any(r.get("modelled_ns") is not None for r in rows)
    if priced:
        heads += ["medium", "modelled", "write %", "erases", "worst", "WA"]
    heads += ["acc/s", "error"]
    for h in heads:
        t.add_column(h, justify="left" if h in ("policy", "xip", "error") else "right")
    for r in rows:
        if r["error"]:
            cells = [r["policy"], "on" if r["xip"] else "off", _mib(r["dram_bytes"]),
                     str(r["guests"])] + [""] * (len(heads) - 5) + [r["error"]]  # fmt: skip
            t.add_row(*cells)
            continue
        cells = [
            r["policy"],
            "on" if r["xip"] else "off",
            _mib(r["dram_bytes"]),
            str(r["guests"]),
            f"{r['hit_ratio']:.4f}",
            str(r["promotions"]),
            str(r["demotions"]),
            str(r["cow"]),
            str(r["writebacks"]),
            str(r["peak_frames"]),
            _mib(r["mixedmap_bytes"]),
            _mib(r["saved_bytes"]),
        ]
        if many:
            cells += [
                _mib(r["total_mixedmap_bytes"]),
                _mib(r["total_memmap_bytes"]),
                _mib(r["total_dram_bytes"]),
                _mib(r["image_bytes"]),
            ]
        if priced:
            ns = r.get("modelled_ns")
            wr = r.get("modelled_write_ns")
            wa = r.get("write_amplification")
            cells += [
                str(r.get("medium") or ""),
                "" if ns is None else f"{ns / 1e9:.4g} s",
                f"{100 * wr / ns:.0f}%" if ns and wr is not None else "",
                "" if r.get("erases") is None else str(r["erases"]),
                "" if r.get("worst_sector_wear") is None else str(r["worst_sector_wear"]),
                "" if wa is None else f"{wa:.2f}",
            ]
        aps = r["accesses_per_s"]
        cells += [f"{aps:,.0f}" if aps else "", ""]
        t.add_row(*cells)
    Console(width=max(210 if priced else 160, Console().width)).print(t)
    sys.stdout.flush()
