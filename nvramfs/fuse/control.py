"""The `.nvramfs/` control directory in the mount root.

    .nvramfs/stats    JSON: mm counters, residency, DRAM budget, struct page bytes
    .nvramfs/events   the most recent lines of the event log
    .nvramfs/ctl      commands: `sync`, `demote-all`, `policy [NAME]`, `stats`,
                      `promote-cap [PAGES]`, `dram [SIZE]`, `remount OPTIONS`, `help`

The directory is not listed by readdir of the root but can be looked up by
name (mkfs refuses a tree that holds the name). Its files change on every
read, so they are opened with `direct_io` and given short attribute timeouts:
the content is a snapshot taken at open (stats, events) and reads are served
from it at any offset; st_size is 0, which direct_io readers do not consult.
A ctl command runs when it is written (`echo sync > ctl`; a failure is
EINVAL, its reason in the `ctl` event), or when it is asked for as the xattr
`user.nvramfs.ctl COMMAND` of ctl: the value is the daemon's answer (`ok: ...`
or `error: ...`). `nvramfs ctl` asks the second way, which also works on a
read-only mount (commands that write, `sync`, are refused there).
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
# `nvramfs ctl` asks with getxattr(ctl, CTL_XATTR_PREFIX + command).
CTL_XATTR_PREFIX = b"user.nvramfs.ctl "
CTL_REPEAT_SECONDS = 1.0
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
        self._ro_by_remount = False
        self._dram_max = int(info.get("dram_pages", 0))  # the budget at mount: the most
        self._answers: dict[tuple[int, bytes], tuple[float, bytes]] = {}
        self._attrs: dict[int, pyfuse3.EntryAttributes] = {}
        now = time.time_ns()
        uid, gid = os.getuid(), os.getgid()
        for ino, mode, nlink in (
            (self.DIR, stat.S_IFDIR | 0o555, 2),
            (self.STATS, stat.S_IFREG | 0o444, 1),
            (self.EVENTS, stat.S_IFREG | 0o444, 1),
            (self.CTL, stat.S_IFREG | 0o600, 1),
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
        """`echo CMD > .nvramfs/ctl`: run the commands of one write (one per line).

        A failure is EINVAL to the writer; the daemon's message is in the `ctl`
        event of the log. `nvramfs ctl` asks through `query` instead and gets it."""
        lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if not lines:
            raise FUSEError(errno.EINVAL)
        for line in lines:
            ok, _ = self.run(line)
            if not ok:
                raise FUSEError(errno.EINVAL)

    def query(self, name: bytes, pid: int) -> bytes:
        """getxattr(`.nvramfs/ctl`, `user.nvramfs.ctl COMMAND`): run COMMAND, answer
        `ok: MESSAGE` or `error: MESSAGE` as the value.

        A read (getxattr) works on a read-only mount too, where the kernel refuses
        to open ctl for writing. getfattr asks twice (the size, then the value):
        the same name from the same process within CTL_REPEAT_SECONDS gets the
        answer of the first run, so one command runs once."""
        if not name.startswith(CTL_XATTR_PREFIX):
            raise FUSEError(pyfuse3.ENOATTR)
        line = name[len(CTL_XATTR_PREFIX) :].decode("utf-8", "replace").strip()
        now = time.monotonic()
        key = (pid, name)
        last = self._answers.get(key)
        if last is not None and now - last[0] < CTL_REPEAT_SECONDS:
            return last[1]
        ok, message = self.run(line) if line else (False, "no command (try: help)")
        answer = f"{'ok' if ok else 'error'}: {message}\n".encode()
        self._answers = {k: v for k, v in self._answers.items() if now - v[0] < CTL_REPEAT_SECONDS}
        self._answers[key] = (now, answer)
        return answer

    def run(self, line: str) -> tuple[bool, str]:
        """Run one command; (ok, message). Every command is logged as a `ctl` event."""
        words = line.split()
        cmd, args = words[0], words[1:]
        log.info("ctl: %s", line)
        try:
            handler = _COMMANDS.get(cmd)
            if handler is None:
                raise CtlError(f"unknown command {cmd!r} (try: help)")
            if cmd in _WRITING and self.ops is not None and self.ops.readonly:
                raise CtlError(f"{cmd}: the mount is read-only")
            ok, message = True, handler(self, args)
        except CtlError as exc:
            ok, message = False, str(exc)
            log.warning("ctl: %s: %s", line, message)
        except OSError as exc:  # e.g. ENOSPC in a writeback: an answer, not a crash
            ok, message = False, f"{cmd}: {exc.strerror or exc}"
            log.warning("ctl: %s: %s", line, message)
        self._emit(schema.CTL, cmd=line, ok=ok, message=message)
        if self.events is not None:
            self.events.flush()
        return ok, message

    def _emit(self, ev: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(ev, **fields)

    def _set_policy(self, name: str, reason: str) -> str:
        old = self.info.get("policy")
        if name == old:
            return f"policy {name} (unchanged)"
        try:
            self.mm.set_policy(name)
        except (ValueError, KeyError, TypeError) as exc:
            raise CtlError(f"policy {name}: {exc}") from None
        self.info["policy"] = name
        self._emit(schema.POLICY, **{"from": old, "to": name, "reason": reason})
        return f"policy {old} -> {name}"

    def _help(self, args: list[str]) -> str:
        return "commands: " + "; ".join(f"{k} {v}".strip() for k, v in _USAGE.items())

    def _stats(self, args: list[str]) -> str:
        return json.dumps(self.stats(), sort_keys=True)

    def _sync(self, args: list[str]) -> str:
        _no_args("sync", args)
        before = int(self.mm.stats().get("dirty", 0))
        self.ops.sync_all(schema.REASON_SYNC)
        return f"wrote back {before} dirty page{'s' * (before != 1)}"

    def _demote_all(self, args: list[str]) -> str:
        _no_args("demote-all", args)
        n = self.mm.demote_all(schema.REASON_CTL) or 0
        return f"demoted {n} page{'s' * (n != 1)} to XIP"

    def _policy(self, args: list[str]) -> str:
        if not args:
            return f"policy {self.info.get('policy')}"
        if len(args) != 1:
            raise CtlError("usage: policy [NAME]")
        return self._set_policy(args[0], schema.REASON_CTL)

    def _promote_cap(self, args: list[str]) -> str:
        if not hasattr(self.mm, "max_promote_per_tick"):
            raise CtlError("promote-cap: sim=off has no migration")
        if args:
            if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
                raise CtlError("usage: promote-cap [PAGES] (at least 1)")
            self.mm.max_promote_per_tick = int(args[0])
        return f"promote-cap {self.mm.max_promote_per_tick} pages per tick"

    def _dram_pages(self, text: str) -> int:
        """A budget in frames from a size (`64M`, `1.5G`, bytes), checked against the
        most the machine has: the budget at mount."""
        from nvramfs.errors import UsageError
        from nvramfs.units import parse_size

        if not hasattr(self.mm, "set_dram_budget"):
            raise CtlError("dram: sim=off has no DRAM budget")
        try:
            pages = parse_size(text) // 4096
        except UsageError as exc:
            raise CtlError(f"dram: {exc}") from None
        if not 1 <= pages <= self._dram_max:
            raise CtlError(
                f"dram={text}: the budget can be 4 KiB to {self._dram_max * 4096 >> 10} KiB "
                "(the size at mount; unmount and mount again for more)"
            )
        return pages

    def _dram(self, args: list[str]) -> str:
        """`dram [SIZE]`: show, or offline/online frames (MemoryManager.set_dram_budget)."""
        if len(args) > 1:
            raise CtlError("usage: dram [SIZE]")
        old = int(self.info.get("dram_pages", 0))
        if not args:
            return f"dram {old} frames ({old * 4096 >> 10} KiB; at most {self._dram_max})"
        pages = self._dram_pages(args[0])
        try:
            now = self.mm.set_dram_budget(pages)
        except (OSError, ValueError) as exc:
            now = int(self.mm.stats().get("dram_pages", old))
            self.info["dram_pages"] = now
            raise CtlError(f"dram: {getattr(exc, 'strerror', None) or exc} (now {now})") from None
        self.info["dram_pages"] = now
        return f"dram {old} -> {now} frames"

    def _remount(self, args: list[str]) -> str:
        """`mount -o remount,...`: what may change on a live mount (fuse/options.py)."""
        words = [w for a in args for w in a.split(",") if w]
        self._remount_check(words)  # all or nothing: refuse before changing anything
        done = []
        for word in words:
            key, _, value = word.partition("=")
            if word == "ro":
                if not self.ops.readonly:
                    self.ops.sync_all(schema.REASON_SYNC)
                    self.ops.readonly = True
                    self._ro_by_remount = True
                done.append("ro")
            elif word == "rw":
                self.ops.readonly = False
                self._ro_by_remount = False
                done.append("rw")
            elif key == "policy" and value:
                done.append(self._set_policy(value, schema.REASON_REMOUNT))
            elif key == "promote_cap" and value:
                done.append(self._promote_cap([value]))
            elif key == "dram":
                done.append(self._dram([value]))
        return "remounted: " + (", ".join(done) or "nothing to change")

    def _remount_check(self, words: list[str]) -> None:
        for word in words:
            key, _, value = word.partition("=")
            if word == "rw" and self.info.get("image_readonly"):
                raise CtlError(
                    "cannot remount rw: the image was opened read-only at mount "
                    "(unmount, then mount without ro)"
                )
            if word == "rw" and self.ops.readonly and not self._ro_by_remount:
                raise CtlError("cannot remount rw: a fatal error turned the mount read-only")
            if key == "dram":
                self._dram_pages(value)
            elif key == "policy" and value:
                from nvramfs.mm.policy import POLICIES

                if value not in POLICIES:
                    raise CtlError(f"unknown policy {value!r} (one of: {', '.join(POLICIES)})")
            elif key == "promote_cap" and value.isdigit() and int(value) >= 1:
                pass
            elif word not in ("ro", "rw"):
                raise CtlError(f"remount: cannot change {word!r}")


class CtlError(Exception):
    """A ctl command that cannot run: the message is the answer."""


def _no_args(cmd: str, args: list[str]) -> None:
    if args:
        raise CtlError(f"usage: {cmd} (no arguments)")


# Commands, their arguments (for `help`), and the ones that write to the image.
_USAGE = {
    "help": "",
    "stats": "",
    "sync": "",
    "demote-all": "",
    "policy": "[NAME]",
    "promote-cap": "[PAGES]",
    "dram": "[SIZE]",
    "remount": "OPTIONS",
}
_COMMANDS = {
    "help": Control._help,
    "stats": Control._stats,
    "sync": Control._sync,
    "demote-all": Control._demote_all,
    "policy": Control._policy,
    "promote-cap": Control._promote_cap,
    "dram": Control._dram,
    "remount": Control._remount,
}
_WRITING = {"sync"}
