"""Crash recovery trims what writeback left past a file's size (ordered data): a later
extension reads zeros there, never bytes the size did not cover when the crash came."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nvramfs.image import Image
from nvramfs.image.fsck import fsck

BS = 4096


def test_unclean_mount_frees_blocks_past_eof_and_zeroes_the_tail(empty_image: Path) -> None:
    img = Image.open(empty_image)
    f = img.create(1, b"f", 0o644, 0, 0)
    g = img.create(1, b"g", 0o644, 0, 0)
    img.setattr(f, size=100)
    img.setattr(g, size=2 * BS)
    # Writeback ran ahead of the size: page 0 whole (its bytes past 100), page 3 past EOF.
    img.write_pages(f, np.array([0, 3]), [b"a" * BS, b"b" * BS])
    img.write_pages(g, np.array([0, 1]), [b"c" * BS, b"d" * BS])
    assert int(img.bmap(f, 3, 1)[0]) != 0
    free_before = img.statfs().bfree
    img.close(clean=False)  # a crash: the daemon never pushed a size over them

    img = Image.open(empty_image)
    try:
        assert any("trimmed 1 page past the end of 1 file" in r for r in img.recovery)
        assert int(img.bmap(f, 3, 1)[0]) == 0
        b0 = int(img.bmap(f, 0, 1)[0])
        page0 = bytes(img.block_view(b0))
        assert page0[:100] == b"a" * 100 and page0[100:] == bytes(BS - 100)
        # g's pages were all inside its size: untouched.
        assert bytes(img.block_view(int(img.bmap(g, 1, 1)[0]))) == b"d" * BS
        img.setattr(f, size=4 * BS)  # the extension reads zeros, not "b"s
        assert int(img.bmap(f, 3, 1)[0]) == 0
        assert img.statfs().bfree == free_before + 1  # page 3's block was freed
    finally:
        img.close(clean=True)
    assert fsck(str(empty_image)).exit_code == 0


def test_a_clean_mount_trims_nothing(empty_image: Path) -> None:
    img = Image.open(empty_image)
    f = img.create(1, b"f", 0o644, 0, 0)
    img.setattr(f, size=BS)
    img.write_pages(f, np.array([0]), [b"z" * BS])
    img.close(clean=True)
    img = Image.open(empty_image)
    try:
        assert not any("trimmed" in r for r in img.recovery)
        assert bytes(img.block_view(int(img.bmap(f, 0, 1)[0]))) == b"z" * BS
    finally:
        img.close(clean=True)
