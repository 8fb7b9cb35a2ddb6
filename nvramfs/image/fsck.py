"""Check every structure of an image, read-only, and say where each problem is.

The checks, in order: both superblock copies; the journal; every inode-table
slot (checksum, type, free slots zeroed); the inode bitmap against the table;
every used inode's extents (inside the data area, no two owners for a block),
extent chain, xattr block and symlink target; its `blocks` count; every
directory block (well-formed records, valid names, entries naming used inodes
of the right type); reachability of every inode from the root (a directory
reached twice is a loop); link counts and ".." pointers; the block bitmap
against what the inodes own; the free counts; the orphan list.

A crash leaves states that are not errors: a committed journal transaction not
yet checkpointed (replayed in memory first, as a mount would), a torn
superblock copy on an image that was not cleanly closed, orphans awaiting
reclaim. Those are reported as notes.

Exit codes as e2fsck: 0 clean, 4 errors left uncorrected, 8 operational error.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from dataclasses import dataclass, field

import numpy as np

from nvramfs.image import format as F
from nvramfs.image.errors import CorruptImage, FsError, NotAnImage
from nvramfs.image.image import _FTYPE, Image

EXIT_CLEAN = 0
EXIT_UNCORRECTED = 4
EXIT_OPERATIONAL = 8
MAX_LISTED = 20  # per kind of bitmap mismatch; the rest are counted


@dataclass
class Report:
    image: str
    errors: list[tuple[str, str]] = field(default_factory=list)  # (where, what)
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    exit_code: int = EXIT_CLEAN
    seconds: float = 0.0

    def error(self, where: str, what: str) -> None:
        self.errors.append((where, what))

    def as_json(self) -> dict:
        return {
            "image": self.image,
            "clean": not self.errors and self.exit_code == 0,
            "exit": self.exit_code,
            "errors": [{"where": w, "what": m} for w, m in self.errors],
            "notes": self.notes,
            "stats": self.stats,
            "seconds": round(self.seconds, 3),
        }


def fsck(path: str, repair: bool = False) -> Report:
    """Check the image at `path`; `repair` first runs recovery (writable open) if safe."""
    t0 = time.monotonic()
    rep = Report(str(path))
    try:
        if repair:
            pre = fsck(path)
            if pre.exit_code == EXIT_CLEAN:
                # The mount holds this lock for its lifetime: never repair under it.
                lock = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        rep.error("image", "in use (mounted?): not repairing")
                        rep.exit_code = EXIT_OPERATIONAL
                        return rep
                    img = Image.open(path)
                    rep.notes.extend(f"repaired: {r}" for r in img.recovery)
                    img.close()
                finally:
                    os.close(lock)
            else:
                rep.notes.append("not repaired: errors other than recovery work were found")
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
    if _in_use(path):
        rep.notes.append("image is in use (mounted?): what fsck reads may be mid-update")
    try:
        _Checker(img, rep).run()
    finally:
        img.close()
    rep.exit_code = EXIT_UNCORRECTED if rep.errors else EXIT_CLEAN
    rep.seconds = time.monotonic() - t0
    return rep


def _in_use(path: str) -> bool:
    """Does another process hold the mount's lock on the image?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class _Checker:
    def __init__(self, img: Image, rep: Report) -> None:
        self.img, self.rep, self.L = img, rep, img.L
        self.owner = np.zeros(self.L.nr_blocks, np.int32)  # 0 free, -1 metadata, else ino
        self.owner[: self.L.data_start] = -1
        self.used: np.ndarray = np.zeros(0, bool)
        self.bad: set[int] = set()  # inodes whose record or maps are unreadable

    def run(self) -> None:
        self.check_superblock()
        self.check_inode_table()
        for ino in np.flatnonzero(self.used).tolist():
            if ino not in self.bad:
                self.check_inode(ino)
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

    # ------------------------------------------------------------ superblock
    def check_superblock(self) -> None:
        img, rep = self.img, self.rep
        clean = img.was_clean
        for p in img.sb_problems:
            if img.sb_torn:
                rep.notes.append(f"{p} (a power cut between the copy writes; rewritten at open)")
            else:
                rep.error("superblock", p)
        rep.notes.extend(f"recovery: {r} (in memory)" for r in img.recovery)
        jt = img._journal_txn()
        where = f"journal header (block {self.L.journal_start})"
        if clean and (jt is None or jt[0] != int(img._sb["generation"])):
            # Harmless: a cleanly closed image needs nothing from its journal.
            rep.notes.append(f"{where}: does not hold the last transaction (not needed: clean)")
        if not clean and not img.recovery:
            rep.notes.append("image was not cleanly closed (nothing to replay)")
        if int(img._sb["state"]) not in (F.STATE_CLEAN, F.STATE_DIRTY):
            rep.error("superblock", f"bad state {int(img._sb['state'])}")

    # ------------------------------------------------------------ inode table
    def _bitmap(self, start: int, nbm: int, kind: int, total: int, what: str) -> np.ndarray:
        bits = []
        for i in range(nbm):
            b = start + i
            blk = self.img._block(b)
            why = F.check_tail(blk, b, kind, b)
            if why:
                self.rep.error(f"{what} block {b}", why)
            bits.append(np.unpackbits(np.frombuffer(blk[: F.PAYLOAD], np.uint8), bitorder="little"))
        allbits = np.concatenate(bits)
        if not allbits[total:].all():
            self.rep.error(f"{what}", f"bits past the end ({total}) are not all set")
        return allbits[:total].astype(bool)

    def check_inode_table(self) -> None:
        L, img, rep = self.L, self.img, self.rep
        raw = img._ro[L.itable_start * F.BLOCK_SIZE : L.data_start * F.BLOCK_SIZE]
        table = np.frombuffer(raw, F.INODE_DTYPE, count=L.nr_inodes)
        rows = np.frombuffer(raw, np.uint8).reshape(L.nr_inodes, F.INODE_SIZE)
        used = table["mode"] != 0
        used[0] = False
        if table["mode"][0] != 0 or rows[0].any():
            rep.error("inode 0", "reserved slot is not zero")
        free_dirty = np.flatnonzero(~used & rows.any(axis=1))
        for ino in free_dirty[free_dirty != 0][:MAX_LISTED].tolist():
            rep.error(f"inode {ino}", "free (mode 0) but not zeroed")
        for ino in np.flatnonzero(used).tolist():
            rec = rows[ino]
            where = f"inode {ino} (inode table block {L.itable_start + ino // F.INODES_PER_BLOCK})"
            if F.inode_crc(rec.tobytes(), ino) != int(table["crc"][ino]):
                rep.error(where, "bad checksum")
                self.bad.add(ino)
            elif stat.S_IFMT(int(table["mode"][ino])) not in _FTYPE:
                rep.error(where, f"bad file type in mode {int(table['mode'][ino]):#o}")
                self.bad.add(ino)
        self.used = used
        self.table = table
        ibits = self._bitmap(
            L.ibitmap_start, L.ibitmap_blocks, F.KIND_IBITMAP, L.nr_inodes, "inode bitmap"
        )
        if not ibits[0]:
            rep.error("inode bitmap", "inode 0 (reserved) marked free")
        ibits = ibits.copy()
        ibits[0] = False
        for ino in np.flatnonzero(used & ~ibits)[:MAX_LISTED].tolist():
            rep.error(f"inode {ino}", "in use but marked free in the inode bitmap")
        for ino in np.flatnonzero(ibits & ~used)[:MAX_LISTED].tolist():
            rep.error(f"inode {ino}", "free but marked in use in the inode bitmap")
        free = int(L.nr_inodes - 1 - ibits.sum())
        sbfree = int(img._sb["free_inodes"])
        if free != sbfree:
            rep.error("superblock", f"free_inodes {sbfree}, inode bitmap has {free}")
        if not used[F.ROOT_INO] or not stat.S_ISDIR(int(table["mode"][F.ROOT_INO])):
            rep.error(f"inode {F.ROOT_INO} (root)", "not a directory")
            self.bad.add(F.ROOT_INO)

    # ----------------------------------------------------------------- inodes
    def _claim(self, ino: int, start: int, n: int, what: str) -> int:
        L = self.L
        if start < L.data_start or start + n > L.nr_blocks or n <= 0:
            self.rep.error(f"inode {ino}", f"{what} blocks {start}+{n} outside the data area")
            return 0
        seg = self.owner[start : start + n]
        clash = np.flatnonzero(seg != 0)
        if len(clash):
            b = start + int(clash[0])
            self.rep.error(
                f"inode {ino}",
                f"{what} block {b} also belongs to inode {int(seg[clash[0]])} (overlap)",
            )
        seg[seg == 0] = ino
        return n

    def check_inode(self, ino: int) -> None:
        img, rep = self.img, self.rep
        rec = self.table[ino]
        mode = int(rec["mode"])
        fmt = stat.S_IFMT(mode)
        owned = 0
        try:
            ext = img._parse_ext(ino, rec)
        except CorruptImage as exc:
            rep.error(f"inode {ino}", str(exc))
            self.bad.add(ino)
            return
        for b in ext.chain:
            owned += self._claim(ino, b, 1, "extent chain")
        for lb, ln, pb in zip(ext.lblk.tolist(), ext.len.tolist(), ext.pblk.tolist(), strict=True):
            owned += self._claim(ino, pb, ln, f"extent at page {lb}:")
        xb = int(rec["xattr_blk"])
        if xb:
            owned += self._claim(ino, xb, 1, "xattr")
            try:
                img._xattrs(ino)
            except CorruptImage as exc:
                rep.error(f"inode {ino}", str(exc))
        if int(rec["blocks"]) != owned:
            rep.error(f"inode {ino}", f"blocks count {int(rec['blocks'])}, owns {owned}")
        size = int(rec["size"])
        if fmt == stat.S_IFLNK:
            if not 0 < size <= F.SYMLINK_MAX:
                rep.error(f"inode {ino}", f"symlink target length {size}")
            elif int(rec["flags"]) & F.IFLAG_INLINE_DATA:
                if size > F.INLINE_SIZE:
                    rep.error(f"inode {ino}", f"inline symlink of {size} bytes")
            elif not len(ext.lblk) or ext.lblk[0] != 0:
                rep.error(f"inode {ino}", "symlink without a target block")
        elif int(rec["flags"]) & F.IFLAG_INLINE_DATA:
            rep.error(f"inode {ino}", "inline-data flag on a non-symlink")
        if fmt == stat.S_IFDIR:
            if size % F.BLOCK_SIZE:
                rep.error(f"inode {ino}", f"directory size {size} not a multiple of 4096")
        if fmt not in (stat.S_IFCHR, stat.S_IFBLK) and int(rec["rdev"]):
            rep.error(f"inode {ino}", "rdev set on a non-device")
        if fmt not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK) and (len(ext.lblk) or size):
            rep.error(f"inode {ino}", "special file with data")

    # ------------------------------------------------------------------- tree
    def check_tree(self) -> None:
        img, rep, table = self.img, self.rep, self.table
        refs = np.zeros(self.L.nr_inodes, np.int64)
        subdirs = np.zeros(self.L.nr_inodes, np.int64)
        parent_of: dict[int, int] = {F.ROOT_INO: F.ROOT_INO}
        if F.ROOT_INO in self.bad:
            return
        queue = [F.ROOT_INO]
        seen = {F.ROOT_INO}
        while queue:
            d = queue.pop()
            try:
                entries = list(img.readdir(d))
            except (CorruptImage, FsError) as exc:
                rep.error(f"directory inode {d}", str(exc))
                self.bad.add(d)
                continue
            for cookie, name, ino in entries:
                where = f"directory inode {d} entry {name!r} (cookie {cookie})"
                if not self.used[ino]:
                    rep.error(where, f"names free inode {ino}")
                    continue
                refs[ino] += 1
                fmt = stat.S_IFMT(int(table["mode"][ino]))
                dent = img._dirs[d]
                lb, off = dent.names[name][1:]
                ft = next(r[3] for r in dent.blocks[lb] if r[0] == off)
                if _FTYPE.get(fmt) != ft:
                    rep.error(where, f"file type {ft} does not match inode {ino}")
                if fmt == stat.S_IFDIR:
                    subdirs[d] += 1
                    if ino in seen:
                        rep.error(where, f"directory inode {ino} reached twice (directory loop)")
                        continue
                    seen.add(ino)
                    parent_of[ino] = d
                    if ino not in self.bad:
                        queue.append(ino)
        orphans = self._orphan_set()
        for ino in np.flatnonzero(self.used).tolist():
            if ino in self.bad:
                continue
            mode = int(table["mode"][ino])
            nlink = int(table["nlink"][ino])
            if stat.S_ISDIR(mode):
                if ino not in parent_of:
                    rep.error(f"inode {ino}", "directory not reachable from the root")
                    continue
                if int(table["parent"][ino]) != parent_of[ino]:
                    rep.error(
                        f"inode {ino}",
                        f'".." is {int(table["parent"][ino])}, directory is in {parent_of[ino]}',
                    )
                if nlink != 2 + subdirs[ino]:
                    rep.error(f"inode {ino}", f"nlink {nlink}, has {2 + subdirs[ino]} links")
            else:
                if refs[ino] == 0 and nlink == 0 and ino in orphans:
                    rep.notes.append(f"inode {ino}: orphan (reclaimed at the next writable open)")
                elif refs[ino] == 0:
                    rep.error(f"inode {ino}", "not reachable from the root (lost)")
                elif nlink != refs[ino]:
                    rep.error(f"inode {ino}", f"nlink {nlink}, {int(refs[ino])} entries name it")

    # ----------------------------------------------------------------- blocks
    def check_block_bitmap(self) -> None:
        L, rep = self.L, self.rep
        bits = self._bitmap(
            L.bbitmap_start, L.bbitmap_blocks, F.KIND_BBITMAP, L.nr_blocks, "block bitmap"
        )
        inuse = self.owner != 0
        if self.bad:
            # Blocks of unreadable inodes are unknown: do not call them leaked.
            inuse = inuse | bits
        lost = np.flatnonzero(inuse & ~bits)
        leak = np.flatnonzero(bits & ~inuse)
        for b in lost[:MAX_LISTED].tolist():
            rep.error(f"block {b}", f"used by inode {int(self.owner[b])} but marked free")
        for b in leak[:MAX_LISTED].tolist():
            rep.error(f"block {b}", "marked used but owned by nothing (leaked)")
        if len(lost) > MAX_LISTED or len(leak) > MAX_LISTED:
            rep.error("block bitmap", f"{len(lost)} blocks wrongly free, {len(leak)} leaked in all")
        free = int(L.nr_blocks - bits.sum())
        sbfree = int(self.img._sb["free_blocks"])
        if free != sbfree:
            rep.error("superblock", f"free_blocks {sbfree}, block bitmap has {free}")

    # ---------------------------------------------------------------- orphans
    def _orphan_set(self) -> set[int]:
        if hasattr(self, "_orphans"):
            return self._orphans
        out: list[int] = []
        cur = int(self.img._sb["orphan_head"])
        while cur:
            if cur in out or len(out) > self.L.nr_inodes:
                self.rep.error("orphan list", f"loop at inode {cur}")
                break
            if not 0 < cur < self.L.nr_inodes or not self.used[cur]:
                self.rep.error("orphan list", f"names free or invalid inode {cur}")
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
            rep.error(
                "superblock",
                f"orphan_count {int(self.img._sb['orphan_count'])}, list has "
                f"{len(self._orphan_list)}",
            )
        flagged = set(np.flatnonzero(self.used & ((table["flags"] & F.IFLAG_ORPHAN) != 0)).tolist())
        for ino in sorted(flagged - orphans):
            rep.error(f"inode {ino}", "flagged orphan but not on the orphan list")
        for ino in sorted(orphans - flagged):
            rep.error(f"inode {ino}", "on the orphan list but not flagged orphan")
        for ino in sorted(orphans & flagged):
            if int(table["nlink"][ino]):
                rep.notes.append(f"inode {ino}: truncate to be finished at the next writable open")
        if orphans and self.img.was_clean:
            rep.notes.append("a cleanly closed image with orphans (reclaimed at next open)")
