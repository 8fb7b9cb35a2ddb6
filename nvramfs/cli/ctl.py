"""`nvramfs ctl MOUNTPOINT COMMAND...`: run a command in a mount's daemon, print its answer."""

from __future__ import annotations

import argparse
import sys

HELP = """\
Run COMMAND in the daemon serving MOUNTPOINT and print the daemon's own answer.
Exit 0 when the command ran, 1 with the daemon's message on stderr when it did
not (as s3qlctrl). Commands: help, stats, sync (write every dirty page back),
demote-all (every pagecache page back to XIP), policy [NAME] (show or switch
the migration policy), promote-cap [PAGES] (show or set the most pages promoted
per tick), dram [SIZE] (show, or shrink the DRAM budget and grow it back up to
its size at mount; shrinking demotes the coldest pages), remount OPTIONS (what `mount -o remount` sends). Every command and
its answer is logged as a `ctl` event, a policy switch also as a `policy` event.
On a read-only mount the commands that write (sync) are refused; the others run.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("ctl", help="run a command in a mount's daemon", description=HELP)
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("command", metavar="COMMAND", nargs="+", help="the command and its arguments")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from nvramfs.fuse.admin import ctl

    ok, message = ctl(args.mountpoint, " ".join(args.command))
    if ok:
        print(message)
        return 0
    print(f"nvramfs ctl: {message}", file=sys.stderr)
    return 1
