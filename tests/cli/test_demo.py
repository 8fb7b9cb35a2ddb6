"""`nvramfs demo` and the fio job files.

The end-to-end tests mount for real (marked fuse and slow) and always leave
no mount and no daemon behind: the demo unmounts by itself, and the fixture
checks /proc/mounts afterwards and lazily unmounts anything left (failing
the test if it had to).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nvramfs.cli import run
from nvramfs.cli.demo import counters_delta, fio_numbers, repo_dir

REPO = Path(__file__).resolve().parents[2]
FIO_DIR = REPO / "tools" / "fio"
FIO_JOBS = [
    "seqread.fio",
    "randread.fio",
    "zipf-randread.fio",
    "randrw.fio",
    "randwrite-verify.fio",
    "mmap-read.fio",
]
PNG = b"\x89PNG\r\n\x1a\n"


def have_fuse() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def mounts_under(base: Path) -> list[str]:
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1].startswith(str(base)):
                out.append(parts[1])
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def demo_dirs(tmp_path: Path):
    """Image, output and mountpoint dirs (the image on tmpfs when there is one);
    nothing may stay mounted under them."""
    if not have_fuse():
        pytest.skip("needs /dev/fuse and fusermount3")
    if shutil.which("fio") is None:
        pytest.skip("needs fio (apt-get install fio)")
    shm = Path("/dev/shm")
    images = (
        shm / f"nvramfs-demo-test-{os.getpid()}-{time.monotonic_ns()}"
        if shm.is_dir()
        else tmp_path / "images"
    )
    images.mkdir()
    # Not under tmp_path: another pytest session's end-of-session sweep unmounts
    # nvramfs mounts whose path has "/pytest-" in it.
    mnt = Path(tempfile.mkdtemp(prefix="nvramfs-clitest-"))
    try:
        yield images, tmp_path / "out", mnt
    finally:
        left = mounts_under(mnt)
        for path in left:
            subprocess.run(["fusermount3", "-uz", path], capture_output=True)
        shutil.rmtree(images, ignore_errors=True)
        try:
            mnt.rmdir()
        except OSError:
            pass
        assert not left, f"the demo left mounts behind: {left}"


def nvramfs(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nvramfs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and data[12:16] == b"IHDR", path


@pytest.mark.fuse
@pytest.mark.slow
def test_quick_demo_end_to_end(demo_dirs) -> None:
    images, out, mnt = demo_dirs
    image = images / "demo.img"
    res = nvramfs("demo", "--quick", "--image", image, "--out", out, "--mountpoint", mnt)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = res.stdout
    # It built the image, ran every phase, and unmounted.
    assert f"building {image} from the default recipe: nvramfs mkfs {image}" in text
    for i, name in enumerate(["warm", "scan", "hot again", "write", "verify"], 1):
        assert f"[{i}/5] {name}:" in text
    assert not mounts_under(mnt)
    # The summary a person reads.
    for needle in (
        "phase ",
        "MiB/s",
        "p99 lat",
        "faults ",
        "hit ratio",
        "migrations   promote xip→pagecache",
        "demote  pagecache→xip",
        "cow ",
        "struct page",
        "hottest files",
        "plots ",
    ):
        assert needle in text, needle
    # It ends with the sweep of its own trace: one line, XIP against no XIP and opt.
    last_line = text.rstrip().splitlines()[-1]
    assert last_line.startswith("sweep        XIP at 2 MiB, 2q: "), last_line  # or: not in time
    log = out / "demo.events.jsonl"
    summary = json.loads((out / "summary.json").read_text())
    # Non-zero migrations both ways and non-zero COW.
    assert sum(summary["migrations"]["promote"].values()) > 0
    assert sum(summary["migrations"]["demote"].values()) > 0
    assert summary["cow"]["total"] > 0
    assert summary["clean_unmount"] == [True]
    assert len(summary["hottest_files"]) >= 3
    # The daemon is gone: the log ends with a clean unmount.
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["ev"] == "unmount" and last["clean"] is True
    # Every fio phase reported numbers.
    phases = summary.pop("demo")["phases"]
    assert [p["name"] for p in phases] == ["warm", "scan", "hot again", "write", "verify"]
    for p in phases:
        assert p["fio"], p
        for d in p["fio"].values():
            assert d["mib_s"] > 0 and d["iops"] > 0 and d["lat_mean_us"] > 0
    assert "write" in phases[3]["fio"] and "write" in phases[4]["fio"]
    # The same numbers as `nvramfs log LOG summary` on the same log.
    again = nvramfs("log", log, "summary", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == summary
    text_summary = nvramfs("log", log, "summary").stdout
    for line in text_summary.splitlines():
        if line.startswith(("faults ", "hit ratio", "cow ", "writebacks ", "struct page")):
            assert line in text, line
    # The plots.
    plots = sorted((out / "plots").glob("*.png"))
    assert {p.name for p in plots} >= {"heatmap.png", "residency.png"}
    for p in plots:
        _png_ok(p)
        assert str(p) in text
    # The demo records a trace; replayed, it gives the live counters (docs/TRACE.md).
    trace = out / "demo.trace"
    assert f"trace        {trace}" in text
    rep = nvramfs("replay", trace, "--json")
    assert rep.returncode == 0, rep.stderr
    replayed = json.loads(rep.stdout)
    for key in ("faults", "accesses", "migrations", "cow", "writebacks", "peak"):
        assert replayed[key] == summary[key], key
    # Modelled time (docs/COSTS.md): per phase on the default medium, the write
    # phase's share of COW and writeback named, the same totals in the replay.
    assert "modelled time on nor" in text
    assert "of this phase's modelled time went to writing" in text
    assert summary["device"]["medium"] == "nor"
    assert summary["device"]["modelled_ns"]["cow"] > 0
    assert replayed["device"]["modelled_ns"] == summary["device"]["modelled_ns"]
    # The demo marks its phases: the summary's phases are the demo's.
    marked = [p["phase"] for p in summary["device"]["phases"]]
    assert marked[-5:] == ["warm", "scan", "hot again", "write", "verify"]
    assert {"modelled.png", "wear.png"} <= {p.name for p in plots}


@pytest.mark.fuse
@pytest.mark.slow
@pytest.mark.parametrize("when", ["mount", "phase"])
def test_ctrl_c_still_unmounts(demo_dirs, when: str) -> None:
    """Ctrl-C while mounting or in a fio phase: exit 130, nothing left mounted, a clean log."""
    images, out, mnt = demo_dirs
    image = images / "demo.img"
    assert nvramfs("mkfs", image, "--recipe", REPO / "images" / "default.json").returncode == 0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nvramfs",
            "demo",
            "--quick",
            "--image",
            image,
            "--out",
            out,
            "--mountpoint",
            mnt,
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    wait_for = "nvramfs demo: mounting" if when == "mount" else "[1/5] warm"
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith(wait_for):
                break
        assert lines and lines[-1].startswith(wait_for), "".join(lines)
        if when == "phase":
            assert mounts_under(mnt)
            time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the demo and its fio
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().endswith("nvramfs: interrupted")
    time.sleep(3.0)  # a daemon the demo failed to stop would have mounted by now
    assert not mounts_under(mnt)
    log = out / "demo.events.jsonl"
    if when == "phase" or log.exists():
        last = json.loads(log.read_text().splitlines()[-1])
        assert last["ev"] == "unmount" and last["clean"] is True


@pytest.mark.fuse
def test_demo_on_a_file_that_is_not_an_image_is_one_line(demo_dirs) -> None:
    """A named image is checked, never rebuilt: fsck's verdict is the error."""
    images, out, mnt = demo_dirs
    bogus = images / "bogus.img"
    bogus.write_bytes(b"\x00" * (1 << 20))
    res = nvramfs("demo", "--quick", "--image", bogus, "--out", out, "--mountpoint", mnt)
    assert res.returncode == 1
    assert f"nvramfs: {bogus}: does not pass fsck" in res.stderr and "Traceback" not in res.stderr
    assert f"(nvramfs fsck {bogus} says what)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not mounts_under(mnt)


def test_demo_without_fio_says_how_to_get_it(monkeypatch, capsys) -> None:
    real = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name == "fio" else real(name)
    )
    assert run(["demo", "--quick"]) == 1
    err = capsys.readouterr().err
    assert err == "nvramfs: fio is not installed: apt-get install fio (make demo installs it)\n"


def test_demo_bad_dram_is_a_usage_error(capsys) -> None:
    assert run(["demo", "--dram", "lots"]) == 2
    assert "bad size 'lots'" in capsys.readouterr().err


def test_repo_dirs_are_found_beside_the_package_or_in_the_cwd(tmp_path, monkeypatch) -> None:
    assert repo_dir("images") == REPO / "images"
    assert repo_dir(os.path.join("tools", "fio")) == FIO_DIR
    import nvramfs

    monkeypatch.setattr(nvramfs, "__file__", str(tmp_path / "site" / "nvramfs" / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    from nvramfs.errors import NvramfsError

    with pytest.raises(NvramfsError, match=r"cannot find the repository's images/"):
        repo_dir("images")
    (tmp_path / "images").mkdir()
    assert repo_dir("images") == tmp_path / "images"


def test_counters_delta_of_two_snapshots() -> None:
    a = {
        "faults": {"pagecache_hit": 10, "cow": 1},
        "accesses": {"read": 20, "write": 0},
        "migrations": {"promote": {"policy": 5}, "demote": {}},
        "writebacks": {},
    }
    b = {
        "faults": {"pagecache_hit": 40, "cow": 4},
        "accesses": {"read": 50, "write": 10},
        "migrations": {"promote": {"policy": 7, "ctl": 1}, "demote": {"dram_budget": 2}},
        "writebacks": {"fsync": 3},
        "frames_used": 9,
    }
    d = counters_delta(a, b)
    assert d == {
        "accesses": 40,
        "hit_ratio": 0.75,
        "promote": 3,
        "demote": 2,
        "cow": 3,
        "writebacks": 3,
        "frames_used": 9,
        "modelled_ns": {},
    }
    b["modelled_ns"] = {"xip_read": 500, "cow": 70}
    a["modelled_ns"] = {"xip_read": 200}
    assert counters_delta(a, b)["modelled_ns"] == {"xip_read": 300, "cow": 70}
    assert counters_delta(a, None) == {}


# --------------------------------------------------------------------------- fio job files


def test_every_job_file_says_what_it_shows() -> None:
    for name in FIO_JOBS:
        text = (FIO_DIR / name).read_text()
        assert text.startswith("# "), name
        assert "What it shows" in text, name
        assert "${FILENAME}" in text and "${SIZE}" in text, name
    assert "random_distribution=zipf:1.2" in (FIO_DIR / "zipf-randread.fio").read_text()
    assert "rwmixread=70" in (FIO_DIR / "randrw.fio").read_text()
    assert "verify=crc32c" in (FIO_DIR / "randwrite-verify.fio").read_text()
    mmap = (FIO_DIR / "mmap-read.fio").read_text()
    assert "ioengine=mmap" in mmap and "cache=kernel" in mmap and "MAP_SHARED" in mmap


@pytest.mark.parametrize("name", FIO_JOBS)
def test_job_file_runs_and_reports_json(name: str, tmp_path: Path) -> None:
    """Each job on a plain file (what the demo parses must be there)."""
    if shutil.which("fio") is None:
        pytest.skip("needs fio (apt-get install fio)")
    target = tmp_path / "target"
    target.write_bytes(os.urandom(1 << 20))
    out = tmp_path / "out.json"
    env = {**os.environ, "FILENAME": str(target), "SIZE": str(1 << 20), "RUNTIME": "1"}
    res = subprocess.run(
        ["fio", "--output-format=json", f"--output={out}", str(FIO_DIR / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert result["jobs"][0]["error"] == 0
    nums = fio_numbers(result)
    assert nums, result["jobs"][0]
    for d in nums.values():
        assert d["iops"] > 0 and d["mib_s"] > 0 and d["lat_mean_us"] > 0
    if name in ("randrw.fio", "randwrite-verify.fio"):
        assert set(nums) == {"read", "write"}
    else:
        assert set(nums) == {"read"}


@pytest.mark.fuse
@pytest.mark.slow
def test_keep_mounted_yes_leaves_the_mount_up_until_umount(demo_dirs) -> None:
    images, out, mnt = demo_dirs
    image = images / "demo.img"
    try:
        res = nvramfs("demo", "--quick", "--image", image, "--out", out, "--mountpoint", mnt,
                      "--keep-mounted", "yes")  # fmt: skip
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert mounts_under(mnt) == [str(mnt)], (res.stdout, (out / "demo.daemon.log").read_text())
        assert f"still mounted at {mnt}: nvramfs umount {mnt} ends it" in res.stdout
        assert "no unmount event yet" in res.stdout
        # The mount is still usable.
        assert len(list(mnt.iterdir())) > 3
    finally:
        if mounts_under(mnt):
            assert nvramfs("umount", mnt).returncode == 0
    summary = json.loads(nvramfs("log", out / "demo.events.jsonl", "summary", "--json").stdout)
    assert summary["clean_unmount"] == [True]


def test_a_default_image_that_fails_fsck_is_rebuilt(tmp_path, monkeypatch, capsys) -> None:
    """The default image is a build output: made by an older format, it is built again."""
    from nvramfs.cli import demo

    images = tmp_path / "images"
    (images / "build").mkdir(parents=True)
    shutil.copy(REPO / "images" / "default.json", images / "default.json")
    stale = images / "build" / "default.img"
    stale.write_bytes(b"\xff" * (1 << 20))
    monkeypatch.setattr(demo, "repo_dir", lambda name: images)
    assert demo.ensure_image(None) == stale
    out = capsys.readouterr().out
    assert out.startswith("the default image does not pass fsck")
    assert "rebuilding it" in out and "building the default image: nvramfs mkfs" in out
    assert nvramfs("fsck", stale).returncode == 0
    assert not (images / "build" / "default.img.building").exists()
    # A good image is used as it is.
    before = stale.stat().st_mtime_ns
    assert demo.ensure_image(None) == stale
    assert stale.stat().st_mtime_ns == before
    assert capsys.readouterr().out == ""


@pytest.mark.fuse
def test_demo_with_an_unknown_policy_is_a_usage_error(demo_dirs) -> None:
    images, out, mnt = demo_dirs
    image = images / "demo.img"
    assert nvramfs("mkfs", image, "--recipe", REPO / "images" / "default.json").returncode == 0
    res = nvramfs("demo", "--quick", "--image", image, "--out", out, "--mountpoint", mnt,
                  "--policy", "nope")  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.startswith(f"nvramfs: cannot mount {image}: policy=nope: unknown (one of")
    assert res.stderr.count("\n") == 1
    assert not mounts_under(mnt)
