"""`log summary`'s device figures: modelled time by kind and phase, from counters and marks."""

from __future__ import annotations

from nvramfs.cli.log import format_summary
from nvramfs.events.analysis import Scan, summarize


def ev(seq, t, ev, **kw):
    return {"v": 1, "seq": seq, "t": t, "ev": ev, **kw}


def counters(seq, t, **ns):
    full = {
        k: 0 for k in ("hit", "xip_read", "fault", "promote", "cow", "demote", "writeback", "erase")
    }
    full.update(ns)
    return ev(
        seq, t, "counters", faults={"xip_read": 1}, accesses={"read": 2, "write": 0},
        migrations={"promote": {}, "demote": {}}, writebacks={}, frames_used=0, dirty=0,
        modelled_ns=full,
    )  # fmt: skip


def test_phases_run_from_mark_to_mark_with_the_cumulative_time_each_mark_carries():
    events = [
        ev(0, 0.0, "mount", image="i", dram_pages=16, policy="2q", medium="nor", uuid="u"),
        ev(1, 0.5, "mark", name="read", modelled_ns={"xip_read": 0}),
        counters(2, 1.0, xip_read=300),
        ev(3, 1.5, "mark", name="write", modelled_ns={"xip_read": 400}),
        counters(4, 2.0, xip_read=400, cow=1000, writeback=5000),
        counters(5, 3.0, xip_read=450, cow=1000, writeback=9000, erase=20000),
        ev(6, 3.0, "wear", medium="nor", erases=1, bytes_written_back=8192,
           bytes_programmed=16384, bytes_erased=131072,
           write_amplification={"programmed": 2.0, "erased": 16.0},
           worst_sectors=[{"sector": 3, "first_block": 96, "erases": 1, "programs": 4}],
           lifetime_years=12.5, seconds=3.0, sector_pages=32, nr_sectors=8,
           sectors_per_bin=1, erase_bins=[0, 0, 0, 1, 0, 0, 0, 0],
           program_bins=[0, 0, 0, 4, 0, 0, 0, 0], modelled_ns={"erase": 20000}),
        ev(7, 3.0, "unmount", clean=True),
    ]  # fmt: skip
    s = summarize(Scan.of_events(events))
    d = s["device"]
    assert d["medium"] == "nor"
    assert d["modelled_ns"]["writeback"] == 9000 and d["modelled_ns_total"] == 30450
    phases = {p["phase"]: p for p in d["phases"]}
    assert list(phases) == ["read", "write"]  # nothing happened before the first mark
    assert phases["read"]["modelled_ns"]["xip_read"] == 400
    assert phases["read"]["wall_s"] == 1.0
    w = phases["write"]["modelled_ns"]
    assert w["xip_read"] == 50 and w["cow"] == 1000 and w["writeback"] == 9000
    assert w["erase"] == 20000
    assert sum(p["modelled_ns_total"] for p in d["phases"]) == d["modelled_ns_total"]
    assert d["wear"][0]["worst_sectors"][0]["sector"] == 3
    text = format_summary(s)
    assert "modelled     30.4 µs on nor" in text
    assert "programmed 2.00x and erased 16.00x" in text
    assert "lifetime at this write rate: 12.5 years" in text
    assert "modelled time by phase" in text


def test_without_marks_phases_are_time_buckets_and_without_a_model_no_section():
    events = [
        ev(0, 0.0, "mount", image="i", dram_pages=16, policy="2q", medium="optane", uuid="u"),
        counters(1, 1.0, xip_read=100),
        counters(2, 2.0, xip_read=250),
        counters(3, 3.0, xip_read=600),
    ]
    s = summarize(Scan.of_events(events), bucket=2.0)
    phases = s["device"]["phases"]
    assert [p["modelled_ns"]["xip_read"] for p in phases] == [250, 350]
    assert [p["phase"] for p in phases] == ["0-2s", "2-3s"]
    plain = [e for e in events if e["ev"] != "counters"]
    assert summarize(Scan.of_events(plain))["device"] is None


def test_plot_draws_modelled_time_by_phase_and_the_wear_heatmap(tmp_path):
    import json

    from nvramfs.cli.plot import load_view, make_plots
    from nvramfs.events.reader import ReadReport

    events = [
        ev(0, 0.0, "mount", image="i", dram_pages=16, policy="2q", medium="nor", uuid="u"),
        ev(1, 0.5, "mark", name="write", modelled_ns={}),
        counters(2, 1.0, cow=1000, writeback=5000, erase=9000),
        ev(3, 1.0, "wear", medium="nor", erases=2, bytes_written_back=4096,
           bytes_programmed=8192, bytes_erased=262144,
           write_amplification={"programmed": 2.0, "erased": 64.0}, worst_sectors=[],
           lifetime_years=1.0, seconds=1.0, sector_pages=32, nr_sectors=3, sectors_per_bin=1,
           erase_bins=[0, 2, 0], program_bins=[0, 2, 0], modelled_ns={}),
        ev(4, 1.0, "unmount", clean=True),
    ]  # fmt: skip
    log = tmp_path / "l.events.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    view = load_view(log, "all", ReadReport())
    names = [p.name for p in make_plots(view, tmp_path / "out")]
    assert "modelled.png" in names and "wear.png" in names
    assert (tmp_path / "out" / "wear.png").stat().st_size > 5000
    # A log with no device model draws neither.
    plain = [e for e in events if e["ev"] not in ("wear", "counters")]
    log.write_text("".join(json.dumps(e) + "\n" for e in plain))
    names = [p.name for p in make_plots(load_view(log, "all", ReadReport()), tmp_path / "o2")]
    assert "modelled.png" not in names and "wear.png" not in names
