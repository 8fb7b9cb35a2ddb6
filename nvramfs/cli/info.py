"""`nvramfs info IMAGE [--json]`: what the superblock says, read-only."""

from __future__ import annotations

import argparse
import json
import time
import uuid

from nvramfs.image import Image
from nvramfs.units import format_bytes


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("info", help="show an image's size, usage and state")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=main)
    return p


def info(path: str) -> dict:
    """The facts `info` prints; opens read-only (a pending journal is replayed in memory)."""
    img = Image.open(path, readonly=True)
    try:
        sb = img.superblock
        st = img.statfs()
        return {
            "image": str(path),
            "size": img.nr_blocks * st.bsize,
            "block_size": st.bsize,
            "blocks": img.nr_blocks,
            "blocks_used": img.nr_blocks - sb["free_blocks"],
            "blocks_free": sb["free_blocks"],
            # Inodes a file can use: every slot but the reserved slot 0 (the root counts
            # as used); the number statfs (df -i) and mkfs print.
            "inodes": img.L.nr_inodes - 1,
            "inodes_used": img.L.nr_inodes - 1 - sb["free_inodes"],
            "inodes_free": sb["free_inodes"],
            "generation": sb["generation"],
            "features": img.features(),
            "version": sb["version"],
            "clean": img.was_clean,
            "mounts": sb["mounts"],
            "created": _secs(sb["mkfs_time_ns"]),
            "last_mount": _secs(sb["mount_time_ns"]),
            "last_write": _secs(sb["write_time_ns"]),
            "lost_dirty": _lost(img.lost_dirty),
            "orphans": sb["orphan_count"],
            "journal_blocks": img.L.journal_blocks,
            "uuid": sb["uuid"],
            "recovery_pending": img.recovery,
        }
    finally:
        img.close()


def _uuid(value: object) -> str:
    """The uuid as blkid and dumpe2fs print it (8-4-4-4-12)."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(value)


def _secs(ns: int) -> float | None:
    """Unix time in seconds; None for a field the image does not have (0)."""
    return ns / 1e9 if ns else None


def _lost(summ: object) -> dict | None:
    if summ is None:
        return None
    return {
        "as_of": summ.time_ns / 1e9,
        "pages": summ.pages,
        "files": summ.files,
        "inodes": [{"ino": i, "pages": n} for i, n in summ.pairs],
    }


def _when(t: float | None) -> str:
    """dumpe2fs -h's format (ctime), local time."""
    return time.ctime(t) if t else "n/a"


def main(args: argparse.Namespace) -> int:
    d = info(args.image)
    if args.json:
        print(json.dumps(d))
        return 0
    print(f"image:        {d['image']}")
    print(f"uuid:         {_uuid(d['uuid'])}")
    print(f"size:         {d['size']} bytes ({format_bytes(d['size'])})")
    print(f"block size:   {d['block_size']}")
    print(f"blocks:       {d['blocks']} ({d['blocks_used']} used, {d['blocks_free']} free)")
    print(f"inodes:       {d['inodes']} ({d['inodes_used']} used, {d['inodes_free']} free)")
    print(f"generation:   {d['generation']}")
    print(f"features:     {' '.join(d['features'])}")
    state = "clean (cleanly unmounted)" if d["clean"] else "not clean (recovery will run)"
    print(f"state:        {state}")
    print(f"created:      {_when(d['created'])}")
    print(f"last mount:   {_when(d['last_mount'])}")
    print(f"last write:   {_when(d['last_write'])}")
    print(f"mount count:  {d['mounts']}")
    lost = d["lost_dirty"]
    if lost is not None and lost["pages"]:
        print(
            f"dirty at end: {lost['pages']} pages of {lost['files']} files not written back "
            f"(dirty summary of {_when(lost['as_of'])})"
        )
    if d["orphans"]:
        print(f"orphans:      {d['orphans']} (reclaimed at the next writable open)")
    return 0
