"""`nvramfs mkfs IMAGE [--from DIR | --recipe FILE] [--size SIZE] [--force]`."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from nvramfs.errors import NvramfsError
from nvramfs.image.hostspace import growth_warning
from nvramfs.image.mkfs import mkfs, parse_size

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
    p.add_argument("--size", metavar="SIZE", help="image size: 16G, 512M, 4096 (bytes) ...")
    p.add_argument("--force", action="store_true", help="overwrite IMAGE if it exists")
    p.add_argument(
        "--preallocate",
        action="store_true",
        help="allocate the whole image on the host filesystem now (not sparse)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    p.set_defaults(func=main)
    return p


class _Bar:
    """A progress bar on stderr, only on a tty and only once mkfs takes a moment."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.shown = False
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or now - self.t0 < 0.5 or now - self.last < 0.1:
            return
        self.last = now
        self.shown = True
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\rmkfs: [{bar:<30}] {frac * 100:5.1f}% {done >> 20}/{total >> 20} MiB")
        sys.stderr.flush()

    def end(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


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
            f"{res.path}: {res.size >> 20} MiB, {res.nr_blocks} blocks of 4096, "
            f"{res.inodes} inodes, {what}, in {res.seconds:.2f} s"
        )
    return 0
