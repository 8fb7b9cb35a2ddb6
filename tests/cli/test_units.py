"""The one size parser and the one byte formatter (nvramfs/units.py)."""

from __future__ import annotations

import pytest

from nvramfs.errors import UsageError
from nvramfs.fuse.options import parse_options
from nvramfs.units import format_bytes, parse_size


@pytest.mark.parametrize(
    "text, value",
    [
        ("4096", 4096),
        ("64M", 64 << 20),
        ("64MB", 64 << 20),
        ("64MiB", 64 << 20),
        ("64m", 64 << 20),
        ("1.5G", 1536 << 20),
        ("1.5GB", 1536 << 20),
        ("512k", 512 << 10),
        ("2T", 2 << 40),
        ("100B", 100),
    ],
)
def test_parse_size_units(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1.5X", "-4K", "0", "1e3", "64 MBs", "4iB"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_mkfs_and_dram_agree() -> None:
    """`-o dram=` and `mkfs --size` read a size the same way."""
    for text in ("1.5G", "64MB", "64M"):
        assert parse_options([f"dram={text}"]).dram_bytes == parse_size(text)


def test_format_bytes() -> None:
    assert format_bytes(100) == "100 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(64 << 20) == "64.0 MiB"
    assert format_bytes(3 << 40) == "3.0 TiB"
