"""`nvramfs stat MOUNTPOINT [DELAY [COUNT]] [--json]`: a mount's live counters, for a person.

Once: every counter of `.nvramfs/stats` (docs/EVENTS.md, "Live counters").
With DELAY: as vmstat(8), one line every DELAY seconds, COUNT times (forever
without COUNT); the first line is the average per second since the mount, the
others the rates over the last DELAY seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from nvramfs.errors import UsageError
from nvramfs.events.numbers import hit_ratio  # the one definition (docs/EVENTS.md)
from nvramfs.units import format_bytes

HELP = """\
Print MOUNTPOINT/.nvramfs/stats for a person: faults, accesses and the hit
ratio, migrations, writebacks, the DRAM budget, the struct page bytes used
and avoided, and the memmap VM_MIXEDMAP saves. With DELAY (seconds), print one line of rates every DELAY seconds
as vmstat does, COUNT lines (forever without COUNT); the first line averages
over the time since the mount. Every figure is defined in docs/EVENTS.md.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("stat", help="show a mount's live counters", description=HELP)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("delay", metavar="DELAY", nargs="?", type=float, help="seconds between lines")
    p.add_argument("count", metavar="COUNT", nargs="?", type=int, help="how many lines")
    p.add_argument("--json", action="store_true", help="print the raw JSON (once per DELAY)")
    p.set_defaults(func=main)
    return p


def _console() -> Console:
    out = sys.stdout
    return Console(file=out, highlight=False, width=None if out.isatty() else 160)


def _pairs(obj: Any) -> str:
    if not isinstance(obj, dict) or not obj:
        return "0"
    return ", ".join(
        f"{k} {_pairs(v) if isinstance(v, dict) else f'{v:,}'}" for k, v in obj.items()
    )


def _pct(r: float | None) -> str:
    return "-" if r is None else f"{r * 100:.1f}%"


def stats_table(s: dict[str, Any]) -> Table:
    """The one-shot view: one row per figure."""
    c = s.get("counters", {})
    b = s.get("budget", {})
    sp = s.get("struct_page", {})
    flags = [f"sim {'on' if s.get('sim') else 'off'}", f"cache={s.get('cache')}"]
    flags.append(f"policy {s.get('policy')}")
    if c.get("kernel"):
        flags.append(f"kernel {c['kernel']}")
    if s.get("readonly"):
        flags.append("READ-ONLY")
    t = Table(
        title=f"{s.get('mountpoint')}: {s.get('image')} (pid {s.get('pid')})",
        title_justify="left",
        box=None,
        show_header=False,
    )
    t.add_column(style="bold")
    t.add_column()
    t.add_row("mount", ", ".join(flags))
    t.add_row("event log", str(s.get("log")))
    if s.get("sim"):
        acc = c.get("accesses", {})
        t.add_row(
            "DRAM budget",
            f"{b.get('frames_used', 0):,} of {b.get('dram_pages', 0):,} frames "
            f"({format_bytes(b.get('used_bytes', 0))} of {format_bytes(b.get('dram_bytes', 0))}), "
            f"{b.get('dirty', 0):,} dirty",
        )
        t.add_row(
            "struct page",
            f"{format_bytes(sp.get('bytes_used', 0))} used, "
            f"{format_bytes(sp.get('bytes_avoided', 0))} avoided by XIP",
        )
        if "memmap_device_bytes" in sp:
            t.add_row(
                "memmap",
                f"memmap_device {format_bytes(sp['memmap_device_bytes'])} (whole device), "
                f"mixedmap {format_bytes(sp['mixedmap_bytes'])} (frames in use), "
                f"saved {format_bytes(sp['saved_bytes'])}",
            )
        t.add_row("accesses", f"read {acc.get('read', 0):,}, write {acc.get('write', 0):,}")
        t.add_row("hit ratio", _pct(hit_ratio(c)) + " of page accesses served by a frame")
        t.add_row("faults", _pairs(c.get("faults")))
        t.add_row("migrations", _pairs(c.get("migrations")))
        t.add_row("writebacks", _pairs(c.get("writebacks")))
    else:
        t.add_row("requests", f"reads {c.get('reads', 0):,}, writes {c.get('writes', 0):,}")
    if s.get("errors"):
        t.add_row("errors", f"{s['errors']} (see the event log)")
    return t


def format_stats(s: dict[str, Any]) -> str:
    """The one-shot view as text (what `nvramfs stat MOUNTPOINT` prints)."""
    console = Console(width=160, highlight=False, color_system=None)
    with console.capture() as cap:
        console.print(stats_table(s))
    return cap.get()


# The repeating view: (header, what it counts); every column but the first two is
# a rate per second (the difference of a cumulative counter over the interval).
COLUMNS = [
    ("frames", "pagecache frames in use (counters.frames_used)"),
    ("dirty", "dirty frames (counters.dirty)"),
    ("acc/s", "page accesses (accesses.read + accesses.write)"),
    ("hit%", "hit ratio over the interval"),
    ("xip/s", "faults.xip_read"),
    ("cow/s", "faults.cow"),
    ("prom/s", "migrations.promote, every reason"),
    ("dem/s", "migrations.demote, every reason"),
    ("wb/s", "writebacks, every reason"),
]


def _flat(c: dict[str, Any]) -> dict[str, float]:
    """The cumulative figures the rate columns are differences of."""
    acc = c.get("accesses", {})
    mig = c.get("migrations", {})
    f = c.get("faults", {})
    return {
        "acc": acc.get("read", 0) + acc.get("write", 0),
        "hit": f.get("pagecache_hit", 0),
        "xip": f.get("xip_read", 0),
        "cow": f.get("cow", 0),
        "prom": sum(mig.get("promote", {}).values()),
        "dem": sum(mig.get("demote", {}).values()),
        "wb": sum(c.get("writebacks", {}).values()),
    }


def rate_row(prev: dict[str, Any] | None, cur: dict[str, Any], seconds: float) -> list[str]:
    """One line of the repeating view: rates between two `counters` objects (prev None:
    since the mount). The hit ratio is of the interval's accesses."""
    a = _flat(prev) if prev is not None else dict.fromkeys(_flat(cur), 0)
    b = _flat(cur)
    d = {k: b[k] - a[k] for k in b}
    secs = max(seconds, 1e-9)
    ratio = hit_ratio(cur, prev)
    return [
        f"{cur.get('frames_used', 0):,}",
        f"{cur.get('dirty', 0):,}",
        f"{d['acc'] / secs:,.0f}",
        _pct(ratio),
        f"{d['xip'] / secs:,.0f}",
        f"{d['cow'] / secs:,.0f}",
        f"{d['prom'] / secs:,.0f}",
        f"{d['dem'] / secs:,.0f}",
        f"{d['wb'] / secs:,.0f}",
    ]


def _rate_table(header: bool) -> Table:
    t = Table(box=None, show_header=header, pad_edge=False, header_style="bold")
    for name, _ in COLUMNS:
        t.add_column(name, justify="right", width=max(len(name), 9))
    return t


def main(args: argparse.Namespace) -> int:
    from nvramfs.fuse.admin import read_stats, require_mount

    if args.delay is not None and not args.delay > 0:
        raise UsageError(f"DELAY {args.delay:g}: must be more than 0 seconds")
    if args.count is not None and args.count < 1:
        raise UsageError(f"COUNT {args.count}: must be at least 1")
    path = require_mount(args.mountpoint)
    stats = read_stats(path)
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True), flush=True)
    if args.delay is None:
        if not args.json:
            _console().print(stats_table(stats))
        return 0
    console = _console()
    counters = stats.get("counters", {})
    if not args.json:
        if not stats.get("sim"):
            raise UsageError("stat DELAY: sim=off has no counters to repeat (stat --json does)")
        # vmstat's first line: averages since the mount (one tick a second).
        t = _rate_table(True)
        t.add_row(*rate_row(None, counters, float(counters.get("tick", 0)) or 1.0))
        console.print(t)
    n = 1
    last = time.monotonic()
    while args.count is None or n < args.count:
        time.sleep(max(0.0, last + args.delay - time.monotonic()))
        now = time.monotonic()
        stats = read_stats(path)
        if args.json:
            print(json.dumps(stats, sort_keys=True), flush=True)
        else:
            t = _rate_table(False)
            t.add_row(*rate_row(counters, stats.get("counters", {}), now - last))
            console.print(t)
            sys.stdout.flush()
        counters = stats.get("counters", {})
        last = now
        n += 1
    return 0
