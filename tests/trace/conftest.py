"""Fixtures for trace tests: the FUSE tests' mount helpers (always unmount)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuse"))

from mounthelp import FUSERMOUNT, Mounter, have_fuse, mounts_under  # noqa: E402


@pytest.fixture
def mounter(tmp_path: Path):
    """Make images (on /dev/shm when there is one) and mount them; every mount is taken
    down at the end, even on failure."""
    if not have_fuse():
        pytest.skip("needs /dev/fuse and fusermount3")
    shm = Path("/dev/shm")
    images = None
    if shm.is_dir():
        images = shm / f"nvramfs-trace-test-{time.monotonic_ns()}"
        images.mkdir()
    m = Mounter(tmp_path, images)
    try:
        yield m
    finally:
        m.cleanup()
        for path in mounts_under(str(tmp_path)):
            subprocess.run([FUSERMOUNT, "-uz", path], capture_output=True)
        if images is not None:
            shutil.rmtree(images, ignore_errors=True)
