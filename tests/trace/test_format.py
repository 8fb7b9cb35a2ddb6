"""The trace on disk: readable by polars/pyarrow as one table, compact, and bad input refused
in one line naming the file (exit 1), bad options as usage errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nvramfs.trace import TraceError, replay, synth
from nvramfs.trace.format import VERSION, encode_pairs, encode_runs


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nvramfs", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    d = tmp_path / "z.trace"
    pages = synth.zipf_pages(4096, 60_000, 1.2)
    synth.read_trace(str(d), pages, 4096, dram_pages=512, tick_every=5000, part_rows=20_000)
    return d


def test_zipf_read_trace_costs_at_most_4_bytes_per_access(tmp_path: Path) -> None:
    d = tmp_path / "big.trace"
    n = 400_000
    synth.read_trace(str(d), synth.zipf_pages(65536, n, 1.2), 65536)
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size / n <= 4.0


def test_parts_read_as_one_table_with_polars(small_trace: Path) -> None:
    import polars as pl

    df = pl.read_parquet(str(small_trace / "*.parquet"))
    counts = dict(df.group_by("op").len().iter_rows())
    assert counts["read"] == 60_000
    assert counts["file"] == 1 and counts["close"] == 1
    assert df["t_us"].is_sorted()
    res = replay(str(small_trace), summary=False)
    assert res.counters["accesses"]["read"] == 60_000


def test_runs_round_trip() -> None:
    blocks = np.array([0, 5, 6, 7, 0, 0, 9, 11, 12, 0])
    assert encode_runs(10, blocks) == [11, 3, 5, 16, 1, 9, 17, 2, 11]
    assert encode_pairs(np.array([3, 1, 2, 8]), np.array([0, 4, 0, 7])) == [
        1, 1, 4, 2, 2, 0, 8, 1, 7,
    ]  # fmt: skip


def _one_error_line(out: subprocess.CompletedProcess, code: int, name: str) -> None:
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert name in lines[0], lines[0]


def test_truncated_part_is_an_error_naming_it(small_trace: Path) -> None:
    part = sorted(small_trace.glob("part-*.parquet"))[1]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    _one_error_line(run_cli("replay", str(small_trace)), 1, part.name)
    with pytest.raises(TraceError):
        replay(str(small_trace))


def test_foreign_and_missing_traces(tmp_path: Path) -> None:
    _one_error_line(run_cli("replay", str(tmp_path / "nope")), 1, "nope")
    (tmp_path / "empty").mkdir()
    _one_error_line(run_cli("replay", str(tmp_path / "empty")), 1, "header.json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "header.json").write_text('{"format": "something-else"}')
    _one_error_line(run_cli("replay", str(tmp_path / "other")), 1, "header.json")
    f = tmp_path / "file.txt"
    f.write_text("x")
    _one_error_line(run_cli("replay", str(f)), 1, "file.txt")


def test_a_foreign_parquet_part(small_trace: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = sorted(small_trace.glob("part-*.parquet"))[0]
    pq.write_table(pa.table({"a": [1, 2]}), part)
    _one_error_line(run_cli("replay", str(small_trace)), 1, part.name)


def test_newer_version_is_refused(small_trace: Path) -> None:
    head = small_trace / "header.json"
    h = json.loads(head.read_text())
    h["version"] = VERSION + 1
    head.write_text(json.dumps(h))
    out = run_cli("replay", str(small_trace))
    _one_error_line(out, 1, "header.json")
    assert "newer" in out.stderr


def test_unknown_record_kind_is_refused(small_trace: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = sorted(small_trace.glob("part-*.parquet"))[0]
    t = pq.read_table(part)
    op = t.column("op").combine_chunks()
    names = op.dictionary.to_pylist()
    names[names.index("tick")] = "teleport"
    new = pa.DictionaryArray.from_arrays(op.indices, pa.array(names))
    t = t.set_column(t.column_names.index("op"), "op", new)
    pq.write_table(t, part)
    out = run_cli("replay", str(small_trace))
    _one_error_line(out, 1, part.name)
    assert "teleport" in out.stderr


def test_a_missing_part_is_an_error(small_trace: Path) -> None:
    sorted(small_trace.glob("part-*.parquet"))[1].unlink()
    _one_error_line(run_cli("replay", str(small_trace)), 1, "missing")


@pytest.mark.parametrize(
    "opt", ["dram=0", "policy=bogus", "dram=12x", "writeback=0", "colour=blue", "dram"]
)
def test_bad_replay_options_are_usage_errors(small_trace: Path, opt: str) -> None:
    out = run_cli("replay", str(small_trace), "-o", opt)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_kernel_cache_trace_warns(small_trace: Path) -> None:
    head = small_trace / "header.json"
    h = json.loads(head.read_text())
    h["config"]["cache"] = "kernel"
    head.write_text(json.dumps(h))
    out = run_cli("replay", str(small_trace), "--json")
    assert out.returncode == 0, out.stderr
    assert "cache=kernel" in out.stderr
    assert json.loads(out.stdout)["accesses"]["read"] == 60_000
