"""Data through a real mount: mkfs'ed trees, durability, fio with verify, and what mm logs."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from mounthelp import nvramfs

pytestmark = pytest.mark.fuse


def make_tree(root: Path, seed: int = 1) -> None:
    rnd = random.Random(seed)
    sizes = [0, 1, 100, 4095, 4096, 4097, 65536, 100_000, (1 << 20) + 17, 3 * (1 << 20) + 5]
    for d in range(3):
        sub = root / f"dir{d}" / "nested"
        sub.mkdir(parents=True)
        for i, size in enumerate(sizes):
            p = (sub if i % 2 else sub.parent) / f"f{i}.bin"
            p.write_bytes(rnd.randbytes(size))
            os.chmod(p, rnd.choice([0o644, 0o600, 0o755, 0o444]))
            os.utime(p, ns=(rnd.randrange(1, 2 * 10**18), rnd.randrange(1, 2 * 10**18)))
    os.symlink("dir0/f3.bin", root / "link")
    os.symlink("/absolute/dangling", root / "dangling")
    os.link(root / "dir1" / "f2.bin", root / "hardlink")


def snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", oct(st.st_mode), st.st_nlink)
        else:
            out[rel] = ("file", oct(st.st_mode), st.st_nlink, st.st_mtime_ns, p.read_bytes())
    return out


def test_every_file_of_a_mkfs_tree_reads_back_identical(mounter, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree)
    img = mounter.image(size="128M", tree=tree)
    m = mounter(img)
    assert snapshot(m.path) == snapshot(tree)
    # Reads at odd offsets and sizes, across page boundaries.
    data = (tree / "dir2" / "nested" / "f9.bin").read_bytes()
    rnd = random.Random(7)
    with open(m.p("dir2", "nested", "f9.bin"), "rb") as f:
        for _ in range(300):
            off = rnd.randrange(0, len(data) + 10)
            n = rnd.choice([1, 7, 4095, 4096, 4097, 65536, 131072, 300_000])
            assert os.pread(f.fileno(), n, off) == data[off : off + n]


def test_fsynced_data_survives_unmount_and_remount(mounter):
    img = mounter.image()
    m = mounter(img, "dram=1M")  # 256 frames: most of the data goes through demotion
    rnd = random.Random(3)
    files = {f"f{i}": rnd.randbytes(rnd.randrange(1, 3 << 20)) for i in range(5)}
    for name, data in files.items():
        with open(m.p(name), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
    # Overwrite parts of one file in place, fsync.
    with open(m.p("f0"), "r+b") as f:
        f.seek(5000)
        f.write(b"P" * 20000)
        os.fsync(f.fileno())
    files["f0"] = files["f0"][:5000] + b"P" * 20000 + files["f0"][25000:]
    files["f0"] = files["f0"] + bytes(max(0, 25000 - len(files["f0"])))
    m.umount()
    again = mounter(img)
    for name, data in files.items():
        assert again.p(name).read_bytes() == data, name


def fio(*args: str, timeout: float = 120) -> dict:
    if not shutil.which("fio"):
        pytest.skip("fio not installed")
    out = subprocess.run(
        ["fio", "--output-format=json", "--ioengine=psync", "--fallocate=none", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    res = json.loads(out.stdout[out.stdout.index("{") :])
    for job in res["jobs"]:
        assert job["error"] == 0, job
    return res


@pytest.mark.parametrize(
    "rw,bs,numjobs",
    [("randwrite", "4k", 1), ("randwrite", "4k", 4), ("write", "128k", 1), ("randrw", "4k", 4)],
)
def test_fio_with_crc32c_verify(mounter, rw, bs, numjobs):
    m = mounter(mounter.image(size="128M"), "dram=4M")

    def args(mode: str) -> list[str]:
        return [
            f"--directory={m.path}",
            "--name=v",
            f"--rw={mode}",
            f"--bs={bs}",
            "--size=3M",
            f"--numjobs={numjobs}",
            "--verify=crc32c",
            "--verify_fatal=1",
        ]

    fio(*args(rw), "--do_verify=1")
    # Read it all back, verifying every block's crc32c: random order, then sequential
    # (fio checks the headers it wrote; a wrong byte fails the job). After randrw not
    # every block holds a header, so its own verify pass is the check.
    for mode in ("randread", "read") if rw != "randrw" else ():
        res = fio(*args(mode))
        assert sum(j["read"]["io_bytes"] for j in res["jobs"]) >= numjobs * (3 << 20)
    assert m.stats()["errors"] == 0


def events_of(m, ev: str, ino: int | None = None) -> list[dict]:
    return [e for e in m.session_events() if e["ev"] == ev and (ino is None or e.get("ino") == ino)]


def test_hot_file_is_promoted_and_writes_to_xip_pages_are_cowed(mounter, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hot").write_bytes(os.urandom(256 * 1024))
    (tree / "cold").write_bytes(os.urandom(64 * 1024))
    m = mounter(mounter.image(size="64M", tree=tree), "policy=2q")
    if not m.stats()["sim"]:
        pytest.skip("sim=off: no simulation, no events")
    hot = m.p("hot")
    ino = os.stat(hot).st_ino
    assert json.loads(os.getxattr(hot, "user.nvramfs.residency"))["pagecache"] == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(hot, "rb") as f:
            f.read()
        if events_of(m, "migrate", ino) and time.monotonic() > deadline - 8:
            break
        m.stats()  # flushes the log
    migs = events_of(m, "migrate", ino)
    assert migs, "a hot file was never promoted"
    assert all(e["from"] == "xip" and e["to"] == "pagecache" for e in migs)
    assert {e["reason"] for e in migs} == {"policy"}
    res = json.loads(os.getxattr(hot, "user.nvramfs.residency"))
    assert res["pagecache"] > 0 and res["pages"] == 64
    assert any(
        e["ev"] == "path" and e["path"] == "/hot" and e["ino"] == ino for e in m.session_events()
    )

    # A store into the XIP-backed cold file: pfn_mkwrite copies each page into a frame.
    cold = m.p("cold")
    cino = os.stat(cold).st_ino
    with open(cold, "r+b") as f:
        f.seek(4096 + 100)
        f.write(b"W" * 8192)  # pages 1, 2, 3
    m.stats()
    cows = events_of(m, "cow", cino)
    assert sorted(e["index"] for e in cows) == [1, 2, 3]
    assert all(
        e["via"] == "pfn_mkwrite" and e["from"] == "xip" and e["to"] == "pagecache" for e in cows
    )
    assert json.loads(os.getxattr(cold, "user.nvramfs.residency"))["dirty"] == 3

    # The stats agree with the log (stats() flushes the log at the same instant).
    stats = m.stats()
    c = stats["counters"]
    evs = m.session_events()
    promote = Counter(e["reason"] for e in evs if e["ev"] == "migrate" and e["to"] == "pagecache")
    demote = Counter(e["reason"] for e in evs if e["ev"] == "migrate" and e["to"] == "xip")
    assert c["migrations"]["promote"] == dict(promote)
    assert c["migrations"]["demote"] == dict(demote)
    assert c["faults"]["cow"] == sum(1 for e in evs if e["ev"] == "cow")
    wbs = Counter(e["reason"] for e in evs if e["ev"] == "writeback")
    assert c["writebacks"] == dict(wbs)
    assert c["frames_used"] == sum(promote.values()) + 3 - sum(demote.values())
    assert stats["struct_page"]["bytes_used"] == 64 * c["frames_used"]

    # fsync writes the COWed pages back: writeback events, reason fsync.
    with open(cold, "r+b") as f:
        os.fsync(f.fileno())
    m.stats()
    wb = events_of(m, "writeback", cino)
    assert sorted(e["index"] for e in wb if e["reason"] == "fsync") == [1, 2, 3]
    assert json.loads(os.getxattr(cold, "user.nvramfs.residency"))["dirty"] == 0
    m.ctl("demote-all")
    m.stats()
    assert any(e["reason"] == "ctl" for e in events_of(m, "migrate", ino))
    assert json.loads(os.getxattr(hot, "user.nvramfs.residency"))["pagecache"] == 0
    assert nvramfs("stat", m.path).returncode == 0


def test_options_log_dram_policy_writeback_trace_faults(mounter, tmp_path):
    log = tmp_path / "elsewhere.jsonl"
    m = mounter(mounter.image(), f"log={log},dram=2M,policy=clock,writeback=1,trace_faults")
    if not m.stats()["sim"]:
        pytest.skip("sim=off: no simulation, no events")
    assert m.log == log and str(log) in m.stdout
    first = m.session_events()[0]
    assert first["ev"] == "mount" and first["dram_pages"] == 512 and first["policy"] == "clock"
    with open(m.p("f"), "wb") as f:
        f.write(os.urandom(3 * 4096))
    time.sleep(2.5)  # dirty for longer than writeback=1: the tick writes it back
    m.stats()
    wb = [e for e in m.session_events() if e["ev"] == "writeback"]
    assert {e["reason"] for e in wb} == {"dirty_expire"} and len(wb) == 3
    faults = [e for e in m.session_events() if e["ev"] == "fault"]
    assert faults and {"ino", "index", "kind", "write"} <= set(faults[0])
    assert m.stats()["counters"]["dram_pages"] == 512
