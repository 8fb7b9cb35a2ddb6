"""Sizes in and out: the one parser (`mkfs --size`, `-o dram=`, `demo --dram`) and
the one formatter of byte counts every command prints with.

Units are binary everywhere, as in mkfs(8) and mount(8) size options: `K`, `M`,
`G`, `T` are 2**10, 2**20, 2**30, 2**40, with or without a trailing `B` or `iB`
and in either case, so `64M`, `64MB`, `64MiB` and `64m` are the same size and
`1.5G` is 1536 MiB. A bare number is bytes. Fractions are rounded down to a
whole byte.
"""

from __future__ import annotations

import re

from nvramfs.errors import UsageError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """`1.5G`, `64MB`, `512KiB`, `4096` -> bytes; anything else is a UsageError (exit 2)."""
    m = _SIZE_RE.match(text or "")
    if not m or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
        raise UsageError(f"bad size {text!r} (use e.g. 4096, 512K, 64M, 64MB, 1.5G)")
    value = int(float(m.group(1)) * _MULT[m.group(2).lower()])
    if value <= 0:
        raise UsageError(f"bad size {text!r}: must be at least one byte")
    return value


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 64 << 20 -> '64.0 MiB', 100 -> '100 B' (binary units, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
