"""Sweeps (docs/TRACE.md, "Sweeps"): every figure of a row from the replay's counters,
xip=off as the page cache without XIP, guests, the CLI's bad input, and a Dask
LocalCluster giving the local run's table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import nvramfs
from nvramfs.cli import run
from nvramfs.errors import NvramfsError
from nvramfs.trace import replay, synth
from nvramfs.trace.format import part_files
from nvramfs.trace.sweep import (
    Config,
    configurations,
    guest_plan,
    memmap_device_bytes,
    replay_counters,
    run_config,
    run_local,
    write_guest_trace,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_roundtrip import record_random  # noqa: E402

NPAGES = 256
# Row fields that depend on the machine's speed, not on the simulation.
TIMING = ("seconds", "accesses_per_s")


@pytest.fixture(scope="module")
def zipf_trace(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sweep") / "z.trace"
    pages = synth.zipf_pages(NPAGES, 3000, 1.2, seed=3)
    synth.read_trace(str(path), pages, NPAGES, dram_pages=32, tick_every=300)
    return str(path)


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k not in TIMING} == {
            k: v for k, v in y.items() if k not in TIMING
        }


def test_a_row_is_the_replays_counters(zipf_trace: str) -> None:
    for policy in ("2q", "lru", "opt"):
        row = run_config(zipf_trace, Config(policy, 16))
        assert row["error"] is None
        c = replay(zipf_trace, {"policy": policy, "dram_pages": 16}, summary=False).counters
        acc = c["accesses"]["read"] + c["accesses"]["write"]
        assert row["accesses"] == acc == 3000
        assert row["hit_ratio"] == c["faults"]["pagecache_hit"] / acc
        assert row["promotions"] == sum(c["migrations"]["promote"].values())
        assert row["demotions"] == sum(c["migrations"]["demote"].values())
        assert row["cow"] == c["faults"]["cow"]
        assert row["writebacks"] == sum(c["writebacks"].values())
        # 272 pages of device: one 2 MiB subsection of memmap.
        # The peak is at least what is in use at the end, never above the budget.
        assert c["frames_used"] <= row["peak_frames"] <= 16
        assert row["mixedmap_bytes"] == 64 * row["peak_frames"]
        assert row["memmap_device_bytes"] == memmap_device_bytes(NPAGES + 16) == 64 * 512
        assert row["saved_bytes"] == row["memmap_device_bytes"] - row["mixedmap_bytes"]
        assert row["accesses_per_s"] == pytest.approx(acc / row["seconds"], rel=1e-3)


def test_peak_frames_sees_frames_freed_before_the_end(tmp_path: Path) -> None:
    trace, _live, _log = record_random(tmp_path, 2, dram=24, steps=600)
    counters, peak, _s = replay_counters(str(trace), "2q", 24)
    # demote_all and truncates free frames: the end is below the peak the run reached.
    assert counters["frames_used"] <= peak <= 24
    assert peak > 0


def test_xip_off_is_the_page_cache_without_xip(zipf_trace: str) -> None:
    rows = run_local(zipf_trace, configurations(["2q", "lru", "opt"], [16], [True, False]), jobs=1)
    by = {(r["policy"], r["xip"]): r for r in rows}
    # 2q without XIP reads every page it serves into a frame: lru.
    assert by[("2q", False)]["hit_ratio"] == by[("lru", True)]["hit_ratio"]
    nox = replay(zipf_trace, {"policy": "opt-nox", "dram_pages": 16}, summary=False).counters
    assert by[("opt", False)]["hit_ratio"] == nox["faults"]["pagecache_hit"] / 3000
    # opt bypasses: at least as many accesses served by frames as without XIP, fewer copies.
    assert by[("opt", True)]["hit_ratio"] >= by[("opt", False)]["hit_ratio"]
    assert by[("opt", True)]["promotions"] < by[("opt", False)]["promotions"]
    # Each row knows the DRAM copies its policy's page cache without XIP holds.
    assert by[("2q", True)]["nox_dram_bytes"] == by[("2q", False)]["total_dram_bytes"]


def test_guest_trace_has_the_reads_rotated_and_no_writes(tmp_path: Path) -> None:
    trace, _live, _log = record_random(tmp_path, 3, steps=800)
    src = pq.read_table(part_files(str(trace))).to_pydict()
    out = tmp_path / "guest"
    write_guest_trace(str(trace), str(out), 1, 4)
    g = pq.read_table(part_files(str(out))).to_pydict()
    assert "write" not in g["op"] and "truncate" not in g["op"]

    def reads_of(t: dict) -> list[tuple[int, int, int]]:
        cols = zip(t["op"], t["ino"], t["page"], t["nbytes"], strict=True)
        return [(i, p, n) for o, i, p, n in cols if o == "read"]

    reads, greads = reads_of(src), reads_of(g)
    shift = len(reads) // 4
    assert greads == reads[shift:] + reads[:shift]
    assert np.all(np.diff(g["t_us"]) >= 0)  # times keep the stream order
    # The guest replays to the end with no failed call.
    counters, _peak, _s = replay_counters(str(out), "2q", 24)
    assert counters["accesses"]["write"] == 0
    assert counters["accesses"]["read"] > 0


def test_identical_guests_are_computed_once_and_multiplied(zipf_trace: str) -> None:
    one = run_config(zipf_trace, Config("2q", 16, guests=1), variants=1)
    plan = guest_plan(zipf_trace, 10, 1)
    assert len(plan) == 1 and plan[0][1] == 10
    ten = run_config(zipf_trace, Config("2q", 16, guests=10), variants=1)
    assert ten["replayed"] == 1
    # Its rate counts the accesses replayed: one guest's.
    assert ten["accesses_per_s"] == pytest.approx(ten["accesses"] / 10 / ten["seconds"], rel=1e-3)
    # A guest with its own budget and the same calls: the same counters, twice over.
    a, pa_, _ = replay_counters(plan[0][0], "2q", 16)
    b, pb, _ = replay_counters(plan[0][0], "2q", 16)
    assert a == b and pa_ == pb
    assert ten["accesses"] == 10 * a["accesses"]["read"] == 10 * one["accesses"]
    assert ten["promotions"] == 10 * sum(a["migrations"]["promote"].values())
    assert ten["total_mixedmap_bytes"] == 10 * 64 * pa_
    assert ten["total_memmap_bytes"] == 10 * one["memmap_device_bytes"]
    assert ten["total_dram_bytes"] == 10 * 4096 * pa_
    # Different starting points are replayed, one per distinct guest.
    three = run_config(zipf_trace, Config("2q", 16, guests=3), variants=8)
    assert three["replayed"] == 3
    assert three["accesses"] == 3 * one["accesses"]


def test_hundred_guests_pay_more_struct_pages_than_the_image(zipf_trace: str) -> None:
    row = run_config(zipf_trace, Config("2q", 16, guests=100), variants=1)
    # The seed's arithmetic: 64 bytes per 4 KiB page is 1/64 of the image per guest.
    assert row["total_memmap_bytes"] > row["image_bytes"]
    assert row["total_mixedmap_bytes"] < row["image_bytes"]


def test_cli_table_csv_json_and_plots(zipf_trace: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    code = run(
        ["sweep", zipf_trace, "--policy", "2q,lru", "--dram", "32K:128K:x2", "--xip", "on,off",
         "--guests", "1,100", "--guest-variants", "1", "-j", "1", "-q", "-o", str(out)]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "policy" in text and "24 configurations" in text
    data = json.loads((tmp_path / "s.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * 3 * 2 * 2
    assert {r["dram_bytes"] for r in rows} == {32768, 65536, 131072}
    assert all(r["accesses_per_s"] > 0 and r["error"] is None for r in rows)
    assert (tmp_path / "s.csv").read_text().splitlines()[0].startswith("policy,xip,dram_bytes")
    assert (tmp_path / "s-mrc.png").stat().st_size > 0
    assert (tmp_path / "s-guests.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--dram", "0"],
        ["--dram", "4K,0"],
        ["--policy", "nosuch"],
        ["--guests", "0"],
        ["--xip", "maybe"],
        ["--dram", "1M:64K:x2"],
    ],
)
def test_bad_axes_are_usage_errors(zipf_trace: str, argv: list[str], capsys) -> None:
    assert run(["sweep", zipf_trace, "-q", "--no-plot", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nvramfs: ")


def test_unreachable_scheduler_is_one_line_exit_1(zipf_trace: str, capsys) -> None:
    code = run(["sweep", zipf_trace, "--policy", "2q", "--dram", "64K", "-q", "--no-plot",
                "--scheduler", "tcp://127.0.0.1:9"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0]


def test_a_dask_cluster_gives_the_local_table(zipf_trace: str, monkeypatch) -> None:
    distributed = pytest.importorskip("distributed")
    from nvramfs.trace.sweep import run_dask

    configs = configurations(["2q", "opt"], [16], [True, False], [1, 3])
    local = run_local(zipf_trace, configs, jobs=1, variants=2)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        remote = run_dask(zipf_trace, configs, client, variants=2)
        # Workers of another nvramfs version: refused before anything runs.
        monkeypatch.setattr(nvramfs, "__version__", "0.0.0-other")
        with pytest.raises(NvramfsError, match="runs nvramfs"):
            run_dask(zipf_trace, configs[:1], client)
    _same(local, remote)


def test_the_demos_bounded_sweep_and_its_line(zipf_trace: str) -> None:
    from nvramfs.trace.sweep import run_bounded, xip_line

    configs = [Config("2q", 16, True), Config("2q", 16, False), Config("opt", 16, True)]
    rows = run_bounded(zipf_trace, configs, 120)
    local = run_local(zipf_trace, configs, jobs=1)
    _same([{**r, "nox_dram_bytes": None} for r in local], [{**r} for r in rows])
    line = xip_line("2q", 16, *rows)
    on, off, opt = rows
    assert f"DRAM copies {on['promotions']:,} against {off['promotions']:,} without XIP" in line
    assert f"opt's {opt['hit_ratio']:.3f}" in line
    # Out of time: the line says so, no row is made up.
    assert run_bounded(zipf_trace, configs[:1], 0) == [None]
    assert "did not finish" in xip_line("2q", 16, None, None, None)


def test_a_lost_worker_is_reported_in_its_row(tmp_path: Path) -> None:
    """A worker dies under a configuration: Dask retries it (here: no retries allowed)
    and the row says KilledWorker; the other rows are there."""
    import os
    import threading

    import dask

    distributed = pytest.importorskip("distributed")
    from nvramfs.trace.sweep import run_dask

    trace = tmp_path / "long.trace"
    synth.read_trace(str(trace), synth.zipf_pages(4096, 60_000, 1.2), 4096, dram_pages=64)
    configs = [Config("none", 16), Config("lru", 64)]  # lru: seconds of per-access Python
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
            stop = threading.Event()

            def kill_the_lru_worker() -> None:
                while not stop.is_set():
                    for addr, keys in client.processing().items():
                        if any(str(k).startswith("sweep-lru-") for k in keys):
                            try:
                                client.run(os._exit, 1, workers=[addr])
                            except Exception:  # noqa: BLE001 - the worker died answering
                                pass
                            return
                    stop.wait(0.05)

            killer = threading.Thread(target=kill_the_lru_worker, daemon=True)
            killer.start()
            try:
                rows = run_dask(str(trace), configs, client)
            finally:
                stop.set()
                killer.join(10)
    assert rows[0]["error"] is None and rows[0]["accesses"] == 60_000
    assert rows[1]["error"].startswith("KilledWorker"), rows[1]["error"]
    assert rows[1]["policy"] == "lru" and rows[1]["accesses"] is None


def test_medium_axis_prices_each_configuration_from_the_replays_device_model(
    tmp_path: Path, capsys
) -> None:
    trace, _live, _log = record_random(tmp_path, 5, dram=24, steps=600)
    rows = run_local(
        str(trace), configurations(["2q", "lru"], [8, 24], media=["nor", "optane"]), jobs=1
    )
    assert len(rows) == 8 and all(r["error"] is None for r in rows)
    by = {(r["policy"], r["dram_bytes"], r["medium"]): r for r in rows}
    for r in rows:
        # Each row's figures are its own replay's: the same replay, run alone.
        c, _peak, _s = replay_counters(
            str(trace), r["policy"], r["dram_bytes"] // 4096, r["medium"]
        )
        assert r["modelled_ns"] == sum(c["modelled_ns"].values())
        assert r["erases"] == c["wear"]["erases"]
    for key in {(p, d) for p, d, _m in by}:
        nor, opt = by[(*key, "nor")], by[(*key, "optane")]
        assert nor["writebacks"] == opt["writebacks"]  # the medium prices; it decides nothing
        assert opt["erases"] == 0
        if nor["writebacks"]:
            assert nor["modelled_ns"] > opt["modelled_ns"]
    assert run(["sweep", str(trace), "--medium", "flash", "-q", "--no-plot"]) == 2
    assert "built-in media" in capsys.readouterr().err
    out = tmp_path / "m"
    code = run(["sweep", str(trace), "--policy", "2q", "--dram", "32K,96K", "--medium",
                "nor,optane", "-j", "1", "-q", "-o", str(out)])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "modelled" in text and "worst" in text
    assert (tmp_path / "m-cost.png").stat().st_size > 0
