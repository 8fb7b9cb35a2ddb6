"""`nvramfs trace export|import|profile`: traces to and from libCacheSim, profiles from traces.

    nvramfs trace export --format libcachesim|oracle TRACE OUT
    nvramfs trace import FILE --format libcachesim|oracle OUT [--dram SIZE]
    nvramfs trace profile TRACE --top N [-o OUT]

Formats and semantics: docs/TRACE.md ("Traces in and out"), docs/POLICIES.md.
Exit codes: 1 for a file that cannot be read or written, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from nvramfs.errors import UsageError


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "trace",
        help="export a trace for libCacheSim, import one, make a profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = p.add_subparsers(dest="trace_cmd", metavar="COMMAND", required=True)
    e = s.add_parser("export", help="one row per page access, for libCacheSim")
    e.add_argument("--format", required=True, choices=("libcachesim", "oracle"))
    e.add_argument("trace", metavar="TRACE")
    e.add_argument("out", metavar="OUT")
    i = s.add_parser("import", help="an nvramfs trace (no image) from a libCacheSim file")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--format", required=True, choices=("libcachesim", "oracle"))
    i.add_argument("out", metavar="OUT", help="a new trace directory")
    i.add_argument("--dram", default="64M", help="the DRAM budget its header records")
    r = s.add_parser("profile", help="the most accessed pages as path,offset,count lines")
    r.add_argument("trace", metavar="TRACE")
    r.add_argument("--top", type=int, required=True, metavar="N", help="how many pages")
    r.add_argument("-o", dest="out", metavar="OUT", help="write here instead of stdout")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from nvramfs.trace import convert, policies

    if args.trace_cmd == "export":
        n = convert.export_trace(args.trace, args.format, args.out)
        print(f"{args.out}: {n:,} page accesses ({args.format})", file=sys.stderr)
    elif args.trace_cmd == "import":
        from nvramfs.fuse.options import PAGE_SIZE, parse_size

        dram = parse_size(args.dram) // PAGE_SIZE
        if dram < 1:
            raise UsageError(f"--dram {args.dram}: the budget must hold at least one 4 KiB frame")
        n = convert.import_trace(args.file, args.format, args.out, dram_pages=dram)
        print(f"{args.out}: {n:,} page accesses imported from {args.file}", file=sys.stderr)
    else:
        if args.top < 1:
            raise UsageError("--top N: N must be at least 1")
        lines = [f"{p},{o},{c}\n" for p, o, c in policies.trace_profile(args.trace, args.top)]
        if args.out:
            with open(args.out, "w") as f:
                f.writelines(lines)
        else:
            sys.stdout.writelines(lines)
    return 0
