"""`mark NAME` on .nvramfs/ctl starts a phase: a `mark` event with the modelled time so far."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mounthelp import EXTRA_OPTIONS

pytestmark = pytest.mark.skipif(
    "sim=off" in EXTRA_OPTIONS, reason="the model prices the simulation"
)


def test_mark_logs_the_cumulative_modelled_time_and_summary_prices_each_phase(mounter):
    img = mounter.image()
    m = mounter(img)
    m.p("f").write_bytes(os.urandom(16 * 4096))
    m.umount()
    m = mounter(img, "medium=optane")
    (m.p(".nvramfs", "ctl")).write_text("mark reads\n")
    m.p("f").read_bytes()
    (m.p(".nvramfs", "ctl")).write_text("mark writes\n")
    with open(m.p("f"), "r+b") as f:
        f.write(b"x" * 8192)
        f.flush()
        os.fsync(f.fileno())
    stat = subprocess.run(
        [sys.executable, "-m", "nvramfs", "stat", str(m.path)], capture_output=True, text=True
    )
    assert stat.returncode == 0 and "modelled time" in stat.stdout and "on optane" in stat.stdout
    m.umount()
    evs = m.session_events()
    marks = [e for e in evs if e["ev"] == "mark"]
    assert [e["name"] for e in marks] == ["reads", "writes"]
    assert marks[1]["modelled_ns"]["xip_read"] > 0  # the reads came before the second mark
    out = subprocess.run(
        [sys.executable, "-m", "nvramfs", "log", str(m.log), "summary", "--session", "last",
         "--json"], capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)["device"]
    phases = {p["phase"]: p["modelled_ns"] for p in d["phases"]}
    assert phases["reads"]["xip_read"] > 0 and phases["reads"].get("cow", 0) == 0
    assert phases["writes"]["cow"] > 0 and phases["writes"]["writeback"] > 0
    assert sum(sum(p.values()) for p in phases.values()) == d["modelled_ns_total"]
