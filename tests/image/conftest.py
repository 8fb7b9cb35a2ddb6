"""Shared fixtures: a small source tree and images made from it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from nvramfs.image.mkfs import mkfs


def make_tree(root: Path) -> Path:
    """A tree with every kind of thing mkfs copies (and a sparse file)."""
    rng = np.random.default_rng(7)
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "etc" / "hostname").write_bytes(b"nvram\n")
    (root / "etc" / "conf.d" / "a.conf").write_bytes(b"x = 1\n" * 50)
    (root / "usr" / "lib" / "libbig.so").write_bytes(rng.bytes(300_001))
    (root / "zero").write_bytes(b"")
    with open(root / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(5 * 4096)
        f.write(b"tail")
    os.link(root / "etc" / "hostname", root / "usr" / "hostname.hard")
    os.symlink("../etc/hostname", root / "usr" / "host.link")
    os.symlink("/" + "d" * 300, root / "long.link")
    os.chmod(root / "etc" / "conf.d" / "a.conf", 0o640)
    os.utime(root / "etc" / "hostname", ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


@pytest.fixture
def image(tmp_path: Path, tree: Path) -> Path:
    out = tmp_path / "t.img"
    mkfs(out, src=tree, size=8 << 20)  # small: the corruption tests copy it often
    return out


@pytest.fixture
def fast_dir(tmp_path: Path):
    """A directory on tmpfs when there is one: every commit msyncs, and a disk makes that slow."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="nvramfs-test-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def empty_image(fast_dir: Path) -> Path:
    out = fast_dir / "e.img"
    mkfs(out, size=8 << 20)
    return out
