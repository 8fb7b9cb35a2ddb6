"""`nvramfs plot`: the PNGs are written, are valid PNG files of a sane size, and bad input is one line."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from test_log import write_handmade, write_mm_log

from nvramfs.cli import run

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails the test if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert data.endswith(b"\x00\x00\x00\x00IEND\xaeB`\x82"), f"{path} has no IEND chunk at its end"
    return width, height


def plot(capsys, *args) -> tuple[int, str, str]:
    code = run(["plot", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_plots_of_a_recorded_mm_log(tmp_path: Path, capsys) -> None:
    log = tmp_path / "mm.events.jsonl"
    write_mm_log(log)
    outdir = tmp_path / "pics"
    code, out, err = plot(capsys, log, "-o", outdir, "--per-file", "2", "--dpi", "50")
    assert code == 0, err
    paths = [Path(p) for p in out.splitlines()]
    assert [p.name for p in paths] == [
        "heatmap.png",
        "heatmap-1-hot.bin.png",
        "heatmap-2-big_scan.bin.png",
        "residency.png",
    ]
    for p in paths:
        assert p.parent == outdir
        w, h = png_size(p)
        assert 400 <= w <= 1000 and 250 <= h <= 600, (p, w, h)


def test_plot_default_directory_is_beside_the_log(tmp_path: Path, capsys) -> None:
    log = tmp_path / "x.img.events.jsonl"
    write_handmade(log)
    code, out, err = plot(capsys, log, "--dpi", "40")
    assert code == 0, err
    paths = [Path(p) for p in out.splitlines()]
    assert {p.parent for p in paths} == {tmp_path / "x.img.plots"}
    assert len(paths) == 2
    for p in paths:
        png_size(p)


def test_plot_of_a_crash_cut_log_with_two_sessions(tmp_path: Path, capsys) -> None:
    log = tmp_path / "cut.jsonl"
    write_handmade(log)
    second = tmp_path / "second.jsonl"
    write_handmade(second, wall=1_700_000_100.0)
    data = log.read_bytes()[:-10] + second.read_bytes()[:-7]
    log.write_bytes(data)
    code, out, err = plot(capsys, log, "-o", tmp_path / "o", "--dpi", "40")
    assert code == 0, err
    assert "torn line at the end" in err and "torn line inside the log" in err
    for p in out.splitlines():
        png_size(Path(p))


def test_plot_of_a_log_without_accesses_or_counters(tmp_path: Path, capsys) -> None:
    log = tmp_path / "bare.jsonl"
    log.write_text('{"v":1,"seq":0,"t":0.0,"ev":"mount","image":"i","dram_pages":4}\n')
    code, out, err = plot(capsys, log, "-o", tmp_path / "o", "--dpi", "40")
    assert code == 0, err
    assert len(out.splitlines()) == 2
    for p in out.splitlines():
        png_size(Path(p))


def test_plot_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = plot(capsys, tmp_path / "missing.jsonl")
    assert code == 1 and err.count("\n") == 1 and "no such event log" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = plot(capsys, empty)
    assert code == 1 and err == f"nvramfs: {empty}: the event log is empty\n"
    log = tmp_path / "ok.jsonl"
    write_handmade(log)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = plot(capsys, log, "-o", blocker / "sub")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path: Path, capsys, monkeypatch) -> None:
    log = tmp_path / "ok.jsonl"
    write_handmade(log)
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, out, err = plot(capsys, log, "-o", tmp_path / "o")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "matplotlib" in err and "pip install" in err


def test_hit_ratio_intervals_leave_idle_gaps_empty(tmp_path: Path) -> None:
    """Issue 15, item 8: an idle interval has no ratio (not the next one's); 100% is kept."""
    from test_log import FakeClock, _counters

    from nvramfs.cli.plot import hit_intervals, load_view
    from nvramfs.events.reader import ReadReport
    from nvramfs.events.writer import EventWriter

    log = tmp_path / "gap.jsonl"
    clk = FakeClock()
    w = EventWriter(log, clock=clk)
    w.emit("mount", image="g.img", dram_pages=4, wall=1_700_000_000.0)
    for hits, acc in ((0, 0), (10, 10), (10, 10), (10, 10), (15, 20)):
        clk.now += 1.0
        w.emit("counters", **_counters({}, {}, {}, {"pagecache_hit": hits}, acc, 0, 1, 0))
    w.close()
    view = load_view(log, "all", ReadReport())
    assert hit_intervals(view) == [(1.0, 2.0, 100.0), (4.0, 5.0, 50.0)]


def test_many_cows_are_drawn_as_a_density(tmp_path: Path, capsys) -> None:
    """Issue 15, item 8: thousands of COW marks are one shape, said in the legend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    from nvramfs.cli import plot as plot_mod

    fig, ax = plt.subplots()
    pts = np.column_stack([np.linspace(10, 20, 5000), np.linspace(0, 1000, 5000)])
    handle = plot_mod._density(ax, pts, "#ff66ff", "cow (5,000)", 40.0, 1000.0)
    assert "density" in handle.get_label()
    assert len(ax.collections) <= 4  # a few contour sets, not 5,000 markers
    plt.close(fig)
