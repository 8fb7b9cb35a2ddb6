"""Real programs and the syscall patterns they rely on, on a real mount, with a
small DRAM budget (so reclaim and writeback run), on both cache modes, compared
with kernel tmpfs where that makes sense."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse

# The small budget makes writeback and reclaim part of every test.
MODES = ["dram=4M", "cache=kernel,dram=4M"]
MODE_IDS = ["direct", "kernel"]

def no_daemon_errors(m) -> None:
    assert "Traceback" not in m.daemon_log(), m.daemon_log()[-3000:]


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        with open(root / name, "wb") as f:
            if name == "sparse":
                f.seek(1 << 20)
                f.write(data[1 << 20 :])
            else:
                f.write(data)


@pytest.mark.skipif(shutil.which("tar") is None, reason="tar is not installed")
@pytest.mark.parametrize("options", MODES, ids=MODE_IDS)
def test_tar_sparse_archive_of_files_just_written(mounter, tmpfs_dir, options):
    """`tar -cS` right after the files were written (before writeback): tar lists
    the directory (READDIRPLUS: the kernel caches the attributes it carries) and
    takes a file whose st_blocks is 0 for all hole. The archive must hold the data."""
    m = mounter(mounter.image(), options)
    # The shapes archivers special-case: tiny, a page and a bit, sparse.
    files = {"small": b"abc", "mid": os.urandom(5000), "sparse": bytes(1 << 20) + b"z" * 10}
    blocks = {}
    for where, root in (("nvramfs", m.p("tree")), ("tmpfs", tmpfs_dir / "tree")):
        root.mkdir()
        write_tree(root, files)
        # A listing first, as tar, du, ls -s and find do: then the blocks.
        blocks[where] = {e.name: e.stat().st_blocks for e in os.scandir(root)}
    assert blocks["nvramfs"] == blocks["tmpfs"] == {"small": 8, "mid": 16, "sparse": 8}
    archive = tmpfs_dir / "t.tar"
    subprocess.run(["tar", "-cSf", archive, "-C", m.path, "tree"], check=True, timeout=60)
    out = tmpfs_dir / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", archive, "-C", out], check=True, timeout=60)
    for name, data in files.items():
        assert (out / "tree" / name).read_bytes() == data, name
    no_daemon_errors(m)
