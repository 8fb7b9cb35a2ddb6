"""The event log: schema (docs/EVENTS.md), the writer mm and fuse use, the reader the tools use.

`load(path)` returns the log as a polars DataFrame (the columnar loader,
`nvramfs.events.loader`); polars is imported only when it is called, so the
mount's hot path never pays for it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from .reader import ReadReport


def load(path: str | os.PathLike[str], report: ReadReport | None = None) -> pl.DataFrame:
    """The event log at `path` as one DataFrame: one row per accepted event (docs/EVENTS.md)."""
    from .loader import load as _load

    return _load(path, report)
