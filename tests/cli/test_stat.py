"""`nvramfs stat`'s figures from the counters: the hit ratio and the vmstat-style rates."""

from __future__ import annotations

from nvramfs.cli.stat import COLUMNS, format_stats, hit_ratio, rate_row


def counters(read: int, write: int, hit: int, xip: int, promote: int, wb: int) -> dict:
    return {
        "faults": {"pagecache_hit": hit, "xip_read": xip, "cow": 2, "hole": 0, "write_reuse": 0},
        "accesses": {"read": read, "write": write},
        "migrations": {"promote": {"policy": promote}, "demote": {"dram_budget": 1}},
        "writebacks": {"fsync": wb},
        "frames_used": 10,
        "dram_pages": 16,
        "dirty": 3,
        "tick": 4,
    }


def test_hit_ratio_is_frame_served_accesses_over_all_accesses() -> None:
    assert hit_ratio(counters(60, 20, 40, 30, 0, 0)) == 0.5
    assert hit_ratio(counters(0, 0, 0, 0, 0, 0)) is None


def test_rate_row_is_the_difference_over_the_interval() -> None:
    a = counters(100, 0, 50, 50, 4, 0)
    b = counters(300, 100, 350, 50, 10, 8)
    row = dict(zip([c for c, _ in COLUMNS], rate_row(a, b, 2.0), strict=True))
    assert row["acc/s"] == "150"  # (400 - 100) / 2
    assert row["hit%"] == "100.0%"  # 300 hits of 300 accesses in the interval
    assert row["xip/s"] == "0" and row["prom/s"] == "3" and row["wb/s"] == "4"
    assert row["frames"] == "10" and row["dirty"] == "3"
    first = dict(zip([c for c, _ in COLUMNS], rate_row(None, a, 4.0), strict=True))
    assert first["acc/s"] == "25" and first["hit%"] == "50.0%"


def test_one_shot_view_shows_the_hit_ratio() -> None:
    s = {
        "mountpoint": "/m",
        "image": "/i",
        "pid": 1,
        "sim": True,
        "cache": "direct",
        "policy": "2q",
        "counters": counters(60, 20, 40, 30, 1, 1),
        "budget": {"frames_used": 10, "dram_pages": 16, "dram_bytes": 65536, "used_bytes": 40960},
        "struct_page": {"bytes_used": 640, "bytes_avoided": 1920},
    }
    text = format_stats(s)
    assert "50.0% of page accesses served by a frame" in text
    assert "40.0 KiB of 64.0 KiB" in text and "1.9 KiB avoided" in text
