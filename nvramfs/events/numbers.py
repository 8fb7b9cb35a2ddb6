"""Definitions of numbers that need no engine (docs/EVENTS.md, "Numbers").

`hit_ratio` lives here, without polars, so that a live view (`log follow`,
`stat`, the demo's progress line) computes it without loading the engine;
`nvramfs.events.analysis` exports the same function.
"""

from __future__ import annotations

from typing import Any


def hit_ratio(
    counters: dict[str, Any] | None, before: dict[str, Any] | None = None
) -> float | None:
    """Page accesses served by a pagecache frame over all page accesses (None: no access).

    From one `counters` object (cumulative since its mount), or between two
    snapshots of the same mount (`before`, then `counters`). The numerator is
    `faults.pagecache_hit`, the denominator `accesses.read + accesses.write`.
    """
    if not counters:
        return None

    def parts(c: dict[str, Any] | None) -> tuple[int, int]:
        if not c:
            return 0, 0
        f = c.get("faults") or {}
        a = c.get("accesses") or {}
        return int(f.get("pagecache_hit", 0) or 0), int(a.get("read", 0) or 0) + int(
            a.get("write", 0) or 0
        )

    h1, n1 = parts(counters)
    h0, n0 = parts(before)
    n = n1 - n0
    return (h1 - h0) / n if n > 0 else None
