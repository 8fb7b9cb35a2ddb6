"""`-o medium=`: a live mount prices what its mm moved, in its stats and its log."""

from __future__ import annotations

import os

import pytest
from mounthelp import EXTRA_OPTIONS, mounts_under, nvramfs

from nvramfs.device import KINDS, kernel_costs, load_medium

pytestmark = pytest.mark.skipif(
    "sim=off" in EXTRA_OPTIONS, reason="the model prices the simulation"
)


def test_unknown_medium_is_a_usage_error_listing_the_builtins(mounter, tmp_path):
    img = mounter.image()
    (tmp_path / "mp").mkdir()
    for bad in ("medium=flash", f"medium={tmp_path}/none.toml"):
        out = nvramfs("mount", img, tmp_path / "mp", "-o", bad)
        assert out.returncode == 2, out.stderr
        assert "dram, nor, pcm, optane" in out.stderr and "Traceback" not in out.stderr
    assert not mounts_under(str(tmp_path))


@pytest.mark.parametrize("medium", ["nor", "optane"])
def test_stats_and_log_carry_modelled_time_and_wear(mounter, medium):
    img = mounter.image()
    m = mounter(img)
    m.p("f").write_bytes(os.urandom(8 * 4096))
    m.umount()  # the file's 8 pages are on the image: programmed blocks
    m = mounter(img, f"medium={medium},policy=none")
    for i in range(8):
        with open(m.p("f"), "rb") as f:
            f.seek(i * 4096)
            f.read(4096)
    with open(m.p("f"), "r+b") as f:
        f.write(b"rewrite")
        f.flush()
        os.fsync(f.fileno())
    c = m.stats()["counters"]
    ns = c["modelled_ns"]
    assert set(ns) == set(KINDS)
    med = load_medium(medium)
    # Reads not served by a frame are priced as medium reads (docs/COSTS.md).
    xip = c["accesses"]["read"] - c["faults"]["pagecache_hit"] - c["faults"]["hole"]
    assert xip >= 8
    assert ns["xip_read"] == round(xip * med.read_ns())
    assert ns["cow"] == round(c["faults"]["cow"] * (med.read_ns() + kernel_costs().copy_4k_ns))
    assert ns["writeback"] > 0
    if medium == "nor":
        assert ns["erase"] > 0  # page 0's block held data: its sector was erased
    else:
        assert ns["erase"] == 0
    m.umount()
    evs = m.session_events()
    assert evs[0]["medium"] == medium
    last = [e for e in evs if e["ev"] == "counters"][-1]
    assert set(last["modelled_ns"]) == set(KINDS)
    wear = [e for e in evs if e["ev"] == "wear"]
    assert len(wear) == 1 and wear[0]["medium"] == medium
    w = wear[0]
    assert w["modelled_ns"] == last["modelled_ns"]
    assert sum(w["erase_bins"]) == w["erases"]
    assert w["bytes_written_back"] >= 4096
    if medium == "nor":
        assert w["erases"] >= 1 and w["write_amplification"]["erased"] > 1
        assert w["worst_sectors"][0]["erases"] >= 1 and w["lifetime_years"] > 0
