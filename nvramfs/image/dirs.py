"""Directories: parse, cache, insert, remove (a mixin of `Image`).

A directory is a file of 4 KiB blocks of records that never move (so a
readdir cookie, block*4096+offset+1, stays valid); the parsed form is cached
per directory with a name index and each block's largest free slot.
"""

from __future__ import annotations

import errno
import stat

import numpy as np

from nvramfs.image import format as F
from nvramfs.image.errors import CorruptImage, FsError

BS = F.BLOCK_SIZE


class _Dir:
    """A directory, parsed: per block a list of [off, rec_len, ino, ftype, name]."""

    __slots__ = ("blocks", "names", "slack")

    def __init__(self) -> None:
        self.blocks: list[list[list]] = []
        self.names: dict[bytes, tuple[int, int, int]] = {}  # name -> (ino, lblk, off)
        self.slack: list[int] = []  # per block: the largest record a new entry could take

    def update_slack(self, lb: int) -> None:
        best = 0
        for _off, rl, e_ino, _ft, name in self.blocks[lb]:
            best = max(best, rl - (F.dirent_len(len(name)) if e_ino else 0))
        if lb == len(self.slack):
            self.slack.append(best)
        else:
            self.slack[lb] = best


class Directories:
    """Mixin: needs `_inode`, `_winode`, `_ext`, `_store_ext`, `_block`, `_wblock`, allocation."""

    def _dir(self, ino: int) -> _Dir:
        d = self._dirs.get(ino)
        if d is not None:
            return d
        rec = self._inode(ino)
        if not stat.S_ISDIR(int(rec["mode"])):
            raise FsError(errno.ENOTDIR)
        size = int(rec["size"])
        if size % BS:
            raise CorruptImage(f"directory inode {ino}: size {size} not a multiple of {BS}")
        nblk = size // BS
        if nblk > int(self._ext(ino).len.sum()):
            raise CorruptImage(f"directory inode {ino}: size {size} larger than its blocks")
        blocks = self.bmap(ino, 0, nblk) if nblk else np.zeros(0, np.int64)
        d = _Dir()
        for lb, pb in enumerate(blocks.tolist()):
            if pb == 0:
                raise CorruptImage(f"directory inode {ino}: hole at block {lb}")
            blk = self._check_block(pb, F.KIND_DIR, ino, f"directory inode {ino}")
            recs = self._parse_dirblock(ino, pb, blk)
            d.blocks.append(recs)
            d.update_slack(lb)
            for off, _rl, e_ino, _ft, name in recs:
                if e_ino:
                    if name in d.names:
                        raise CorruptImage(
                            f"directory inode {ino} block {pb}: duplicate name {name!r}"
                        )
                    d.names[name] = (e_ino, lb, off)
        self._dirs[ino] = d
        return d

    def _parse_dirblock(self, dino: int, pb: int, blk: memoryview) -> list[list]:
        recs = []
        off = 0
        where = f"directory inode {dino} block {pb}"
        while off < F.PAYLOAD:
            if off + F.DIRENT_HDR > F.PAYLOAD:
                raise CorruptImage(f"{where}: record at {off} runs past the block")
            e_ino = int.from_bytes(blk[off : off + 8], "little")
            rl = int.from_bytes(blk[off + 8 : off + 10], "little")
            nl = blk[off + 10]
            ft = blk[off + 11]
            if rl < F.DIRENT_HDR or rl % 8 or off + rl > F.PAYLOAD:
                raise CorruptImage(f"{where}: record at {off} has bad length {rl}")
            name = b""
            if e_ino:
                if not 0 < e_ino < self.L.nr_inodes:
                    raise CorruptImage(f"{where}: entry at {off} names inode {e_ino} out of range")
                if nl == 0 or F.dirent_len(nl) > rl:
                    raise CorruptImage(f"{where}: entry at {off} has bad name length {nl}")
                name = bytes(blk[off + F.DIRENT_HDR : off + F.DIRENT_HDR + nl])
                if b"/" in name or b"\0" in name or name in (b".", b".."):
                    raise CorruptImage(f"{where}: entry at {off} has an invalid name {name!r}")
            recs.append([off, rl, e_ino, ft, name])
            off += rl
        return recs

    def _write_dirblock(self, dino: int, lb: int) -> None:
        d = self._dirs[dino]
        d.update_slack(lb)
        pb = int(self._ext(dino).lookup(np.array([lb], np.int64))[0])
        blk = self._wblock(pb, F.KIND_DIR, dino, fresh=True)
        for off, rl, e_ino, ft, name in d.blocks[lb]:
            blk[off : off + 8] = e_ino.to_bytes(8, "little")
            blk[off + 8 : off + 10] = rl.to_bytes(2, "little")
            blk[off + 10] = len(name)
            blk[off + 11] = ft
            blk[off + F.DIRENT_HDR : off + F.DIRENT_HDR + len(name)] = name
        self._winode(dino)  # keeps the directory in the txn's touched set

    def _dir_add(self, dino: int, name: bytes, ino: int, ftype: int) -> None:
        d = self._dir(dino)
        need = F.dirent_len(len(name))
        for lb, recs in enumerate(d.blocks):
            if d.slack[lb] < need:
                continue
            for k, r in enumerate(recs):
                off, rl, e_ino, _ft, nm = r
                used = F.dirent_len(len(nm)) if e_ino else 0
                if rl - used >= need:
                    if e_ino:
                        r[1] = used
                        recs.insert(k + 1, [off + used, rl - used, ino, ftype, name])
                        d.names[name] = (ino, lb, off + used)
                    else:
                        r[2], r[3], r[4] = ino, ftype, name
                        d.names[name] = (ino, lb, off)
                    self._write_dirblock(dino, lb)
                    return
        # No room: grow the directory by one block.
        lb = len(d.blocks)
        e = self._ext(dino)
        goal = int(e.pblk[-1] + e.len[-1]) if len(e.pblk) else self._bhint
        pb = self._alloc_meta(goal)
        self._store_ext(dino, np.append(e.lblk, lb), np.append(e.len, 1), np.append(e.pblk, pb))
        rec = self._winode(dino)
        rec["size"] = (lb + 1) * BS
        rec["blocks"] = int(rec["blocks"]) + 1
        d.blocks.append([[0, F.PAYLOAD, ino, ftype, name]])
        d.names[name] = (ino, lb, 0)
        self._write_dirblock(dino, lb)

    def _dir_remove(self, dino: int, name: bytes) -> int:
        d = self._dir(dino)
        ino, lb, off = d.names.pop(name)
        recs = d.blocks[lb]
        k = next(i for i, r in enumerate(recs) if r[0] == off)
        if k > 0:
            recs[k - 1][1] += recs[k][1]
            del recs[k]
        else:
            recs[0][2:] = [0, 0, b""]
        self._write_dirblock(dino, lb)
        return ino

    def _dir_set(self, dino: int, name: bytes, ino: int, ftype: int) -> None:
        """Point an existing entry at another inode (rename over a target)."""
        d = self._dir(dino)
        _old, lb, off = d.names[name]
        r = next(r for r in d.blocks[lb] if r[0] == off)
        r[2], r[3] = ino, ftype
        d.names[name] = (ino, lb, off)
        self._write_dirblock(dino, lb)
