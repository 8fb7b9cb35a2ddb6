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
