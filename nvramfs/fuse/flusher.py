"""The flusher: background writeback as a trio task, and the writers' throttle.

Linux's flusher threads (mm/page-writeback.c, fs/fs-writeback.c) write dirty
pages back when they pass `dirty_background` and writers sleep in
`balance_dirty_pages` once they reach `dirty_limit`. Here both decisions are
MemoryManager functions of the mm state (`balance_dirty_pages`,
`over_background_thresh`, `writeback_batch`), so a trace replay that makes
the same calls gets the same batches; this module only schedules them:

- after each write the FUSE handler calls `mm.balance_dirty_pages(ino)`; past
  dirty_background it `kick()`s the flusher; at dirty_limit it awaits
  `throttle()`, which returns once the flusher has brought the dirty frames
  under the limit (the write's reply waits, as in the kernel's IO-less
  throttling), or when writeback stops making progress (an error, logged).
- `run()` waits for a kick, then calls `mm.writeback_batch()` while the dirty
  frames are over dirty_background, yielding to the trio loop between batches
  so that requests are served meanwhile.

pyfuse3 serves requests on one trio thread: a batch runs on it, so nothing
stores into a frame while it is under writeback.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

log = logging.getLogger(__name__)


class Flusher:
    """Background writeback for one mount (one MemoryManager)."""

    def __init__(self, mm: Any, on_error: Any = None) -> None:
        self.mm = mm
        self.on_error = on_error  # callable(what, exc): log/count it (Operations.translate)
        self._wake = trio.Event()
        self._progress = trio.Event()
        self.batches = 0  # writeback_batch calls that wrote something
        self.running = False
        self._stalled = False  # the last batch wrote nothing (an error): stop throttling

    def kick(self) -> None:
        """Dirty frames passed dirty_background: start writing back."""
        self._wake.set()

    async def throttle(self) -> None:
        """Wait until the dirty frames are under dirty_limit (the flusher writes meanwhile)."""
        if not self.running:
            # No flusher task (unit tests driving Operations directly): write back here.
            while self.mm.over_dirty_limit():
                if not self._batch():
                    return
            return
        while self.mm.over_dirty_limit():
            self.kick()
            progress = self._progress
            await progress.wait()
            if self._stalled:
                return

    def _batch(self) -> int:
        try:
            n = self.mm.writeback_batch()
        except Exception as exc:  # ENOSPC, EIO, a BUG: said once per batch, never fatal here
            if self.on_error is not None:
                self.on_error("writeback", exc)
            else:
                log.exception("background writeback failed")
            return 0
        if n:
            self.batches += 1
        return n

    async def run(self) -> None:
        """The flusher task: sleep until kicked, write back until under dirty_background."""
        self.running = True
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self.mm.over_background_thresh():
                    n = self._batch()
                    self._stalled = n == 0
                    self._progress.set()
                    self._progress = trio.Event()
                    if not n:
                        break
                    await trio.sleep(0)
                else:
                    self._stalled = False
                    self._progress.set()
                    self._progress = trio.Event()
        finally:
            self.running = False
            self._progress.set()
