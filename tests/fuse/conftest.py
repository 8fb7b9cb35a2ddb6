"""Fixtures that mount nvramfs for real, and always take the mount down again.

The helpers live in mounthelp.py (a unique module name: other test directories
have their own conftest).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mounthelp import FUSERMOUNT, MOUNTED_HERE, Mount, Mounter, have_fuse, mounts_under, unescape


@pytest.fixture
def mounter(tmp_path: Path):
    """Make images and mount them; every mount is taken down at the end, even on failure."""
    if not have_fuse():
        pytest.skip("needs /dev/fuse and fusermount3")
    base = tmp_path
    # Images (and their event logs) on tmpfs when there is one: an image stands for
    # NVRAM, and msync on a disk-backed file costs milliseconds per writeback.
    shm = Path("/dev/shm")
    images = None
    if shm.is_dir():
        images = shm / f"nvramfs-test-{os.getpid()}-{time.monotonic_ns()}"
        images.mkdir()
    m = Mounter(base, images)
    try:
        yield m
    finally:
        m.cleanup()
        left = mounts_under(str(base))
        for path in left:
            subprocess.run([FUSERMOUNT, "-uz", path], capture_output=True)
        if images is not None:
            shutil.rmtree(images, ignore_errors=True)
        assert not left, f"mounts left behind: {left}"


@pytest.fixture
def mnt(mounter: Mounter) -> Mount:
    """A fresh 64 MiB image, mounted with the default options."""
    return mounter(mounter.image())


@pytest.fixture
def tmpfs_dir():
    """A scratch directory on kernel tmpfs, to compare behaviour against."""
    base = Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("no /dev/shm")
    d = base / f"nvramfs-test-{os.getpid()}-{time.monotonic_ns()}"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    """Belt and braces: no mount this session made may outlive it (and only those:
    other pytest sessions may be running their own)."""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            path = unescape(parts[1])
            if parts[2] == "fuse.nvramfs" and path in MOUNTED_HERE:
                subprocess.run([FUSERMOUNT, "-uz", path], capture_output=True)


@pytest.fixture
def public_dir():
    """A directory other users can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="nvramfs-public-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
