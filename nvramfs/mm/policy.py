"""Replacement policies: which XIP pages to promote into the page cache, which frames to demote.

One small interface on numpy arrays. Once per tick the manager hands the
policy the pages touched in the interval (`scan_chunk`: in one call, the
pages of every page-table chunk touched that were hit or have a young pte,
chunk after chunk), then asks it to rank promotion candidates against the
frames it would evict (`victims`, `admit`), and which frames are cold enough
to demote on their own (`cold_frames`). Under memory pressure (a COW needs a frame), `victims`
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

from collections import OrderedDict
from typing import Any

import numpy as np

from .bug import BUG_ON
from .machine import PG_ANON, PG_LOCKED, PG_WRITEBACK

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
    # True: mm asks the policy at every page access (demand.py), not at ticks.
    per_access = False
    # True: every miss the policy admits is read into a frame (no XIP at all).
    readpage = False

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
        return (word & 0xFF) | (((self.tick & 0xFF) << EPOCH_SHIFT) | F_DEMOTED)

    def begin_tick(self, tick: int) -> None:
        self.tick = tick

    # Fold one interval into a set of pages: their words `state` (updated in
    # place), the interval's `hits` per page, the pte `young` bits, `frames`
    # (the frame mapping each page, 0 for none) and `promotable` (pages whose
    # home is XIP and that may be promoted). Returns a float score per page:
    # > 0 marks a promotion candidate. Elementwise: the manager passes only
    # the pages hit or young in the interval, of every chunk at once (a page
    # neither hit nor young must be left as it is; frame updates in page order).
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

    # Pages of `ino` to read into frames when mm first meets the file (static).
    def pages_to_pin(self, ino: int) -> list[int]:
        return []


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


# -- policies decided per page access, and the offline ones (docs/POLICIES.md) ------------


class LRUPolicy(Policy):
    """`lru`: a page cache without XIP, exact least-recently-used.

    Every page touched is read into a frame (as readpage would; a hole is
    read as a zeroed frame); writes are accesses; when the budget is full,
    exactly one frame goes per miss: the one whose page was accessed least
    recently (mm.demand.reclaim_one, not the batched reclaim). No readahead,
    nothing at ticks. The recency list is an ordered dict of frames, moved
    to its end at every access (the kernel's LRU list without the
    active/inactive split)."""

    name = "lru"
    per_access = True
    readpage = True

    def __init__(self, nr_frames: int, **kw: Any) -> None:
        super().__init__(nr_frames, **kw)
        self.lru: OrderedDict[int, None] = OrderedDict()

    def on_alloc(self, frame: int) -> None:
        super().on_alloc(frame)
        self.lru[frame] = None
        self.lru.move_to_end(frame)

    # mark_page_accessed: the frame that served an access goes to the hot end.
    def accessed(self, ino: int, index: int, frame: int) -> None:
        if frame:
            self.lru.move_to_end(frame)

    def admit_read(self, mm: Any, ino: int, index: int) -> bool:
        return True

    def victim(self, mm: Any) -> int | None:
        """The least recently used page-cache frame that may be evicted now."""
        m = mm.machine
        busy = PG_ANON | PG_LOCKED | PG_WRITEBACK
        stale = []
        found = None
        for frame in self.lru:
            if m.mapping[frame] == 0:
                stale.append(frame)  # freed meanwhile (truncate, evict_inode)
                continue
            if int(m.flags[frame]) & busy:
                continue
            found = frame
            break
        for frame in stale:
            del self.lru[frame]
        return found

    def victims(self, frames: np.ndarray) -> np.ndarray:
        want = set(frames.tolist())
        return np.asarray([f for f in self.lru if f in want], dtype=np.int64)


NEVER = np.iinfo(np.int64).max


class Future:
    """The page accesses of a trace, in the order mm makes them, and each one's next use.

    `keys[k]` is `(ino << 32) | index` of access k; `next[k]` the position of the
    next access to the same page (NEVER: none). Built by nvramfs.trace.policies."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.ascontiguousarray(keys, dtype=np.int64)
        n = len(self.keys)
        self.order = np.argsort(self.keys, kind="stable")  # positions grouped by page, ascending
        sk = self.keys[self.order]
        same = np.zeros(n, dtype=bool)
        if n > 1:
            same[:-1] = sk[1:] == sk[:-1]
        nxt = np.full(n, NEVER, dtype=np.int64)
        nxt[self.order[:-1][same[:-1]]] = self.order[1:][same[:-1]]
        self.next = nxt
        self._sorted_keys = sk

    def __len__(self) -> int:
        return len(self.keys)

    def next_after(self, key: int, k: int) -> int:
        """The first access to page `key` at position >= k (NEVER: none)."""
        lo, hi = np.searchsorted(self._sorted_keys, [key, key + 1])
        pos = self.order[lo:hi]
        j = int(np.searchsorted(pos, k))
        return int(pos[j]) if j < len(pos) else int(NEVER)


class OptPolicy(Policy):
    """`opt`: the offline optimum with XIP (replay only: it reads the future).

    Furthest-next-use with bypass: a read miss is admitted (read into a frame)
    only if its page's next use comes sooner than the furthest next use among
    the pages in frames, and that frame is evicted; otherwise it is served
    from NVRAM (XIP). A write miss must be admitted (the COW) and evicts the
    frame used furthest in the future. docs/POLICIES.md says what it bounds."""

    name = "opt"
    per_access = True
    readpage = False

    def __init__(self, nr_frames: int, *, future: Future | None = None, **kw: Any) -> None:
        if future is None:
            raise ValueError(
                f"policy {self.name} needs the future: it runs in replays only (nvramfs replay)"
            )
        super().__init__(nr_frames, **kw)
        self.future = future
        self.k = 0  # the position of the next access
        self.frame_next = np.full(nr_frames, -1, dtype=np.int64)  # -1: not known yet

    def on_alloc(self, frame: int) -> None:
        super().on_alloc(frame)
        self.frame_next[frame] = -1

    def _key_now(self, ino: int, index: int) -> int:
        fut = self.future
        k = self.k
        key = (ino << 32) | index
        BUG_ON(
            k >= len(fut) or int(fut.keys[k]) != key,
            f"{self.name}: the access does not match the trace's future",
            f"access {k}: ino {ino} index {index}, expected "
            + (
                f"ino {int(fut.keys[k]) >> 32} index {int(fut.keys[k]) & 0xFFFFFFFF}"
                if k < len(fut)
                else "no more accesses"
            ),
        )
        return key

    def accessed(self, ino: int, index: int, frame: int) -> None:
        self._key_now(ino, index)
        if frame:
            self.frame_next[frame] = self.future.next[self.k]
        self.k += 1

    def _frames_next(self, mm: Any) -> tuple[np.ndarray, np.ndarray]:
        frames = mm._cache_frames()
        nxt = self.frame_next[frames]
        unknown = np.flatnonzero(nxt < 0)
        if len(unknown):
            m = mm.machine
            for j in unknown.tolist():
                f = int(frames[j])
                key = (int(m.mapping[f]) << 32) | int(m.index[f])
                self.frame_next[f] = nxt[j] = self.future.next_after(key, self.k)
        return frames, nxt

    def admit_read(self, mm: Any, ino: int, index: int) -> bool:
        self._key_now(ino, index)
        mine = int(self.future.next[self.k])
        if mine == NEVER:
            return False
        if mm.machine.free_list:
            return True
        frames, nxt = self._frames_next(mm)
        return len(frames) > 0 and mine < int(nxt.max())

    def victim(self, mm: Any) -> int | None:
        frames, nxt = self._frames_next(mm)
        if not len(frames):
            return None
        return int(frames[int(np.argmax(nxt))])

    def victims(self, frames: np.ndarray) -> np.ndarray:
        return frames[np.argsort(-self.frame_next[frames], kind="stable")]


class OptNoXPolicy(OptPolicy):
    """`opt-nox`: Belady's MIN for a page cache without XIP (every miss read into a
    frame, the frame used furthest in the future evicted): the bound for `lru`."""

    name = "opt-nox"
    readpage = True

    def admit_read(self, mm: Any, ino: int, index: int) -> bool:
        return True


def profile_path(path: str) -> str:
    """A profile's path as an absolute path in the image (`./a/b` and `a/b` are `/a/b`)."""
    if path.startswith("./"):
        path = path[1:]
    return path if path.startswith("/") else "/" + path


class Profile:
    """Pages a profile names: `path,offset,count` lines as `nvramfs log profile` prints
    them (AXFS's mkfs -i format): the page at byte `offset` of `path` (relative to the
    image root, `./` prefixed), accessed `count` times. Kept most counted first
    (ties in file order): the order static pins them in."""

    def __init__(self, entries: list[tuple[str, int, int]], source: str = "") -> None:
        order = sorted(range(len(entries)), key=lambda k: -entries[k][2])
        self.entries = [entries[k] for k in order]  # (path, index, count)
        self.source = source

    @classmethod
    def parse(cls, text: str, source: str = "profile") -> Profile:
        """ValueError (one line, with the line number) for a line that is not
        `path,offset,count`; `#` comments and blank lines are skipped; a page named
        twice keeps the sum of its counts."""
        seen: dict[tuple[str, int], int] = {}
        for no, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path, _, rest = line.rpartition(",")
            path, _, off = path.rpartition(",")
            try:
                offset, count = int(off), int(rest)
            except ValueError:
                raise ValueError(f"{source}:{no}: not `path,offset,count`: {line!r}") from None
            if not path or offset < 0 or count < 0:
                raise ValueError(f"{source}:{no}: not `path,offset,count`: {line!r}")
            key = (profile_path(path), offset >> 12)
            seen[key] = seen.get(key, 0) + count
        return cls([(p, i, c) for (p, i), c in seen.items()], source)

    @classmethod
    def load(cls, path: str) -> Profile:
        with open(path, encoding="utf-8") as f:
            return cls.parse(f.read(), path)

    @property
    def pages(self) -> dict[str, list[int]]:
        """Page indices per path, most counted first."""
        out: dict[str, list[int]] = {}
        for path, index, _ in self.entries:
            out.setdefault(path, []).append(index)
        return out

    @property
    def nr_pages(self) -> int:
        return len(self.entries)


class StaticPolicy(Policy):
    """`static=PROFILE`: the pages a profile names are pinned in DRAM, the rest stay XIP.

    AXFS chose XIP pages offline from a profile; here the profile's most counted
    pages, as many as fit, are read into frames when mm first meets their file
    (before its first access), and are never demoted by the budget or at ticks;
    no page is ever promoted.
    Pins stop when only the write reserve (1/16 of the budget, at least one
    frame) is left: writes to the other pages COW into the unpinned frames."""

    name = "static"

    def __init__(self, nr_frames: int, *, profile: Profile | None = None, **kw: Any) -> None:
        if profile is None:
            raise ValueError("policy static needs a profile: -o static=PROFILE")
        super().__init__(nr_frames, **kw)
        self.profile = profile
        self.by_ino: dict[int, list[int]] = {}
        self.pinned = np.zeros(nr_frames, dtype=bool)
        dram = nr_frames - 1
        self.max_pinned = max(0, dram - max(1, dram // 16))
        # The pages to pin: the profile's most counted, as many as the budget allows.
        chosen: dict[str, list[int]] = {}
        for path, index, _ in profile.entries[: self.max_pinned]:
            chosen.setdefault(path, []).append(index)
        self.chosen = {path: sorted(v) for path, v in chosen.items()}

    def bind(self, ino: int, path: str) -> None:
        """File `path` is inode `ino` (from the image at mount, from `file` records in a replay)."""
        pages = self.chosen.get(profile_path(path))
        if pages:
            self.by_ino[ino] = pages

    def on_alloc(self, frame: int) -> None:
        super().on_alloc(frame)
        self.pinned[frame] = False

    def pages_to_pin(self, ino: int) -> list[int]:
        return self.by_ino.pop(ino, [])

    def pin(self, frame: int) -> None:
        self.pinned[frame] = True

    @property
    def nr_pinned(self) -> int:
        return int(np.count_nonzero(self.pinned))

    def victims(self, frames: np.ndarray) -> np.ndarray:
        return super().victims(frames[~self.pinned[frames]])


POLICIES: dict[str, type[Policy]] = {
    "none": Policy,
    "mq": MultiQueuePolicy,
    "2q": TwoQueuePolicy,
    "clock": ClockPolicy,
    "lru": LRUPolicy,
}
# Policies that need more than a name: the future (opt, opt-nox: replay only)
# or a profile (static).
OFFLINE: dict[str, type[Policy]] = {
    "opt": OptPolicy,
    "opt-nox": OptNoXPolicy,
    "static": StaticPolicy,
}


def make_policy(name: str, nr_frames: int, **params: Any) -> Policy:
    """The policy called `name` (one of POLICIES) for a machine of `nr_frames` frames.

    `opt` and `opt-nox` need `future=` (nvramfs.trace.policies.future_of), `static`
    needs `profile=` (a Profile); without them: ValueError."""
    cls = POLICIES.get(name) or OFFLINE.get(name)
    if cls is None:
        known = ", ".join([*POLICIES, *OFFLINE])
        raise ValueError(f"unknown policy {name!r} (one of: {known})")
    return cls(nr_frames, **params)
