"""The residency xattr's per-page map: which pages of a file are dirty, in a frame,
served from NVRAM (XIP), or holes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nvramfs.mm.manager import run_lengths

pytestmark = pytest.mark.fuse
PAGE = 4096


def residency(path) -> dict:
    return json.loads(os.getxattr(path, "user.nvramfs.residency"))


def test_run_lengths() -> None:
    codes = np.array([1, 1, 0, 3, 3, 3, 2], np.uint8)
    names = ("hole", "xip", "pagecache", "dirty")
    assert run_lengths(codes, names) == [
        ["xip", 0, 2],
        ["hole", 2, 1],
        ["dirty", 3, 3],
        ["pagecache", 6, 1],
    ]
    assert run_lengths(np.array([], np.uint8), names) == []


def test_residency_map_says_where_each_page_lives(mounter):
    m = mounter(mounter.image(), "dram=4M")
    if not m.stats()["sim"]:
        pytest.skip("sim=off: nothing is ever in a frame")
    f = m.p("f")
    f.write_bytes(os.urandom(8 * PAGE))
    assert residency(f)["map"] == [["dirty", 0, 8]]
    m.ctl("sync")
    assert residency(f)["map"] == [["pagecache", 0, 8]]
    m.ctl("demote-all")
    assert residency(f)["map"] == [["xip", 0, 8]]
    os.truncate(f, 12 * PAGE)  # pages 8..11 are a hole
    with open(f, "r+b") as fh:
        fh.seek(2 * PAGE)
        fh.write(b"x" * PAGE)  # copy-on-write of an XIP page: dirty in a frame
    r = residency(f)
    assert r["map"] == [["xip", 0, 2], ["dirty", 2, 1], ["xip", 3, 5], ["hole", 8, 4]]
    assert r["dirty"] == 1 and r["pagecache"] == 1
    assert sum(n for _, _, n in r["map"]) == 12


def _dense_residency(nr_pages, starts, lens, cached, codes) -> list:
    """The definition: one state per page, then runs."""
    state = np.zeros(nr_pages, np.uint8)
    for s, n in zip(starts, lens, strict=True):
        state[s : s + n] = 1
    state[cached] = codes
    return run_lengths(state, ("hole", "xip", "pagecache", "dirty"))


def test_residency_runs_are_the_per_page_map() -> None:
    """Built from the extents and the cached pages, the same runs as one state per page."""
    from nvramfs.mm.manager import residency_runs

    rng = np.random.default_rng(9)
    for _ in range(300):
        nr = int(rng.integers(1, 60))
        mapped = rng.random(nr) < rng.random()
        edges = np.flatnonzero(np.diff(np.r_[False, mapped, False].astype(np.int8)))
        starts, lens = edges[0::2], edges[1::2] - edges[0::2]
        cached = np.flatnonzero(rng.random(nr) < 0.3)
        codes = rng.integers(2, 4, len(cached))
        got = residency_runs(nr, starts, lens, cached, codes)
        assert got == _dense_residency(nr, starts, lens, cached, codes)
        assert sum(n for _, _, n in got) == nr


def test_residency_of_a_file_spanning_terabytes_is_its_runs(mounter):
    """One byte written at 15 TiB: the xattr answers at once with two runs (it used to
    build an array per page: EIO with a MemoryError)."""
    m = mounter(mounter.image())
    f = m.p("sparse")
    with open(f, "wb") as fh:
        fh.seek(15 << 40)
        fh.write(b"x")
    last = (15 << 40) >> 12
    r = residency(f)
    tail = "xip" if not m.stats()["sim"] else "dirty"
    assert r["map"] == [["hole", 0, last], [tail, last, 1]]
    m.ctl("sync")
    r = residency(f)
    assert r["map"][0] == ["hole", 0, last] and r["map"][1][1:] == [last, 1]
    assert r["map"][1][0] in ("pagecache", "xip") and r["pages"] >= 1
