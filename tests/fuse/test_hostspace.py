"""A mount whose image sits on a host filesystem that fills up.

The image is a 64 MiB sparse file on an 8 MiB tmpfs. Writing until the host
is full must end in ENOSPC for the writer (at write(), create or mkdir) and an
`error` event, with the daemon alive; every acknowledged and fsync'ed byte is
there after the unmount and fsck is clean.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from mounthelp import Mounter, nvramfs, pid_alive

MIB = 1 << 20


@pytest.fixture
def small_tmpfs():
    """A real tmpfs of 8 MiB (always unmounted), or skip when we may not mount one.
    Outside the test's tmp_path: the mount fixtures take mounts there as leftovers."""
    d = Path(tempfile.mkdtemp(prefix="nvramfs-hostfs-"))
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(d)], capture_output=True
    )
    if out.returncode != 0:
        d.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {out.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
        d.rmdir()


def fill(path: Path, chunk: bytes, limit: int) -> tuple[int, int]:
    """Write `chunk` until ENOSPC (at most `limit` times); fsync. Returns (bytes, errno)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    done, err = 0, 0
    try:
        for _ in range(limit):
            try:
                n = os.write(fd, chunk)
            except OSError as exc:
                err = exc.errno
                break
            assert n == len(chunk)
            done += n
        os.fsync(fd)  # what write() acknowledged has its blocks: fsync cannot fail
    finally:
        os.close(fd)
    return done, err


def test_full_host_is_enospc_not_a_dead_daemon(
    small_tmpfs: Path, mounter: Mounter, tmp_path: Path
) -> None:
    image = small_tmpfs / "h.img"
    out = nvramfs("mkfs", image, "--size", "64M", check=True)
    assert "can grow by" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    log = tmp_path / "h.events.jsonl"  # not on the full host
    m = mounter(image, f"log={log},dram=4M")
    assert "can grow by" in m.stderr

    a = os.urandom(MIB)
    m.p("a").write_bytes(a)
    fd = os.open(m.p("a"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)

    chunk = os.urandom(64 * 1024)
    done, err = fill(m.p("b"), chunk, limit=200)
    assert err == errno.ENOSPC and done >= 4 * MIB

    made, err = 0, 0
    for i in range(5000):
        try:
            if i % 7 == 0:
                m.p(f"d{i}").mkdir()
            else:
                m.p(f"f{i}").touch()
            made += 1
        except OSError as exc:
            err = exc.errno
            break
    assert err == errno.ENOSPC, (made, err)

    assert pid_alive(m.pid)
    assert m.stats()  # still serving
    assert m.p("a").read_bytes() == a
    m.umount()
    errors = [e for e in map(json.loads, log.read_text().splitlines()) if e.get("ev") == "error"]
    assert errors and all("host filesystem full" in e["what"] for e in errors)
    assert not any(e["fatal"] for e in errors)

    # fsck reads the whole inode table through its mapping (tmpfs allocates holes
    # read that way): give the host room first; the image is what is checked.
    subprocess.run(["mount", "-o", "remount,size=96M", str(small_tmpfs)], check=True)
    res = nvramfs("fsck", image)
    assert res.returncode == 0, res.stdout + res.stderr
    m2 = mounter(image, f"log={log}")
    assert m2.p("a").read_bytes() == a
    assert m2.p("b").read_bytes() == chunk * (done // len(chunk))
    m2.umount()


def test_crash_on_a_full_host_then_mount_there(
    small_tmpfs: Path, mounter: Mounter, tmp_path: Path
) -> None:
    """kill -9 after filling the host: the next mount, on the still full host,
    recovers, serves every fsync'ed byte, refuses new data with ENOSPC, and
    unmounts clean."""
    image = small_tmpfs / "k.img"
    nvramfs("mkfs", image, "--size", "64M", check=True)
    log = tmp_path / "k.events.jsonl"
    m = mounter(image, f"log={log},dram=4M")
    chunk = os.urandom(64 * 1024)
    done, err = fill(m.p("b"), chunk, limit=200)
    assert err == errno.ENOSPC and done >= 4 * MIB
    m.kill9()

    m2 = mounter(image, f"log={log},dram=4M")
    assert "not cleanly unmounted" in m2.stderr
    assert m2.p("b").read_bytes() == chunk * (done // len(chunk))
    with pytest.raises(OSError) as e:
        m2.p("c").write_bytes(os.urandom(4 * MIB))
    assert e.value.errno == errno.ENOSPC
    assert pid_alive(m2.pid)
    m2.umount()
    subprocess.run(["mount", "-o", "remount,size=96M", str(small_tmpfs)], check=True)
    res = nvramfs("fsck", image)
    assert res.returncode == 0, res.stdout + res.stderr
