"""`nvramfs stat MOUNTPOINT DELAY COUNT` repeats as vmstat, with the hit ratio."""

from __future__ import annotations

import json

import pytest
from mounthelp import nvramfs

from nvramfs.cli.stat import COLUMNS, hit_ratio

pytestmark = pytest.mark.fuse


def test_stat_repeats_count_lines_and_the_hit_ratio_matches_the_counters(mounter):
    m = mounter(mounter.image(), "dram=4M")
    if not m.stats()["sim"]:
        pytest.skip("sim=off has no counters")
    m.p("f").write_bytes(b"h" * 8 * 4096)
    for _ in range(3):
        m.p("f").read_bytes()
    out = nvramfs("stat", m.path, "0.2", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == [c for c, _ in COLUMNS]
    assert len(lines) == 4  # the header, then COUNT lines
    assert all(len(ln.split()) == len(COLUMNS) for ln in lines[1:])
    # Nothing touched the file during the last lines: no accesses, no ratio.
    assert lines[-1].split()[2:4] == ["0", "-"]
    stats = json.loads(nvramfs("stat", m.path, "--json").stdout)
    ratio = hit_ratio(stats["counters"])
    assert ratio is not None and ratio > 0
    text = nvramfs("stat", m.path).stdout
    assert f"{ratio * 100:.1f}% of page accesses served by a frame" in text
    for bad in (["0"], ["1", "0"], ["x"]):
        assert nvramfs("stat", m.path, *bad).returncode == 2
