"""`nvramfs mount IMAGE MOUNTPOINT [-o OPTIONS] [-f] [--debug]`."""

from __future__ import annotations

import argparse

from nvramfs.fuse.options import OPTION_HELP, parse_options


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<22} {text}" for name, text in OPTION_HELP)
    p = subparsers.add_parser(
        "mount",
        help="mount an image with FUSE",
        description="Mount IMAGE on MOUNTPOINT. Returns once the mount is ready and keeps "
        "serving in the background (unless -f); `nvramfs umount MOUNTPOINT` (or umount(8)) "
        "ends it. mount(8) reaches this as `mount -t fuse.nvramfs IMAGE DIR -o OPTIONS` "
        "through /sbin/mount.fuse.nvramfs (`make setup` installs it), or through "
        "mount.fuse's fallback `nvramfs IMAGE DIR -o OPTIONS`. A non-empty MOUNTPOINT is "
        "allowed (one warning): its entries are hidden until the unmount. "
        "`-o remount,...` changes a live mount: ro/rw, policy=, promote_cap=, and dram= "
        "up to its size at mount.",
        epilog="options (-o, comma-separated; mount(8)'s generic ones such as rw, nosuid, "
        "nodev, noatime, _netdev are accepted too):\n" + lines,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="the image file")
    p.add_argument(
        "mountpoint",
        metavar="MOUNTPOINT",
        help="a directory (its entries are hidden while mounted)",
    )
    p.add_argument(
        "-o", dest="options", action="append", metavar="OPTIONS", help="mount options, see below"
    )
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument(
        "--debug",
        action="store_true",
        help="debug logging (to IMAGE.daemon.log, or stderr with -f)",
    )
    # mount(8) helpers may pass these; they mean nothing here.
    p.add_argument("-n", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-s", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-v", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from nvramfs.fuse.mount import mount

    opts = parse_options(args.options)
    if opts.remount:
        from nvramfs.fuse.admin import remount

        print(remount(args.mountpoint, opts))
        return 0
    return mount(args.image, args.mountpoint, opts, foreground=args.foreground, debug=args.debug)
