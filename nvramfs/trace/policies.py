"""The policies to compare against, in replays: opt and opt-nox read the trace's future,
static pins a profile's pages; and `trace profile` makes such a profile (docs/POLICIES.md).

The future is the trace's page accesses in the order the replay makes them
into mm (each read/write record's pages in order; a truncate whose partial
last page held data stores into that page), and for each access the
position of the next access to the same page, computed once with numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nvramfs.errors import UsageError
from nvramfs.mm.policy import OFFLINE, Future, Policy, Profile, make_policy

from .format import OP, iter_parts, read_header

# Policies that decide at every access or need more than a name.
MINE = ("lru", *OFFLINE)


def part_accesses(cols: dict[str, np.ndarray]) -> np.ndarray:
    """The page accesses of one part's records, in order, as `(ino << 32) | index`."""
    op = cols["op"]
    rw = (op == OP["read"]) | (op == OP["write"])
    arg = cols["arg"]
    tail = (op == OP["truncate"]) & ((arg & 4095) != 0) & ((cols["flags"] & 1) != 0)
    counts = np.where(rw, cols["npages"].astype(np.int64), np.where(tail, 1, 0))
    first = np.where(rw, cols["page"], arg >> 12)
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    rows = np.repeat(np.arange(len(op)), counts)
    starts = np.cumsum(counts) - counts
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    return (cols["ino"][rows] << 32) | (first[rows] + within)


def trace_accesses(trace: str) -> np.ndarray:
    """Every page access of a trace, in replay order."""
    keys = [part_accesses(p.cols) for p in iter_parts(trace)]
    return np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)


def future_of(trace: str) -> Future:
    """The trace's accesses and each one's next use (the input of opt and opt-nox)."""
    return Future(trace_accesses(trace))


def replay_policy(trace: str, cfg: dict[str, Any]) -> str | Policy:
    """What the replay hands MemoryManager as its policy: a name, or a built policy for
    opt / opt-nox (the future of `trace`) and static (cfg["static"], a profile file)."""
    name = cfg["policy"]
    nr_frames = int(cfg["dram_pages"]) + 1
    if name in ("opt", "opt-nox"):
        return make_policy(name, nr_frames, future=future_of(trace))
    if name == "static":
        return make_policy(name, nr_frames, profile=load_profile(cfg.get("static")))
    return name


def load_profile(path: Any) -> Profile:
    """A profile file, or UsageError (exit 2) saying what is wrong with it."""
    if not path:
        raise UsageError("policy static needs a profile: static=PROFILE")
    try:
        return Profile.load(str(path))
    except OSError as exc:
        raise UsageError(f"static={path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None


def trace_profile(trace: str, top: int) -> list[tuple[str, int, int]]:
    """The `top` most accessed pages of a trace as profile lines, in the format of
    `nvramfs log profile` (AXFS's mkfs -i): (`./path`, byte offset of the page, accesses),
    sorted by path and offset; among equal counts the lower page wins the cut."""
    read_header(trace)
    keys = trace_accesses(trace)
    paths: dict[int, str] = {}
    for part in iter_parts(trace):
        for i in np.flatnonzero(part.cols["op"] == OP["file"]).tolist():
            path = part.text.get(i)
            if path and "," not in path and "\n" not in path:
                paths.setdefault(int(part.cols["ino"][i]), path)
    if not len(keys):
        return []
    uniq, counts = np.unique(keys, return_counts=True)
    named = np.array([int(k) >> 32 in paths for k in uniq.tolist()], dtype=bool)
    uniq, counts = uniq[named], counts[named]
    order = np.lexsort((uniq, -counts))[:top]
    rows = []
    for k, n in zip(uniq[order].tolist(), counts[order].tolist(), strict=True):
        path = paths[k >> 32]
        rows.append(
            ("." + (path if path.startswith("/") else "/" + path), (k & 0xFFFFFFFF) << 12, n)
        )
    return sorted(rows)
