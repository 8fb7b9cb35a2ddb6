"""The demo's phase table (rich): one row per fio direction, mm's counters on the first."""

from __future__ import annotations

from nvramfs.cli.demo import Phase, phase_table


def fio(read_bw: int, write_bw: int = 0) -> dict:
    def d(bw: int) -> dict:
        return {
            "io_bytes": bw * 2,
            "bw_bytes": bw,
            "iops": bw / 4096,
            "lat_ns": {"mean": 12_000.0},
            "clat_ns": {"percentile": {"99.000000": 2_500_000}},
        }

    return {
        "jobs": [{"read": d(read_bw) if read_bw else {}, "write": d(write_bw) if write_bw else {}}]
    }


def test_phase_table_rows_and_columns() -> None:
    hot = Phase("hot", "zipf-randread.fio", "", {}, result=fio(64 << 20))
    hot.stats = {"hit_ratio": 0.875, "promote": 1234, "demote": 5, "cow": 0}
    mixed = Phase("writes", "randwrite-verify.fio", "", {}, result=fio(8 << 20, 4 << 20))
    mixed.stats = {"hit_ratio": None, "promote": 0, "demote": 0, "cow": 1024}
    lines = phase_table([hot, mixed]).splitlines()
    assert lines[0].split() == [
        "phase", "MiB/s", "IOPS", "mean", "lat", "p99", "lat", "hit", "promote", "demote", "cow",
    ]  # fmt: skip
    assert lines[1].split() == ["hot", "read", "64.0", "16,384", "12", "µs", "2.50", "ms",
                                "87.5%", "1,234", "5", "0"]  # fmt: skip
    assert lines[2].split()[:3] == ["writes", "verify", "8.0"] and lines[2].split()[-1] == "1,024"
    assert lines[3].split() == ["write", "4.0", "1,024", "12", "µs", "2.50", "ms"]
    assert all(ln == ln.rstrip() for ln in lines)
