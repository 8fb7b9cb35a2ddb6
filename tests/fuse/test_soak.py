"""tools/soak.py for 20 s: the mixed load passes fio's verify and fsck, and the
daemon's anonymous memory stays within the DRAM budget plus the printed constant."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mounthelp import have_fuse

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.fuse
@pytest.mark.slow
def test_soak_20s() -> None:
    if not have_fuse() or shutil.which("fio") is None:
        pytest.skip("needs /dev/fuse, fusermount3 and fio")
    out = subprocess.run(
        [sys.executable, "tools/soak.py", "--seconds", "20", "--dram", "8M", "--interval", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RssAnon:"))
    m = re.search(
        r"max ([\d.]+) MiB .*DRAM budget 8\.0 MiB \+ constant ([\d.]+) MiB.*= ([\d.]+) MiB: ok",
        line,
    )
    assert m, line
    peak, constant, bound = map(float, m.groups())
    assert peak <= bound == pytest.approx(8.0 + constant, abs=0.11)
    samples = [
        ln for ln in out.stdout.splitlines() if re.match(r"\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+", ln)
    ]
    assert len(samples) >= 4  # sampled every few seconds while fio ran
    assert re.search(r"fio +write: error 0", out.stdout)
    assert "fsck: " in out.stdout and "clean" in out.stdout
    assert out.stdout.rstrip().endswith("soak: ok")
