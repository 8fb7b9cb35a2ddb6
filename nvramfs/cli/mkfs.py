"""`nvramfs mkfs IMAGE [--from DIR | --recipe FILE] [--size SIZE] [--force]`."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from nvramfs.errors import NvramfsError
from nvramfs.image.hostspace import growth_warning
from nvramfs.image.mkfs import mkfs
from nvramfs.units import format_bytes, parse_size

HELP = """\
Make an nvramfs image. With --from DIR, copy the tree (regular files,
directories, symlinks as symlinks, hard links, modes, owners, ns times; device
nodes, fifos and sockets are skipped and listed). The default size is what the
tree needs plus the larger of that again and 64 MiB (room to grow). Without
--from, --size is required and the image is empty. Images are sparse files:
an empty 16G image takes almost no disk, and the daemon allocates host space
as it needs it (a full host filesystem is ENOSPC for the writer); mkfs warns
when the host has less free space than the image could grow to.
--preallocate allocates the whole image on the host now, as a device has its
size.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "mkfs", help="make an image (empty, or from a directory tree)", description=HELP
    )
    p.add_argument("image", metavar="IMAGE", help="the image file to create")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from", dest="src", metavar="DIR", help="copy this directory tree")
    src.add_argument(
        "--recipe",
        metavar="FILE",
        help="build the tree a recipe describes (images/*.json), copy it",
    )
    p.add_argument(
        "--size",
        metavar="SIZE",
        help="image size: 16G, 1.5G, 512M, 64MB, 4096 (bytes); binary units",
    )
    p.add_argument("--force", action="store_true", help="overwrite IMAGE if it exists")
    p.add_argument(
        "--preallocate",
        action="store_true",
        help="allocate the whole image on the host filesystem now (not sparse)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    p.set_defaults(func=main)
    return p


# Not on a tty: one progress line every NOTTY_INTERVAL seconds (as a log would want).
NOTTY_INTERVAL = 5.0
# Nothing at all for an mkfs shorter than this.
SHOW_AFTER = 0.5


class _Rate(ProgressColumn):
    """rich's estimate of the copy rate, in the binary units of every other figure."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{format_bytes(speed)}/s" if speed else "? /s", style="progress.data.speed")


class _Bar:
    """mkfs's progress on stderr, from rich: a live bar on a tty; elsewhere (a log, a
    pipe, CI) a line every NOTTY_INTERVAL seconds. Rate and time left are rich's
    estimates (its task speed over the last seconds)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.progress = Progress(
            TextColumn("mkfs"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            _Rate(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            disable=not self.tty,
            transient=False,
        )
        self.task = self.progress.add_task("copy", total=None, start=True)
        self.t0 = time.monotonic()
        self.last_line = self.t0
        self.started = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        self.progress.update(self.task, completed=done, total=total)
        if now - self.t0 < SHOW_AFTER:
            return
        if self.tty:
            if not self.started:
                self.progress.start()
                self.started = True
            return
        if now - self.last_line >= NOTTY_INTERVAL:
            self.last_line = now
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        """`mkfs: 45% 120.0 MiB of 266.0 MiB, 40.1 MiB/s, 3 s left`."""
        t = self.progress.tasks[0]
        speed = t.speed
        left = t.time_remaining
        rate = f"{format_bytes(speed)}/s" if speed else "? /s"
        eta = f"{left:.0f} s left" if left is not None else "? s left"
        return (
            f"mkfs: {t.percentage:.0f}% {format_bytes(t.completed)} of "
            f"{format_bytes(t.total or 0)}, {rate}, {eta}"
        )

    def end(self) -> None:
        if self.started:
            self.progress.stop()


def main(args: argparse.Namespace) -> int:
    size = parse_size(args.size) if args.size else None
    image = Path(args.image)
    if image.exists() and not args.force:
        raise NvramfsError(f"{image}: already exists (use --force to overwrite)")
    if image.parent and not image.parent.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
    bar = _Bar()
    try:
        if args.recipe:
            from nvramfs.image.recipe import build_tree

            with tempfile.TemporaryDirectory(prefix="nvramfs-recipe-") as tmp:
                tree = Path(tmp) / "root"
                if sys.stderr.isatty():
                    print(f"mkfs: building the tree of {args.recipe}", file=sys.stderr)
                build_tree(Path(args.recipe), tree)
                res = mkfs(
                    image,
                    size=size,
                    src=tree,
                    force=args.force,
                    progress=bar,
                    preallocate=args.preallocate,
                )
        else:
            if args.src is not None and not Path(args.src).is_dir():
                raise NvramfsError(f"{args.src}: no such directory")
            res = mkfs(
                image,
                size=size,
                src=args.src,
                force=args.force,
                progress=bar,
                preallocate=args.preallocate,
            )
    finally:
        bar.end()
    for s in res.skipped:
        print(f"mkfs: skipped {s}", file=sys.stderr)
    warning = growth_warning(res.path)
    if warning:
        print(f"mkfs: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        what = f"{res.files} entries" if (args.src or args.recipe) else "empty"
        print(
            f"{res.path}: {format_bytes(res.size)}, {res.nr_blocks} blocks of 4096, "
            f"{res.inodes} inodes, {what}, in {res.seconds:.2f} s"
        )
    return 0
