"""Writeback's single copy: rows of an array gathered straight into the image mapping.

`Persist.store_rows` stores scattered rows of an array (mm's frames) with one
copy; `Image.write_pages` takes them from any object with `page_rows()`.
What reaches the image, what RecordingPersist logs for the power-cut model,
and the image's bytes must be exactly what the one-buffer-per-page path gives.
"""

from __future__ import annotations

import mmap
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import nvramfs.image.image as image_mod
from nvramfs.image import Image
from nvramfs.image.errors import CorruptImage
from nvramfs.image.fsck import fsck
from nvramfs.image.mkfs import mkfs
from nvramfs.image.persist import Persist, RecordingPersist

BS = 4096


def _mapping(tmp: Path, nbytes: int) -> tuple[mmap.mmap, int]:
    fd = os.open(tmp / "m", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, nbytes)
    return mmap.mmap(fd, nbytes), fd


def _rows(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, BS), dtype=np.uint8)


def test_store_rows_gathers_scattered_rows_and_slices(fast_dir: Path) -> None:
    mm, fd = _mapping(fast_dir, 16 * BS)
    try:
        p = Persist()
        p.attach(mm)
        src = _rows(10)
        rows = np.array([7, 2, 2, 9, 0])
        p.store_rows(3 * BS, src, rows)
        assert mm[3 * BS : 8 * BS] == src[rows].tobytes()
        assert mm[: 3 * BS] == bytes(3 * BS) and mm[8 * BS :] == bytes(8 * BS)
        p.store_rows(10 * BS, src, slice(4, 7))
        assert mm[10 * BS : 13 * BS] == src[4:7].tobytes()
        before = mm[:]
        with pytest.raises(IndexError):
            p.store_rows(0, src, np.array([1, 10]))
        with pytest.raises(ValueError):
            p.store_rows(14 * BS, src, np.array([1, 2, 3]))  # past the end of the mapping
        with pytest.raises(ValueError):
            p.store_rows(0, src.astype(np.int16), np.array([1]))
        assert mm[:] == before  # a refused store stores nothing
    finally:
        mm.close()  # no numpy view of the mapping outlives a store: close succeeds
        os.close(fd)


def test_recording_persist_logs_the_gathered_bytes(fast_dir: Path) -> None:
    mm, fd = _mapping(fast_dir, 8 * BS)
    try:
        rec = RecordingPersist()
        rec.attach(mm)
        src = _rows(6, seed=5)
        rec.store_rows(2 * BS, src, np.array([5, 0, 3]))
        rec.flush(2 * BS, 3 * BS)
        rec.fence()
        rec.store_rows(0, src, np.array([1]))  # never flushed: lost at a power cut
        assert [op.kind for op in rec.log] == ["store", "flush", "fence", "store"]
        assert rec.log[0].offset == 2 * BS and rec.log[0].data == src[[5, 0, 3]].tobytes()
        images = dict(rec.crash_images(bytes(8 * BS)))
        assert images[1][2 * BS : 5 * BS] == src[[5, 0, 3]].tobytes()
        assert images[1][:BS] == bytes(BS)
    finally:
        mm.close()
        os.close(fd)


class _Frames:
    """What mm hands write_pages: rows of one frame array, named, not copied."""

    def __init__(self, data: np.ndarray, frames: np.ndarray) -> None:
        self.data, self.frames = data, frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k: int) -> memoryview:
        return memoryview(self.data[self.frames[k]])

    def page_rows(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data, self.frames


def _run(path: Path, pages_of: object, monkeypatch: pytest.MonkeyPatch) -> RecordingPersist:
    """The same writes (new blocks, in place, repeated indices, a split run) on `path`."""
    monkeypatch.setattr(image_mod, "_now", lambda: 1_700_000_000_000_000_000)
    rec = RecordingPersist()
    img = Image.open(path, persist=rec)
    f = img.create(1, b"f", 0o644, 0, 0)
    img.reserve(48)
    data = _rows(64, seed=11)
    rng = np.random.default_rng(2)
    steps = [
        (np.arange(0, 40), rng.permutation(64)[:40], 40 * BS),  # maps holes, size advances
        (np.arange(8, 24), rng.permutation(64)[:16], None),  # in place, scattered frames
        (np.array([30, 3, 30, 5, 4]), np.array([1, 2, 3, 4, 5]), None),  # last write wins
        (np.array([39, 41, 42]), np.array([6, 60, 7]), 43 * BS),  # in place + new blocks
    ]
    for idx, frames, size in steps:
        pages = pages_of(data, frames)
        kw = {} if size is None else {"size": size}
        blocks = img.write_pages(f, idx, pages, **kw)
        assert len(blocks) == len(idx) and (blocks > 0).all()
    mm = img._mm
    img.close()
    assert mm.closed  # no export of the mapping left behind
    return rec


def test_write_pages_from_page_rows_gives_identical_images(
    fast_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows named by `page_rows()`, a plain (n, 4096) array, and a list of buffers:
    byte-identical images and the same store/flush/fence sequence with the same bytes."""
    base = fast_dir / "base.img"
    mkfs(base, size=4 << 20)
    ways = {
        "named": lambda d, fr: _Frames(d, fr),
        "array": lambda d, fr: d[fr],
        "list": lambda d, fr: [bytes(d[i]) for i in fr.tolist()],
    }
    logs = {}
    images = {}
    for name, way in ways.items():
        p = fast_dir / f"{name}.img"
        shutil.copyfile(base, p)
        logs[name] = _run(p, way, monkeypatch).log
        images[name] = p.read_bytes()
        assert fsck(str(p)).exit_code == 0

    def merged(log: list) -> list:
        # The list path stores page by page; the array paths a run at a time:
        # compare the bytes each fence makes durable.
        out = []
        epoch: dict[int, bytes] = {}
        for op in log:
            if op.kind == "store":
                for k in range(0, len(op.data), BS):
                    epoch[op.offset + k] = op.data[k : k + BS]
            elif op.kind == "fence":
                out.append(sorted(epoch.items()))
                epoch = {}
        return out

    assert images["named"] == images["list"] == images["array"]
    assert merged(logs["named"]) == merged(logs["list"]) == merged(logs["array"])
    # The named rows were stored with one store per run of adjacent blocks.
    assert sum(op.kind == "store" for op in logs["named"]) < sum(
        op.kind == "store" for op in logs["list"]
    )


def test_an_in_place_batch_is_its_data_and_one_fence(fast_dir: Path) -> None:
    """A rewrite of mapped pages that advances no size writes no journal: its log
    is the data's stores and flushes and one fence, and a damaged image still
    refuses it."""
    path = fast_dir / "i.img"
    mkfs(path, size=4 << 20)
    rec = RecordingPersist()
    img = Image.open(path, persist=rec)
    f = img.create(1, b"f", 0o644, 0, 0)
    img.reserve(32)
    data = _rows(64, seed=4)
    blocks = img.write_pages(f, np.arange(32), _Frames(data, np.arange(32)), size=32 * BS)
    gen = img.generation
    rec.log.clear()
    frames = np.array([40, 3, 17, 9, 63, 0])
    again = img.write_pages(f, np.array([0, 1, 2, 20, 21, 31]), _Frames(data, frames), size=32 * BS)
    assert np.array_equal(again, blocks[[0, 1, 2, 20, 21, 31]])
    assert [op.kind for op in rec.log] == ["store", "flush"] * 3 + ["fence"]
    stored = b"".join(op.data for op in rec.log if op.kind == "store")
    assert stored == data[frames].tobytes()
    assert img.generation == gen  # no transaction committed
    img.corrupt = "test: damage seen"
    with pytest.raises(CorruptImage):
        img.write_pages(f, np.array([5]), _Frames(data, np.array([1])))
    assert len(rec.log) == 7
    img.corrupt = None
    img.close()
    assert fsck(str(path)).exit_code == 0
