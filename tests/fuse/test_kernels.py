"""`-o kernel=`: whose mm rules a mount runs, what the log and the stats say of it; and the
struct page figures of a live mount."""

from __future__ import annotations

import os
import subprocess

import pytest
from mounthelp import EXTRA_OPTIONS, mounts_under, nvramfs

pytestmark = pytest.mark.skipif(
    "sim=off" in EXTRA_OPTIONS, reason="the kernel rules are the simulation's"
)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_kernel_option_values_and_rc1_needs_ro(mounter, tmp_path):
    img = mounter.image()
    (tmp_path / "mp").mkdir()
    for bad in ("kernel=2.6.27", "kernel=", "kernel=2.6.26-rc1", "kernel=2.6.26-rc1,rw"):
        out = nvramfs("mount", img, tmp_path / "mp", "-o", bad)
        assert out.returncode == 2, bad
        one_line_error(out)
    assert "ro" in one_line_error(nvramfs("mount", img, tmp_path / "mp", "-o", "kernel=2.6.26-rc1"))
    assert not mounts_under(str(tmp_path))


def test_kernel_2626_stores_into_nvram_in_place(mounter):
    img = mounter.image()
    m = mounter(img)
    data = os.urandom(3 * 4096)
    m.p("f").write_bytes(data)
    m.umount()  # written back: the file's pages are XIP now
    m = mounter(img, "kernel=2.6.26")
    with open(m.p("f"), "r+b") as f:
        f.seek(4096 + 10)
        f.write(b"in place")
    stats = m.stats()
    assert stats["counters"]["kernel"] == "2.6.26"
    assert stats["counters"]["xip_writes"] >= 1
    assert stats["counters"]["faults"]["cow"] == 0
    assert m.p("f").read_bytes() == data[: 4096 + 10] + b"in place" + data[4096 + 18 :]
    m.umount()
    evs = m.session_events()
    assert evs[0]["ev"] == "mount" and evs[0]["kernel"] == "2.6.26"
    assert "pte_special" in evs[0] and evs[0]["pte_special"] is False
    xw = [e for e in evs if e["ev"] == "xip_write"]
    assert xw and all(e["index"] == 1 and e["reason"] == "write" for e in xw)
    assert not [e for e in evs if e["ev"] == "cow"]
    again = mounter(img, "ro,kernel=2.6.26-rc1")
    assert again.p("f").read_bytes() == data[: 4096 + 10] + b"in place" + data[4096 + 18 :]
    again.umount()
    assert again.session_events()[0]["kernel"] == "2.6.26-rc1"


def test_struct_page_figures_live_and_in_the_log(mounter):
    img = mounter.image("64M")
    m = mounter(img, "dram=1M")
    m.p("f").write_bytes(b"s" * 50_000)
    stats = m.stats()
    sp = stats["struct_page"]
    c = stats["counters"]
    # 64 bytes per 4 KiB page of the whole 64 MiB device (whole 2 MiB subsections).
    assert sp["memmap_device_bytes"] == 64 * 16384
    assert sp["mixedmap_bytes"] == 64 * c["frames_used"] > 0
    assert sp["saved_bytes"] == sp["memmap_device_bytes"] - sp["mixedmap_bytes"]
    assert c["struct_page"] == {k: sp[k] for k in c["struct_page"]}
    out = nvramfs("stat", m.path)
    assert out.returncode == 0, out.stderr
    assert "memmap_device 1,024.0 KiB" in out.stdout or "memmap_device 1.0 MiB" in out.stdout
    m.umount()
    counters = [e for e in m.session_events() if e["ev"] == "counters"]
    last = counters[-1]["struct_page"]
    assert last["memmap_device_bytes"] == 64 * 16384
    assert last["saved_bytes"] == last["memmap_device_bytes"] - last["mixedmap_bytes"]
