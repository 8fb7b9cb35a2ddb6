"""`nvramfs replay TRACE [-o dram=...,policy=...,writeback=...] [--json] [--log PATH]`.

Runs a recorded trace (`mount -o trace=DIR`) through a fresh MemoryManager
with no image, and prints the same summary as `nvramfs log LOG summary`
(the same functions, the same --json keys, plus a `replay` object). With the
recorded configuration the counters are those of the live run; `-o` changes
the DRAM budget, the policy or the writeback interval.

Exit codes: 0 ok; 1 a trace that cannot be read (the message names the file);
2 a usage error (e.g. dram=0, an unknown policy).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nvramfs.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "replay",
        help="replay a recorded trace through the simulation (no image needed)",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[2],
    )
    p.add_argument("trace", metavar="TRACE", help="the trace directory (mount -o trace=DIR)")
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        metavar="OPTIONS",
        help="dram=SIZE, policy=NAME (also lru, opt, opt-nox), static=PROFILE, "
        "writeback=SECONDS, medium=NAME|FILE (default: as recorded)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--log", metavar="PATH", help="write the replay's own event log here")
    p.set_defaults(func=main)
    return p


def parse_replay_options(groups: list[str] | None) -> dict[str, Any]:
    """`-o dram=64M,policy=clock,writeback=5` -> replay configuration overrides."""
    from nvramfs.fuse.options import PAGE_SIZE, parse_size

    out: dict[str, Any] = {}
    for group in groups or []:
        for word in group.split(","):
            word = word.strip()
            if not word:
                continue
            key, eq, value = word.partition("=")
            if not eq or not value:
                raise UsageError(f"replay option {word!r}: give KEY=VALUE")
            if key == "dram":
                size = parse_size(value)
                if size < PAGE_SIZE:
                    raise UsageError(f"dram={value}: the budget must hold at least one 4 KiB frame")
                out["dram_pages"] = size // PAGE_SIZE
            elif key == "policy":
                out["policy"] = value
            elif key == "static":
                out["static"] = value
            elif key == "medium":
                out["medium"] = value
            elif key == "writeback":
                try:
                    out["writeback_seconds"] = float(value)
                except ValueError:
                    raise UsageError(f"writeback={value}: give seconds") from None
            else:
                raise UsageError(
                    f"unknown replay option {key!r} (dram=, policy=, static=, writeback=, medium=)"
                )
    return out


def main(args: argparse.Namespace) -> int:
    from nvramfs.cli.log import format_summary
    from nvramfs.trace import replay

    overrides = parse_replay_options(args.options)
    result = replay(args.trace, overrides, log=args.log)
    for note in result.warnings:
        print(f"nvramfs: warning: {note}", file=sys.stderr)
    summary = dict(result.summary or {})
    summary["replay"] = {
        "trace": result.trace,
        "config": result.config,
        "records": result.records,
        "parts": result.parts,
        "complete": result.complete,
        "errors": result.errors,
        "seconds": round(result.seconds, 3),
        "accesses_per_s": round(result.accesses / result.seconds) if result.seconds else None,
    }
    if args.log:
        summary["log"] = args.log
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    r = summary["replay"]
    cfg = result.config
    print(
        f"replay of {result.trace}: {r['records']:,} records in {r['parts']} part(s), "
        f"{result.accesses:,} page accesses in {r['seconds']:.2f} s; "
        f"DRAM {cfg['dram_pages']:,} frames, policy {cfg['policy']}"
    )
    print(format_summary(summary))
    return 0
