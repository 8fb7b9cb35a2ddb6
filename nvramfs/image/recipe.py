"""Build a directory tree from a recipe (images/*.json), deterministically.

A recipe names a seed, a fixed mtime, directories, groups of files (count,
kind, log-uniform size range, mode), symlinks and hard links. The same recipe
always gives byte-identical files with the same names, modes and times, so the
default demo image is reproducible without downloading anything.

Kinds: `config` (key = value lines), `script` (a shell script), `text`
(prose-like lines), `elf` (an ELF-looking binary: header, code-like random
bytes, zero padding, a string table), `blob` (incompressible data).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nvramfs.errors import NvramfsError

WORDS = (
    "alpha beta cache daemon enable fast gamma host interval journal kernel limit mount "
    "network option path queue retry server timeout user value width xip zone page frame "
    "block inode device driver buffer flush fence policy promote demote budget mapping"
).split()
KINDS = ("config", "script", "text", "elf", "blob")


def _lines(rng: np.random.Generator, size: int, fmt: str) -> bytes:
    out: list[str] = []
    n = 0
    words = np.array(WORDS)
    while n < size:
        w = words[rng.integers(0, len(words), 6)]
        if fmt == "config":
            line = f"{w[0]}_{w[1]} = {w[2]} {int(rng.integers(0, 10000))}"
        elif fmt == "script":
            line = f'{w[0]}_{w[1]}="${{{w[2].upper()}:-{w[3]}}}"; [ -n "$x" ] && {w[4]} --{w[5]}'
        else:
            line = " ".join(w).capitalize() + "."
        out.append(line)
        n += len(line) + 1
    data = ("\n".join(out) + "\n").encode()
    if fmt == "script":
        data = b"#!/bin/sh\n" + data
    return data[:size]


def _binary(rng: np.random.Generator, size: int, kind: str) -> bytes:
    if kind == "blob":
        return rng.bytes(size)
    arr = np.frombuffer(rng.bytes(size), np.uint8).copy()
    arr[: min(size, 64)] = 0
    arr[:4] = np.frombuffer(b"\x7fELF"[: min(4, size)], np.uint8) if size >= 4 else arr[:size]
    # Zero padding between "sections" and a run of printable strings near the end.
    for _ in range(max(1, size // 65536)):
        start = int(rng.integers(0, size))
        arr[start : start + int(rng.integers(256, 4096))] = 0
    tail = _lines(rng, min(size // 8, 8192), "text")
    arr[size - len(tail) :] = np.frombuffer(tail, np.uint8)
    return arr.tobytes()


def _content(rng: np.random.Generator, kind: str, size: int) -> bytes:
    if kind in ("config", "script", "text"):
        return _lines(rng, size, kind)
    return _binary(rng, size, kind)


def _name(group: dict, i: int) -> str:
    stem = group["dir"].replace("/", "-")
    return f"{group.get('prefix', stem)}-{i:03d}{group.get('ext', '')}"


def load(recipe: Path) -> dict:
    try:
        spec = json.loads(Path(recipe).read_text())
    except FileNotFoundError:
        raise NvramfsError(f"{recipe}: no such recipe") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NvramfsError(f"{recipe}: not a JSON recipe ({exc})") from None
    if not isinstance(spec, dict) or "groups" not in spec:
        raise NvramfsError(f"{recipe}: a recipe needs a 'groups' list")
    for g in spec["groups"]:
        if g.get("kind") not in KINDS:
            raise NvramfsError(f"{recipe}: group {g.get('dir')!r}: kind must be one of {KINDS}")
    return spec


def build_tree(recipe: Path, dest: Path) -> None:
    """Create the tree `recipe` describes at `dest` (which must not exist or be empty)."""
    spec = load(recipe)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise NvramfsError(f"{dest}: not empty")
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    mtime = int(spec.get("mtime", 1704067200)) * 10**9
    for d in spec.get("dirs", []):
        (dest / d).mkdir(parents=True, exist_ok=True)
    stamp = 0
    for g in spec["groups"]:
        lo, hi = g["size"]
        (dest / g["dir"]).mkdir(parents=True, exist_ok=True)
        sizes = np.exp(rng.uniform(np.log(lo), np.log(hi), int(g["count"]))).astype(np.int64)
        for i, size in enumerate(sizes.tolist()):
            p = dest / g["dir"] / _name(g, i)
            p.write_bytes(_content(rng, g["kind"], size))
            os.chmod(p, int(g.get("mode", "0644"), 8))
            stamp += 1
            os.utime(p, ns=(mtime + stamp * 10**9, mtime + stamp * 10**9))
    for link, target in spec.get("symlinks", []):
        os.symlink(target, dest / link)
        os.utime(dest / link, ns=(mtime, mtime), follow_symlinks=False)
    for existing, new in spec.get("hardlinks", []):
        os.link(dest / existing, dest / new)
    # Directories last (creating entries touched them), deepest first.
    for d in sorted(
        (p for p in dest.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True
    ):
        os.utime(d, ns=(mtime, mtime))
    os.utime(dest, ns=(mtime, mtime))
