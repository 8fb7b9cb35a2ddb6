"""`Image`: the whole filesystem API over one image file (docs/ARCHITECTURE.md).

Reads go straight to the mmap (numpy views, a few in-memory caches of parsed
structures); every change is one journal transaction (journal.py) whose block
images are built in memory and become durable together on commit. While a
transaction is open, `_block()` returns its copy of a block, so an operation
reads its own writes; an exception aborts the transaction and drops the caches
it touched, so the image stays the source of truth.

The parts: alloc.py (bitmaps), extents.py (extent maps), dirs.py
(directories) are mixins of `Image`; journal.py commits; persist.py stores.

API notes beyond docs/ARCHITECTURE.md: `unlink` and `rename` take
`still_open` (a bool, or a predicate on the inode) for the orphan list;
`readdir` lists neither "." nor ".."; `Attr.blocks` is in 512-byte units;
`write_pages` consumes one reservation per hole it maps and never changes
sizes; after the first `CorruptImage` every write raises it again
(`img.corrupt`), and `close()` does not mark the image clean.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nvramfs.image import format as F
from nvramfs.image import journal
from nvramfs.image.alloc import Allocator
from nvramfs.image.dirs import Directories, _Dir
from nvramfs.image.errors import CorruptImage, FsError, NotAnImage
from nvramfs.image.extents import MAX_PAGES, ExtentMaps, _Ext
from nvramfs.image.persist import Persist

BS = F.BLOCK_SIZE
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
LINK_MAX = 65000
# Blocks kept back from statfs/reserve() so metadata (extent, directory,
# xattr blocks) and writeback of reserved pages never hit ENOSPC.
META_HEADROOM = 32

_FTYPE = {
    stat.S_IFREG: F.DT_REG,
    stat.S_IFDIR: F.DT_DIR,
    stat.S_IFLNK: F.DT_LNK,
    stat.S_IFIFO: F.DT_FIFO,
    stat.S_IFCHR: F.DT_CHR,
    stat.S_IFBLK: F.DT_BLK,
    stat.S_IFSOCK: F.DT_SOCK,
}


@dataclass(frozen=True, slots=True)
class Attr:
    """What stat(2) needs. `blocks` is in 512-byte units, as st_blocks."""

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    blocks: int


@dataclass(frozen=True, slots=True)
class StatFs:
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int = F.NAME_MAX


class _TooBig(Exception):
    """A transaction would not fit the journal: retry with less."""


class _Txn:
    __slots__ = ("blocks", "seal", "inos", "freed")

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self.seal: dict[int, tuple[int, int]] = {}
        self.inos: set[int] = set()
        self.freed = 0


def _now() -> int:
    return time.time_ns()


DIRTY_INTERVAL = 1.0  # seconds: the dirty summary is written at most this often


@dataclass(frozen=True)
class DirtySummary:
    """Pages dirty in DRAM when the summary was taken: in all, and per inode (largest first).

    Kept in the superblock (docs/FORMAT.md): `time_ns` 0 means no summary
    was ever written (an image older than the fields, or never mounted).
    """

    time_ns: int
    pages: int
    files: int
    pairs: tuple[tuple[int, int], ...]  # (ino, pages), at most F.DIRTY_PAIRS

    @classmethod
    def empty(cls) -> DirtySummary:
        return cls(_now(), 0, 0, ())

    @classmethod
    def of(cls, counts: Mapping[int, int]) -> DirtySummary:
        items = sorted(
            ((int(i), int(n)) for i, n in counts.items() if n > 0), key=lambda x: (-x[1], x[0])
        )
        return cls(_now(), sum(n for _, n in items), len(items), tuple(items[: F.DIRTY_PAIRS]))

    @classmethod
    def from_sb(cls, sb: np.void) -> DirtySummary | None:
        t = int(sb["dirty_time_ns"])
        if not t:
            return None
        n = min(int(sb["dirty_nr"]), F.DIRTY_PAIRS)
        pairs = tuple(
            (int(i), int(c))
            for i, c in zip(sb["dirty_ino"][:n].tolist(), sb["dirty_cnt"][:n].tolist(), strict=True)
        )
        return cls(t, int(sb["dirty_pages"]), int(sb["dirty_files"]), pairs)

    def to_sb(self, sb: np.void) -> None:
        sb["dirty_time_ns"] = self.time_ns
        sb["dirty_pages"] = self.pages
        sb["dirty_files"] = self.files
        sb["dirty_nr"] = len(self.pairs)
        ino = np.zeros(F.DIRTY_PAIRS, np.uint32)
        cnt = np.zeros(F.DIRTY_PAIRS, np.uint32)
        for k, (i, c) in enumerate(self.pairs):
            ino[k], cnt[k] = i, min(c, 0xFFFF_FFFF)
        sb["dirty_ino"] = ino
        sb["dirty_cnt"] = cnt

    def key(self) -> tuple:
        """What decides whether the summary changed (not its time)."""
        return (self.pages, self.files, self.pairs)


class _Rows:
    """Pages of one write_pages call as rows of one (N, 4096) uint8 array: page k is
    src[rows[k]] (rows None: src[k]). Slicing and reordering touch row numbers only;
    the data is copied once, by `Persist.store_rows`."""

    __slots__ = ("src", "rows")

    def __init__(self, src: np.ndarray, rows: np.ndarray | None) -> None:
        self.src = src
        self.rows = rows

    def __len__(self) -> int:
        return len(self.src) if self.rows is None else len(self.rows)

    def __getitem__(self, part: slice) -> _Rows:
        if self.rows is None:
            return _Rows(self.src[part], None)  # a view
        return _Rows(self.src, self.rows[part])

    def take(self, k: np.ndarray) -> _Rows:
        """The pages at positions `k`, in that order."""
        return _Rows(self.src, k.astype(np.int64) if self.rows is None else self.rows[k])

    def sel(self, lo: int, hi: int) -> np.ndarray | slice:
        """Pages [lo, hi) as `store_rows` takes them (a slice when they are adjacent rows)."""
        if self.rows is None:
            return slice(lo, hi)
        r = self.rows[lo:hi]
        if hi - lo > 1 and int(r[-1]) - int(r[0]) == hi - lo - 1 and bool((r[1:] > r[:-1]).all()):
            return slice(int(r[0]), int(r[-1]) + 1)
        return r


def _check_name(name: bytes) -> None:
    if not isinstance(name, bytes | bytearray):
        raise TypeError("names are bytes")
    if len(name) > F.NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise FsError(errno.EINVAL, f"invalid name {name!r}")


class Image(Allocator, ExtentMaps, Directories):
    """One nvramfs image, open. Not thread-safe: one trio thread calls it."""

    # ------------------------------------------------------------------ open
    def __init__(self) -> None:  # use Image.open / mkfs
        self._mm: mmap.mmap | None = None
        self._fd = -1  # writable opens keep the file open: persist.allocate backs it
        self._txn: _Txn | None = None
        self._attrs: dict[int, Attr] = {}
        self._parents: dict[int, int] = {}
        self._exts: dict[int, _Ext] = {}
        self._dirs: dict[int, _Dir] = {}
        self._ihint = 2
        self._bhint = 0
        self.reserved = 0
        self.readonly = True
        self.was_clean = True
        self.recovery: list[str] = []
        self.root_ino = F.ROOT_INO
        self.path = ""
        self._lenient = False
        self._tool = False
        self.corrupt: str | None = None  # first damage seen: no more writes (errors=remount-ro)
        # What the last session still had dirty in DRAM when it ended uncleanly
        # (its last dirty summary); None: clean, or not known.
        self.lost_dirty: DirtySummary | None = None
        self._dirty_last: tuple | None = None
        self._dirty_t = 0.0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        readonly: bool = False,
        persist: Persist | None = None,
        _lenient: bool = False,
        _tool: bool = False,
    ) -> Image:
        """Map the image and check what serving it needs, in O(1) of its size.

        Checks both superblock copies, the journal and the root inode before
        anything is written; then (writable) replays the journal, reclaims
        orphans and marks the image in use. Readonly opens replay into a
        private copy-on-write mapping, so the file is never modified. A
        writable open of a cleanly closed image with a bad superblock copy
        refuses (damage, not a crash: run fsck). `_tool` (mkfs, fsck) is not
        a mount: no mount count, and fsck may open what it repairs.
        """
        img = cls()
        img._lenient = _lenient  # fsck: let a damaged root through, fsck reports it
        img._tool = _tool  # fsck or mkfs, not a mount: no mount count, a bad copy is repaired
        img.path = str(path)
        img.readonly = readonly
        try:
            fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        except FileNotFoundError:
            raise NotAnImage(f"{path}: no such file") from None
        except IsADirectoryError:
            raise NotAnImage(f"{path}: is a directory") from None
        except PermissionError:
            raise NotAnImage(f"{path}: permission denied") from None
        try:
            size = os.fstat(fd).st_size
            if size < 2 * BS:
                raise NotAnImage(f"{path}: not an nvramfs image ({size} bytes, too short)")
            access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
            mm = mmap.mmap(fd, size, access=access)
        except BaseException:
            os.close(fd)
            raise
        if readonly:
            os.close(fd)
            fd = -1
        img._attach(mm, size, persist)
        if fd >= 0:
            img._fd = fd
            img.persist.attach_file(fd)
        try:
            img._mount(size)
        except BaseException:
            img._release_map()
            raise
        return img

    def _attach(self, mm: mmap.mmap, size: int, persist: Persist | None) -> None:
        self._mm = mm
        self._size = size
        self._ro = memoryview(mm).toreadonly()
        self.persist = persist or Persist()
        self.persist.attach(mm)

    def _release_map(self) -> None:
        self._attrs.clear()
        self._parents.clear()
        self._exts.clear()
        self._dirs.clear()
        self._ro.release()
        with contextlib.suppress(BufferError):  # a caller still holds a block_view
            self._mm.close()
        self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def _check_sb(raw: memoryview, size: int) -> tuple[np.void | None, str]:
        sb = np.frombuffer(raw[: F.SB_SIZE], F.SB_DTYPE)[0].copy()
        if int(sb["magic"]) != F.MAGIC:
            return None, "bad magic"
        if F.sb_crc(raw[: F.SB_SIZE]) != int(sb["crc"]):
            return None, "bad checksum"
        if int(sb["version"]) != F.VERSION:
            return None, f"unsupported version {int(sb['version'])}"
        if int(sb["block_size"]) != BS:
            return None, f"unsupported block size {int(sb['block_size'])}"
        if int(sb["features"]) & ~F.FEATURES:
            return None, f"unknown feature flags {int(sb['features']):#x}"
        lay = F.Layout.from_sb(sb)
        probs = lay.problems()
        if probs:
            return None, probs[0]
        if lay.nr_blocks * BS > size:
            return None, (
                f"image truncated: superblock says {lay.nr_blocks * BS} bytes, file has {size}"
            )
        if int(sb["free_blocks"]) > lay.nr_blocks - lay.data_start:
            return None, f"absurd free_blocks {int(sb['free_blocks'])}"
        if int(sb["free_inodes"]) > lay.nr_inodes - 2:
            return None, f"absurd free_inodes {int(sb['free_inodes'])}"
        if int(sb["root_ino"]) != F.ROOT_INO:
            return None, f"root inode {int(sb['root_ino'])} is not {F.ROOT_INO}"
        if int(sb["orphan_head"]) >= lay.nr_inodes:
            return None, f"orphan list head {int(sb['orphan_head'])} out of range"
        return sb, ""

    def _mount(self, size: int) -> None:
        a, why_a = self._check_sb(self._ro[0:BS], size)
        b, why_b = self._check_sb(self._ro[BS : 2 * BS], size)
        if a is None and b is None:
            magic_a = int.from_bytes(self._ro[0:8], "little") == F.MAGIC
            magic_b = int.from_bytes(self._ro[BS : BS + 8], "little") == F.MAGIC
            if not (magic_a or magic_b):
                raise NotAnImage(f"{self.path}: not an nvramfs image (no superblock magic)")
            raise CorruptImage(f"superblock (block 0): {why_a}; copy B (block 1): {why_b}")
        self.sb_problems: list[str] = []
        if a is None:
            self.sb_problems.append(f"superblock copy A (block 0): {why_a}")
        if b is None:
            self.sb_problems.append(f"superblock copy B (block 1): {why_b}")
        if a is not None and b is not None and int(b["generation"]) > int(a["generation"]):
            best = b
        else:
            best = a if a is not None else b
        if (
            a is not None
            and b is not None
            and bytes(self._ro[0 : F.SB_SIZE]) != bytes(self._ro[BS : BS + F.SB_SIZE])
        ):
            self.sb_problems.append("superblock copies A and B differ")
        self._sb = best
        self.L = F.Layout.from_sb(best)
        self.nr_blocks = self.L.nr_blocks
        self.was_clean = int(best["state"]) == F.STATE_CLEAN
        # The journal: replay a committed transaction newer than the superblock.
        jt = self._journal_txn()
        replay = jt is not None and jt[0] > int(best["generation"])
        # A bad or stale copy is what a power cut leaves when the journal explains it:
        # replay rewrites both, or copy A holds the journal's transaction and B is
        # missing it (the cut fell between the two copy writes).
        self.sb_torn = bool(self.sb_problems) and (
            replay
            or (
                a is not None
                and jt is not None
                and jt[0] == int(a["generation"])
                and (b is None or int(b["generation"]) == int(a["generation"]) - 1)
            )
        )
        if replay:
            self._check_journal(jt)
            self.was_clean = False
        if replay and self.readonly:
            self._remap_private()
        if not self.readonly:  # host space first: replay stores to home blocks
            self._host_prepare(jt[1] if replay else ())
        if replay:
            self._replay(jt)
            self.recovery.append(f"journal replayed (transaction {jt[0]}, {len(jt[1])} blocks)")
            self.sb_problems = []
        # Root must be a directory we can read.
        try:
            root = self._inode(F.ROOT_INO, allow_free=True)
            if not stat.S_ISDIR(int(root["mode"])):
                raise CorruptImage(f"inode {F.ROOT_INO} (root): not a directory")
        except CorruptImage:
            if not (self._lenient and self.readonly):
                raise
        self.generation = int(self._sb["generation"])
        if not self.was_clean:
            self.lost_dirty = DirtySummary.from_sb(self._sb)
        if self.readonly:
            return
        bad_copy = bool(self.sb_problems)
        if bad_copy and self.was_clean and not self.sb_torn and not self._tool:
            # A cleanly closed image has nothing to recover: a bad copy is damage,
            # and rewriting it quietly would hide it. fsck says what else is wrong.
            raise CorruptImage(
                f"{self.sb_problems[0]} on a cleanly closed image: run fsck "
                f"(nvramfs fsck -p {self.path})"
            )
        self._check_orphan_list()
        self._reclaim_orphans()
        if not self.was_clean:
            self._trim_past_eof()
        with self._transaction() as txn:
            self._sb["state"] = F.STATE_DIRTY
            if not self._tool:
                self._sb["mounts"] = int(self._sb["mounts"]) + 1
                self._sb["mount_time_ns"] = _now()
            DirtySummary.empty().to_sb(self._sb)  # this session has nothing dirty yet
            self._dirty_last = None
            txn.blocks.setdefault(0, bytearray(BS))  # force a commit (rewrites both copies)
        if bad_copy:
            self.recovery.extend(f"rewrote {p}" for p in self.sb_problems)
            self.sb_problems = []

    def _remap_private(self) -> None:
        """Readonly open that needs a replay: map the file copy-on-write."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, self._size, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
        self._ro.release()
        self._mm.close()
        self._mm = mm
        self._ro = memoryview(mm).toreadonly()
        self.persist = Persist()  # never the caller's: nothing here is durable
        self.persist.attach(mm)

    def _journal_txn(self) -> tuple[int, dict[int, bytes]] | None:
        L = self.L
        area = self._ro[L.journal_start * BS : (L.journal_start + L.journal_blocks) * BS]
        return journal.decode(area, journal.max_txn_blocks(L.journal_blocks))

    def _check_journal(self, jt: tuple[int, dict[int, bytes]]) -> None:
        """A committed transaction we would replay must be sane first."""
        seq, blocks = jt
        L = self.L
        for home in blocks:
            if home >= L.nr_blocks or L.journal_start <= home < L.bbitmap_start:
                raise CorruptImage(f"journal (block {L.journal_start}): home block {home} invalid")
        if 0 not in blocks or 1 not in blocks:
            raise CorruptImage(f"journal (block {L.journal_start}): transaction lacks a superblock")
        sb, why = self._check_sb(memoryview(blocks[0]), self._size)
        if sb is None:
            raise CorruptImage(f"journal (block {L.journal_start}): superblock image: {why}")
        if F.Layout.from_sb(sb) != L or int(sb["generation"]) != seq:
            raise CorruptImage(
                f"journal (block {L.journal_start}): superblock image mismatch "
                f"(generation {int(sb['generation'])}, transaction {seq})"
            )

    def _replay(self, jt: tuple[int, dict[int, bytes]]) -> None:
        journal.checkpoint(self.persist, jt[1])
        self._sb = np.frombuffer(jt[1][0][: F.SB_SIZE], F.SB_DTYPE)[0].copy()

    # ---------------------------------------------------------------- close
    def close(self, clean: bool = True) -> None:
        """Unmap; writable and `clean`: reclaim orphans, mark cleanly unmounted."""
        if self._mm is None:
            return
        try:
            if not self.readonly and clean and not self.corrupt:
                if self.persist.bulk:  # end of mkfs: everything durable, then one journaled txn
                    self.persist.sync()
                    self.persist.bulk = False
                self._reclaim_orphans()
                with self._transaction() as txn:
                    self._sb["state"] = F.STATE_CLEAN
                    if int(self._sb["dirty_time_ns"]):
                        DirtySummary.empty().to_sb(self._sb)
                    txn.blocks.setdefault(0, bytearray(BS))
        finally:
            self._release_map()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(clean=exc[0] is None)

    # ------------------------------------------------------------ raw blocks
    def _block(self, b: int) -> memoryview:
        """Block `b` as this transaction sees it (its copy, else the mapping)."""
        txn = self._txn
        if txn is not None:
            cur = txn.blocks.get(b)
            if cur is not None:
                return memoryview(cur)
        return self._ro[b * BS : (b + 1) * BS]

    def _wblock(self, b: int, kind: int = 0, owner: int = 0, fresh: bool = False) -> bytearray:
        """The transaction's writable copy of block `b` (sealed with kind/owner at commit)."""
        txn = self._txn
        assert txn is not None, "write outside a transaction"
        if not 0 < b < self.nr_blocks:
            raise CorruptImage(f"write to block {b} outside the device")
        cur = txn.blocks.get(b)
        if cur is None:
            cur = bytearray(BS) if fresh else bytearray(self._ro[b * BS : (b + 1) * BS])
            txn.blocks[b] = cur
        elif fresh:
            cur[:] = bytes(BS)
        if kind:
            txn.seal[b] = (kind, owner)
        return cur

    def _check_block(self, b: int, kind: int, owner: int, what: str) -> memoryview:
        L = self.L
        if not L.data_start <= b < L.nr_blocks:
            raise CorruptImage(f"{what}: block {b} outside the data area")
        blk = self._block(b)
        if self._txn is None or b not in self._txn.blocks:
            why = F.check_tail(blk, b, kind, owner)
            if why:
                raise CorruptImage(f"{what} (block {b}): {why}")
        return blk

    # -------------------------------------------------------------- inodes
    def _ino_loc(self, ino: int) -> tuple[int, int]:
        if not 0 < ino < self.L.nr_inodes:
            raise FsError(errno.ENOENT, f"inode {ino} out of range")
        return self.L.itable_start + ino // F.INODES_PER_BLOCK, (ino % F.INODES_PER_BLOCK) * 256

    def _inode(self, ino: int, allow_free: bool = False) -> np.void:
        """Inode `ino` (checked); free inodes raise ENOENT unless allow_free."""
        b, off = self._ino_loc(ino)
        raw = self._block(b)[off : off + F.INODE_SIZE]
        rec = np.frombuffer(raw, F.INODE_DTYPE)[0]
        if int(rec["mode"]) == 0:
            if allow_free:
                return rec
            raise FsError(errno.ENOENT, f"inode {ino} is free")
        if self._txn is None or ino not in self._txn.inos:
            if F.inode_crc(raw, ino) != int(rec["crc"]):
                raise CorruptImage(f"inode {ino} (inode table block {b}): bad checksum")
            if stat.S_IFMT(int(rec["mode"])) not in _FTYPE:
                raise CorruptImage(f"inode {ino}: bad file type in mode {int(rec['mode']):#o}")
        return rec

    def _winode(self, ino: int) -> np.void:
        b, off = self._ino_loc(ino)
        blk = self._wblock(b)
        self._txn.inos.add(ino)
        return np.frombuffer(blk, F.INODE_DTYPE)[off // F.INODE_SIZE]

    def getattr(self, ino: int) -> Attr:
        """stat(2) of `ino`; cached until a transaction changes the inode."""
        a = self._attrs.get(ino)
        if a is not None:
            return a
        r = self._inode(ino)
        a = Attr(
            ino,
            int(r["mode"]),
            int(r["uid"]),
            int(r["gid"]),
            int(r["nlink"]),
            int(r["size"]),
            int(r["atime_ns"]),
            int(r["mtime_ns"]),
            int(r["ctime_ns"]),
            int(r["rdev"]),
            int(r["blocks"]) * (BS // 512),
        )
        if self._txn is None:
            self._attrs[ino] = a
        return a

    def inode_generation(self, ino: int) -> int:
        """The inode's generation (`igen`): with the number and the image uuid, a file's
        identity across mounts (a freed number comes back with another generation)."""
        return int(self._inode(ino)["igen"])

    @property
    def uuid(self) -> str:
        """The image's uuid (mkfs chose it), as 8-4-4-4-12 hex."""
        import uuid as uuid_

        return str(uuid_.UUID(bytes=bytes(self._sb["uuid"].tobytes())))

    def bmap(self, ino: int, first: int, count: int) -> np.ndarray:
        """NVRAM block of each page [first, first+count) of `ino`; 0 = hole."""
        e = self._ext(ino)
        if count == 1:
            return np.array([e.lookup_one(first) if len(e.lblk) else 0], np.int64)
        return e.lookup(np.arange(first, first + count, dtype=np.int64))

    def bmap_pages(self, ino: int, pages: np.ndarray | list[int]) -> np.ndarray:
        """NVRAM block of each of `pages` of `ino` (any order, any spread); 0 = hole.
        For scattered pages: `bmap` of their span would build an array as long as
        the span, terabytes of pages in a sparse file."""
        return self._ext(ino).lookup(np.asarray(pages, dtype=np.int64))

    def mapped_runs(self, ino: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of the runs of pages in [first, first+count) of `ino` that
        have a block, ascending: the extent map clipped, never an array per page (a
        sparse file may span terabytes)."""
        e = self._ext(ino)
        end = first + count
        lo, hi = e.lblk, e.lblk + e.len
        keep = (hi > first) & (lo < end)
        lo = np.maximum(lo[keep], first)
        return lo, np.minimum(hi[keep], end) - lo

    @property
    def max_size(self) -> int:
        """The largest file size the extent maps can address (EFBIG past it)."""
        return MAX_PAGES * BS - 1

    def block_view(self, block: int, count: int = 1) -> memoryview:
        """Blocks [block, block+count) as a read-only, zero-copy slice of the mapping."""
        if not (0 < block and count >= 0 and block + count <= self.nr_blocks):
            raise ValueError(f"blocks {block}+{count} outside the device ({self.nr_blocks})")
        return self._ro[block * BS : (block + count) * BS]

    # ---------------------------------------------------------- transactions
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Txn]:
        """One crash-consistent update: all its blocks become durable together."""
        self._check_writable()
        assert self._txn is None, "nested transaction"
        txn = _Txn()
        snap = self._sb.copy()
        hints = self._alloc_snapshot()
        self._txn = txn
        try:
            yield txn
        except BaseException:
            self._txn = None
            self._sb = snap
            self._alloc_restore(hints)
            for ino in txn.inos:
                self._attrs.pop(ino, None)
                self._parents.pop(ino, None)
                self._exts.pop(ino, None)
                self._dirs.pop(ino, None)
            raise
        try:
            self._commit(txn)
        finally:
            self._txn = None
            for ino in txn.inos:
                self._attrs.pop(ino, None)
                self._parents.pop(ino, None)

    def _check_writable(self) -> None:
        """What every update checks first: a writable, open image not found damaged."""
        if self.readonly:
            raise FsError(errno.EROFS)
        if self._mm is None:
            raise FsError(errno.EBADF, "image closed")
        if self.corrupt:
            raise CorruptImage(f"{self.corrupt} (no writes since)")

    def _commit(self, txn: _Txn) -> None:
        if not txn.blocks:
            return
        if len(txn.blocks) + 2 > journal.max_txn_blocks(self.L.journal_blocks):
            raise FsError(errno.EFBIG, "transaction larger than the journal")
        for ino in txn.inos:
            b, off = self._ino_loc(ino)
            blk = txn.blocks[b]
            raw = memoryview(blk)[off : off + F.INODE_SIZE]
            if int.from_bytes(raw[0:4], "little") == 0:
                raw[:] = bytes(F.INODE_SIZE)
            else:
                raw[F.INODE_SIZE - 4 :] = F.inode_crc(raw, ino).to_bytes(4, "little")
        for b, (kind, owner) in txn.seal.items():
            F.seal_block(txn.blocks[b], kind, owner, b)
        self.generation = int(self._sb["generation"]) + 1
        self._sb["generation"] = self.generation
        self._sb["write_time_ns"] = _now()
        self._sb["crc"] = 0
        raw = bytearray(self._sb.tobytes())
        raw[F.SB_SIZE - 4 :] = F.sb_crc(raw).to_bytes(4, "little")
        self._sb["crc"] = int.from_bytes(raw[F.SB_SIZE - 4 :], "little")
        sbblk = bytes(raw) + bytes(BS - F.SB_SIZE)
        txn.blocks[0] = bytearray(sbblk)
        txn.blocks[1] = bytearray(sbblk)
        if self.persist.bulk:
            journal.checkpoint(self.persist, txn.blocks)
        else:
            journal.commit(self.persist, self.L.journal_start, self.generation, txn.blocks)

    def _txn_room(self) -> int:
        """Blocks the open transaction may still add (keeps slack for inodes and bitmaps)."""
        return journal.max_txn_blocks(self.L.journal_blocks) - len(self._txn.blocks) - 8

    def lookup(self, parent: int, name: bytes) -> int:
        """The inode `name` in directory `parent` names (ENOENT if none)."""
        if name == b".":
            self._dir(parent)
            return parent
        if name == b"..":
            self._dir(parent)
            return int(self._inode(parent)["parent"]) or parent
        if len(name) > F.NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        hit = self._dir(parent).names.get(bytes(name))
        if hit is None:
            raise FsError(errno.ENOENT)
        ino = hit[0]
        try:
            self.getattr(ino)
        except FsError:
            raise CorruptImage(
                f"directory inode {parent} entry {bytes(name)!r}: names free inode {ino}"
            ) from None
        if stat.S_ISDIR(self.getattr(ino).mode) and self._parent_of(ino) != parent:
            raise CorruptImage(
                f"directory inode {parent} entry {bytes(name)!r}: directory inode {ino} has "
                f"parent {int(self._inode(ino)['parent'])} (directory loop or hard link)"
            )
        return ino

    def _parent_of(self, dino: int) -> int:
        p = self._parents.get(dino)
        if p is None:
            p = int(self._inode(dino)["parent"])
            if self._txn is None:
                self._parents[dino] = p
        return p

    def readdir(self, ino: int, after: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """Entries (cookie, name, ino) with cookie > `after`; "." and ".." are not listed.

        A cookie is the entry's position (block * 4096 + offset + 1): entries
        never move, so cookies stay valid across other entries' changes.
        """
        d = self._dir(ino)
        return self._readdir_from(d, max(0, (after - 1) // BS) if after else 0, after)

    @staticmethod
    def _readdir_from(d: _Dir, first: int, after: int) -> Iterator[tuple[int, bytes, int]]:
        """Lazily, from block `first` on (a long listing is not rebuilt per request)."""
        for lb in range(first, len(d.blocks)):
            for off, _rl, e_ino, _ft, name in list(d.blocks[lb]):
                cookie = lb * BS + off + 1
                if e_ino and cookie > after:
                    yield cookie, name, e_ino

    def readlink(self, ino: int) -> bytes:
        rec = self._inode(ino)
        if not stat.S_ISLNK(int(rec["mode"])):
            raise FsError(errno.EINVAL)
        size = int(rec["size"])
        if not 0 < size <= F.SYMLINK_MAX:
            raise CorruptImage(f"symlink inode {ino}: bad target length {size}")
        if int(rec["flags"]) & F.IFLAG_INLINE_DATA:
            if size > F.INLINE_SIZE:
                raise CorruptImage(f"symlink inode {ino}: inline target too long ({size})")
            return rec["inline"].tobytes()[:size]
        b = int(self.bmap(ino, 0, 1)[0])
        if b == 0:
            raise CorruptImage(f"symlink inode {ino}: no target block")
        return bytes(self._block(b)[:size])

    def statfs(self) -> StatFs:
        """Counts from the superblock (no scan); reservations are not free."""
        free = max(0, int(self._sb["free_blocks"]) - self.reserved - META_HEADROOM)
        return StatFs(
            BS,
            self.nr_blocks,
            free,
            free,
            self.L.nr_inodes - 1,
            int(self._sb["free_inodes"]),
        )

    def reserve(self, nblocks: int) -> None:
        """Promise `nblocks` to writeback: ENOSPC now (at write()) rather than later."""
        if nblocks < 0:
            raise ValueError("negative reservation")
        if int(self._sb["free_blocks"]) - self.reserved - nblocks < META_HEADROOM:
            raise FsError(errno.ENOSPC)
        self._host_reserve(nblocks)  # and backed on the host (HostFull otherwise)
        self.reserved += nblocks

    def unreserve(self, nblocks: int) -> None:
        self.reserved = max(0, self.reserved - nblocks)

    # ------------------------------------------------------------ namespace
    def _new_inode(self, mode: int, uid: int, gid: int, rdev: int = 0) -> tuple[int, np.void]:
        ino = self._alloc_inode()
        rec = self._winode(ino)
        now = _now()
        b, off = self._ino_loc(ino)
        self._txn.blocks[b][off : off + F.INODE_SIZE] = bytes(F.INODE_SIZE)
        rec["mode"], rec["uid"], rec["gid"], rec["nlink"] = mode, uid, gid, 1
        rec["atime_ns"] = rec["mtime_ns"] = rec["ctime_ns"] = now
        rec["rdev"] = rdev
        rec["igen"] = self.generation & 0xFFFF_FFFF
        self._exts[ino] = _Ext(*(np.zeros(0, np.int64) for _ in range(3)), [])
        return ino, rec

    def _touch_dir(self, dino: int, now: int | None = None) -> None:
        rec = self._winode(dino)
        rec["mtime_ns"] = rec["ctime_ns"] = now or _now()

    def _prepare_add(self, parent: int, name: bytes) -> None:
        _check_name(name)
        if name in self._dir(parent).names:
            raise FsError(errno.EEXIST)
        if int(self._inode(parent)["nlink"]) == 0:
            raise FsError(errno.ENOENT, "directory was removed")

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> int:
        """A new regular file or special file (fifo, char/block device, socket)."""
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            raise FsError(errno.EINVAL, "create: not a file type")
        if fmt not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        with self._transaction():
            self._prepare_add(parent, name)
            ino, _rec = self._new_inode(fmt | (mode & 0o7777), uid, gid, rdev)
            self._dir_add(parent, name, ino, _FTYPE[fmt])
            self._touch_dir(parent)
        return ino

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> int:
        with self._transaction():
            self._prepare_add(parent, name)
            prec = self._winode(parent)
            if int(prec["nlink"]) >= LINK_MAX:
                raise FsError(errno.EMLINK)
            ino, rec = self._new_inode(stat.S_IFDIR | (mode & 0o7777), uid, gid)
            rec["nlink"] = 2
            rec["parent"] = parent
            self._dirs[ino] = _Dir()
            self._dir_add(parent, name, ino, F.DT_DIR)
            prec["nlink"] = int(prec["nlink"]) + 1
            self._touch_dir(parent)
        return ino

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> int:
        if not target or b"\0" in target:
            raise FsError(errno.EINVAL, "bad symlink target")
        if len(target) > F.SYMLINK_MAX:
            raise FsError(errno.ENAMETOOLONG)
        with self._transaction():
            self._prepare_add(parent, name)
            ino, rec = self._new_inode(stat.S_IFLNK | 0o777, uid, gid)
            rec["size"] = len(target)
            if len(target) <= F.INLINE_SIZE:
                rec["flags"] = F.IFLAG_INLINE_DATA
                rec["inline"] = bytes(target).ljust(F.INLINE_SIZE, b"\0")
            else:
                b = self._alloc_meta()
                blk = self._wblock(b, fresh=True)  # a data block, journaled with its inode
                blk[: len(target)] = target
                self._store_ext(
                    ino, np.array([0], np.int64), np.array([1], np.int64), np.array([b], np.int64)
                )
                rec["blocks"] = 1
            self._dir_add(parent, name, ino, F.DT_LNK)
            self._touch_dir(parent)
        return ino

    def link(self, ino: int, new_parent: int, new_name: bytes) -> None:
        with self._transaction():
            rec = self._inode(ino)
            if stat.S_ISDIR(int(rec["mode"])):
                raise FsError(errno.EPERM, "hard link to a directory")
            if int(rec["nlink"]) == 0:
                raise FsError(errno.ENOENT)
            if int(rec["nlink"]) >= LINK_MAX:
                raise FsError(errno.EMLINK)
            self._prepare_add(new_parent, new_name)
            self._dir_add(new_parent, new_name, ino, _FTYPE[stat.S_IFMT(int(rec["mode"]))])
            rec = self._winode(ino)
            rec["nlink"] = int(rec["nlink"]) + 1
            rec["ctime_ns"] = _now()
            self._touch_dir(new_parent)

    @staticmethod
    def _is_open(still_open: bool | Callable[[int], bool], ino: int) -> bool:
        return still_open(ino) if callable(still_open) else bool(still_open)

    def _drop_link(self, ino: int, still_open: bool | Callable[[int], bool]) -> bool:
        """nlink -= 1; at zero, free the inode or put it on the orphan list.

        Returns True when the inode still has to be reclaimed after the commit
        (too big to free in this transaction: it went onto the orphan list).
        """
        rec = self._winode(ino)
        n = int(rec["nlink"]) - 1
        rec["nlink"] = max(n, 0)
        rec["ctime_ns"] = _now()
        if n > 0:
            return False
        if self._is_open(still_open, ino) or not self._free_all(ino, final=True):
            self._orphan_add(ino)
            return not self._is_open(still_open, ino)
        return False

    def unlink(
        self, parent: int, name: bytes, *, still_open: bool | Callable[[int], bool] = False
    ) -> int:
        """Remove a non-directory entry; returns its inode.

        At nlink 0 the inode is freed, or, when `still_open` (a bool or a
        predicate on the inode), put on the orphan list until `release(ino)`.
        """
        _check_name(name)
        with self._transaction():
            ino = self.lookup(parent, name)
            if stat.S_ISDIR(int(self._inode(ino)["mode"])):
                raise FsError(errno.EISDIR)
            self._dir_remove(parent, name)
            self._touch_dir(parent)
            later = self._drop_link(ino, still_open)
        if later:
            self._reclaim(ino)
        return ino

    def rmdir(self, parent: int, name: bytes) -> None:
        _check_name(name)
        with self._transaction():
            ino = self.lookup(parent, name)
            rec = self._inode(ino)
            if not stat.S_ISDIR(int(rec["mode"])):
                raise FsError(errno.ENOTDIR)
            if self._dir(ino).names:
                raise FsError(errno.ENOTEMPTY)
            self._dir_remove(parent, name)
            prec = self._winode(parent)
            prec["nlink"] = int(prec["nlink"]) - 1
            self._touch_dir(parent)
            self._winode(ino)["nlink"] = 0
            if not self._free_all(ino, final=True):
                raise FsError(errno.EFBIG, "directory too large to remove in one transaction")

    def _is_ancestor(self, a: int, b: int) -> bool:
        """Is directory `a` equal to `b` or above it?"""
        seen = 0
        while True:
            if b == a:
                return True
            if b == F.ROOT_INO:
                return False
            b = int(self._inode(b)["parent"])
            seen += 1
            if b == 0 or seen > self.L.nr_inodes:
                raise CorruptImage(f"directory loop or broken parent chain above inode {a}")

    def rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int = 0,
        *,
        still_open: bool | Callable[[int], bool] = False,
    ) -> None:
        """rename(2)/renameat2 with RENAME_NOREPLACE or RENAME_EXCHANGE.

        A replaced target that reaches nlink 0 is freed, or orphaned when
        `still_open` says so (as for unlink).
        """
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise FsError(errno.EINVAL)
        _check_name(old_name)
        _check_name(new_name)
        later = 0
        with self._transaction():
            src = self.lookup(old_parent, old_name)
            srec = self._inode(src)
            s_dir = stat.S_ISDIR(int(srec["mode"]))
            s_ft = _FTYPE[stat.S_IFMT(int(srec["mode"]))]
            self._dir(new_parent)
            dst = self._dir(new_parent).names.get(new_name)
            dst = dst[0] if dst else 0
            if flags & RENAME_EXCHANGE:
                if not dst:
                    raise FsError(errno.ENOENT)
                drec = self._inode(dst)
                d_dir = stat.S_ISDIR(int(drec["mode"]))
                if s_dir and self._is_ancestor(src, new_parent):
                    raise FsError(errno.EINVAL)
                if d_dir and self._is_ancestor(dst, old_parent):
                    raise FsError(errno.EINVAL)
                if src == dst:
                    return
                self._dir_set(old_parent, old_name, dst, _FTYPE[stat.S_IFMT(int(drec["mode"]))])
                self._dir_set(new_parent, new_name, src, s_ft)
                if old_parent != new_parent:
                    if s_dir:
                        self._winode(src)["parent"] = new_parent
                    if d_dir:
                        self._winode(dst)["parent"] = old_parent
                    delta = int(s_dir) - int(d_dir)
                    if delta:
                        op, np_ = self._winode(old_parent), self._winode(new_parent)
                        op["nlink"] = int(op["nlink"]) - delta
                        np_["nlink"] = int(np_["nlink"]) + delta
                now = _now()
                for i in (src, dst):
                    self._winode(i)["ctime_ns"] = now
                self._touch_dir(old_parent, now)
                self._touch_dir(new_parent, now)
                return
            if dst == src:
                return  # two links to one inode: POSIX says do nothing
            if s_dir and self._is_ancestor(src, new_parent):
                raise FsError(errno.EINVAL, "rename a directory into itself")
            if dst:
                if flags & RENAME_NOREPLACE:
                    raise FsError(errno.EEXIST)
                drec = self._inode(dst)
                d_dir = stat.S_ISDIR(int(drec["mode"]))
                if s_dir and not d_dir:
                    raise FsError(errno.ENOTDIR)
                if d_dir and not s_dir:
                    raise FsError(errno.EISDIR)
                if d_dir and self._dir(dst).names:
                    raise FsError(errno.ENOTEMPTY)
            else:
                _check_name(new_name)
            if new_parent != old_parent and s_dir:
                np_ = self._inode(new_parent)
                if int(np_["nlink"]) >= LINK_MAX:
                    raise FsError(errno.EMLINK)
            now = _now()
            self._dir_remove(old_parent, old_name)
            if dst:
                self._dir_set(new_parent, new_name, src, s_ft)
                if d_dir:
                    np_ = self._winode(new_parent)
                    np_["nlink"] = int(np_["nlink"]) - 1
                    self._winode(dst)["nlink"] = 0
                    if not self._free_all(dst, final=True):
                        raise FsError(errno.EFBIG, "directory too large to replace")
                elif self._drop_link(dst, still_open):
                    later = dst
            else:
                self._dir_add(new_parent, new_name, src, s_ft)
            if s_dir and new_parent != old_parent:
                self._winode(src)["parent"] = new_parent
                op, np_ = self._winode(old_parent), self._winode(new_parent)
                op["nlink"] = int(op["nlink"]) - 1
                np_["nlink"] = int(np_["nlink"]) + 1
            self._winode(src)["ctime_ns"] = now
            self._touch_dir(old_parent, now)
            self._touch_dir(new_parent, now)
        if later:
            self._reclaim(later)

    # --------------------------------------------------------- freeing / orphans
    def _free_all(self, ino: int, final: bool) -> bool:
        """Free every block of `ino`, then (final) the inode; False if it did not fit."""
        rec = self._inode(ino)
        if not (int(rec["flags"]) & F.IFLAG_INLINE_DATA):
            if not self._free_tail(ino, 0):
                return False
        rec = self._winode(ino)
        xb = int(rec["xattr_blk"])
        if xb:
            self._free_runs([(xb, 1)])
            rec["xattr_blk"] = 0
        if final:
            self._free_inode(ino)
        return True

    def _orphan_add(self, ino: int) -> None:
        rec = self._winode(ino)
        if int(rec["flags"]) & F.IFLAG_ORPHAN:
            return
        rec["flags"] = int(rec["flags"]) | F.IFLAG_ORPHAN
        rec["orphan_next"] = int(self._sb["orphan_head"])
        self._sb["orphan_head"] = ino
        self._sb["orphan_count"] = int(self._sb["orphan_count"]) + 1

    def _orphan_remove(self, ino: int) -> None:
        prev = 0
        cur = int(self._sb["orphan_head"])
        steps = 0
        while cur and cur != ino:
            prev = cur
            cur = int(self._inode(cur, allow_free=True)["orphan_next"])
            steps += 1
            if steps > self.L.nr_inodes:
                raise CorruptImage("orphan list: loop")
        if cur != ino:
            raise CorruptImage(f"orphan list: inode {ino} flagged orphan but not on the list")
        nxt = int(self._inode(ino)["orphan_next"])
        if prev:
            self._winode(prev)["orphan_next"] = nxt
        else:
            self._sb["orphan_head"] = nxt
        self._sb["orphan_count"] = max(0, int(self._sb["orphan_count"]) - 1)
        rec = self._winode(ino)
        rec["orphan_next"] = 0
        rec["flags"] = int(rec["flags"]) & ~F.IFLAG_ORPHAN

    def _reclaim(self, ino: int) -> None:
        """Free an orphan (nlink 0) or finish its truncate, in as many transactions as needed."""
        while True:
            with self._transaction():
                rec = self._inode(ino)
                if int(rec["nlink"]) == 0:
                    if self._free_all(ino, final=False):
                        self._orphan_remove(ino)
                        self._free_inode(ino)
                        return
                else:
                    npages = -(-int(rec["size"]) // BS)
                    if self._free_tail(ino, npages):
                        self._orphan_remove(ino)
                        return

    def release(self, ino: int) -> None:
        """Last close of `ino`: an orphan (nlink 0) is freed with its blocks now."""
        try:
            rec = self._inode(ino)
        except FsError:
            return
        if int(rec["nlink"]) == 0 and int(rec["flags"]) & F.IFLAG_ORPHAN:
            self._reclaim(ino)

    def _check_orphan_list(self) -> None:
        """Walk the orphan list before recovery writes anything (O(orphans))."""
        seen: set[int] = set()
        cur = int(self._sb["orphan_head"])
        while cur:
            if cur in seen or not 0 < cur < self.L.nr_inodes:
                raise CorruptImage(f"orphan list: loop or bad inode {cur}")
            seen.add(cur)
            rec = self._inode(cur, allow_free=True)
            if int(rec["mode"]) == 0 or not int(rec["flags"]) & F.IFLAG_ORPHAN:
                raise CorruptImage(f"orphan list: inode {cur} is not an orphan")
            self._inode(cur)  # checksum
            cur = int(rec["orphan_next"])
        if len(seen) != int(self._sb["orphan_count"]):
            raise CorruptImage(
                f"orphan list: {len(seen)} inodes, superblock counts {int(self._sb['orphan_count'])}"
            )

    def _reclaim_orphans(self) -> None:
        n = 0
        t = 0
        while int(self._sb["orphan_head"]):
            ino = int(self._sb["orphan_head"])
            rec = self._inode(ino, allow_free=True)
            if not int(rec["flags"]) & F.IFLAG_ORPHAN or int(rec["mode"]) == 0:
                raise CorruptImage(f"orphan list: inode {ino} is not an orphan")
            if int(rec["nlink"]) == 0:
                n += 1
            else:
                t += 1
            self._reclaim(ino)
        if n:
            self.recovery.append(f"reclaimed {n} orphan inode{'s' * (n != 1)}")
        if t:
            self.recovery.append(f"finished {t} interrupted truncate{'s' * (t != 1)}")

    def _trim_past_eof(self) -> None:
        """Crash recovery: nothing of a regular file may survive past its size.

        Ordered writeback programs a page past the on-image size in the same
        session that will later advance the size over it; a crash in between
        leaves that block mapped past EOF, and the tail of the last page may
        hold bytes the size never covered. A later extension of the file
        would show them where zeros belong. So after an unclean shutdown every
        such block is freed and every such tail zeroed (ext4 trims the same
        from its orphan list).
        """
        L = self.L
        bpb = F.BITS_PER_BITMAP_BLOCK
        # Look first, write after. A damaged inode is left as it is, for fsck
        # (the mount reads inodes lazily and answers EIO where it must).
        work: list[tuple[int, int, int | None]] = []
        pages = 0
        damaged = 0
        for i in range(L.ibitmap_blocks):
            used = np.flatnonzero(self._bitmap_bits(L.ibitmap_start, i)) + i * bpb
            for ino in used[(used >= F.ROOT_INO) & (used < L.nr_inodes)].tolist():
                try:
                    rec = self._inode(ino, allow_free=True)
                    if not stat.S_ISREG(int(rec["mode"])) or int(rec["nlink"]) == 0:
                        continue
                    size = int(rec["size"])
                    keep = -(-size // BS)
                    e = self._ext(ino)
                    past = int(np.maximum(e.lblk + e.len - np.maximum(e.lblk, keep), 0).sum())
                    tail = None
                    if size % BS:
                        b = int(self.bmap(ino, size // BS, 1)[0])
                        if b and any(self._block(b)[size % BS :]):
                            tail = b
                except (CorruptImage, FsError):
                    damaged += 1
                    continue
                if past or tail is not None:
                    work.append((ino, size, tail))
                    pages += past
        files = len(work)
        for ino, size, tail in work:
            with self._transaction():
                if tail is not None:
                    blk = self._wblock(tail)
                    blk[size % BS :] = bytes(BS - size % BS)
                done = self._free_tail(ino, -(-size // BS))
            if not done:
                with self._transaction():
                    self._orphan_add(ino)
                self._finish_truncate(ino)
        if damaged:
            self.recovery.append(
                f"{damaged} damaged inode{'s' * (damaged != 1)} not checked past their end "
                f"(run fsck)"
            )
        if files:
            self.recovery.append(
                f"trimmed {pages} page{'s' * (pages != 1)} past the end of "
                f"{files} file{'s' * (files != 1)} (written back, size not yet advanced)"
            )

    # -------------------------------------------------------------- setattr
    def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        ctime_ns: int | None = None,
        ordered_size: int | None = None,
        still_dirty: np.ndarray | None = None,
    ) -> Attr:
        """chmod/chown/truncate/utimens in one transaction; stamps ctime (and mtime on size).

        `ordered_size` (with `still_dirty`) is not a truncate: it pushes the
        cached size of a file written through the page cache under the ordered
        data rule (`_advance_size`): it only grows, frees and zeroes nothing.

        A size change frees the blocks of pages past the new end and zeroes
        the rest of the last partial page (so a later extension reads zeros),
        whether the size grew or shrank: pages between the old and new end
        keep what writeback put there. A change too big for one transaction
        goes via the orphan list and is finished at once (or by recovery).
        """
        later = False
        with self._transaction():
            rec = self._inode(ino)
            fmt = stat.S_IFMT(int(rec["mode"]))
            now = _now()
            w = self._winode(ino)
            if mode is not None:
                w["mode"] = fmt | (mode & 0o7777)
            if uid is not None:
                w["uid"] = uid
            if gid is not None:
                w["gid"] = gid
            if size is not None and size != int(rec["size"]):
                if fmt == stat.S_IFDIR:
                    raise FsError(errno.EISDIR)
                if fmt != stat.S_IFREG:
                    raise FsError(errno.EINVAL)
                if not 0 <= size < MAX_PAGES * BS:
                    raise FsError(errno.EFBIG)
                w["size"] = size
                w["mtime_ns"] = now
                # Nothing may survive past the new end, whether the size grew or
                # shrank: writeback can map pages past a size the FUSE layer has not
                # pushed yet, and a later extension must read zeros there.
                if size % BS:
                    b = int(self.bmap(ino, size // BS, 1)[0])
                    if b and any(self._block(b)[size % BS :]):
                        blk = self._wblock(b)  # journaled: atomic with the size
                        blk[size % BS :] = bytes(BS - size % BS)
                if not self._free_tail(ino, -(-size // BS)):
                    self._orphan_add(ino)
                    later = True
            if ordered_size is not None and size is None:
                self._advance_size(ino, ordered_size, still_dirty)
            if atime_ns is not None:
                w["atime_ns"] = atime_ns
            if mtime_ns is not None:
                w["mtime_ns"] = mtime_ns
            w["ctime_ns"] = ctime_ns if ctime_ns is not None else now
        if later:
            self._finish_truncate(ino)
        return self.getattr(ino)

    def _finish_truncate(self, ino: int) -> None:
        """Free what a big shrink left past EOF, one transaction at a time.

        The inode is on the orphan list meanwhile (so recovery finishes it);
        an unlinked-but-open inode stays there for `release`.
        """
        while True:
            with self._transaction():
                rec = self._inode(ino)
                if self._free_tail(ino, -(-int(rec["size"]) // BS)):
                    if int(rec["nlink"]):
                        self._orphan_remove(ino)
                    return

    # ---------------------------------------------------------------- xattrs
    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        rec = self._inode(ino)
        xb = int(rec["xattr_blk"])
        if not xb:
            return {}
        blk = self._check_block(xb, F.KIND_XATTR, ino, f"inode {ino} xattr block")
        out: dict[bytes, bytes] = {}
        off = 0
        while off + 4 <= F.PAYLOAD:
            nl = blk[off]
            if nl == 0:
                break
            vl = int.from_bytes(blk[off + 2 : off + 4], "little")
            end = off + 4 + nl + vl
            if end > F.PAYLOAD:
                raise CorruptImage(f"inode {ino} xattr block {xb}: entry at {off} overruns")
            out[bytes(blk[off + 4 : off + 4 + nl])] = bytes(blk[off + 4 + nl : end])
            off = end
        return out

    def _store_xattrs(self, ino: int, xs: dict[bytes, bytes]) -> None:
        # Measured before encoding: a value of 64 KiB (the VFS allows that much)
        # has a length the entry's u16 cannot hold. ENOSPC, as ext4 without ea_inode.
        if sum(4 + len(k) + len(v) for k, v in xs.items()) > F.PAYLOAD:
            raise FsError(errno.ENOSPC, "xattrs do not fit in one block")
        body = b"".join(
            bytes([len(k), 0]) + len(v).to_bytes(2, "little") + k + v for k, v in sorted(xs.items())
        )
        if len(body) > F.PAYLOAD:
            raise FsError(errno.ENOSPC, "xattrs do not fit in one block")
        rec = self._winode(ino)
        xb = int(rec["xattr_blk"])
        if not xs:
            if xb:
                self._free_runs([(xb, 1)])
                rec["xattr_blk"] = 0
                rec["blocks"] = int(rec["blocks"]) - 1
            return
        if not xb:
            xb = self._alloc_meta()
            rec["xattr_blk"] = xb
            rec["blocks"] = int(rec["blocks"]) + 1
        blk = self._wblock(xb, F.KIND_XATTR, ino, fresh=True)
        blk[: len(body)] = body

    def getxattr(self, ino: int, name: bytes) -> bytes:
        v = self._xattrs(ino).get(bytes(name))
        if v is None:
            raise FsError(errno.ENODATA)
        return v

    def listxattr(self, ino: int) -> list[bytes]:
        return list(self._xattrs(ino))

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if not name or len(name) > F.NAME_MAX:
            raise FsError(errno.ERANGE)
        with self._transaction():
            xs = self._xattrs(ino)
            if flags & XATTR_CREATE and name in xs:
                raise FsError(errno.EEXIST)
            if flags & XATTR_REPLACE and name not in xs:
                raise FsError(errno.ENODATA)
            xs[bytes(name)] = bytes(value)
            self._store_xattrs(ino, xs)
            self._winode(ino)["ctime_ns"] = _now()

    def removexattr(self, ino: int, name: bytes) -> None:
        with self._transaction():
            xs = self._xattrs(ino)
            if xs.pop(bytes(name), None) is None:
                raise FsError(errno.ENODATA)
            self._store_xattrs(ino, xs)
            self._winode(ino)["ctime_ns"] = _now()

    # ------------------------------------------------------------- writeback
    def _advance_size(self, ino: int, i_size: int, still_dirty: np.ndarray | None) -> None:
        """Ordered data (ext4 data=ordered), inside the open transaction: the size on
        the image becomes the cached size `i_size` clamped to the start of the first
        page at or past the on-image size that is still dirty in DRAM (`still_dirty`:
        sorted page indices), so a crash shows the old size or the new size with its
        data, never a size over data that is not on the image. Never shrinks, never
        frees or zeroes anything (that is truncate's job, `setattr(size=)`)."""
        disk = int(self._inode(ino)["size"])
        new = int(i_size)
        if new <= disk:
            return
        if still_dirty is not None and len(still_dirty):
            d = np.asarray(still_dirty, dtype=np.int64)
            k = int(np.searchsorted(d, disk // BS))
            if k < len(d):
                new = min(new, int(d[k]) * BS)
        if new > disk:
            if new >= MAX_PAGES * BS:
                raise FsError(errno.EFBIG)
            self._winode(ino)["size"] = new

    def write_pages(
        self,
        ino: int,
        indices: np.ndarray,
        pages: Sequence,
        *,
        size: int | None = None,
        still_dirty: np.ndarray | None = None,
    ) -> np.ndarray:
        """Write back whole pages; durable on return. Returns each page's block.

        Ordered mode: the data is stored, flushed and fenced before the
        transaction that maps new blocks commits, so a crash never exposes
        garbage. A page whose block exists is rewritten *in place* (its pfn,
        which mm may have mapped, stays valid; a power cut during the store
        can tear that one page, as in ext4 data=ordered). Holes get new
        blocks, taken from the reservation first. With `size` (the cached
        size) the on-image size advances in the same transaction as the data
        under the ordered rule (`_advance_size`; `still_dirty`: the file's
        pages that stay dirty in DRAM after this call); else sizes are not
        changed.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) != len(pages):
            raise ValueError("indices and pages differ in length")
        rec = self._inode(ino)
        if not stat.S_ISREG(int(rec["mode"])):
            raise FsError(errno.EINVAL, "write_pages on a non-regular inode")
        if self.readonly:
            raise FsError(errno.EROFS)
        if len(idx) and (idx.min() < 0 or idx.max() >= MAX_PAGES):
            raise FsError(errno.EFBIG)
        rows = self._page_rows(pages)
        if rows is not None:
            if len(rows) != len(idx):
                raise ValueError("indices and pages differ in length")
            # Last write of a page index wins; rows in index order (only the
            # row numbers are permuted: the data is copied once, by the store).
            if len(idx) < 2 or bool((idx[1:] > idx[:-1]).all()):
                pidx, data, order = idx, rows, None
            else:
                rev = idx[::-1]
                pidx, first = np.unique(rev, return_index=True)
                data = rows.take(len(idx) - 1 - first)
                order = pidx
        else:
            latest = {int(i): k for k, i in enumerate(idx.tolist())}
            order = sorted(latest)
            data = [self._page_bytes(pages[latest[i]]) for i in order]
            pidx = np.array(order, dtype=np.int64)
        out = np.zeros(len(pidx), np.int64)
        order_size = None if size is None else (int(size), still_dirty)
        done = 0
        while done < len(pidx):
            done += self._write_batch(ino, pidx, data, out, done, order_size)
        if not len(pidx) and order_size is not None:
            with self._transaction():
                self._advance_size(ino, *order_size)
        if rows is not None:
            return out if order is None else out[np.searchsorted(order, idx)]
        result = np.zeros(len(idx), np.int64)
        pos = {i: k for k, i in enumerate(order)}
        for k, i in enumerate(idx.tolist()):
            result[k] = out[pos[i]]
        return result

    @staticmethod
    def _page_rows(pages: object) -> _Rows | None:
        """`pages` as rows of one (N, 4096) uint8 array when it is one, converts to
        one (`__array__`), or names one (`page_rows()` -> (array, rows): page k is
        array[rows[k]], as mm's batches of frames do, so scattered frames are
        gathered by the store itself). Then each run of adjacent blocks is stored
        with one copy. None for a sequence of buffers."""
        if isinstance(pages, list | tuple | bytes | bytearray | memoryview):
            return None
        named = getattr(pages, "page_rows", None)
        if named is not None:
            src, rows = named()
            rows = np.asarray(rows, dtype=np.int64)
        else:
            if not isinstance(pages, np.ndarray):
                if not hasattr(pages, "__array__"):
                    return None
                pages = np.asarray(pages)
            src, rows = pages, None
        if (
            not isinstance(src, np.ndarray)
            or src.ndim != 2
            or src.shape[1] != BS
            or src.dtype != np.uint8
        ):
            raise ValueError("pages: an array of them must be (n, 4096) bytes")
        return _Rows(src, rows)

    @staticmethod
    def _page_bytes(p: object) -> memoryview:
        mv = memoryview(p).cast("B")
        if len(mv) > BS:
            raise ValueError("page larger than 4096 bytes")
        return mv

    def _write_batch(
        self,
        ino: int,
        pidx: np.ndarray,
        data: list,
        out: np.ndarray,
        start: int,
        order_size: tuple[int, np.ndarray | None] | None = None,
    ) -> int:
        """Write pages [start, ...): every in-place one, and as many holes as one txn maps.

        The mapping transaction is built first (in memory), then the data is
        stored, flushed and fenced, then the transaction commits: ordered mode.
        A transaction that would not fit the journal is rebuilt with half the
        holes.
        """
        blocks0 = self._ext(ino).lookup(pidx[start:])
        holes0 = np.flatnonzero(blocks0 == 0)
        if not len(holes0) and (
            order_size is None or int(order_size[0]) <= int(self._inode(ino)["size"])
        ):
            # In place, and no size to advance: the transaction would commit
            # nothing, so none is opened (a streaming rewrite's every batch).
            # The data is stored, flushed and fenced exactly as inside one.
            self._check_writable()
            assert self._txn is None, "nested transaction"
            self._store_pages(blocks0, data[start:])
            out[start:] = blocks0
            return len(blocks0)
        k = min(len(holes0), 8192)
        if k > int(self._sb["free_blocks"]):
            raise FsError(errno.ENOSPC)
        cap = journal.max_txn_blocks(self.L.journal_blocks) - 2
        while True:
            blocks = blocks0.copy()
            holes = holes0[:k]
            stop = int(holes0[k]) if k < len(holes0) else len(blocks)
            try:
                with self._transaction() as txn:
                    if k:
                        self._map_holes(ino, pidx[start + holes], blocks, holes)
                        if len(txn.blocks) > cap:
                            raise _TooBig
                    if order_size is not None:
                        # Pages of this call a later transaction writes are still dirty.
                        i_size, dirty = order_size
                        rest = pidx[start + stop :]
                        if len(rest):
                            both = rest if dirty is None else np.concatenate([dirty, rest])
                            dirty = np.sort(both)
                        self._advance_size(ino, i_size, dirty)
                    self._store_pages(blocks[:stop], data[start : start + stop])
                break
            except _TooBig:
                k = max(1, k // 2)
        out[start : start + stop] = blocks[:stop]
        if k:
            self.unreserve(k)
        return stop

    def _map_holes(self, ino: int, hp: np.ndarray, blocks: np.ndarray, holes: np.ndarray) -> None:
        """Allocate blocks for hole pages `hp` (near the file's previous block) and map them."""
        e = self._ext(ino)
        i = int(np.searchsorted(e.lblk, int(hp[0]), side="right")) - 1
        goal = int(e.pblk[i] + (int(hp[0]) - e.lblk[i])) if i >= 0 else self._bhint
        runs = self._alloc_blocks(len(hp), goal, meta=False)
        hb = np.concatenate([np.arange(s, s + n, dtype=np.int64) for s, n in runs])
        blocks[holes] = hb
        brk = np.flatnonzero((np.diff(hp) != 1) | (np.diff(hb) != 1)) + 1
        starts = np.concatenate([[0], brk])
        lens = np.diff(np.concatenate([starts, [len(hp)]]))
        self._store_ext(
            ino,
            np.concatenate([e.lblk, hp[starts]]),
            np.concatenate([e.len, lens]),
            np.concatenate([e.pblk, hb[starts]]),
        )
        rec = self._winode(ino)
        rec["blocks"] = int(rec["blocks"]) + len(hp)

    def _store_pages(self, blocks: np.ndarray, data: list | _Rows) -> None:
        """Store each page at its block (straight from the caller's buffer), flush each
        run of adjacent blocks, fence (one msync for all: Persist)."""
        if isinstance(data, _Rows):
            # Rows of one array: each run of adjacent blocks is one store_rows,
            # which gathers the rows straight into the mapping.
            if not len(blocks):
                return
            brk = (np.flatnonzero(np.diff(blocks) != 1) + 1).tolist() if len(blocks) > 1 else []
            starts, ends = [0, *brk], [*brk, len(blocks)]
            for lo, hi, b in zip(starts, ends, blocks[starts].tolist(), strict=True):
                self.persist.store_rows(b * BS, data.src, data.sel(lo, hi))
                self.persist.flush(b * BS, (hi - lo) * BS)
            self.persist.fence()
            return
        store = self.persist.store
        k = 0
        bl = blocks.tolist()
        while k < len(bl):
            j = k
            while j + 1 < len(bl) and bl[j + 1] == bl[j] + 1:
                j += 1
            for i in range(k, j + 1):
                d = data[i]
                store(bl[i] * BS, d if len(d) == BS else bytes(d) + bytes(BS - len(d)))
            self.persist.flush(bl[k] * BS, (j + 1 - k) * BS)
            k = j + 1
        if len(bl):
            self.persist.fence()

    # ----------------------------------------------------------- inspection
    @property
    def superblock(self) -> dict:
        """The superblock fields (for `info`), as plain Python values."""
        out = {}
        for name in F.SB_DTYPE.names:
            if name in ("pad", "dirty_ino", "dirty_cnt"):
                continue
            v = self._sb[name]
            out[name] = v.tobytes().hex() if name == "uuid" else int(v)
        return out

    def note_dirty(self, counts: Mapping[int, int], *, now: float | None = None) -> bool:
        """Keep the superblock's dirty summary: pages dirty in DRAM, per inode.

        The mount calls this once a second with mm's dirty page count of each
        inode. The summary is one superblock-only transaction, written only
        when it changed and at most once a second, so after a crash the next
        mount can say what was lost (`lost_dirty`). Returns whether it wrote.
        """
        if self.readonly or self.corrupt or self._mm is None:
            return False
        t = time.monotonic() if now is None else now
        if self._dirty_last is not None and t - self._dirty_t < DIRTY_INTERVAL:
            return False
        summ = DirtySummary.of(counts)
        key = summ.key()
        if key == self._dirty_last or (self._dirty_last is None and not summ.pages):
            self._dirty_last = key
            return False
        with self._transaction() as txn:
            summ.to_sb(self._sb)
            txn.blocks.setdefault(0, bytearray(BS))
        self._dirty_last = key
        self._dirty_t = t
        return True

    def paths_of(self, inos: Sequence[int], limit: int = 100_000) -> dict[int, str]:
        """A path (from the root) for each of `inos` found in a walk of at most `limit` entries."""
        want = set(inos)
        out: dict[int, str] = {}
        stack: list[tuple[int, str]] = [(self.root_ino, "")]
        seen = 0
        while stack and want - out.keys() and seen < limit:
            d, prefix = stack.pop()
            try:
                entries = list(self.readdir(d))
            except (CorruptImage, FsError):
                continue
            for _c, name, ino in entries:
                seen += 1
                path = f"{prefix}/{os.fsdecode(name)}"
                if ino in want and ino not in out:
                    out[ino] = path
                try:
                    if stat.S_ISDIR(self.getattr(ino).mode) and self._parent_of(ino) == d:
                        stack.append((ino, path))
                except (CorruptImage, FsError):
                    continue
        return out

    def features(self) -> list[str]:
        f = int(self._sb["features"])
        return [n for bit, n in F.FEATURE_NAMES.items() if f & bit]


def _latch_corruption(fn: Callable) -> Callable:
    """Wrap a public call: the first CorruptImage turns the image read-only."""

    @functools.wraps(fn)
    def wrapper(self: Image, *args: object, **kw: object) -> object:
        try:
            return fn(self, *args, **kw)
        except CorruptImage as exc:
            if self.corrupt is None:
                self.corrupt = str(exc)
            raise

    return wrapper


for _name in (
    "getattr lookup readdir readlink bmap bmap_pages create mkdir symlink link unlink rmdir rename "
    "release setattr getxattr setxattr listxattr removexattr write_pages"
).split():
    setattr(Image, _name, _latch_corruption(getattr(Image, _name)))
