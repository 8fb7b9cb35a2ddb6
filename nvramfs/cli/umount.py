"""`nvramfs umount MOUNTPOINT`: unmount and wait until the daemon has written back and exited."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "umount",
        help="unmount and wait for the writeback",
        description="Unmount an nvramfs mount (fusermount3 -u) and wait until its daemon has "
        "written every dirty frame back, closed the log and the image, and exited.",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "-l",
        "--lazy",
        action="store_true",
        help="detach now (as umount -l); the daemon writes back and exits once the last "
        "file under the mount is closed, and nothing waits for it",
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the daemon (300)"
    )
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from nvramfs.fuse.admin import unmount

    unmount(args.mountpoint, timeout=args.timeout, lazy=args.lazy)
    return 0
