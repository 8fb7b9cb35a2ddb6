"""`nvramfs info IMAGE [--json]`: what the superblock says, read-only."""

from __future__ import annotations

import argparse
import json
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
            "inodes": img.L.nr_inodes - 1,
            "inodes_used": img.L.nr_inodes - 1 - sb["free_inodes"],
            "inodes_free": sb["free_inodes"],
            "generation": sb["generation"],
            "features": img.features(),
            "version": sb["version"],
            "clean": img.was_clean,
            "mounts": sb["mounts"],
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
    if d["orphans"]:
        print(f"orphans:      {d['orphans']} (reclaimed at the next writable open)")
    return 0
