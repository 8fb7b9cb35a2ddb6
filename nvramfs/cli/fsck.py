"""`nvramfs fsck IMAGE [--json] [--repair]`: check an image; exit codes as e2fsck."""

from __future__ import annotations

import argparse
import json

from nvramfs.image.fsck import fsck


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "fsck",
        help="check an image",
        description="Check every structure of an image, read-only, and report each problem "
        "with its location. Exit 0 clean, 4 errors left uncorrected, 8 operational error "
        "(not an nvramfs image, unreadable).",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument(
        "--repair",
        "-p",
        action="store_true",
        help="first run recovery as a writable open would (replay the journal, reclaim "
        "orphans), only if nothing else is wrong",
    )
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    rep = fsck(args.image, repair=args.repair)
    if args.json:
        print(json.dumps(rep.as_json()))
        return rep.exit_code
    for where, what in rep.errors:
        print(f"error: {where}: {what}")
    for note in rep.notes:
        print(f"note: {note}")
    st = rep.stats
    if rep.exit_code == 0:
        print(
            f"{rep.image}: clean, {st['inodes_used']} inodes, "
            f"{st['blocks_used']}/{st['blocks']} blocks, generation {st['generation']} "
            f"({rep.seconds:.2f} s)"
        )
    elif rep.exit_code == 4:
        n = len(rep.errors)
        print(f"{rep.image}: {n} error{'s' * (n != 1)} left uncorrected")
    return rep.exit_code
