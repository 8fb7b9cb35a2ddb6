"""`nvramfs fsck IMAGE [-n | -p | -y] [-f] [--json]`: check and repair, as e2fsck does.

Exit codes are e2fsck's, summed, and override the CLI's general ones for this
command (usage error 16, not 2; interrupted 32, not 130).
"""

from __future__ import annotations

import argparse
import json
import sys

from nvramfs.image.fsck import EXIT_CANCELLED, EXIT_USAGE, fsck

# cli.run() reads these: fsck's own codes for a usage error and an interruption.
USAGE_EXIT = EXIT_USAGE
INTERRUPT_EXIT = EXIT_CANCELLED

DESCRIPTION = """\
Check every structure of an image and report each problem with its location.
The whole image is always checked (a clean flag never skips it; -f is
accepted for habit). There is no interactive mode: -n (the default) only
checks and opens the image read-only; -p (preen) makes only the safe repairs
(journal replay, orphans, bitmaps and free counts, the superblock copy,
inodes whose only fault is their checksum) and stops with UNEXPECTED
INCONSISTENCY on anything else; -y repairs everything repairable (broken
inodes cleared, directories salvaged, blocks claimed twice cloned, lost files
reconnected under /lost+found, link counts fixed). Repairs refuse an image a
mount is serving.

exit codes (summed, as e2fsck): 0 clean, 1 errors corrected, 4 errors left
uncorrected, 8 operational error (not an nvramfs image, unreadable, in use),
16 usage error, 32 cancelled.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "fsck",
        help="check (and repair) an image",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "-n", dest="mode", action="store_const", const="n", help="check only (the default)"
    )
    how.add_argument(
        "-p",
        "-a",
        "--repair",
        dest="mode",
        action="store_const",
        const="p",
        help="preen: make the safe repairs only",
    )
    how.add_argument(
        "-y", dest="mode", action="store_const", const="y", help="repair everything repairable"
    )
    p.add_argument("-f", "--force", action="store_true", help="accepted; the check is always full")
    p.set_defaults(func=main, mode="n")
    return p


def main(args: argparse.Namespace) -> int:
    rep = fsck(args.image, mode=args.mode)
    for w in rep.warnings:
        print(f"fsck: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(rep.as_json()))
        return rep.exit_code
    for where, what in rep.errors:
        print(f"error: {where}: {what}")
    for f in rep.fixed:
        print(f"fixed: {f}")
    if rep.fixed:
        for where, what in rep.remaining:
            print(f"left: {where}: {what}")
    for note in rep.notes:
        print(f"note: {note}")
    st = rep.stats
    if rep.unexpected:
        print(f"{rep.image}: UNEXPECTED INCONSISTENCY; run fsck -y")
    if rep.fixed:
        print(f"{rep.image}: ***** IMAGE WAS MODIFIED *****")
    if rep.exit_code in (0, 1):
        print(
            f"{rep.image}: clean, {st['inodes_used']} inodes, "
            f"{st['blocks_used']}/{st['blocks']} blocks, generation {st['generation']} "
            f"({rep.seconds:.2f} s)"
        )
    elif rep.exit_code & 4:
        n = len(rep.remaining) if rep.fixed else len(rep.errors)
        print(f"{rep.image}: {n} error{'s' * (n != 1)} left uncorrected")
    return rep.exit_code
