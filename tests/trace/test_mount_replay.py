"""Record fio runs on a real mount (`-o trace=DIR`), replay them, compare every counter.

The live numbers are `nvramfs log LOG summary --json` of the mount's own log;
the replay's are `nvramfs replay TRACE --json` (the same summary functions over
the replay's own log).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mounthelp import nvramfs

pytestmark = pytest.mark.skipif(shutil.which("fio") is None, reason="needs fio")

# Every number the replay must reproduce (keys of the summary JSON).
EXACT = (
    "faults",
    "accesses",
    "pagecache_hit_ratio",
    "migrations",
    "migrations_counters",
    "cow",
    "writebacks",
    "writebacks_counters",
    "peak",
    "struct_page",
    "dram_pages",
    "policy",
)


def fio(directory: Path, *args: str) -> None:
    cmd = [
        "fio",
        "--name=t",
        f"--directory={directory}",
        "--ioengine=psync",
        "--randrepeat=0",
        "--fallocate=none",
        "--output=/dev/null",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def summary_json(*args: str) -> dict:
    out = nvramfs(*args, "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def workload(mnt: Path) -> None:
    fio(mnt, "--filename=data", "--rw=write", "--bs=64k", "--size=6M", "--fsync=16")
    fio(mnt, "--filename=data", "--rw=randread", "--bs=4k", "--size=6M",
        "--random_distribution=zipf:1.2", "--io_size=4M")  # fmt: skip
    fio(mnt, "--filename=data", "--rw=randwrite", "--bs=4k", "--size=6M", "--io_size=1M",
        "--fsync=8")  # fmt: skip
    os.truncate(mnt / "data", 3 * 1024 * 1024 + 1000)  # a partial last page
    fio(mnt, "--filename=small", "--rw=randrw", "--bs=4k", "--size=1M", "--io_size=2M",
        "--fsync=32")  # fmt: skip


def test_fio_runs_replay_to_the_live_counters(mounter, tmp_path: Path) -> None:
    image = mounter.image("64M")
    trace = tmp_path / "run.trace"
    m = mounter(image, f"dram=1M,writeback=1,trace={trace}")
    workload(m.path)
    m.ctl("demote-all")
    fio(m.path, "--filename=data", "--rw=randread", "--bs=4k", "--size=3M", "--io_size=2M")
    m.ctl("policy clock")
    m.ctl("promote-cap 7")  # an assigned mm setting: a `setattr` record
    m.ctl("dram 768K")  # MemoryManager.set_dram_budget: a plain call record
    time.sleep(2.2)  # two ticks: dirty expiry and the new policy's passes
    fio(m.path, "--filename=data", "--rw=read", "--bs=128k", "--size=3M")
    m.umount()

    live = summary_json("log", str(m.log), "summary", "--session", "last")
    rlog = tmp_path / "replay.events.jsonl"
    rep = summary_json("replay", str(trace), "--log", str(rlog))
    assert live["accesses"]["read"] > 1000 and live["accesses"]["write"] > 500
    assert live["migrations"]["demote"].get("ctl", 0) > 0
    assert live["cow"]["total"] > 0 and live["writebacks"].get("fsync", 0) > 0
    for key in EXACT:
        assert rep[key] == live[key], key
    skip = {"mount", "unmount", "path", "error", "ctl", "policy"}  # the FUSE layer's own
    assert {k: v for k, v in rep["by_event"].items() if k not in skip} == {
        k: v for k, v in live["by_event"].items() if k not in skip
    }
    assert rep["replay"]["complete"] is True
    import polars as pl

    ops = set(pl.read_parquet(str(trace / "*.parquet"))["op"].to_list())
    assert {"setattr", "set_dram_budget", "set_policy", "demote_all", "truncate"} <= ops
    # The device model heard the same moves: the same modelled time and wear.
    last_live = [e for e in m.session_events() if e["ev"] == "counters"][-1]
    rev = [json.loads(x) for x in rlog.read_text().splitlines()]
    last_rep = [e for e in rev if e["ev"] == "counters"][-1]
    assert last_rep.get("modelled_ns") == last_live.get("modelled_ns")
    wear = [e for e in m.session_events() if e["ev"] == "wear"]
    rwear = [e for e in rev if e["ev"] == "wear"]
    if wear:
        assert rwear[-1]["erase_bins"] == wear[-1]["erase_bins"]
        assert rwear[-1]["program_bins"] == wear[-1]["program_bins"]
    # Per-file results know the files as the live log does: (uuid, inode, generation).
    top_live = summary_json("log", str(m.log), "top", "--session", "last")
    top_rep = summary_json("log", str(rlog), "top")
    assert [(f["path"], f["reads"], f["writes"]) for f in top_rep["files"]] == [
        (f["path"], f["reads"], f["writes"]) for f in top_live["files"]
    ]
    # The replay's own log is a log like any other.
    again = summary_json("log", str(rlog), "summary")
    assert again["faults"] == live["faults"]


def test_a_trace_cut_by_kill_replays_its_complete_parts(
    mounter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVRAMFS_TRACE_PART_SECONDS", "0.5")
    image = mounter.image("64M")
    trace = tmp_path / "cut.trace"
    m = mounter(image, f"dram=1M,trace={trace}")
    fio(m.path, "--filename=data", "--rw=write", "--bs=64k", "--size=4M")
    fio(m.path, "--filename=data", "--rw=randread", "--bs=4k", "--size=4M", "--runtime=3",
        "--time_based")  # fmt: skip
    m.kill9()
    parts = sorted(trace.glob("part-*.parquet"))
    assert len(parts) >= 2
    out = nvramfs("replay", str(trace), "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "cut short" in out.stderr
    rep = json.loads(out.stdout)
    assert rep["replay"]["complete"] is False
    assert rep["replay"]["parts"] == len(parts)
    assert rep["accesses"]["read"] > 0


def test_mount_refuses_a_trace_directory_that_holds_a_trace(mounter, tmp_path: Path) -> None:
    image = mounter.image("64M")
    trace = tmp_path / "old.trace"
    m = mounter(image, f"trace={trace}")
    m.umount()
    assert (trace / "header.json").exists()
    mnt = tmp_path / "again"
    mnt.mkdir()
    out = nvramfs("mount", str(image), str(mnt), "-o", f"trace={trace}")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(trace) in lines[0] and "already holds a trace" in lines[0]
    with open("/proc/mounts") as f:
        assert str(mnt) not in f.read()


def test_trace_option_is_an_absolute_path() -> None:
    from nvramfs.fuse.options import parse_options

    assert parse_options(["trace=rel.trace"]).trace == os.path.abspath("rel.trace")
    assert parse_options(["dram=8M"]).trace is None


def test_trace_without_the_simulation_is_a_usage_error(tmp_path: Path) -> None:
    image = tmp_path / "i.img"
    assert nvramfs("mkfs", str(image), "--size", "16M").returncode == 0
    mnt = tmp_path / "m"
    mnt.mkdir()
    out = nvramfs("mount", str(image), str(mnt), "-o", f"sim=off,trace={tmp_path / 't'}")
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "sim=on" in out.stderr
    out = nvramfs("mount", str(image), str(mnt), "-o", f"trace={mnt / 'x.trace'}")
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "inside the mount" in out.stderr
