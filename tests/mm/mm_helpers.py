"""Helpers shared by the mm tests."""

from __future__ import annotations

import numpy as np

PAGE = 4096


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def pattern(npages: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, npages * PAGE, dtype=np.uint8).tobytes()
