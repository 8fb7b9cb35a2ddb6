"""Writeback through a real mount: ordered data after kill -9, the writers' throttle."""

from __future__ import annotations

import os
import time

import pytest

from nvramfs.errors import UsageError
from nvramfs.fuse.options import parse_options


def _wait_clean(m, seconds: float = 30.0) -> None:
    """Until no frame is dirty (the dirty-expiry tick wrote everything back)."""
    end = time.monotonic() + seconds
    while m.stats()["budget"]["dirty"]:
        assert time.monotonic() < end, "dirty frames never written back"
        time.sleep(0.2)


def test_kill9_after_the_writeback_interval_keeps_size_and_data(mounter):
    """Appended data older than `writeback=` is on the image with its size: after
    kill -9 the file has its full size and data, not zeros over a written range."""
    img = mounter.image()
    m = mounter(img, "writeback=1,dram=4M")
    payload = os.urandom(3 * 1024 * 1024 + 123)
    with open(m.p("log"), "wb") as f:
        for off in range(0, len(payload), 100_000):
            f.write(payload[off : off + 100_000])
            f.flush()
    _wait_clean(m)
    m.kill9()
    again = mounter(img)
    assert "not cleanly unmounted" in again.stderr
    assert again.p("log").read_bytes() == payload


def test_kill9_midway_shows_old_or_new_size_never_zeros(mounter):
    """Appends crashed before writeback: whatever size survives, its bytes are data."""
    img = mounter.image()
    m = mounter(img, "writeback=30,dram=2M,dirty_background=5,dirty_limit=10")
    payload = os.urandom(2 * 1024 * 1024)
    with open(m.p("log"), "wb") as f:
        for off in range(0, len(payload), 65536):
            f.write(payload[off : off + 65536])
            f.flush()
    m.kill9()
    again = mounter(img)
    got = again.p("log").read_bytes()
    assert got == payload[: len(got)]


def test_writers_are_throttled_at_dirty_limit(mounter):
    """One 128 KiB request dirties more than dirty_limit: every write waits for the
    flusher, says so in a `throttle` event, and the data is intact."""
    img = mounter.image()
    m = mounter(img, "dram=1M,dirty_background=1,dirty_limit=2")
    payload = os.urandom(2 * 1024 * 1024)
    fd = os.open(m.p("f"), os.O_CREAT | os.O_WRONLY)
    try:
        for off in range(0, len(payload), 131072):
            os.pwrite(fd, payload[off : off + 131072], off)
    finally:
        os.close(fd)
    st = m.stats()
    wb = st["writeback"]
    assert (wb["dirty_background"], wb["dirty_limit"]) == (2, 5)
    assert wb["throttles"] >= len(payload) // 131072 // 2
    assert st["budget"]["dirty"] <= 5 + 32
    events = [e for e in m.session_events() if e["ev"] == "throttle"]
    assert len(events) == wb["throttles"]
    assert all(e["dirty"] >= e["limit"] == 5 for e in events)
    assert st["counters"]["writebacks"].get("background", 0) > 0
    assert wb["flusher_batches"] > 0
    assert wb["msyncs"] > 0 and wb["pages"] >= len(payload) // 4096 - 5 - 32
    assert m.p("f").read_bytes() == payload
    m.umount()
    assert mounter(img).p("f").read_bytes() == payload


@pytest.mark.parametrize(
    "opts",
    [
        "dirty_background=30,dirty_limit=20",
        "dirty_limit=0",
        "dirty_background=x",
        "dirty_limit=101",
    ],
)
def test_bad_dirty_thresholds_are_usage_errors(opts):
    with pytest.raises(UsageError):
        parse_options([opts])


def test_dirty_threshold_options():
    o = parse_options(["dirty_background=5%,dirty_limit=15"])
    assert (o.dirty_background, o.dirty_limit) == (5.0, 15.0)


def test_shared_mmap_option_names_file_patterns():
    assert parse_options([]).shared_mmap == ("*-shm",)
    assert parse_options(["shared_mmap=*.lmdb:*-shm"]).shared_mmap == ("*.lmdb", "*-shm")
    assert parse_options(["shared_mmap="]).shared_mmap == ()
    with pytest.raises(UsageError, match="file names, not paths"):
        parse_options(["shared_mmap=/data/*.db"])
