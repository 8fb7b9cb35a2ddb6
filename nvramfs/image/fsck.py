"""Check every structure of an image and, when asked, repair it, as e2fsck does.

The checks, in order: both superblock copies; the journal; every inode-table
slot (checksum, type, free slots zeroed); the inode bitmap against the table;
every used inode's extent chain and xattr block, then its data extents (inside
the data area, no two owners for a block); its `blocks` count; every directory
block (well-formed records, valid names, entries naming used inodes of the
right type); reachability of every inode from the root (a directory reached
twice is a loop); link counts and ".." pointers; the block bitmap against
what the inodes own; the free counts; the orphan list.

A crash leaves states that are not errors: a committed journal transaction not
yet checkpointed (replayed in memory first, as a mount would), a torn
superblock copy on an image that was not cleanly closed, orphans awaiting
reclaim. Those are reported as notes.

Modes (e2fsck's): `n` checks only and never writes; `p` (preen) makes only
the safe repairs (journal replay, orphans, bitmaps and free counts, the
superblock copy, inodes whose only fault is their checksum) and stops with
"UNEXPECTED INCONSISTENCY" on anything else; `y` repairs everything it can.
Repairs run in stages, each followed by a fresh check, so each stage sees the
image its predecessors left (the checker is the one judge of what is wrong):

1. the journal replayed, the superblock copies made whole;
2. inode slots: checksum-only faults resealed, broken inodes cleared, a new
   root if the root was cleared; directories salvaged (bad records dropped),
   entries naming free inodes or a directory a second time removed, file
   types fixed; the orphan list rebuilt;
3. the bitmaps and free counts rebuilt from the inodes, `blocks` counts set;
4. blocks claimed twice cloned (e2fsck's passes 1B-1D);
5. what no directory names reconnected under /lost+found (made when needed);
6. ".." pointers and link counts set.

Exit codes as e2fsck, summed: 0 clean, 1 errors corrected, 4 errors left
uncorrected, 8 operational error (16 usage and 32 cancelled are the CLI's).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from nvramfs.image import format as F
from nvramfs.image import journal
from nvramfs.image.errors import CorruptImage, FsError, NotAnImage
from nvramfs.image.image import _FTYPE, Image
from nvramfs.image.lock import ImageInUse, in_use, lock_image, unlock_image

BS = F.BLOCK_SIZE
EXIT_CLEAN = 0
EXIT_CORRECTED = 1
EXIT_UNCORRECTED = 4
EXIT_OPERATIONAL = 8
EXIT_USAGE = 16
EXIT_CANCELLED = 32
MAX_LISTED = 20  # lines per kind of bitmap mismatch; the rest are counted
LOST_FOUND = b"lost+found"

MODES = ("n", "p", "y")
# Repairs preen may make: what a crash or an interrupted update leaves, and
# nothing that loses or moves a user's data.
PREEN_KINDS = frozenset({"journal", "sb_copy", "bitmap", "free_count", "csum", "orphans"})
# Which repair stage handles each kind of finding (see the module docstring).
STAGE = {
    "journal": 1,
    "sb_copy": 1,
    "sb_field": 1,
    "csum": 2,
    "clear": 2,
    "slot": 2,
    "dir": 2,
    "dirent": 2,
    "dirent_type": 2,
    "orphans": 2,
    "bitmap": 3,
    "free_count": 3,
    "blocks_count": 3,
    "dup": 4,
    "lost": 5,
    "dotdot": 6,
    "nlink": 6,
}


@dataclass
class Finding:
    """One problem: where, what (for people), and what repairs it (`kind`, `ino`, `data`)."""

    where: str
    what: str
    kind: str
    ino: int = 0
    data: object = None


@dataclass
class Report:
    image: str
    mode: str = "n"
    errors: list[tuple[str, str]] = field(default_factory=list)  # (where, what) as first found
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # for stderr
    fixed: list[str] = field(default_factory=list)
    remaining: list[tuple[str, str]] = field(default_factory=list)  # after repairs
    stats: dict = field(default_factory=dict)
    exit_code: int = EXIT_CLEAN
    seconds: float = 0.0
    unexpected: bool = False  # preen met something it may not repair
    findings: list[Finding] = field(default_factory=list)
    rebuild: dict | None = None  # the bitmaps as the inodes say they should be
    was_clean: bool = True  # the image was cleanly closed

    def error(
        self, where: str, what: str, kind: str = "", ino: int = 0, data: object = None
    ) -> None:
        self.errors.append((where, what))
        self.findings.append(Finding(where, what, kind, ino, data))

    @property
    def modified(self) -> bool:
        return bool(self.fixed)

    def as_json(self) -> dict:
        return {
            "image": self.image,
            "mode": self.mode,
            "clean": not self.errors and self.exit_code == 0,
            "exit": self.exit_code,
            "errors": [{"where": w, "what": m} for w, m in self.errors],
            "fixed": self.fixed,
            "remaining": [{"where": w, "what": m} for w, m in self.remaining],
            "notes": self.notes,
            "warnings": self.warnings,
            "stats": self.stats,
            "seconds": round(self.seconds, 3),
        }


def fsck(path: str, repair: bool = False, *, mode: str | None = None) -> Report:
    """Check the image at `path` (mode `n`), or repair it (`p` preen, `y` everything).

    `repair=True` is the old spelling of mode `p`.
    """
    mode = mode or ("p" if repair else "n")
    if mode not in MODES:
        raise ValueError(f"fsck mode {mode!r}")
    t0 = time.monotonic()
    if mode == "n":
        rep = check(path)
        if rep.exit_code != EXIT_OPERATIONAL and in_use(path):
            rep.warnings.append(
                f"{path} is in use by a mount; checking anyway (an update in flight may show "
                "as an error)"
            )
    else:
        rep = _repair(path, mode)
    rep.mode = mode
    rep.seconds = time.monotonic() - t0
    return rep


def check(path: str) -> Report:
    """The read-only check: never writes the file (a replay happens in a private copy)."""
    rep = Report(str(path))
    try:
        img = Image.open(path, readonly=True, _lenient=True)
    except NotAnImage as exc:
        rep.error("image", str(exc))
        rep.exit_code = EXIT_OPERATIONAL
        return rep
    except CorruptImage as exc:
        rep.error("image", str(exc))
        rep.exit_code = EXIT_UNCORRECTED
        return rep
    except OSError as exc:
        rep.error("image", f"cannot read: {exc.strerror}")
        rep.exit_code = EXIT_OPERATIONAL
        return rep
    try:
        if img._mm is not None and not _is_private(img):
            img._remap_private()  # checksum-only faults are fixed in memory as the check goes
        _Checker(img, rep).run()
    finally:
        img.close()
    rep.exit_code = EXIT_UNCORRECTED if rep.errors else EXIT_CLEAN
    return rep


def _is_private(img: Image) -> bool:
    """A readonly open that replayed the journal already maps the file copy-on-write."""
    return any("journal replayed" in r for r in img.recovery)


# ---------------------------------------------------------------------- repair


def _repair(path: str, mode: str) -> Report:
    """Repair under the image's lock (a mount cannot start meanwhile), stage by stage."""
    try:
        lock = lock_image(path)
    except ImageInUse:
        rep = Report(str(path))
        rep.error("image", f"{path} is in use by a mount; cannot continue, aborting")
        rep.warnings.append(f"{path} is in use by a mount; cannot continue, aborting")
        rep.exit_code = EXIT_OPERATIONAL
        return rep
    except OSError as exc:
        rep = Report(str(path))
        rep.error("image", f"{path}: {exc.strerror or exc}")
        rep.exit_code = EXIT_OPERATIONAL
        return rep
    try:
        return _repair_locked(path, mode)
    finally:
        unlock_image(lock)


def _repair_locked(path: str, mode: str) -> Report:
    first = check(path)
    if first.exit_code == EXIT_OPERATIONAL or first.findings and first.findings[0].kind == "":
        return first  # nothing recognisable, or both superblock copies gone: nothing to repair from
    fixed: list[str] = []
    stopped: list[str] = []
    cur = first
    for _round in range(16):
        kinds = {f.kind for f in cur.findings}
        if mode == "p" and kinds - PREEN_KINDS:
            first.unexpected = True
            break
        pending = _recovery_pending(cur) or not cur.was_clean
        if not cur.findings and not pending:
            break
        if any("journal replayed" in n for n in cur.notes):
            fixed.extend(_stage1(path, [], cur))  # first: the checker saw the image replayed
            cur = check(path)
            continue
        if not cur.findings:  # only recovery work (or the clean mark): a writable open does it
            fixed.extend(_stage_recover(path))
            cur = check(path)
            break
        stage = min(STAGE[k] for k in kinds)
        try:
            done = _STAGES[stage](path, [f for f in cur.findings if STAGE[f.kind] == stage], cur)
        except (CorruptImage, OSError) as exc:  # FsError is an OSError
            # Damage this stage did not expect: stop here, report what is left.
            stopped.append(f"repair stopped at stage {stage}: {exc}")
            break
        if not done:
            break  # nothing this stage could do: what is left stays uncorrected
        fixed.extend(done)
        cur = check(path)
        # What a stage uncovers (a file lost once its directory entry went) is found too.
        known = set(first.errors)
        first.errors.extend(e for e in cur.errors if e not in known)
    if fixed and not cur.findings:
        fixed.extend(_stage_recover(path))  # orphans; marked clean, both copies rewritten
        cur = check(path)
    first.fixed = fixed
    first.remaining = list(cur.errors)
    first.notes = (list(cur.notes) if fixed else first.notes) + stopped
    first.stats = cur.stats or first.stats
    code = EXIT_CORRECTED if fixed else EXIT_CLEAN
    if cur.errors or first.unexpected:
        code |= EXIT_UNCORRECTED
    first.exit_code = code
    return first


def _recovery_pending(rep: Report) -> bool:
    return any(
        n.startswith("recovery:") or "orphan" in n or "truncate to be" in n for n in rep.notes
    )


def _stage_recover(path: str) -> list[str]:
    """A writable open and a clean close: journal replay, orphans, both superblock copies."""
    try:
        img = Image.open(path, _tool=True)
    except CorruptImage:
        return []
    done = [f"recovery: {r}" for r in img.recovery]
    img.close()
    return done


def _read_allocated(img: Image, start: int, length: int) -> np.ndarray:
    """Bytes [start, start+length) of the image, holes read as zeros without touching them.

    A read fault on a hole of a file on tmpfs allocates a page: scanning the
    inode table of a sparse 16 GiB image through the mapping would take
    hundreds of MiB of host memory for a read-only check (and SIGBUS on a full
    host filesystem). Only the ranges SEEK_DATA finds are copied.
    """
    out = np.zeros(length, np.uint8)
    fd = os.open(img.path, os.O_RDONLY)
    try:
        pos, end = start, start + length
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data past pos
                break
            if data >= end:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            out[data - start : hole - start] = np.frombuffer(img._ro[data:hole], np.uint8)
            pos = hole
    finally:
        os.close(fd)
    return out


class _Raw:
    """The image file mapped writable, for fsck's direct repairs (no mount can run: we hold the lock).

    Every store is flushed; repairs are not journaled (as e2fsck's are not):
    an fsck cut short is run again.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE)
        finally:
            os.close(fd)
        self.L = F.Layout.from_sb(self.sb())

    def close(self) -> None:
        self.mm.flush()
        self.mm.close()

    def __enter__(self) -> _Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def block(self, b: int) -> bytearray:
        return bytearray(self.mm[b * BS : (b + 1) * BS])

    def put_block(self, b: int, data: bytes | bytearray, kind: int = 0, owner: int = 0) -> None:
        data = bytearray(data)
        if kind:
            F.seal_block(data, kind, owner, b)
        self.mm[b * BS : (b + 1) * BS] = bytes(data)

    def _ioff(self, ino: int) -> int:
        return (self.L.itable_start + ino // F.INODES_PER_BLOCK) * BS + (
            ino % F.INODES_PER_BLOCK
        ) * F.INODE_SIZE

    def inode(self, ino: int) -> np.void:
        off = self._ioff(ino)
        return np.frombuffer(bytes(self.mm[off : off + F.INODE_SIZE]), F.INODE_DTYPE)[0].copy()

    def put_inode(self, ino: int, rec: np.void | None) -> None:
        off = self._ioff(ino)
        if rec is None or int(rec["mode"]) == 0:
            self.mm[off : off + F.INODE_SIZE] = bytes(F.INODE_SIZE)
            return
        raw = bytearray(np.array(rec, F.INODE_DTYPE).tobytes())
        raw[-4:] = F.inode_crc(raw, ino).to_bytes(4, "little")
        self.mm[off : off + F.INODE_SIZE] = bytes(raw)

    def sb(self) -> np.void:
        return np.frombuffer(bytes(self.mm[: F.SB_SIZE]), F.SB_DTYPE)[0].copy()

    def put_sb(self, sb: np.void) -> None:
        raw = bytearray(np.array(sb, F.SB_DTYPE).tobytes())
        raw[-4:] = F.sb_crc(raw).to_bytes(4, "little")
        blk = bytes(raw) + bytes(BS - F.SB_SIZE)
        self.mm[0:BS] = blk
        self.mm.flush(0, BS)
        self.mm[BS : 2 * BS] = blk


def _stage1(path: str, findings: list[Finding], rep: Report) -> list[str]:
    """The journal replayed and both superblock copies made whole (from the valid one)."""
    img = Image.open(path, readonly=True, _lenient=True)
    try:
        best = img._sb.copy()
        jt = img._journal_txn()
        replay = any("journal replayed" in r for r in img.recovery)
    finally:
        img.close()
    done = []
    with _Raw(path) as raw:
        if replay and jt is not None:
            from nvramfs.image.persist import Persist

            p = Persist()
            p.attach(raw.mm)
            journal.checkpoint(p, jt[1])
            done.append(f"journal replayed (transaction {jt[0]})")
        elif any(f.kind in ("sb_copy", "sb_field") for f in findings):
            if int(best["state"]) not in (F.STATE_CLEAN, F.STATE_DIRTY):
                best["state"] = F.STATE_DIRTY
            raw.put_sb(best)
            done.extend(f"superblock: {f.what}: rewrote both copies" for f in findings)
    return done


def _stage2(path: str, findings: list[Finding], rep: Report) -> list[str]:
    """Inode slots, directories, the orphan list."""
    done: list[str] = []
    clear = {f.ino for f in findings if f.kind == "clear"}
    with _Raw(path) as raw:
        for f in findings:
            if f.kind == "csum" and f.ino not in clear:
                raw.put_inode(f.ino, raw.inode(f.ino))
                done.append(f"inode {f.ino}: checksum recomputed")
            elif f.kind == "slot":
                for ino in f.data:
                    raw.put_inode(ino, None)
                done.append(f"{f.where}: slot zeroed")
        for ino in sorted(clear):
            if ino == F.ROOT_INO:
                raw.put_inode(ino, _new_root())
                done.append("inode 1 (root): cleared, a new empty root made")
            else:
                raw.put_inode(ino, None)
                done.append(
                    f"inode {ino}: cleared (its blocks are freed, entries naming it removed)"
                )
        dirs = sorted({f.ino for f in findings if f.kind == "dir"} - clear)
        for d in dirs:
            done.extend(_salvage_dir(raw, d))
        drop: dict[int, set[bytes]] = {}
        retype: dict[int, dict[bytes, int]] = {}
        for f in findings:
            if f.kind == "dirent" and f.ino not in clear and f.ino not in dirs:
                drop.setdefault(f.ino, set()).add(f.data)
            elif f.kind == "dirent_type" and f.ino not in clear and f.ino not in dirs:
                name, ft = f.data
                retype.setdefault(f.ino, {})[name] = ft
        for d in sorted(set(drop) | set(retype)):
            done.extend(_edit_dir(raw, d, drop.get(d, set()), retype.get(d, {})))
        if any(f.kind == "orphans" for f in findings):
            done.extend(_rebuild_orphans(raw, clear))
    return done


def _new_root() -> np.void:
    rec = np.zeros(1, F.INODE_DTYPE)[0]
    now = time.time_ns()
    rec["mode"] = stat.S_IFDIR | 0o755
    rec["nlink"] = 2
    rec["parent"] = F.ROOT_INO
    rec["atime_ns"] = rec["mtime_ns"] = rec["ctime_ns"] = now
    rec["igen"] = 1
    return rec


def _dir_blocks(raw: _Raw, d: int) -> tuple[np.void, list[int]]:
    """A directory's blocks, as far as its map and size allow (the map is known good here)."""
    img = Image.open(raw.path, readonly=True, _lenient=True)
    try:
        rec = raw.inode(d)
        ext = img._parse_ext(d, rec)
        # Past its mapped pages a directory has only holes, and a hole ends it.
        n = min(int(rec["size"]) // BS, int(ext.len.sum()) + 1)
        blocks = ext.lookup(np.arange(n, dtype=np.int64)).tolist() if n else []
    finally:
        img.close()
    return rec, blocks


def _parse_lenient(blk: bytes, nr_inodes: int) -> tuple[list[list], int]:
    """Records of a directory block, keeping every one that is well formed; (records, dropped)."""
    recs: list[list] = []
    dropped = 0
    off = 0
    seen: set[bytes] = set()
    while off < F.PAYLOAD:
        if off + F.DIRENT_HDR > F.PAYLOAD:
            if recs:
                recs[-1][1] += F.PAYLOAD - off
            else:
                recs.append([off, F.PAYLOAD - off, 0, 0, b""])
            break
        e_ino = int.from_bytes(blk[off : off + 8], "little")
        rl = int.from_bytes(blk[off + 8 : off + 10], "little")
        nl = blk[off + 10]
        ft = blk[off + 11]
        if rl < F.DIRENT_HDR or rl % 8 or off + rl > F.PAYLOAD:
            # The rest of the block cannot be trusted: one free record to its end.
            recs.append([off, F.PAYLOAD - off, 0, 0, b""])
            dropped += 1
            break
        name = bytes(blk[off + F.DIRENT_HDR : off + F.DIRENT_HDR + nl]) if e_ino else b""
        ok = not e_ino or (
            0 < e_ino < nr_inodes
            and nl > 0
            and F.dirent_len(nl) <= rl
            and b"/" not in name
            and b"\0" not in name
            and name not in (b".", b"..")
            and name not in seen
        )
        if ok:
            recs.append([off, rl, e_ino, ft, name])
            if e_ino:
                seen.add(name)
        else:
            recs.append([off, rl, 0, 0, b""])
            dropped += 1
        off += rl
    return recs, dropped


def _write_dirblock(raw: _Raw, pb: int, d: int, recs: list[list]) -> None:
    blk = bytearray(BS)
    for off, rl, e_ino, ft, name in recs:
        blk[off : off + 8] = e_ino.to_bytes(8, "little")
        blk[off + 8 : off + 10] = rl.to_bytes(2, "little")
        blk[off + 10] = len(name)
        blk[off + 11] = ft
        blk[off + F.DIRENT_HDR : off + F.DIRENT_HDR + len(name)] = name
    raw.put_block(pb, blk, F.KIND_DIR, d)


def _salvage_dir(raw: _Raw, d: int) -> list[str]:
    """Keep every well-formed record of every block; a block that is not this directory's is emptied."""
    rec, blocks = _dir_blocks(raw, d)
    done = []
    nblk = 0
    for lb, pb in enumerate(blocks):
        if pb == 0:
            break  # a hole ends the directory
        nblk = lb + 1
        blk = raw.block(pb)
        kind = int.from_bytes(blk[F.TAIL_OFF : F.TAIL_OFF + 4], "little")
        owner = int.from_bytes(blk[F.TAIL_OFF + 4 : F.TAIL_OFF + 12], "little")
        if kind != F.KIND_DIR or owner != d:
            recs, dropped = [[0, F.PAYLOAD, 0, 0, b""]], -1
        else:
            recs, dropped = _parse_lenient(bytes(blk), raw.L.nr_inodes)
        if F.check_tail(blk, pb, F.KIND_DIR, d) or dropped:
            _write_dirblock(raw, pb, d, recs)
            what = (
                "emptied (not a block of this directory)"
                if dropped < 0
                else f"rewritten, {dropped} bad record{'s' * (dropped != 1)} dropped"
            )
            done.append(f"directory inode {d} block {pb}: {what}")
    if nblk * BS != int(rec["size"]):
        rec["size"] = nblk * BS
        raw.put_inode(d, rec)
        done.append(f"directory inode {d}: size set to {nblk * BS} (its readable blocks)")
    return done


def _edit_dir(raw: _Raw, d: int, drop: set[bytes], retype: dict[bytes, int]) -> list[str]:
    _rec, blocks = _dir_blocks(raw, d)
    done = []
    for pb in blocks:
        if not pb:
            continue
        recs, _ = _parse_lenient(bytes(raw.block(pb)), raw.L.nr_inodes)
        changed = False
        for r in recs:
            if r[2] and r[4] in drop:
                done.append(f"directory inode {d}: entry {r[4]!r} (inode {r[2]}) removed")
                r[2], r[3], r[4] = 0, 0, b""
                changed = True
            elif r[2] and r[4] in retype:
                r[3] = retype[r[4]]
                done.append(f"directory inode {d}: entry {r[4]!r} file type set to {r[3]}")
                changed = True
        if changed:
            _write_dirblock(raw, pb, d, recs)
    return done


def _rebuild_orphans(raw: _Raw, clear: set[int]) -> list[str]:
    """The list made again from the inodes flagged orphan (a loop or a bad link is dropped)."""
    L = raw.L
    table = np.frombuffer(raw.mm, F.INODE_DTYPE, count=L.nr_inodes, offset=L.itable_start * BS)
    flagged = np.flatnonzero((table["mode"] != 0) & ((table["flags"] & F.IFLAG_ORPHAN) != 0))
    keep = [int(i) for i in flagged.tolist() if i not in clear and i > F.ROOT_INO]
    linked = np.flatnonzero((table["mode"] != 0) & (table["orphan_next"] != 0)).tolist()
    del table
    for ino in set(linked) - set(keep):
        rec = raw.inode(ino)
        rec["orphan_next"] = 0
        raw.put_inode(ino, rec)
    for k, ino in enumerate(keep):
        rec = raw.inode(ino)
        rec["orphan_next"] = keep[k + 1] if k + 1 < len(keep) else 0
        raw.put_inode(ino, rec)
    sb = raw.sb()
    sb["orphan_head"] = keep[0] if keep else 0
    sb["orphan_count"] = len(keep)
    raw.put_sb(sb)
    return [f"orphan list rebuilt ({len(keep)} inode{'s' * (len(keep) != 1)})"]


def _stage3(path: str, findings: list[Finding], rep: Report) -> list[str]:
    """Both bitmaps and the free counts from what the inodes own; `blocks` counts."""
    st = rep.rebuild
    if st is None:
        return []
    done = []
    with _Raw(path) as raw:
        L = raw.L
        kinds = {f.kind for f in findings}
        if kinds & {"bitmap", "free_count"}:
            _write_bitmap(raw, L.bbitmap_start, L.bbitmap_blocks, F.KIND_BBITMAP, st["bbits"])
            _write_bitmap(raw, L.ibitmap_start, L.ibitmap_blocks, F.KIND_IBITMAP, st["ibits"])
            sb = raw.sb()
            fb = int(L.nr_blocks - st["bbits"][: L.nr_blocks].sum())
            fi = int(L.nr_inodes - st["ibits"][: L.nr_inodes].sum())
            sb["free_blocks"], sb["free_inodes"] = fb, fi
            raw.put_sb(sb)
            done.append(
                f"block and inode bitmaps rebuilt from the inodes; {fb} blocks, {fi} inodes free"
            )
        for f in findings:
            if f.kind == "blocks_count":
                rec = raw.inode(f.ino)
                rec["blocks"] = int(f.data)
                raw.put_inode(f.ino, rec)
                done.append(f"inode {f.ino}: blocks count set to {int(f.data)}")
    return done


def _write_bitmap(raw: _Raw, start: int, nbm: int, kind: int, bits: np.ndarray) -> None:
    total = nbm * F.BITS_PER_BITMAP_BLOCK
    full = np.ones(total, np.uint8)
    full[: len(bits)] = bits
    for i in range(nbm):
        seg = full[i * F.BITS_PER_BITMAP_BLOCK : (i + 1) * F.BITS_PER_BITMAP_BLOCK]
        blk = bytearray(np.packbits(seg, bitorder="little").tobytes()) + bytearray(F.TAIL_SIZE)
        raw.put_block(start + i, blk, kind, start + i)


def _stage4(path: str, findings: list[Finding], rep: Report) -> list[str]:
    """Blocks claimed twice: each later claimant gets its own copy (e2fsck's 1B-1D)."""
    done = []
    img = Image.open(path, _tool=True)
    try:
        by_ino: dict[int, list[tuple[int, int]]] = {}
        for f in findings:
            by_ino.setdefault(f.ino, []).extend(f.data)
        for ino, runs in sorted(by_ino.items()):
            n = _clone(img, ino, runs)
            done.append(f"inode {ino}: {n} block{'s' * (n != 1)} claimed twice cloned")
    finally:
        img.close()
    return done


def _clone(img: Image, ino: int, runs: list[tuple[int, int]]) -> int:
    """Give `ino` its own copy of blocks [start, start+n) of each run it shares."""
    shared = np.zeros(0, np.int64)
    for s, n in runs:
        shared = np.concatenate([shared, np.arange(s, s + n, dtype=np.int64)])
    e = img._ext(ino)
    pages = np.concatenate(
        [
            np.arange(a, a + n, dtype=np.int64)
            for a, n in zip(e.lblk.tolist(), e.len.tolist(), strict=True)
        ]
        or [np.zeros(0, np.int64)]
    )
    pbs = e.lookup(pages)
    hit = np.flatnonzero(np.isin(pbs, shared))
    done = 0
    for k0 in range(0, len(hit), 256):  # one transaction per 256 pages
        sel = hit[k0 : k0 + 256]
        with img._transaction():
            runs_new = img._alloc_blocks(len(sel), int(pbs[sel[0]]), meta=False)
            nb = np.concatenate([np.arange(s, s + n, dtype=np.int64) for s, n in runs_new])
            for old, new in zip(pbs[sel].tolist(), nb.tolist(), strict=True):
                img.persist.store(new * BS, bytes(img._ro[old * BS : (old + 1) * BS]))
                img.persist.flush(new * BS, BS)
            img.persist.fence()  # the copies are durable before the map points at them
            pbs[sel] = nb
            brk = np.flatnonzero((np.diff(pages) != 1) | (np.diff(pbs) != 1)) + 1
            starts = np.concatenate([[0], brk]).astype(np.int64)
            lens = np.diff(np.concatenate([starts, [len(pages)]]))
            img._store_ext(ino, pages[starts], lens, pbs[starts])
        done += len(sel)
    return done


def _stage5(path: str, findings: list[Finding], rep: Report) -> list[str]:
    """Reconnect under /lost+found: the top of each unreachable tree first, files the next round."""
    done = []
    lost_dirs = {f.ino: f.data for f in findings if f.data is not None and f.data[0] == "dir"}
    lost_files = {f.ino: f.data for f in findings if f.data is not None and f.data[0] == "file"}
    img = Image.open(path, _tool=True)
    try:
        lf = _lost_found(img, done)
        if lost_dirs:
            tops = set()
            for d in lost_dirs:
                cur, seen = d, {d}
                while True:
                    p = lost_dirs[cur][1]
                    if p in lost_dirs and p not in seen:
                        seen.add(p)
                        cur = p
                    else:
                        break
                tops.add(cur)
            for d in sorted(tops):
                _reconnect(img, lf, d, True)
                done.append(f"directory inode {d}: reconnected as /lost+found/#{d}")
        else:
            for ino in sorted(lost_files):
                _reconnect(img, lf, ino, False)
                done.append(f"inode {ino}: reconnected as /lost+found/#{ino}")
    finally:
        img.close()
    return done


def _lost_found(img: Image, done: list[str]) -> int:
    try:
        lf = img.lookup(F.ROOT_INO, LOST_FOUND)
        if stat.S_ISDIR(img.getattr(lf).mode):
            return lf
        raise CorruptImage("/lost+found is not a directory")
    except FsError as exc:
        if exc.errno != errno.ENOENT:
            raise
    lf = img.mkdir(F.ROOT_INO, LOST_FOUND, 0o700, 0, 0)
    done.append("/lost+found created")
    return lf


def _reconnect(img: Image, lf: int, ino: int, is_dir: bool) -> None:
    name = b"#%d" % ino
    with img._transaction():
        rec = img._inode(ino)
        img._dir_add(lf, name, ino, _FTYPE[stat.S_IFMT(int(rec["mode"]))])
        w = img._winode(ino)
        if is_dir:
            w["parent"] = lf
            wl = img._winode(lf)
            wl["nlink"] = int(wl["nlink"]) + 1
        elif int(w["nlink"]) == 0:
            w["nlink"] = 1
        img._winode(lf)["mtime_ns"] = time.time_ns()


def _stage6(path: str, findings: list[Finding], rep: Report) -> list[str]:
    """ ".." pointers and link counts, as the tree walk found them."""
    done = []
    with _Raw(path) as raw:
        for f in findings:
            rec = raw.inode(f.ino)
            if f.kind == "dotdot":
                rec["parent"] = int(f.data)
                done.append(f'inode {f.ino}: ".." set to {int(f.data)}')
            else:
                rec["nlink"] = int(f.data)
                done.append(f"inode {f.ino}: link count set to {int(f.data)}")
            raw.put_inode(f.ino, rec)
    return done


_STAGES = {1: _stage1, 2: _stage2, 3: _stage3, 4: _stage4, 5: _stage5, 6: _stage6}


# --------------------------------------------------------------------- grouping


def _runs(idx: np.ndarray, key: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """Sorted indices as (first, last, key) runs: consecutive and with the same key."""
    if not len(idx):
        return []
    brk = np.diff(idx) != 1
    if key is not None:
        brk |= np.diff(key) != 0
    cuts = np.flatnonzero(brk) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(idx)]]) - 1
    k = key if key is not None else np.zeros(len(idx), np.int64)
    return [(int(idx[s]), int(idx[e]), int(k[s])) for s, e in zip(starts, ends, strict=True)]


def _span(a: int, b: int, unit: str) -> str:
    return f"{unit} {a}" if a == b else f"{unit}s {a}-{b} ({b - a + 1})"


def _listed(items: Iterable[tuple[str, str]], rep: Report, kind: str, total_what: str) -> None:
    items = list(items)
    for where, what in items[:MAX_LISTED]:
        rep.error(where, what, kind)
    if len(items) > MAX_LISTED:
        rep.error(total_what, f"and {len(items) - MAX_LISTED} more ranges", kind)


# ---------------------------------------------------------------------- checker


class _Checker:
    def __init__(self, img: Image, rep: Report) -> None:
        self.img, self.rep, self.L = img, rep, img.L
        self.owner = np.zeros(self.L.nr_blocks, np.int32)  # 0 free, -1 metadata, else ino
        self.owner[: self.L.data_start] = -1
        self.used: np.ndarray = np.zeros(0, bool)
        self.bad: set[int] = set()  # inodes whose record or maps are unreadable: cleared
        self.exts: dict = {}
        self._owned: dict[int, int] = {}
        self.rebuild: dict | None = None

    def err(self, where: str, what: str, kind: str, ino: int = 0, data: object = None) -> None:
        self.rep.error(where, what, kind, ino, data)

    def clear(self, ino: int, what: str) -> None:
        if ino not in self.bad:
            self.bad.add(ino)
            self.err(f"inode {ino}", what, "clear", ino)

    def run(self) -> None:
        self.rep.was_clean = self.img.was_clean
        self.check_superblock()
        self.check_inode_table()
        live = [i for i in np.flatnonzero(self.used).tolist() if i not in self.bad]
        for ino in live:
            self.check_inode_meta(ino)
        for ino in live:
            if ino not in self.bad:
                self.check_inode_data(ino)
        self.check_tree()
        self.check_block_bitmap()
        self.check_orphans()
        sb = self.img.superblock
        self.rep.stats = {
            "blocks": self.L.nr_blocks,
            "blocks_used": int((self.owner != 0).sum()),
            "inodes_used": int(self.used.sum()),
            "generation": sb["generation"],
        }
        self.rep.rebuild = self.rebuild

    # ------------------------------------------------------------ superblock
    def check_superblock(self) -> None:
        img, rep = self.img, self.rep
        clean = img.was_clean
        for p in img.sb_problems:
            if img.sb_torn:
                rep.notes.append(f"{p} (a power cut between the copy writes; rewritten at open)")
            else:
                self.err("superblock", p, "sb_copy")
        rep.notes.extend(f"recovery: {r} (in memory)" for r in img.recovery)
        jt = img._journal_txn()
        where = f"journal header (block {self.L.journal_start})"
        if clean and (jt is None or jt[0] != int(img._sb["generation"])):
            # Harmless: a cleanly closed image needs nothing from its journal.
            rep.notes.append(f"{where}: does not hold the last transaction (not needed: clean)")
        if not clean and not img.recovery:
            rep.notes.append("image was not cleanly closed (nothing to replay)")
        if int(img._sb["state"]) not in (F.STATE_CLEAN, F.STATE_DIRTY):
            self.err("superblock", f"bad state {int(img._sb['state'])}", "sb_field")

    # ------------------------------------------------------------ inode table
    def _bitmap(self, start: int, nbm: int, kind: int, total: int, what: str) -> np.ndarray:
        bits = []
        for i in range(nbm):
            b = start + i
            blk = self.img._block(b)
            why = F.check_tail(blk, b, kind, b)
            if why:
                self.err(f"{what} block {b}", why, "bitmap")
            bits.append(np.unpackbits(np.frombuffer(blk[: F.PAYLOAD], np.uint8), bitorder="little"))
        allbits = np.concatenate(bits)
        if not allbits[total:].all():
            self.err(f"{what}", f"bits past the end ({total}) are not all set", "bitmap")
        return allbits[:total].astype(bool)

    def check_inode_table(self) -> None:
        L, img = self.L, self.img
        raw = _read_allocated(img, L.itable_start * BS, (L.data_start - L.itable_start) * BS)
        table = np.frombuffer(raw, F.INODE_DTYPE, count=L.nr_inodes)
        rows = np.frombuffer(raw, np.uint8).reshape(L.nr_inodes, F.INODE_SIZE)
        self.table = table  # _reseal_private writes through it
        used = table["mode"] != 0
        used[0] = False
        if table["mode"][0] != 0 or rows[0].any():
            self.err("inode 0", "reserved slot is not zero", "slot", 0, [0])
        free_dirty = np.flatnonzero(~used & rows.any(axis=1))
        for a, z, _ in _runs(free_dirty[free_dirty != 0]):
            self.err(
                _span(a, z, "inode"),
                "free (mode 0) but not zeroed",
                "slot",
                a,
                list(range(a, z + 1)),
            )
        for ino in np.flatnonzero(used).tolist():
            rec = rows[ino]
            where = f"inode {ino} (inode table block {L.itable_start + ino // F.INODES_PER_BLOCK})"
            mode = int(table["mode"][ino])
            ok_type = stat.S_IFMT(mode) in _FTYPE and mode <= 0o177777
            if F.inode_crc(rec.tobytes(), ino) != int(table["crc"][ino]):
                if ok_type:
                    # Checksum-only until another check says otherwise: read on as if
                    # resealed (the private mapping), as e2fsck does.
                    self.err(where, "bad checksum", "csum", ino)
                    self._reseal_private(ino, rec)
                else:
                    self.bad.add(ino)
                    self.err(where, f"bad checksum and bad mode {mode:#o}", "clear", ino)
            elif not ok_type:
                self.clear(ino, f"bad mode {mode:#o}")
        self.used = used
        self.table = table
        ibits = self._bitmap(
            L.ibitmap_start, L.ibitmap_blocks, F.KIND_IBITMAP, L.nr_inodes, "inode bitmap"
        )
        if not ibits[0]:
            self.err("inode bitmap", "inode 0 (reserved) marked free", "bitmap")
        ibits = ibits.copy()
        ibits[0] = False
        want = used.copy()
        for a, b, _ in _runs(np.flatnonzero(used & ~ibits))[:MAX_LISTED]:
            self.err(_span(a, b, "inode"), "in use but marked free in the inode bitmap", "bitmap")
        for a, b, _ in _runs(np.flatnonzero(ibits & ~used))[:MAX_LISTED]:
            self.err(_span(a, b, "inode"), "free but marked in use in the inode bitmap", "bitmap")
        free = int(L.nr_inodes - 1 - ibits.sum())
        sbfree = int(img._sb["free_inodes"])
        if free != sbfree:
            self.err("superblock", f"free_inodes {sbfree}, inode bitmap has {free}", "free_count")
        if not used[F.ROOT_INO] or not stat.S_ISDIR(int(table["mode"][F.ROOT_INO])):
            self.clear(F.ROOT_INO, "root: not a directory")
        self._ibits_want = want

    def _reseal_private(self, ino: int, rec: np.ndarray) -> None:
        raw = bytearray(rec.tobytes())
        raw[-4:] = F.inode_crc(raw, ino).to_bytes(4, "little")
        off = (self.L.itable_start + ino // F.INODES_PER_BLOCK) * BS + (
            ino % F.INODES_PER_BLOCK
        ) * F.INODE_SIZE
        self.img._mm[off : off + F.INODE_SIZE] = bytes(raw)
        self.table[ino] = np.frombuffer(bytes(raw), F.INODE_DTYPE)[0]

    # ----------------------------------------------------------------- inodes
    def _claim(self, ino: int, start: int, n: int, what: str, meta: bool) -> int:
        """Mark blocks as `ino`'s; a clash is a dup (data) or clears `ino` (metadata)."""
        L = self.L
        if start < L.data_start or start + n > L.nr_blocks or n <= 0:
            self.clear(ino, f"{what} blocks {start}+{n} outside the data area")
            return 0
        seg = self.owner[start : start + n]
        clash = np.flatnonzero(seg != 0)
        if len(clash):
            if meta:
                b = start + int(clash[0])
                self.clear(ino, f"{what} block {b} also belongs to inode {int(seg[clash[0]])}")
                return n
            for a, z, other in _runs(start + clash, seg[clash]):
                self.err(
                    f"inode {ino}",
                    f"{what} {_span(a, z, 'block')} also belong{'s' * (a == z)} to inode "
                    f"{other} (claimed twice)",
                    "dup",
                    ino,
                    [(a, z - a + 1)],
                )
        seg[seg == 0] = ino
        return n

    def check_inode_meta(self, ino: int) -> None:
        """Pass one: the extent chain and xattr block, claimed before any data block."""
        img = self.img
        rec = self.table[ino]
        try:
            ext = img._parse_ext(ino, rec)
        except CorruptImage as exc:
            self.clear(ino, str(exc).removeprefix(f"inode {ino}: "))
            return
        self.exts[ino] = ext
        owned = 0
        for b in ext.chain:
            owned += self._claim(ino, b, 1, "extent chain", True)
        xb = int(rec["xattr_blk"])
        if xb:
            owned += self._claim(ino, xb, 1, "xattr", True)
            if ino not in self.bad:
                try:
                    img._xattrs(ino)
                except CorruptImage as exc:
                    self.clear(ino, str(exc))
        self._owned[ino] = owned

    def check_inode_data(self, ino: int) -> None:
        rec = self.table[ino]
        ext = self.exts.get(ino)
        if ext is None:
            return
        mode = int(rec["mode"])
        fmt = stat.S_IFMT(mode)
        size = int(rec["size"])
        flags = int(rec["flags"])
        problem = None
        if fmt == stat.S_IFLNK:
            if not 0 < size <= F.SYMLINK_MAX:
                problem = f"symlink target length {size}"
            elif flags & F.IFLAG_INLINE_DATA:
                if size > F.INLINE_SIZE:
                    problem = f"inline symlink of {size} bytes"
            elif not len(ext.lblk) or ext.lblk[0] != 0:
                problem = "symlink without a target block"
        elif flags & F.IFLAG_INLINE_DATA:
            problem = "inline-data flag on a non-symlink"
        if fmt == stat.S_IFDIR and size % BS:
            problem = f"directory size {size} not a multiple of 4096"
        if fmt not in (stat.S_IFCHR, stat.S_IFBLK) and int(rec["rdev"]):
            problem = "rdev set on a non-device"
        if fmt not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK) and (len(ext.lblk) or size):
            problem = "special file with data"
        if problem:
            self.clear(ino, problem)
            return
        owned = self._owned.get(ino, 0)
        for lb, ln, pb in zip(ext.lblk.tolist(), ext.len.tolist(), ext.pblk.tolist(), strict=True):
            owned += self._claim(ino, pb, ln, f"extent at page {lb}:", False)
            if ino in self.bad:
                return
        if int(rec["blocks"]) != owned:
            self.err(
                f"inode {ino}",
                f"blocks count {int(rec['blocks'])}, owns {owned}",
                "blocks_count",
                ino,
                owned,
            )

    # ------------------------------------------------------------------- tree
    def check_tree(self) -> None:
        img, table = self.img, self.table
        refs = np.zeros(self.L.nr_inodes, np.int64)
        subdirs = np.zeros(self.L.nr_inodes, np.int64)
        parent_of: dict[int, int] = {F.ROOT_INO: F.ROOT_INO}
        self.dir_broken = False
        if F.ROOT_INO in self.bad:
            self.dir_broken = True
            return
        queue = [F.ROOT_INO]
        seen = {F.ROOT_INO}
        while queue:
            d = queue.pop()
            try:
                entries = list(img.readdir(d))
            except (CorruptImage, FsError) as exc:
                self.err(f"directory inode {d}", str(exc), "dir", d)
                self.dir_broken = True
                continue
            for cookie, name, ino in entries:
                where = f"directory inode {d} entry {name!r} (cookie {cookie})"
                if not self.used[ino] or ino in self.bad:
                    what = (
                        f"names free inode {ino}"
                        if not self.used[ino]
                        else (f"names inode {ino}, which is cleared")
                    )
                    self.err(where, what, "dirent", d, name)
                    continue
                fmt = stat.S_IFMT(int(table["mode"][ino]))
                if fmt == stat.S_IFDIR and ino in seen:
                    self.err(
                        where,
                        f"directory inode {ino} reached twice (directory loop)",
                        "dirent",
                        d,
                        name,
                    )
                    continue
                refs[ino] += 1
                dent = img._dirs[d]
                lb, off = dent.names[name][1:]
                ft = next(r[3] for r in dent.blocks[lb] if r[0] == off)
                if _FTYPE.get(fmt) != ft:
                    self.err(
                        where,
                        f"file type {ft} does not match inode {ino}",
                        "dirent_type",
                        d,
                        (name, _FTYPE[fmt]),
                    )
                if fmt == stat.S_IFDIR:
                    subdirs[d] += 1
                    seen.add(ino)
                    parent_of[ino] = d
                    queue.append(ino)
        orphans = self._orphan_set()
        for ino in np.flatnonzero(self.used).tolist():
            if ino in self.bad:
                continue
            mode = int(table["mode"][ino])
            nlink = int(table["nlink"][ino])
            if stat.S_ISDIR(mode):
                if ino not in parent_of:
                    self.err(
                        f"inode {ino}",
                        "directory not reachable from the root",
                        "lost",
                        ino,
                        ("dir", int(table["parent"][ino])),
                    )
                    continue
                if int(table["parent"][ino]) != parent_of[ino]:
                    self.err(
                        f"inode {ino}",
                        f'".." is {int(table["parent"][ino])}, directory is in {parent_of[ino]}',
                        "dotdot",
                        ino,
                        parent_of[ino],
                    )
                if nlink != 2 + subdirs[ino]:
                    self.err(
                        f"inode {ino}",
                        f"nlink {nlink}, has {2 + subdirs[ino]} links",
                        "nlink",
                        ino,
                        int(2 + subdirs[ino]),
                    )
            else:
                if refs[ino] == 0 and nlink == 0 and ino in orphans:
                    self.rep.notes.append(
                        f"inode {ino}: orphan (reclaimed at the next writable open)"
                    )
                elif refs[ino] == 0:
                    if not self.dir_broken:
                        self.err(
                            f"inode {ino}",
                            "not reachable from the root (lost)",
                            "lost",
                            ino,
                            ("file", 0),
                        )
                elif nlink != refs[ino]:
                    self.err(
                        f"inode {ino}",
                        f"nlink {nlink}, {int(refs[ino])} entries name it",
                        "nlink",
                        ino,
                        int(refs[ino]),
                    )

    # ----------------------------------------------------------------- blocks
    def check_block_bitmap(self) -> None:
        L = self.L
        bits = self._bitmap(
            L.bbitmap_start, L.bbitmap_blocks, F.KIND_BBITMAP, L.nr_blocks, "block bitmap"
        )
        inuse = self.owner != 0
        self.rebuild = None
        # Blocks of inodes still to be cleared are in use until they are: the bitmap is
        # rebuilt once every inode left is readable.
        if self.bad:
            inuse = inuse | bits
        else:
            ibits = np.zeros(self.L.nr_inodes, np.uint8)
            ibits[self._ibits_want] = 1
            ibits[0] = 1
            self.rebuild = {"bbits": inuse.astype(np.uint8), "ibits": ibits}
        lost = np.flatnonzero(inuse & ~bits)
        leak = np.flatnonzero(bits & ~inuse)
        lost_runs = _runs(lost, self.owner[lost])
        _listed(
            (
                (_span(a, z, "block"), f"used by inode {o} but marked free")
                if o > 0
                else (_span(a, z, "block"), "metadata but marked free")
                for a, z, o in lost_runs
            ),
            self.rep,
            "bitmap",
            "block bitmap",
        )
        _listed(
            (
                (_span(a, z, "block"), "marked used but owned by nothing (leaked)")
                for a, z, _ in _runs(leak)
            ),
            self.rep,
            "bitmap",
            "block bitmap",
        )
        free = int(L.nr_blocks - bits.sum())
        sbfree = int(self.img._sb["free_blocks"])
        if free != sbfree:
            self.err("superblock", f"free_blocks {sbfree}, block bitmap has {free}", "free_count")

    # ---------------------------------------------------------------- orphans
    def _orphan_set(self) -> set[int]:
        if hasattr(self, "_orphans"):
            return self._orphans
        out: list[int] = []
        cur = int(self.img._sb["orphan_head"])
        while cur:
            if cur in out or len(out) > self.L.nr_inodes:
                self.err("orphan list", f"loop at inode {cur}", "orphans")
                break
            if not 0 < cur < self.L.nr_inodes or not self.used[cur]:
                self.err("orphan list", f"names free or invalid inode {cur}", "orphans")
                break
            out.append(cur)
            cur = int(self.table["orphan_next"][cur])
        self._orphans = set(out)
        self._orphan_list = out
        return self._orphans

    def check_orphans(self) -> None:
        rep, table = self.rep, self.table
        orphans = self._orphan_set()
        if len(self._orphan_list) != int(self.img._sb["orphan_count"]):
            self.err(
                "superblock",
                f"orphan_count {int(self.img._sb['orphan_count'])}, list has "
                f"{len(self._orphan_list)}",
                "orphans",
            )
        flagged = set(np.flatnonzero(self.used & ((table["flags"] & F.IFLAG_ORPHAN) != 0)).tolist())
        for ino in sorted(flagged - orphans):
            self.err(f"inode {ino}", "flagged orphan but not on the orphan list", "orphans", ino)
        for ino in sorted(orphans - flagged):
            self.err(f"inode {ino}", "on the orphan list but not flagged orphan", "orphans", ino)
        for ino in sorted(orphans & flagged):
            if int(table["nlink"][ino]):
                rep.notes.append(f"inode {ino}: truncate to be finished at the next writable open")
        if orphans and self.img.was_clean:
            rep.notes.append("a cleanly closed image with orphans (reclaimed at next open)")
