"""Replacement policies: which XIP pages to promote into the page cache, which frames to demote.

One small interface on numpy arrays. Once per tick the manager hands the
policy each page-table chunk touched in the interval (`scan_chunk`), then
asks it to rank promotion candidates against the frames it would evict
(`victims`, `admit`), and which frames are cold enough to demote on their
own (`cold_frames`). Under memory pressure (a COW needs a frame), `victims`
alone decides. The DRAM budget is the machine's frame count: no policy can
exceed it.

Per page, a policy has one uint32 word in the chunk (`state`):
    bits 0-7   flags   F_SEEN, F_DEMOTED, F_YOUNG
    bits 8-15  epoch   tick (mod 256) of the last update
    bits 16-31 score   the policy's count (saturating)
Per frame it has fixed-size arrays (score, last reference, residency start).

Hysteresis against ping-pong: a frame younger than `min_residency` ticks is
never evicted for a promotion nor demoted as cold; a demoted page needs
twice the promotion threshold to come back; and a candidate must beat its
victim by a margin (`admit`).
"""

from __future__ import annotations

import numpy as np

F_SEEN = 1
F_DEMOTED = 2
F_YOUNG = 4
EPOCH_SHIFT = 8
SCORE_SHIFT = 16
SCORE_MAX = 0xFFFF


def _split(state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = state.astype(np.int64)
    return s & 0xFF, (s >> EPOCH_SHIFT) & 0xFF, s >> SCORE_SHIFT


def _join(flags: np.ndarray, epoch: np.ndarray, score: np.ndarray) -> np.ndarray:
    score = np.minimum(score, SCORE_MAX)
    return ((score << SCORE_SHIFT) | ((epoch & 0xFF) << EPOCH_SHIFT) | (flags & 0xFF)).astype(
        np.uint32
    )


class Policy:
    """The interface, and `none`: never promotes, never demotes on its own.

    Under pressure it evicts the least recently referenced frame.
    """

    name = "none"
    threshold = 1 << 30

    def __init__(self, nr_frames: int, *, min_residency: int = 4, idle_ticks: int = 60) -> None:
        self.nr_frames = nr_frames
        self.min_residency = min_residency
        self.idle_ticks = idle_ticks
        self.frame_score = np.zeros(nr_frames, dtype=np.float32)
        self.frame_ref = np.zeros(nr_frames, dtype=np.int64)  # tick last referenced
        self.frame_since = np.zeros(nr_frames, dtype=np.int64)  # tick it got its page
        self.tick = 0

    # A frame was allocated (promotion, COW, hole fill): it starts warm.
    def on_alloc(self, frame: int) -> None:
        self.frame_score[frame] = 1.0
        self.frame_ref[frame] = self.tick
        self.frame_since[frame] = self.tick

    # The page's word after its frame was demoted: score gone, F_DEMOTED set,
    # epoch = now (the cooldown counts from the demotion).
    def on_demote(self, word: int) -> int:
        return ((self.tick & 0xFF) << EPOCH_SHIFT) | (word & 0xFF) | F_DEMOTED

    def begin_tick(self, tick: int) -> None:
        self.tick = tick

    # Fold one interval into a chunk: `state` (updated in place), the
    # interval's `hits` per page, the pte `young` bits, `frames` (the frame
    # mapping each page, 0 for none) and `promotable` (pages whose home is
    # XIP and that may be promoted). Returns a float score per page: > 0
    # marks a promotion candidate.
    def scan_chunk(
        self,
        state: np.ndarray,
        hits: np.ndarray,
        young: np.ndarray,
        frames: np.ndarray,
        promotable: np.ndarray,
    ) -> np.ndarray:
        self._touch_frames(hits, young, frames)
        return np.zeros(len(state), dtype=np.float32)

    def _eligible(
        self, flags: np.ndarray, touched: np.ndarray, promotable: np.ndarray, score: np.ndarray
    ) -> np.ndarray:
        """Hysteresis: a page demoted recently needs twice the threshold to come back."""
        need = np.where(flags & F_DEMOTED, 2 * self.threshold, self.threshold)
        return touched & promotable & (score >= need)

    def _touch_frames(self, hits: np.ndarray, young: np.ndarray, frames: np.ndarray) -> None:
        used = (frames > 0) & ((hits > 0) | young)
        f = frames[used]
        self.frame_ref[f] = self.tick
        np.add.at(self.frame_score, f, hits[used].astype(np.float32))

    def end_tick(self) -> None:
        pass

    # Order eviction candidates (page-cache frames) coldest first.
    def victims(self, frames: np.ndarray) -> np.ndarray:
        order = np.lexsort((self.frame_score[frames], self.frame_ref[frames]))
        return frames[order]

    # Is a candidate with `score` worth evicting `victim` for?
    def admit(self, score: float, victim: int) -> bool:
        return False

    def _protected(self, frame: int) -> bool:
        return self.tick - int(self.frame_since[frame]) < self.min_residency

    # Frames to demote because they went cold (reason `policy`).
    def cold_frames(self, frames: np.ndarray) -> np.ndarray:
        return frames[:0]


class MultiQueuePolicy(Policy):
    """`mq`: access frequency with decay (counts halve every `half_life` ticks).

    A page is promoted once its decayed count reaches `threshold`; frames are
    ranked by their own decayed count, and demoted when it falls below 1 and
    they have been idle `idle_ticks`.
    """

    name = "mq"

    def __init__(
        self,
        nr_frames: int,
        *,
        threshold: int = 4,
        half_life: int = 2,
        cooldown: int = 8,
        **kw: int,
    ) -> None:
        super().__init__(nr_frames, **kw)
        self.threshold = threshold
        self.half_life = half_life
        self.cooldown = cooldown

    def scan_chunk(
        self,
        state: np.ndarray,
        hits: np.ndarray,
        young: np.ndarray,
        frames: np.ndarray,
        promotable: np.ndarray,
    ) -> np.ndarray:
        self._touch_frames(hits, young, frames)
        flags, epoch, score = _split(state)
        touched = hits > 0
        age = (self.tick - epoch) & 0xFF
        shift = np.minimum(age // self.half_life, 31)
        score = np.where(touched, score >> shift, score)
        epoch = np.where(touched, epoch + shift * self.half_life, epoch)
        score = score + hits
        # A demoted page that stayed away `cooldown` ticks is an ordinary page again.
        flags = np.where(touched & (age >= self.cooldown), flags & ~F_DEMOTED, flags)
        state[:] = np.where(touched, _join(flags, epoch, score), state)
        cand = self._eligible(flags, touched, promotable, score)
        return np.where(cand, score, 0).astype(np.float32)

    def end_tick(self) -> None:
        self.frame_score *= np.float32(0.5 ** (1.0 / self.half_life))

    def victims(self, frames: np.ndarray) -> np.ndarray:
        order = np.lexsort((self.frame_ref[frames], self.frame_score[frames]))
        return frames[order]

    def admit(self, score: float, victim: int) -> bool:
        if self._protected(victim):
            return False
        return score > 2.0 * float(self.frame_score[victim]) + 1.0

    def cold_frames(self, frames: np.ndarray) -> np.ndarray:
        cold = (self.frame_score[frames] < 1.0) & (
            self.tick - self.frame_ref[frames] >= self.idle_ticks
        )
        cold &= self.tick - self.frame_since[frames] >= self.min_residency
        return frames[cold]


class TwoQueuePolicy(Policy):
    """`2q` (Johnson & Shasha), with the tick as the correlated-reference period.

    A page touched for the first time goes to A1 (F_SEEN, remembered by
    epoch for `kout` ticks: the A1out ghost list) and is not promoted; a page
    referenced again in a later interval while still remembered is promoted
    (into Am, the page cache, managed LRU). One sequential pass touches each
    page in one interval only, so it never displaces the hot set.
    """

    name = "2q"

    def __init__(self, nr_frames: int, *, kout: int = 8, threshold: int = 2, **kw: int) -> None:
        super().__init__(nr_frames, **kw)
        self.kout = kout
        self.threshold = threshold

    def scan_chunk(
        self,
        state: np.ndarray,
        hits: np.ndarray,
        young: np.ndarray,
        frames: np.ndarray,
        promotable: np.ndarray,
    ) -> np.ndarray:
        self._touch_frames(hits, young, frames)
        flags, epoch, score = _split(state)
        touched = hits > 0
        gap = (self.tick - epoch) & 0xFF
        fresh = ~(flags & F_SEEN).astype(bool) | (gap > self.kout)
        new_score = np.where(fresh, 1, np.where(gap >= 1, score + 1, score))
        new_flags = (flags | F_SEEN) & np.where(fresh, ~F_DEMOTED, 0xFF)
        flags = np.where(touched, new_flags, flags)
        score = np.where(touched, new_score, score)
        epoch = np.where(touched, self.tick, epoch)
        state[:] = np.where(touched, _join(flags, epoch, score), state)
        cand = self._eligible(flags, touched, promotable, score)
        return np.where(cand, score.astype(np.float32) + hits / 65536.0, 0).astype(np.float32)

    def victims(self, frames: np.ndarray) -> np.ndarray:
        order = np.lexsort((self.frame_score[frames], self.frame_ref[frames]))
        return frames[order]

    def admit(self, score: float, victim: int) -> bool:
        if self._protected(victim):
            return False
        # Am is LRU: only a frame not referenced in the last two intervals goes.
        return self.tick - int(self.frame_ref[victim]) >= 2

    def end_tick(self) -> None:
        self.frame_score *= np.float32(0.5)

    def cold_frames(self, frames: np.ndarray) -> np.ndarray:
        cold = self.tick - self.frame_ref[frames] >= self.idle_ticks
        cold &= self.tick - self.frame_since[frames] >= self.min_residency
        return frames[cold]


class ClockPolicy(Policy):
    """`clock`: only the pte young (accessed) bit, as the kernel's page_referenced sees it.

    Each tick's sweep reads and clears the young bits. An XIP page found young
    in `threshold` consecutive sweeps is promoted. Frames carry a reference bit
    (young in the last sweep); the hand evicts the first frame whose bit is
    clear, clearing the bits it passes (second chance).
    """

    name = "clock"

    def __init__(self, nr_frames: int, *, threshold: int = 2, **kw: int) -> None:
        super().__init__(nr_frames, **kw)
        self.threshold = threshold
        self.refbit = np.zeros(nr_frames, dtype=bool)
        self.hand = 1

    def on_alloc(self, frame: int) -> None:
        super().on_alloc(frame)
        self.refbit[frame] = True

    def scan_chunk(
        self,
        state: np.ndarray,
        hits: np.ndarray,
        young: np.ndarray,
        frames: np.ndarray,
        promotable: np.ndarray,
    ) -> np.ndarray:
        used = (frames > 0) & young
        self.refbit[frames[used]] = True
        self.frame_ref[frames[used]] = self.tick
        flags, epoch, score = _split(state)
        consecutive = ((self.tick - epoch) & 0xFF) == 1
        score = np.where(young, np.where(consecutive, score + 1, 1), score)
        epoch = np.where(young, self.tick, epoch)
        flags = np.where(young & ~consecutive, flags & ~F_DEMOTED, flags)
        state[:] = np.where(young, _join(flags, epoch, score), state)
        cand = self._eligible(flags, young, promotable, score)
        return np.where(cand, score, 0).astype(np.float32)

    def victims(self, frames: np.ndarray) -> np.ndarray:
        if len(frames) == 0:
            return frames
        n = self.nr_frames
        dist = (frames - self.hand) % n
        ref = self.refbit[frames]
        order = np.lexsort((dist, ref))
        out = frames[order]
        first = int(out[0])
        # The hand passes every referenced frame before the first victim.
        passed = frames[ref & (dist < (first - self.hand) % n)]
        self.refbit[passed] = False
        self.hand = first % n
        return out

    def admit(self, score: float, victim: int) -> bool:
        return not self._protected(victim) and not bool(self.refbit[victim])

    def end_tick(self) -> None:
        # Frames not found young in this sweep lose their reference bit.
        stale = self.frame_ref < self.tick
        self.refbit[stale] = False

    def cold_frames(self, frames: np.ndarray) -> np.ndarray:
        cold = ~self.refbit[frames] & (self.tick - self.frame_ref[frames] >= self.idle_ticks)
        cold &= self.tick - self.frame_since[frames] >= self.min_residency
        return frames[cold]


POLICIES: dict[str, type[Policy]] = {
    "none": Policy,
    "mq": MultiQueuePolicy,
    "2q": TwoQueuePolicy,
    "clock": ClockPolicy,
}


def make_policy(name: str, nr_frames: int, **params: int) -> Policy:
    """The policy called `name` (one of POLICIES) for a machine of `nr_frames` frames."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (one of: {', '.join(POLICIES)})") from None
    return cls(nr_frames, **params)
