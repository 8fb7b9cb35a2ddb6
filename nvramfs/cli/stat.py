"""`nvramfs stat MOUNTPOINT [--json]`: the live counters of a mount, for a person."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "stat",
        help="show a mount's live counters",
        description="Print MOUNTPOINT/.nvramfs/stats: faults, migrations, writebacks, the DRAM "
        "budget, the struct page bytes used and avoided, and the memmap VM_MIXEDMAP saves.",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=main)
    return p


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.1f} MiB"


def _pairs(obj: Any) -> str:
    if not isinstance(obj, dict) or not obj:
        return "0"
    return ", ".join(f"{k} {_pairs(v) if isinstance(v, dict) else v}" for k, v in obj.items())


def format_stats(s: dict[str, Any]) -> str:
    c = s.get("counters", {})
    b = s.get("budget", {})
    sp = s.get("struct_page", {})
    lines = [
        f"{s.get('mountpoint')}: {s.get('image')}  (pid {s.get('pid')})",
        f"  sim {'on' if s.get('sim') else 'off'}, cache={s.get('cache')}, "
        f"policy {s.get('policy')}"
        f"{', kernel ' + str(c['kernel']) if c.get('kernel') else ''}"
        f"{', READ-ONLY' if s.get('readonly') else ''}",
        f"  event log      {s.get('log')}",
    ]
    if s.get("sim"):
        lines += [
            f"  DRAM budget    {b.get('frames_used', 0):,} of {b.get('dram_pages', 0):,} frames "
            f"({_kib(b.get('used_bytes', 0))} of {_kib(b.get('dram_bytes', 0))}), "
            f"{b.get('dirty', 0):,} dirty",
            f"  struct page    {_kib(sp.get('bytes_used', 0))} used, "
            f"{_kib(sp.get('bytes_avoided', 0))} avoided by XIP",
        ]
        if "memmap_device_bytes" in sp:
            lines += [
                f"  memmap         memmap_device {_kib(sp['memmap_device_bytes'])} (whole device), "
                f"mixedmap {_kib(sp['mixedmap_bytes'])} (frames in use), "
                f"saved {_kib(sp['saved_bytes'])}",
            ]
        lines += [
            f"  faults         {_pairs(c.get('faults'))}",
            f"  accesses       {_pairs(c.get('accesses'))}",
            f"  migrations     {_pairs(c.get('migrations'))}",
            f"  writebacks     {_pairs(c.get('writebacks'))}",
        ]
    else:
        lines.append(f"  requests       reads {c.get('reads', 0):,}, writes {c.get('writes', 0):,}")
    if s.get("errors"):
        lines.append(f"  errors         {s['errors']} (see the event log)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from nvramfs.fuse.admin import read_stats, require_mount

    path = require_mount(args.mountpoint)
    stats = read_stats(path)
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(format_stats(stats))
    return 0
