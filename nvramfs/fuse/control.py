"""The `.nvramfs/` control directory in the mount root.

    .nvramfs/stats    JSON: mm counters, residency, DRAM budget, struct page bytes
    .nvramfs/events   the most recent lines of the event log
    .nvramfs/ctl      write a command: `sync`, `demote-all`, `policy NAME`

The directory is not listed by readdir of the root but can be looked up by
name (mkfs refuses a tree that holds the name). Its files change on every
read, so they are opened with `direct_io` and given short attribute timeouts:
the content is a snapshot taken at open (stats, events) and reads are served
from it at any offset; st_size is 0, which direct_io readers do not consult.
A ctl command runs when it is written; an unknown command is EINVAL.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from typing import Any

import pyfuse3
from pyfuse3 import FUSEError

from nvramfs.events import schema

log = logging.getLogger(__name__)

# Inode numbers far above anything the image allocates.
CTL_BASE = 1 << 62
CTL_TIMEOUT = 0.1
EVENTS_TAIL_BYTES = 64 << 10


class ControlHandle:
    """An open control file: a snapshot to read, or a command sink."""

    def __init__(self, content: bytes = b"", sink: Any = None) -> None:
        self.content = content
        self.sink = sink

    def read(self, off: int, size: int) -> bytes:
        return self.content[off : off + size]

    def write(self, off: int, buf: bytes) -> int:
        if self.sink is None:
            raise FUSEError(errno.EBADF)
        self.sink(bytes(buf))
        return len(buf)


class Control:
    """Serves `.nvramfs/` for one mount: the numbers come from mm and the log."""

    DIR = CTL_BASE
    STATS = CTL_BASE + 1
    EVENTS = CTL_BASE + 2
    CTL = CTL_BASE + 3
    NAMES = {b"stats": STATS, b"events": EVENTS, b"ctl": CTL}

    def __init__(self, mm: Any, events: Any, info: dict[str, Any]) -> None:
        self.mm = mm
        self.events = events
        self.info = info  # image, mountpoint, log, sim, cache, pid, ... for stats
        self.ops: Any = None
        self._attrs: dict[int, pyfuse3.EntryAttributes] = {}
        now = time.time_ns()
        uid, gid = os.getuid(), os.getgid()
        for ino, mode, nlink in (
            (self.DIR, stat.S_IFDIR | 0o555, 2),
            (self.STATS, stat.S_IFREG | 0o444, 1),
            (self.EVENTS, stat.S_IFREG | 0o444, 1),
            (self.CTL, stat.S_IFREG | 0o200, 1),
        ):
            e = pyfuse3.EntryAttributes()
            e.st_ino = ino
            e.st_mode = mode
            e.st_nlink = nlink
            e.st_uid = uid
            e.st_gid = gid
            e.st_size = 0
            e.st_blksize = 4096
            e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = now
            e.attr_timeout = e.entry_timeout = CTL_TIMEOUT
            self._attrs[ino] = e

    def owns(self, ino: int) -> bool:
        return ino >= CTL_BASE

    def attr(self, ino: int) -> pyfuse3.EntryAttributes:
        try:
            return self._attrs[ino]
        except KeyError:
            raise FUSEError(errno.ENOENT) from None

    def lookup(self, name: bytes) -> int:
        if name in (b".",):
            return self.DIR
        try:
            return self.NAMES[name]
        except KeyError:
            raise FUSEError(errno.ENOENT) from None

    def readdir(self, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = [(b".", self.DIR), *self.NAMES.items()]
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            attr = self._attrs[ino]
            if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                break

    def open(self, ino: int, flags: int, ops: Any) -> pyfuse3.FileInfo:
        self.ops = ops
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        if ino == self.DIR:
            raise FUSEError(errno.EISDIR)
        if ino == self.CTL:
            if not writing:
                raise FUSEError(errno.EACCES)
            handle = ControlHandle(sink=self.command)
        else:
            if writing:
                raise FUSEError(errno.EACCES)
            content = self.stats_bytes() if ino == self.STATS else self.events_tail()
            handle = ControlHandle(content=content)
        from nvramfs.fuse.operations import OpenFile

        fh = ops._next_fh
        ops._next_fh += 1
        ops._fh[fh] = OpenFile(ino, self._attrs[ino], bool(writing), ctl=handle)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False, nonseekable=False)

    # ---------------------------------------------------------------- content

    def stats(self) -> dict[str, Any]:
        """The `stats` object: mm.stats() as `counters`, plus what a person asks next."""
        counters = self.mm.stats()
        frames = counters.get("frames_used", 0)
        budget = counters.get("dram_pages", 0)
        out: dict[str, Any] = dict(self.info)
        out["readonly"] = bool(self.ops.readonly) if self.ops is not None else False
        out["errors"] = self.ops.errors if self.ops is not None else 0
        out["counters"] = counters
        out["budget"] = {
            "dram_pages": budget,
            "frames_used": frames,
            "dram_bytes": budget * 4096,
            "used_bytes": frames * 4096,
            "dirty": counters.get("dirty", 0),
        }
        out["struct_page"] = {
            "bytes_used": counters.get("struct_page_bytes_used", 64 * frames),
            "bytes_avoided": counters.get("struct_page_bytes_avoided", 0),
            **counters.get("struct_page", {}),
        }
        if "residency" in counters:
            out["residency"] = counters["residency"]
        return out

    def stats_bytes(self) -> bytes:
        """The stats, with the event log flushed at the same instant: what the
        counters say can be checked line by line against the log."""
        data = (json.dumps(self.stats(), indent=2, sort_keys=True) + "\n").encode()
        if self.events is not None:
            self.events.flush()
        return data

    def events_tail(self) -> bytes:
        """The last whole lines of the event log (flushed first)."""
        if self.events is None:
            return b""
        try:
            self.events.flush()
            path = self.info.get("log")
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - EVENTS_TAIL_BYTES))
                data = f.read()
        except OSError as exc:
            log.warning("cannot read the event log: %s", exc)
            return b""
        if size > EVENTS_TAIL_BYTES:
            data = data[data.find(b"\n") + 1 :]
        return data

    # --------------------------------------------------------------- commands

    def command(self, data: bytes) -> None:
        """Run the commands in one write to `ctl` (one per line)."""
        lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if not lines:
            raise FUSEError(errno.EINVAL)
        for line in lines:
            self._run(line)

    def _run(self, line: str) -> None:
        words = line.split()
        cmd, args = words[0], words[1:]
        log.info("ctl: %s", line)
        if cmd == "sync" and not args:
            self.ops.sync_all(schema.REASON_SYNC)
        elif cmd == "demote-all" and not args:
            self.mm.demote_all(schema.REASON_CTL)
        elif cmd == "policy" and len(args) == 1:
            try:
                self.mm.set_policy(args[0])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ctl: policy %s: %s", args[0], exc)
                raise FUSEError(errno.EINVAL) from None
            self.info["policy"] = args[0]
        else:
            log.warning("ctl: unknown command %r", line)
            raise FUSEError(errno.EINVAL)
        if self.events is not None:
            self.events.flush()
