"""The pyfuse3 Operations: FUSE requests translated into image and mm calls.

Read this file first to find the data path: `read` clamps the byte range to
EOF and hands it to `mm.read`, whose buffer (a memoryview of the image mmap for
an XIP run, or of a pagecache frame) goes back to the kernel without a copy;
`write` stores through `mm.write`, which copies XIP pages into frames
(`pfn_mkwrite`, event `cow`). Namespace calls go to `nvramfs.image.Image`,
where each one is a crash-consistent transaction.

Gotchas, written down so nobody rediscovers them:

- pyfuse3 lets only `FUSEError` out of a handler; anything else ends
  `pyfuse3.main()` and with it the mount. Every handler is therefore wrapped
  by `_handler`: image `FsError` becomes its errno, anything unexpected is
  logged, emitted as an `error` event and answered with EIO; an mm BUG or a
  CorruptImage also turns the mount read-only (`fatal` in the event).
- The kernel keeps a *lookup count* per inode: +1 for every successful
  lookup/create/mkdir/mknod/symlink/link and every readdirplus entry it
  accepts, -n with `forget`. An inode whose last name is unlinked while the
  kernel still knows it (open, or merely cached) goes onto the image's orphan
  list and is freed (`Image.release`) when both its lookup count and its open
  count reach zero, or at unmount.
- Attributes are cached here and in the kernel (timeouts > 0: with 0 the
  kernel sends a GETATTR before every read). Size and mtime changed by writes
  live in the cache and reach the image at flush/fsync/release, on the
  once-a-second tick and at unmount; fsync makes them durable before it
  returns.
- pyfuse3 leaves libfuse's FUSE_CAP_ATOMIC_O_TRUNC on: O_TRUNC comes inside
  OPEN's flags, never as a SETATTR, so `open` truncates (`_truncate_on_open`,
  through `_set_size` as setattr does). docs/POSIX.md lists every flag.
- `cache=direct` opens files with `direct_io` (every read reaches the
  simulation; MAP_SHARED mmap is refused by the kernel, MAP_PRIVATE works);
  `cache=kernel` keeps the kernel page cache (`keep_cache`).
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import pyfuse3
from pyfuse3 import FUSEError

from nvramfs.events import schema

log = logging.getLogger(__name__)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
NAME_MAX = 255

# Attribute/entry timeouts given to the kernel. Every change to an inode goes
# through this daemon, so the kernel's copy only goes stale through our own
# replies, which carry fresh attributes; a long timeout costs nothing and
# saves a GETATTR per request.
ATTR_TIMEOUT = 60.0

RESIDENCY_XATTR = b"user.nvramfs.residency"
CTL_NAME = b".nvramfs"

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
_NO_REPLACE = pyfuse3.RENAME_EXCHANGE | pyfuse3.RENAME_NOREPLACE
_DAY_NS = 86_400 * 10**9


def _fs_error_type() -> type[BaseException] | None:
    try:
        from nvramfs.image import FsError
    except ImportError:  # the image layer is not there yet
        return None
    return FsError


def _host_full_type() -> type[BaseException] | None:
    try:
        from nvramfs.image import HostFull
    except ImportError:
        return None
    return HostFull


def _fatal_types() -> tuple[type[BaseException], ...]:
    """Exceptions after which nothing may be written: a broken mm invariant (BUG),
    or an image structure that cannot be trusted (the image latches it too)."""
    out: list[type[BaseException]] = list(_mm_bug_types())
    try:
        from nvramfs.image import CorruptImage

        out.append(CorruptImage)
    except ImportError:
        pass
    return tuple(out)


def _mm_bug_types() -> tuple[type[BaseException], ...]:
    """The mm layer's BUG exception(s): a broken invariant of the simulated VM."""
    try:
        from nvramfs.mm.bug import MMBug
    except ImportError:  # the mm layer is not there yet
        return ()
    return (MMBug,)


def _in_group(file_gid: int, gid: int, pid: int) -> bool:
    """Is the caller (primary group `gid`, process `pid`) in the group `file_gid`?
    Supplementary groups come from /proc (read only when the primary one differs);
    a process that is gone counts as not in the group."""
    if gid == file_gid:
        return True
    try:
        return file_gid in pyfuse3.get_sup_groups(pid)
    except (OSError, RuntimeError):
        return False


def _handler(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a request handler so that only FUSEError ever leaves it.

    An image `FsError` is the errno a kernel filesystem would give; anything
    else is a bug: logged with its traceback, counted, emitted as an `error`
    event and answered with EIO, and the daemon stays up.
    """
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        try:
            return await fn(self, *args)
        except FUSEError:
            raise
        except Exception as exc:
            raise self.translate(name, exc) from None

    return wrapper


def _quiet_handler(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For `forget` and friends, which must not raise at all."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        try:
            return await fn(self, *args)
        except Exception as exc:
            self.translate(name, exc)
            return None

    return wrapper


class OpenFile:
    """One open file handle: the inode, its cached attributes, and the control state.

    pyfuse3's read/write/flush/release carry no request context and no flags, so
    what they need of the OPEN (who opened it, O_SYNC, O_NOATIME) is kept here.
    """

    __slots__ = (
        "ino", "attr", "ctl", "writable", "uid", "gid", "pid", "sync", "noatime", "direct"
    )  # fmt: skip

    def __init__(
        self,
        ino: int,
        attr: pyfuse3.EntryAttributes,
        writable: bool,
        ctl: Any = None,
        uid: int = 0,
        *,
        gid: int = 0,
        pid: int = 0,
        sync: bool = False,
        noatime: bool = False,
        direct: bool = True,
    ):
        self.ino = ino
        self.attr = attr
        self.writable = writable
        self.ctl = ctl
        self.uid = uid  # who opened it: pyfuse3's write() has no request context
        self.gid = gid  # and in which group (setgid is kept for a writer in the file's group)
        self.pid = pid
        self.sync = sync  # O_SYNC/O_DSYNC on a direct_io file: every write is fsync'ed
        self.noatime = noatime  # O_NOATIME: reads through it leave atime alone
        self.direct = direct  # opened with direct_io (else through the kernel page cache)


class Operations(pyfuse3.Operations):
    """nvramfs as pyfuse3 sees it. `mm` is a MemoryManager, or the sim=off backend."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        img: Any,
        mm: Any,
        events: Any = None,
        *,
        cache: str = "direct",
        readonly: bool = False,
        control: Any = None,
        atime: str = "relatime",
        shared_mmap: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.img = img
        self.mm = mm
        self.events = events
        self.readonly = readonly
        self.direct_io = cache == "direct"
        # Under cache=direct, files whose name matches one of these shell patterns
        # are opened through the kernel page cache, so that MAP_SHARED works on
        # them (`shared_mmap=`; SQLite's WAL index, NAME-shm, by default).
        self.shared_mmap = tuple(shared_mmap)
        self.control = control
        # Access times on read, as the VFS's mount flags say: relatime (update when
        # atime is not newer than mtime/ctime, or a day old), strictatime, noatime.
        self.atime = atime
        self.errors = 0
        self._fs_error = _fs_error_type()
        self._host_full = _host_full_type()
        self._fatal = _fatal_types()
        # Fatal errors (a broken invariant, a corrupt image): the mount went
        # read-only, and its unmount is not clean.
        self.fatal_errors = 0
        self._root = int(img.root_ino)
        if self._root != pyfuse3.ROOT_INODE:
            raise RuntimeError(
                f"image root inode is {self._root}; the FUSE layer expects {pyfuse3.ROOT_INODE}"
            )
        self._attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self._meta_dirty: set[int] = set()  # size/mtime changed by writes, not yet in the image
        self._nlookup: dict[int, int] = {}
        self._nopen: dict[int, int] = {}
        self._orphans: set[int] = set()  # unlinked, still known to the kernel
        self._paths: dict[int, str] = {self._root: "/"}
        self._fh: dict[int, OpenFile] = {}
        self._next_fh = 1
        self._reserved: dict[int, set[int]] = {}  # hole pages reserved, per inode
        # Files truncated to zero since their last close: the next close writes them
        # back (ext4's auto_da_alloc), so a rewrite lost in a crash is not empty.
        self._alloc_on_close: set[int] = set()
        # Inode numbers the image freed: a generation per number, so the kernel can
        # tell a reused number from the old inode; and the last attributes of a
        # removed directory the kernel still knows (fstat of an open fd: nlink 0).
        self._gens: dict[int, int] = {}
        self._dead: dict[int, pyfuse3.EntryAttributes] = {}
        # Background writeback and the writers' throttle (fuse/flusher.py); set by
        # the mount. mm's balance_dirty_pages decides, after each write.
        self.flusher: Any = None
        self._bdp = getattr(mm, "balance_dirty_pages", None)

    # ------------------------------------------------------------------ errors

    def translate(self, what: str, exc: BaseException) -> FUSEError:
        """Turn an exception from a lower layer into the FUSEError to answer with."""
        if isinstance(exc, FUSEError):
            return exc
        if self._host_full is not None and isinstance(exc, self._host_full):
            # The host filesystem under the image is full: ENOSPC for the caller,
            # nothing was stored, the daemon carries on. Said once per refusal.
            log.warning("%s: %s", what, exc.strerror)
            self.emit(schema.ERROR, what=f"{what}: {exc.strerror}", fatal=False)
            return FUSEError(errno.ENOSPC)
        if self._fs_error is not None and isinstance(exc, self._fs_error):
            return FUSEError(getattr(exc, "errno", None) or errno.EIO)
        if type(exc) is OSError and exc.errno in (errno.ENOMEM, errno.ENOSPC, errno.EFBIG):
            # mm's "DRAM budget exhausted, nothing reclaimable" and the like: an
            # answer the caller can act on, not a bug.
            log.warning("%s: %s", what, exc)
            return FUSEError(exc.errno)
        fatal = bool(self._fatal) and isinstance(exc, self._fatal)
        self.errors += 1
        log.error("%s: unexpected %s: %s", what, type(exc).__name__, exc, exc_info=exc)
        if fatal:
            self.fatal_errors += 1
        if fatal and not self.readonly:
            self.readonly = True
            log.error("%s: the mount is read-only from now on", exc)
        self.emit(schema.ERROR, what=f"{what}: {type(exc).__name__}: {exc}", fatal=fatal)
        return FUSEError(errno.EIO)

    def emit(self, ev: str, **fields: Any) -> None:
        if self.events is not None:
            try:
                self.events.emit(ev, **fields)
            except Exception:  # the log must never take a request down
                log.exception("cannot emit %s event", ev)

    def _check_writable(self) -> None:
        if self.readonly:
            raise FUSEError(errno.EROFS)

    # -------------------------------------------------------------- attributes

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        entry = self._attrs.get(ino)
        if entry is None:
            entry = self._load(ino)
        return entry

    def _load(self, ino: int) -> pyfuse3.EntryAttributes:
        """(Re)read the image's attributes into the cached EntryAttributes, in place.

        Open files hold the cached object, so it is updated, never replaced.
        Size and times changed by writes not yet flushed stay as they are.
        """
        a = self.img.getattr(ino)
        entry = self._attrs.get(ino)
        if entry is None:
            entry = pyfuse3.EntryAttributes()
            entry.st_ino = ino
            entry.generation = self._gens.get(ino, 0)
            entry.entry_timeout = ATTR_TIMEOUT
            entry.attr_timeout = ATTR_TIMEOUT
            entry.st_blksize = PAGE_SIZE
            self._attrs[ino] = entry
        entry.st_mode = a.mode
        entry.st_nlink = a.nlink
        entry.st_uid = a.uid
        entry.st_gid = a.gid
        entry.st_rdev = a.rdev
        entry.st_blocks = a.blocks
        if ino not in self._meta_dirty:
            entry.st_atime_ns = a.atime_ns
            entry.st_size = a.size
            entry.st_mtime_ns = a.mtime_ns
            entry.st_ctime_ns = a.ctime_ns
        elif a.ctime_ns > entry.st_ctime_ns:
            # A namespace call (link, unlink, rename) stamped ctime in the image
            # while writes keep size and times here: the newer ctime wins, and
            # flush_meta must not put the older one back.
            entry.st_ctime_ns = a.ctime_ns
        return entry

    def _refresh(self, *inos: int) -> None:
        """Re-read cached attributes after a namespace call changed them."""
        for ino in inos:
            if ino in self._attrs:
                try:
                    self._load(ino)
                except Exception:
                    self._attrs.pop(ino, None)

    def _freed(self, ino: int) -> None:
        """The image freed `ino` (its number may come back for another inode)."""
        self._gens[ino] = self._gens.get(ino, 0) + 1
        self._paths.pop(ino, None)  # a file that reuses the number is named anew
        entry = self._attrs.pop(ino, None)
        self._meta_dirty.discard(ino)
        self._alloc_on_close.discard(ino)
        if entry is not None and self._nlookup.get(ino):
            entry.st_nlink = 0
            self._dead[ino] = entry

    def flush_meta(self, ino: int) -> None:
        """Write size and times changed by writes into the image (one transaction).

        Ordered data: the size goes in as `ordered_size`, which the image clamps
        to the first page still dirty in DRAM past its on-image size (and never
        shrinks or frees with); the writeback that covers the rest advances it.
        So a crash never shows a size over data the image does not hold."""
        if ino not in self._meta_dirty:
            return
        entry = self._attrs.get(ino)
        self._meta_dirty.discard(ino)
        if entry is None or ino in self._orphans and self._nlookup.get(ino, 0) == 0:
            return
        a = self.img.setattr(
            ino,
            ordered_size=entry.st_size,
            still_dirty=self._still_dirty(ino),
            atime_ns=entry.st_atime_ns,
            mtime_ns=entry.st_mtime_ns,
            ctime_ns=entry.st_ctime_ns,
        )
        entry.st_blocks = a.blocks
        if a.size < entry.st_size:
            # Writeback advances the rest; the tick pushes the times again.
            self._meta_dirty.add(ino)

    def _still_dirty(self, ino: int) -> Any:
        fn = getattr(self.mm, "dirty_indices", None)
        return fn(ino) if fn is not None else None

    def flush_all_meta(self) -> None:
        for ino in list(self._meta_dirty):
            try:
                self.flush_meta(ino)
            except Exception as exc:
                self.translate("flush_meta", exc)

    # ------------------------------------------------------------ bookkeeping

    def _remember(self, parent: int, name: bytes, ino: int) -> None:
        """Count one kernel lookup of `ino` and name it in the log the first time."""
        self._nlookup[ino] = self._nlookup.get(ino, 0) + 1
        if name and ino not in self._paths:
            self._name(parent, name, ino)

    def _name(self, parent: int, name: bytes, ino: int) -> None:
        base = self._paths.get(parent)
        if base is None:
            return
        path = (base.rstrip("/") + "/" + os.fsdecode(name)) if name else base
        self._paths[ino] = path
        try:
            gen = self.img.inode_generation(ino)
        except Exception:
            gen = None
        if gen is None:
            self.emit(schema.PATH, ino=ino, path=path)
        else:
            self.emit(schema.PATH, ino=ino, gen=gen, path=path)

    def _maybe_reap(self, ino: int) -> None:
        """Free an orphan once neither the kernel nor an open file knows it."""
        if ino in self._orphans and not self._nlookup.get(ino) and not self._nopen.get(ino):
            self._orphans.discard(ino)
            self._freed(ino)
            self._paths.pop(ino, None)
            self.mm.evict_inode(ino)
            self._prune_reserved(ino)
            self._unreserve_all(ino)
            self.img.release(ino)

    def _ctx_ids(self, parent: int, ctx: pyfuse3.RequestContext, mode: int) -> tuple[int, int, int]:
        """Owner, group and mode of a new inode, as the VFS would give them.

        The umask is applied (idempotent if the kernel did already); a setgid
        directory passes its group on, and its setgid bit to subdirectories.
        """
        mode = mode & ~(ctx.umask & 0o777)
        gid = ctx.gid
        pattr = self._attr(parent)
        if pattr.st_mode & stat.S_ISGID:
            gid = pattr.st_gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return ctx.uid, gid, mode

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FUSEError(errno.ENAMETOOLONG)

    def _check_new(self, parent: int, name: bytes, in_ctl: int = errno.EPERM) -> None:
        """A name about to be created: not too long, not the control directory's,
        not in it (`in_ctl`: the VFS's answer for a directory without the operation:
        EPERM, EACCES for create)."""
        self._check_writable()
        self._check_name(name)
        if self.control is None:
            return
        if self.control.owns(parent):
            raise FUSEError(in_ctl)
        if parent == self._root and name == CTL_NAME:
            raise FUSEError(errno.EEXIST)

    def _check_old(self, parent: int, name: bytes) -> None:
        """A name about to go (unlink, rmdir, rename): the control directory and its
        files are the daemon's, as /proc's are the kernel's: EPERM."""
        self._check_writable()
        self._check_name(name)
        if self.control is not None and (
            self.control.owns(parent) or (parent == self._root and name == CTL_NAME)
        ):
            raise FUSEError(errno.EPERM)

    def _is_ctl(self, ino: int) -> bool:
        return self.control is not None and self.control.owns(ino)

    # ----------------------------------------------------------------- lookup

    @_handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Find `name` in a directory. Success adds one to the inode's lookup count."""
        if self.control is not None:
            if parent_inode == self._root and name == CTL_NAME:
                return self.control.attr(self.control.DIR)
            if self.control.owns(parent_inode):
                return self.control.attr(self.control.lookup(name))
        self._check_name(name)
        if name == b".":
            ino = parent_inode
        else:
            ino = self.img.lookup(parent_inode, name)
        entry = self._with_blocks(ino, self._attr(ino))
        self._remember(parent_inode, name if name not in (b".", b"..") else b"", ino)
        return entry

    @_quiet_handler
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        """The kernel dropped `nlookup` references; an orphan at zero is freed."""
        for ino, n in inode_list:
            left = self._nlookup.get(ino, 0) - n
            if left > 0:
                self._nlookup[ino] = left
                continue
            self._nlookup.pop(ino, None)
            self._dead.pop(ino, None)
            if ino in self._orphans:
                self._maybe_reap(ino)
            elif not self._nopen.get(ino) and ino not in self._meta_dirty:
                self._attrs.pop(ino, None)

    @_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Attributes of an inode, from the cache (the image only on a miss)."""
        if self._is_ctl(inode):
            return self.control.attr(inode)
        entry = self._attrs.get(inode)
        if entry is None:
            dead = self._dead.get(inode)
            if dead is not None:
                return dead
            entry = self._load(inode)
        return self._with_blocks(inode, entry)

    def _with_blocks(self, ino: int, entry: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        """`entry` with st_blocks current, for every reply that carries attributes
        (lookup, getattr, readdirplus, setattr, link): the kernel caches what any of
        them says, and `tar -S`, `cp --sparse` take a file whose st_blocks is 0 for
        all hole."""
        if ino in self._reserved:
            self._count_delalloc(ino, entry)
        return entry

    def _count_delalloc(self, ino: int, entry: pyfuse3.EntryAttributes) -> None:
        """st_blocks counts the blocks a write reserved and writeback has not
        mapped yet, as ext4 counts its delayed allocations: `du` of a file just
        written shows its size, not 0 until the flusher runs (tmpfs shows it too)."""
        self._prune_reserved(ino)
        mine = self._reserved.get(ino)
        pending = len(mine) if mine else 0
        if not pending:
            self._reserved.pop(ino, None)
        entry.st_blocks = self.img.getattr(ino).blocks + pending * (PAGE_SIZE // 512)

    @_handler
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        """chmod/chown/truncate/utimens. UTIME_NOW arrives as a time pyfuse3 filled in,
        UTIME_OMIT as a field not flagged. Any change stamps ctime.

        A size goes through `_set_size`, the one truncate path. Privileges: the
        kernel here (libfuse 3.14 without FUSE_CAP_HANDLE_KILLPRIV in effect) sends
        the mode a chown or an unprivileged truncate leaves, in the same request;
        when it does not (a kernel that leaves killpriv to the filesystem), the
        same rule is applied here (`_drop_privs`)."""
        if self._is_ctl(inode):
            return self.control.attr(inode)  # `echo cmd > ctl` truncates first: accept
        self._check_writable()
        cur = self._attr(inode)
        now = time.time_ns()
        kw: dict[str, Any] = {}
        if fields.update_size:
            kw.update(self._set_size(inode, cur, attr.st_size, now))
        if fields.update_mode:
            kw["mode"] = stat.S_IFMT(cur.st_mode) | stat.S_IMODE(attr.st_mode)
        else:
            chown = fields.update_uid or fields.update_gid
            if chown or fields.update_size:
                mode = self._drop_privs(cur, ctx.uid, ctx.gid, ctx.pid, chown=chown)
                if mode != cur.st_mode:
                    kw["mode"] = mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        kw["ctime_ns"] = attr.st_ctime_ns if fields.update_ctime else now
        if inode in self._meta_dirty:
            if "size" not in kw:
                kw["ordered_size"] = cur.st_size
                kw["still_dirty"] = self._still_dirty(inode)
            kw.setdefault("mtime_ns", cur.st_mtime_ns)
            kw.setdefault("atime_ns", cur.st_atime_ns)
            self._meta_dirty.discard(inode)
        a = self.img.setattr(inode, **kw)
        if "ordered_size" in kw and a.size < cur.st_size:
            # The image holds the times now, the size follows its data.
            cur.st_atime_ns, cur.st_mtime_ns, cur.st_ctime_ns = a.atime_ns, a.mtime_ns, a.ctime_ns
            self._meta_dirty.add(inode)
        return self._with_blocks(inode, self._load(inode))

    def _set_size(
        self,
        ino: int,
        entry: pyfuse3.EntryAttributes,
        size: int,
        now: int,
        reason: str = schema.REASON_TRUNCATE,
    ) -> dict[str, int]:
        """Give a regular file a new size in mm and in the reservations: the one
        truncate path, for truncate(2), ftruncate(2) and open(O_TRUNC) alike.

        mm drops every page past the end (dirty frames without writeback) and
        zeroes the partial tail; reservations of dropped holes go back. Returns
        the fields the caller writes in its one `img.setattr` (size, mtime,
        ctime), where the image frees the blocks past the end. A truncate to
        zero arms the writeback at the next close (`_alloc_on_close`). `reason`
        (`truncate`, `o_trunc`) names mm's `zero` and `drop` events.
        """
        if stat.S_ISDIR(entry.st_mode):
            raise FUSEError(errno.EISDIR)
        if not stat.S_ISREG(entry.st_mode):
            raise FUSEError(errno.EINVAL)
        if size < 0:
            raise FUSEError(errno.EINVAL)
        # The image must know the current size first, or a shrink from a size
        # only this cache knows would look like no change and free nothing;
        # the dirty pages go first so that it can (ordered data). On a shrink,
        # mm drops the pages past the new end before that: as the kernel's
        # truncate_inode_pages, dirty data cut off is never written back.
        if size <= entry.st_size:
            self.mm.truncate(ino, size, reason)
            self._unreserve_from(ino, (size + PAGE_SIZE - 1) >> PAGE_SHIFT)
        if ino in self._meta_dirty:
            self.mm.fsync(ino)
        self.flush_meta(ino)
        if size > entry.st_size:
            # Grow: let the image refuse (EFBIG) before anything changes.
            self.img.setattr(ino, size=size)
            self.mm.truncate(ino, size, reason)
        entry.st_size = size
        if size == 0:
            self._alloc_on_close.add(ino)
        return {"size": size, "mtime_ns": now, "ctime_ns": now}

    def _truncate_on_open(
        self, ino: int, entry: pyfuse3.EntryAttributes, ctx: pyfuse3.RequestContext
    ) -> None:
        """open(O_TRUNC) of a regular file, with FUSE_CAP_ATOMIC_O_TRUNC (pyfuse3
        leaves it on): the kernel sends no SETATTR; it drops its own cached pages,
        sets its i_size to 0 and forgets its cached attributes, so the next stat
        asks here. The truncation itself is ours, through `_set_size`, with the
        new mtime and ctime and the privileges a truncate by this caller drops
        (the kernel's killpriv for this SETATTR never reaches us), in one image
        transaction. Linux truncates on O_RDONLY|O_TRUNC too."""
        now = time.time_ns()
        kw = self._set_size(ino, entry, 0, now, schema.REASON_O_TRUNC)
        mode = self._drop_privs(entry, ctx.uid, ctx.gid, ctx.pid)
        if mode != entry.st_mode:
            kw["mode"] = mode
        self.img.setattr(ino, **kw)
        self._load(ino)

    @staticmethod
    def _drop_privs(
        entry: pyfuse3.EntryAttributes, uid: int, gid: int, pid: int, *, chown: bool = False
    ) -> int:
        """The mode left after a write, truncate or chown by (uid, gid), as the VFS's
        setattr_should_drop_suidgid and chown_common decide: setuid always goes;
        setgid goes when group-exec is set, or when the caller is neither in the
        file's group nor privileged. A write or truncate by a privileged caller
        (uid 0: CAP_FSETID) keeps both; a chown drops them from any non-directory,
        root's too. Only regular files lose them on write/truncate."""
        mode = entry.st_mode
        if not mode & (stat.S_ISUID | stat.S_ISGID):
            return mode
        if chown:
            if stat.S_ISDIR(mode):
                return mode
        elif uid == 0 or not stat.S_ISREG(mode):
            return mode
        mode &= ~stat.S_ISUID
        if mode & stat.S_ISGID and (
            mode & stat.S_IXGRP or (uid != 0 and not _in_group(entry.st_gid, gid, pid))
        ):
            mode &= ~stat.S_ISGID
        return mode

    @_handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        """Target of a symlink."""
        return self.img.readlink(inode)

    # -------------------------------------------------------------- namespace

    async def _new_entry(self, parent: int, name: bytes, ino: int) -> pyfuse3.EntryAttributes:
        self._refresh(parent)
        entry = self._with_blocks(ino, self._load(ino))
        self._remember(parent, name, ino)
        return entry

    @_handler
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Create a regular file, fifo, socket or device node (+1 lookup)."""
        self._check_new(parent_inode, name)
        uid, gid, mode = self._ctx_ids(parent_inode, ctx, mode)
        ino = self.img.create(parent_inode, name, mode, uid, gid, rdev)
        return await self._new_entry(parent_inode, name, ino)

    @_handler
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Create a directory (+1 lookup); the parent gains a link."""
        self._check_new(parent_inode, name)
        uid, gid, mode = self._ctx_ids(parent_inode, ctx, stat.S_IFDIR | (mode & 0o7777))
        ino = self.img.mkdir(parent_inode, name, mode, uid, gid)
        return await self._new_entry(parent_inode, name, ino)

    @_handler
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Create a symlink (+1 lookup)."""
        self._check_new(parent_inode, name)
        gid = ctx.gid
        pattr = self._attr(parent_inode)
        if pattr.st_mode & stat.S_ISGID:
            gid = pattr.st_gid
        ino = self.img.symlink(parent_inode, name, target, ctx.uid, gid)
        return await self._new_entry(parent_inode, name, ino)

    @_handler
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A new name for an inode (+1 lookup); its nlink and ctime change."""
        self._check_new(new_parent_inode, new_name)
        if self._is_ctl(inode):
            raise FUSEError(errno.EPERM)
        self.img.link(inode, new_parent_inode, new_name)
        self._orphans.discard(inode)
        return await self._new_entry(new_parent_inode, new_name, inode)

    def _in_use(self, ino: int) -> bool:
        return bool(self._nlookup.get(ino) or self._nopen.get(ino))

    def _after_unlink(self, ino: int, in_use: bool) -> None:
        """The inode lost a name: if it was the last, it is an orphan or gone."""
        try:
            a = self.img.getattr(ino)
        except Exception:
            a = None
        if a is not None and a.nlink > 0:
            self._refresh(ino)
            return
        if in_use:
            self._orphans.add(ino)
            entry = self._attrs.get(ino)
            if entry is not None:
                entry.st_nlink = 0
                if a is not None and a.ctime_ns > entry.st_ctime_ns:
                    entry.st_ctime_ns = a.ctime_ns  # losing the name stamped it
        else:
            self._freed(ino)
            self.mm.evict_inode(ino)
            self._unreserve_all(ino)

    @_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove a name. An inode the kernel still knows (open or cached) stays
        readable as an orphan until its last forget/release."""
        self._check_old(parent_inode, name)
        ino = self.img.lookup(parent_inode, name)
        in_use = self._in_use(ino)
        if not in_use and ino in self._reserved:
            self._prune_reserved(ino)  # the image may free it in the unlink below
        self.img.unlink(parent_inode, name, still_open=in_use)
        self._refresh(parent_inode)
        self._after_unlink(ino, in_use)

    @_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove an empty directory (ENOTEMPTY otherwise); the parent loses a link."""
        self._check_old(parent_inode, name)
        ino = self.img.lookup(parent_inode, name)
        self.img.rmdir(parent_inode, name)
        self._refresh(parent_inode)
        self._freed(ino)

    @_handler
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        """Move a name, atomically replacing an existing target (RENAME_NOREPLACE and
        RENAME_EXCHANGE as the flags say). A replaced inode still in use is kept as
        an orphan, like unlink."""
        self._check_old(parent_inode_old, name_old)
        if self.control is not None and parent_inode_new == self._root and name_new == CTL_NAME:
            raise FUSEError(errno.ENOTEMPTY)  # a directory over a directory with entries
        self._check_old(parent_inode_new, name_new)
        ino = self.img.lookup(parent_inode_old, name_old)
        victim = None
        try:
            victim = self.img.lookup(parent_inode_new, name_new)
        except Exception:
            victim = None
        if victim == ino:
            victim = None
        victim_is_dir = victim is not None and stat.S_ISDIR(self._attr(victim).st_mode)
        in_use = victim is not None and self._in_use(victim)
        if victim is not None and not in_use and victim in self._reserved:
            self._prune_reserved(victim)
        if victim is not None and not victim_is_dir and not flags & _NO_REPLACE:
            self._write_back_before_replace(ino)
        self._rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, victim, in_use)
        self._refresh(parent_inode_old, parent_inode_new, ino)
        if self._paths.get(ino) is not None or ino in self._nlookup:
            self._name(parent_inode_new, name_new, ino)
        if victim is not None:
            if flags & pyfuse3.RENAME_EXCHANGE:
                self._refresh(victim)
                self._name(parent_inode_old, name_old, victim)
            elif victim_is_dir:
                self._freed(victim)  # an empty directory: freed, like rmdir
            else:
                self._after_unlink(victim, in_use)

    def _write_back_before_replace(self, ino: int) -> None:
        """rename over an existing file (the atomic save: write a new file, rename it
        over the old): the new file's data and size reach the image before the
        name does, so a crash shows the old file or the whole new one, never an
        empty one (ext4's auto_da_alloc forces the same writeback on rename)."""
        if stat.S_ISREG(self._attr(ino).st_mode):
            self.mm.fsync(ino)
            self.flush_meta(ino)

    def _rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
        victim: int | None,
        in_use: bool,
    ) -> None:
        self.img.rename(old_parent, old_name, new_parent, new_name, flags, still_open=in_use)

    # ----------------------------------------------------------------- files

    def _new_fh(self, of: OpenFile) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._fh[fh] = of
        self._nopen[of.ino] = self._nopen.get(of.ino, 0) + 1
        return fh

    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        if self._fh[fh].direct:
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=True)

    def _direct(self, ino: int) -> bool:
        """Open `ino` with direct_io? Yes under cache=direct, unless its name
        matches `shared_mmap`: the kernel refuses MAP_SHARED on a direct_io file
        (libfuse 3.14 cannot ask for FUSE_DIRECT_IO_ALLOW_MMAP), and SQLite's WAL
        needs it on its -shm file. Such a file's accesses reach the simulation as
        the kernel's page-cache misses only, as under cache=kernel."""
        if not self.direct_io:
            return False
        if self.shared_mmap:
            name = os.path.basename(self._paths.get(ino) or "")
            if name and any(fnmatch.fnmatchcase(name, pat) for pat in self.shared_mmap):
                return False
        return True

    def _open_file(
        self, ino: int, entry: pyfuse3.EntryAttributes, flags: int, ctx: pyfuse3.RequestContext
    ) -> OpenFile:
        """The handle's state from the OPEN/CREATE flags (docs/POSIX.md has the table).

        O_SYNC/O_DSYNC: under cache=kernel the kernel sends FSYNC after each
        write itself; under direct_io it does not, so `write` does it. O_APPEND,
        O_DIRECT, O_NONBLOCK, O_CLOEXEC are the kernel's business (it computes
        the append offset from its i_size, which every reply keeps exact)."""
        direct = self._direct(ino)
        return OpenFile(
            ino,
            entry,
            bool(flags & _WRITE_FLAGS),
            uid=ctx.uid,
            gid=ctx.gid,
            pid=ctx.pid,
            sync=direct and bool(flags & os.O_DSYNC),
            noatime=bool(flags & os.O_NOATIME),
            direct=direct,
        )

    @_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a file; the handle is passed to read/write/flush/fsync/release.

        The kernel strips O_CREAT, O_EXCL and O_NOCTTY, and never sends O_PATH.
        O_TRUNC truncates a regular file (`_truncate_on_open`), also with
        O_RDONLY as Linux does, and so needs a writable mount (EROFS)."""
        if self._is_ctl(inode):
            return self.control.open(inode, flags, self)
        trunc = bool(flags & os.O_TRUNC)
        if trunc or flags & _WRITE_FLAGS:
            self._check_writable()
        entry = self._attr(inode)
        if stat.S_ISDIR(entry.st_mode):
            raise FUSEError(errno.EISDIR)
        if stat.S_ISREG(entry.st_mode):
            if trunc:
                self._truncate_on_open(inode, entry, ctx)  # mm learns size 0 there
            else:
                self.mm.set_size(inode, entry.st_size)  # mapped accesses fault against it
        fh = self._new_fh(self._open_file(inode, entry, flags, ctx))
        return self._file_info(fh)

    @_handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """Create and open a regular file (+1 lookup); the flags are open's.

        The kernel sends CREATE only when its LOOKUP of the name answered ENOENT,
        holding the directory's lock, so the name is new. Were it not, the image's
        EEXIST is the answer whatever the flags: the existing file is neither
        opened nor truncated (O_TRUNC, when the kernel passes it, has nothing to
        cut in a new file)."""
        self._check_new(parent_inode, name, in_ctl=errno.EACCES)
        uid, gid, mode = self._ctx_ids(parent_inode, ctx, mode)
        ino = self.img.create(parent_inode, name, mode, uid, gid, 0)
        self.mm.set_size(ino, 0)
        entry = await self._new_entry(parent_inode, name, ino)
        fh = self._new_fh(self._open_file(ino, entry, flags, ctx))
        return self._file_info(fh), entry

    # read and write are the hot path: they carry _handler's try/except inline
    # (one coroutine frame less per request) instead of being wrapped.

    async def read(self, fh: int, off: int, size: int) -> Any:
        """Read up to `size` bytes at `off`: short only at EOF (the kernel would
        otherwise fill the rest with zeros). Zero copy: mm's buffer goes out as is."""
        try:
            of = self._fh[fh]
            if of.ctl is not None:
                return of.ctl.read(off, size)
            entry = of.attr
            end = entry.st_size
            if off >= end:
                return b""
            if off + size > end:
                size = end - off
            at = entry.st_atime_ns
            if at <= entry.st_mtime_ns or at <= entry.st_ctime_ns or self.atime != "relatime":
                self._touch_atime(of, entry)
            elif time.time_ns() - at > _DAY_NS:
                self._touch_atime(of, entry)
            return self.mm.read(of.ino, off, size)
        except FUSEError:
            raise
        except Exception as exc:
            raise self.translate("read", exc) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        """Store `buf` at `off` through mm (COW of XIP pages); all of it or an errno.
        A write past EOF leaves a hole that reads as zeros."""
        try:
            of = self._fh[fh]
            if of.ctl is not None:
                return of.ctl.write(off, buf)
            if self.readonly:
                raise FUSEError(errno.EROFS)
            n = len(buf)
            if n == 0:
                return 0
            limit = self.img.max_size
            if off + n > limit:
                # As the VFS's generic_write_check_limits: EFBIG at or past the
                # largest size, a short write up to it. FUSE leaves the kernel's
                # limit at MAX_LFS_FILESIZE, so the check is the filesystem's: a
                # page accepted past it could never be written back.
                if off >= limit:
                    raise FUSEError(errno.EFBIG)
                buf = buf[: limit - off]
                n = len(buf)
            entry = of.attr
            if entry.st_mode & 0o6000 and of.uid:
                self._kill_suid(of, entry)
            self.reserve(of.ino, off, n)
            self.mm.write(of.ino, off, buf)
            if off + n > entry.st_size:
                entry.st_size = off + n
            entry.st_mtime_ns = entry.st_ctime_ns = time.time_ns()
            self._meta_dirty.add(of.ino)
            if of.sync:
                self.mm.fsync(of.ino)
                self.flush_meta(of.ino)
            if self._bdp is not None and self.flusher is not None:
                state = self._bdp(of.ino)
                if state:
                    self.flusher.kick()
                    if state >= 2:  # BDP_THROTTLE: the reply waits for writeback
                        await self.flusher.throttle()
            return n
        except FUSEError:
            raise
        except Exception as exc:
            raise self.translate("write", exc) from None

    def _touch_atime(self, of: OpenFile, entry: pyfuse3.EntryAttributes) -> None:
        """A read updates atime (in the cache; the image gets it with size and mtime),
        unless the mount is noatime or the file was opened O_NOATIME."""
        if self.atime == "noatime" or self.readonly or of.noatime:
            return
        entry.st_atime_ns = time.time_ns()
        self._meta_dirty.add(of.ino)

    def _kill_suid(self, of: OpenFile, entry: pyfuse3.EntryAttributes) -> None:
        """A write by an unprivileged opener drops setuid/setgid as the VFS's
        file_remove_privs would (`_drop_privs`): FUSE direct_io writes leave it to
        us; under cache=kernel the kernel has sent the SETATTR already.

        The write's reply carries no attributes, and after a direct_io write
        the kernel refreshes only size and times: a statx asking for the mode
        alone (`stat -c %a`) would see the old one for ATTR_TIMEOUT. So the
        kernel's attributes of the inode are invalidated."""
        mode = self._drop_privs(entry, of.uid, of.gid, of.pid)
        if mode != entry.st_mode:
            self.img.setattr(of.ino, mode=mode)
            self._load(of.ino)
            pyfuse3.invalidate_inode(of.ino, attr_only=True)

    def reserve(self, ino: int, off: int, length: int) -> None:
        """Reserve image blocks for the holes a write fills: ENOSPC now, at write(),
        never at writeback. `write_pages` consumes one reservation per hole it
        maps, so each hole page is reserved once (remembered in `_reserved`)."""
        first = off >> PAGE_SHIFT
        n = ((off + length - 1) >> PAGE_SHIFT) - first + 1
        blocks = self.img.bmap(ino, first, n)
        if n == 1:
            if blocks[0]:
                return
            holes = [first]
        else:
            holes = [first + int(i) for i in (blocks == 0).nonzero()[0]]
            if not holes:
                return
        mine = self._reserved.setdefault(ino, set())
        new = [i for i in holes if i not in mine]
        if new:
            self.img.reserve(len(new))
            mine.update(new)

    def _unreserve_from(self, ino: int, first_page: int) -> None:
        """Give back reservations of pages at or past `first_page` never written back."""
        mine = self._reserved.get(ino)
        if not mine:
            return
        gone = [i for i in mine if i >= first_page]
        if not gone:
            return
        mine.difference_update(gone)
        unused = int((self.img.bmap_pages(ino, gone) == 0).sum())
        if unused:
            self.img.unreserve(unused)
        if not mine:
            self._reserved.pop(ino, None)

    def _prune_reserved(self, ino: int) -> None:
        """Forget reservations writeback already consumed (their pages have blocks now)."""
        mine = self._reserved.get(ino)
        if mine:
            pages = list(mine)
            blocks = self.img.bmap_pages(ino, pages)
            mine.difference_update([p for p, b in zip(pages, blocks, strict=True) if b])

    def _unreserve_all(self, ino: int) -> None:
        """The inode is gone (after _prune_reserved): every reservation left is unused."""
        mine = self._reserved.pop(ino, None)
        if mine:
            self.img.unreserve(len(mine))

    @_handler
    async def flush(self, fh: int) -> None:
        """close(2) of one descriptor (may come several times per handle): size and
        times reach the image, so `ls -l` after a crash shows what was closed."""
        of = self._fh[fh]
        if of.ctl is None and of.writable:
            self._write_back_after_truncate(of)
            self.flush_meta(of.ino)

    def _write_back_after_truncate(self, of: OpenFile, *, last: bool = False) -> None:
        """ext4's auto_da_alloc at close: a file truncated to zero (O_TRUNC,
        ftruncate) and written since is written back when a writable descriptor
        closes, so a rewrite lost in a crash right after the program closed it
        shows the new data, not an empty file. A close that finds the file still
        empty leaves it armed (a shell closes the descriptor it opened before it
        writes through the dup); the release of the handle disarms it (`last`)."""
        ino = of.ino
        if ino in self._alloc_on_close and (last or of.attr.st_size):
            self._alloc_on_close.discard(ino)
            if of.attr.st_size and ino not in self._orphans:  # an orphan's data dies with it
                self.mm.fsync(ino)

    @_handler
    async def release(self, fh: int) -> None:
        """The last descriptor of a handle is gone; an orphan may now be freed."""
        of = self._fh.pop(fh)
        if of.ctl is not None:
            return
        ino = of.ino
        if of.writable:
            self._write_back_after_truncate(of, last=True)
        left = self._nopen.get(ino, 1) - 1
        if left > 0:
            self._nopen[ino] = left
        else:
            self._nopen.pop(ino, None)
        self.flush_meta(ino)
        self._maybe_reap(ino)

    @_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        """Write the file's dirty frames back and its size/times into the image;
        returns only when both are durable. fdatasync (`datasync`) does the same:
        stronger than asked, never weaker."""
        of = self._fh[fh]
        if of.ctl is not None:
            return
        self.mm.fsync(of.ino)
        self.flush_meta(of.ino)

    # ------------------------------------------------------------ directories

    @_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """Directories need no per-open state: the handle is the inode."""
        if self._is_ctl(inode):
            return inode
        if not stat.S_ISDIR(self._attr(inode).st_mode):
            raise FUSEError(errno.ENOTDIR)
        return inode

    @_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """List entries after offset `start_id`: "." (offset 1), ".." (2), then the
        image's entries at their stable cookies + 2, so creations and removals
        between calls skip or repeat nothing. Each entry the kernel accepts
        (readdirplus) adds one to that inode's lookup count, except "." and ".."."""
        if self._is_ctl(fh):
            self.control.readdir(start_id, token)
            return
        if start_id == 0:
            self._touch_dir_atime(fh)
        if start_id < 1:
            if not pyfuse3.readdir_reply(token, b".", self._attr(fh), 1):
                return
            start_id = 1
        if start_id < 2:
            parent = self.img.lookup(fh, b"..")
            if not pyfuse3.readdir_reply(token, b"..", self._attr(parent), 2):
                return
            start_id = 2
        hide_ctl = fh == self._root and self.control is not None
        for cookie, name, ino in self.img.readdir(fh, after=start_id - 2):
            if hide_ctl and name == CTL_NAME:
                continue
            entry = self._with_blocks(ino, self._attr(ino))
            if not pyfuse3.readdir_reply(token, name, entry, cookie + 2):
                break
            self._remember(fh, name, ino)

    def _touch_dir_atime(self, ino: int) -> None:
        """A listing reads the directory: atime by the mount's rule, as `read`
        (the kernel leaves it to FUSE filesystems and drops its cached atime after
        READDIR). Straight into the image: directories have no cached size or
        times waiting for a flush, and relatime makes this once per change."""
        if self.atime == "noatime" or self.readonly:
            return
        entry = self._attr(ino)
        at = entry.st_atime_ns
        now = time.time_ns()
        if (
            self.atime == "relatime"
            and at > entry.st_mtime_ns
            and at > entry.st_ctime_ns
            and now - at <= _DAY_NS
        ):
            return
        try:
            self.img.setattr(ino, atime_ns=now, ctime_ns=entry.st_ctime_ns)
            self._load(ino)
        except Exception as exc:  # an access time never fails the listing
            self.translate("readdir atime", exc)

    @_handler
    async def releasedir(self, fh: int) -> None:
        """Nothing to free (see opendir)."""

    @_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Namespace calls are durable when they return: nothing left to do."""

    # ------------------------------------------------------------------ misc

    @_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Block and inode counts from the image (no scan); f_namemax is 255."""
        s = self.img.statfs()
        st = pyfuse3.StatvfsData()
        st.f_bsize = s.bsize
        st.f_frsize = s.bsize
        st.f_blocks = s.blocks
        st.f_bfree = s.bfree
        st.f_bavail = s.bfree
        st.f_files = s.files
        st.f_ffree = s.ffree
        st.f_favail = s.ffree
        st.f_namemax = getattr(s, "namemax", NAME_MAX) or NAME_MAX
        return st

    @_handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """access(2) without default_permissions: the mode bits, as the VFS checks them."""
        if self._is_ctl(inode):
            return True
        a = self._attr(inode)
        if mode == os.F_OK:
            return True
        if ctx.uid == 0:
            if mode & os.X_OK and not stat.S_ISDIR(a.st_mode):
                return bool(a.st_mode & 0o111)
            return True
        if ctx.uid == a.st_uid:
            bits = (a.st_mode >> 6) & 7
        elif ctx.gid == a.st_gid or a.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = (a.st_mode >> 3) & 7
        else:
            bits = a.st_mode & 7
        return (mode & bits) == mode

    # ----------------------------------------------------------------- xattrs

    @_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """One xattr; `user.nvramfs.residency` is computed from mm (not stored, not listed)."""
        if name == RESIDENCY_XATTR and not self._is_ctl(inode):
            if not stat.S_ISREG(self._attr(inode).st_mode):
                raise FUSEError(pyfuse3.ENOATTR)
            res = dict(self.mm.residency(inode))
            res["map"] = self.mm.residency_map(inode, -(-self._attr(inode).st_size // 4096))
            return json.dumps(res, sort_keys=True).encode()
        if self._is_ctl(inode):
            if inode == self.control.CTL:
                return self.control.query(name, ctx.pid)
            raise FUSEError(pyfuse3.ENOATTR)
        return self.img.getxattr(inode, name)

    @_handler
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        """Store an xattr in the image (user.* and friends; not system.* ACLs)."""
        self._check_writable()
        if self._is_ctl(inode):
            raise FUSEError(errno.ENOTSUP)
        if name == RESIDENCY_XATTR:
            raise FUSEError(errno.EPERM)
        if name.startswith(b"system."):
            raise FUSEError(errno.ENOTSUP)
        self.img.setxattr(inode, name, value)
        self._refresh(inode)

    @_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        """Stored xattr names (the computed residency xattr is not listed)."""
        if self._is_ctl(inode):
            return []
        return list(self.img.listxattr(inode))

    @_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Remove an xattr (ENODATA when there is none)."""
        self._check_writable()
        if self._is_ctl(inode) or name == RESIDENCY_XATTR:
            raise FUSEError(errno.EPERM)
        self.img.removexattr(inode, name)
        self._refresh(inode)

    # -------------------------------------------------------------- lifecycle

    def sync_all(self, reason: str = schema.REASON_SYNC) -> None:
        """Everything dirty to the image: frames (mm) and sizes/times (here)."""
        self.mm.sync_all(reason)
        self.flush_all_meta()

    def shutdown(self) -> None:
        """After pyfuse3.main returned: metadata out, orphans freed (the kernel will
        send no more forgets). mm.close() (writeback of every frame) comes next."""
        self.flush_all_meta()
        self._nlookup.clear()
        self._nopen.clear()
        for ino in list(self._orphans):
            try:
                self._maybe_reap(ino)
            except Exception as exc:
                self.translate("release orphan", exc)
