"""The image lock: a mount, mkfs --force and fsck's repairs never write an image another serves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nvramfs.errors import NvramfsError
from nvramfs.image import mkfs as mkfs_mod
from nvramfs.image.lock import ImageInUse, in_use, lock_image, unlock_image
from nvramfs.image.mkfs import mkfs


def test_mkfs_force_refuses_a_locked_image(empty_image: Path) -> None:
    before = empty_image.read_bytes()
    fd = lock_image(empty_image)  # as the mount daemon holds it
    try:
        assert in_use(empty_image)
        with pytest.raises(NvramfsError) as e:
            mkfs(empty_image, size=4 << 20, force=True)
        assert (
            str(e.value) == f"{empty_image} is in use by a mount; will not make a filesystem here"
        )
        assert e.value.exit_code == 1
    finally:
        unlock_image(fd)
    assert empty_image.read_bytes() == before
    assert not in_use(empty_image)
    assert not list(empty_image.parent.glob(f".{empty_image.name}.mkfs-*"))


def test_no_mount_can_start_across_the_rename(empty_image: Path, monkeypatch) -> None:
    """A mount starting just before or just after mkfs's rename finds the image locked."""
    seen = []
    real_replace = os.replace

    def replace(src: os.PathLike, dst: os.PathLike) -> None:
        for when in ("before", "after"):
            try:
                unlock_image(lock_image(dst))
                seen.append((when, "locked it"))
            except ImageInUse:
                seen.append((when, "in use"))
            if when == "before":
                real_replace(src, dst)

    monkeypatch.setattr(mkfs_mod.os, "replace", replace)
    old_ino = empty_image.stat().st_ino
    mkfs(empty_image, size=4 << 20, force=True)
    monkeypatch.undo()
    assert seen == [("before", "in use"), ("after", "in use")]
    assert empty_image.stat().st_ino != old_ino
    assert not in_use(empty_image)


def test_lock_follows_a_replaced_path(tmp_path: Path, monkeypatch) -> None:
    """A file renamed over the path between open and flock: the lock ends on the new file."""
    import nvramfs.image.lock as lock_mod

    p, q = tmp_path / "i.img", tmp_path / "new.img"
    p.write_bytes(b"old")
    real_flock = lock_mod.fcntl.flock
    calls = []

    def flock(fd: int, op: int) -> None:
        if not calls:  # the first open saw the old file; mkfs renames now
            q.write_bytes(b"new")
            os.replace(q, p)
        calls.append(op)
        real_flock(fd, op)

    monkeypatch.setattr(lock_mod.fcntl, "flock", flock)
    fd = lock_image(p)
    monkeypatch.undo()
    try:
        assert len(calls) == 2  # tried again on the file the path names now
        assert os.pread(fd, 3, 0) == b"new"
    finally:
        unlock_image(fd)
    with pytest.raises(FileNotFoundError):
        lock_image(tmp_path / "nope")
