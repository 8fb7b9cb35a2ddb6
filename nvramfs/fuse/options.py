"""Mount options: `-o ro,dram=64M,policy=2q,...` parsed into a `MountOptions`.

The same option string arrives from `nvramfs mount -o ...` and from mount(8)
through `mount.fuse.nvramfs IMAGE DIR -o OPTS`; mount(8) and fuse3's
`mount.fuse` add generic options (`rw`, `dev`, `nosuid`, `noatime`, `_netdev`,
`x-systemd.*`, ...), which are accepted: the VFS flags among them are handed to
libfuse, the rest (fstab-only words) are ignored. Anything else is a usage
error (exit 2), so a typo never mounts with a default the user did not ask for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nvramfs.errors import UsageError
from nvramfs.units import parse_size

PAGE_SIZE = 4096
DEFAULT_DRAM = 64 << 20
# The kernels whose mm rules the simulation can run (nvramfs.mm.machine.KERNELS;
# spelled here too so that parsing options does not import the simulation).
KERNELS = ("2.6.26-rc1", "2.6.26", "modern")

# Option help, in the order `nvramfs mount --help` lists it.
OPTION_HELP = [
    ("ro / rw", "mount read-only / read-write (default rw)"),
    ("allow_other", "let other users in (off by default; implies default_permissions)"),
    ("default_permissions", "let the kernel check permissions from the mode bits"),
    ("dram=SIZE", "DRAM budget of the simulated pagecache, e.g. 64M, 1G (default 64M)"),
    ("policy=NAME", "migration policy: none, mq, 2q (default), clock; lru: a page cache"),
    ("", "without XIP (docs/POLICIES.md); opt, opt-nox: replays only"),
    ("static=PROFILE", "pin the pages a profile names (path,offset,count lines) in DRAM"),
    ("log=PATH", "event log (default: IMAGE.events.jsonl beside the image)"),
    ("cache=direct", "(default) every read and write reaches the simulation (direct_io);"),
    ("", "mmap: MAP_PRIVATE works, MAP_SHARED is refused by the kernel (ENODEV)"),
    ("cache=kernel", "the kernel page cache sits in front: fewer requests, MAP_SHARED works,"),
    ("", "and the simulation sees only the kernel's misses"),
    ("shared_mmap=GLOBS", "under cache=direct, files whose name matches one of these"),
    ("", "':'-separated shell patterns go through the kernel page cache, so"),
    ("", "MAP_SHARED works on them (default *-shm: SQLite's WAL index; empty: none)"),
    ("sim=on|off", "off: serve straight from the image, no simulation (benchmark baseline)"),
    ("trace_faults", "log one `fault` event per page fault (many)"),
    ("writeback=SECONDS", "write dirty frames back after this long (default 5)"),
    ("trace=DIR", "record every MemoryManager call into DIR (a new directory; docs/TRACE.md)"),
    ("kernel=NAME", "whose mm rules the simulation runs: modern (default), 2.6.26 (stores"),
    ("", "to XIP pages go into NVRAM in place), 2.6.26-rc1 (needs ro: its write fault"),
    ("", "copies XIP pages into anonymous memory); see docs/ARCHITECTURE.md"),
    ("medium=NAME|FILE", "what the device model prices moves on: nor (default), pcm,"),
    ("", "optane, dram, or a profile .toml file; see docs/COSTS.md"),
    ("promote_cap=PAGES", "most pages the policy promotes per 1 s tick"),
    ("", "(default: dram/8 in pages, at least 32, at most 1024)"),
    ("remount", "change a live mount: ro/rw, policy=, promote_cap=, dram= (at most as mounted)"),
    ("dirty_background=PCT", "background writeback past this % of the DRAM budget dirty (10)"),
    ("dirty_limit=PCT", "writers wait for writeback at this % of the budget dirty (20)"),
    ("noatime, strictatime", "access times on read and listing (default relatime);"),
    ("", "mount(8)'s other atime words (norelatime, lazytime...) are accepted"),
]

# VFS mount flags libfuse understands; passed on to the kernel mount.
_VFS_FLAGS = {
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "async",
    "sync",
    "dirsync",
}
# The VFS flags libfuse 3.14's mount accepts; it refuses the rest (relatime,
# strictatime, diratime, lazytime and their no- forms: fuse_session_new fails).
# Those mean nothing to the kernel for FUSE anyway (its inodes are S_NOATIME):
# the daemon keeps atime itself by `MountOptions.atime`.
_LIBFUSE_FLAGS = _VFS_FLAGS - {
    "diratime",
    "lazytime",
    "nodiratime",
    "nolazytime",
    "norelatime",
    "nostrictatime",
    "relatime",
    "strictatime",
}
# Words mount(8)/fstab use that mean nothing to the filesystem itself.
_IGNORED = {"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "_netdev", "nofail"}
# fsname/subtype are set by the daemon, user_id/group_id by libfuse: mount(8)
# hands them back (from /proc/self/mountinfo) on `mount -o remount`.
_IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=", "user_id=", "group_id=")
# What `-o remount` may change; every other option is fixed for the mount's life.
REMOUNT_KEYS = {"remount", "ro", "rw", "policy", "dram", "promote_cap"}


@dataclass
class MountOptions:
    """Everything `-o` can say, with the defaults of a plain `nvramfs mount`."""

    readonly: bool = False
    allow_other: bool = False
    default_permissions: bool = False
    dram_bytes: int = DEFAULT_DRAM
    policy: str | None = None
    log: str | None = None
    cache: str = "direct"
    sim: bool = True
    trace_faults: bool = False
    writeback: float | None = None
    promote_cap: int | None = None
    remount: bool = False
    trace: str | None = None
    static: str | None = None  # policy static: the profile file
    kernel: str = "modern"
    medium: str = "nor"
    dirty_background: float | None = None  # percent of the DRAM budget
    dirty_limit: float | None = None  # percent of the DRAM budget
    shared_mmap: tuple[str, ...] = ("*-shm",)  # names opened through the page cache
    vfs_flags: list[str] = field(default_factory=list)
    # The options the user named (key before `=`), for remount's checks.
    given: list[str] = field(default_factory=list)

    @property
    def atime(self) -> str:
        """relatime (default), strictatime or noatime: the last such flag given, as
        mount(8) reads them (norelatime is strict, atime and nostrictatime undo
        noatime and strictatime)."""
        for flag in reversed(self.vfs_flags):
            if flag in ("relatime", "strictatime", "noatime"):
                return flag
            if flag == "norelatime":
                return "strictatime"
            if flag in ("atime", "nostrictatime"):
                return "relatime"
        return "relatime"

    @property
    def dram_pages(self) -> int:
        return max(1, self.dram_bytes // PAGE_SIZE)

    def remount_request(self) -> str:
        """The `remount` ctl command for these options (`-o remount,...`): only what
        remount may change; anything else given is a usage error."""
        fixed = sorted({k for k in self.given if k not in REMOUNT_KEYS})
        if fixed:
            raise UsageError(
                f"-o remount cannot change {', '.join(fixed)} "
                "(it may change ro/rw, policy=, dram=, promote_cap=; unmount and mount again)"
            )
        words = []
        if "ro" in self.given or "rw" in self.given:
            words.append("ro" if self.readonly else "rw")
        if self.policy is not None:
            words.append(f"policy={self.policy}")
        if "dram" in self.given:
            words.append(f"dram={self.dram_bytes}")
        if self.promote_cap is not None:
            words.append(f"promote_cap={self.promote_cap}")
        return "remount " + ",".join(words) if words else "remount"

    def log_path(self, image: str) -> str:
        """The event log path: `log=` or `IMAGE.events.jsonl` beside the image."""
        return os.path.abspath(self.log or image + ".events.jsonl")

    def fuse_options(self, image: str) -> set[str]:
        """The option set for `pyfuse3.init`: what df -T and /proc/mounts show."""
        opts = {f"fsname={os.path.abspath(image)}", "subtype=nvramfs"}
        if self.readonly:
            opts.add("ro")
        if self.allow_other:
            opts.add("allow_other")
        if self.default_permissions or self.allow_other:
            opts.add("default_permissions")
        opts.update(f for f in self.vfs_flags if f in _LIBFUSE_FLAGS)
        return opts


def parse_options(groups: list[str] | None) -> MountOptions:
    """Parse the `-o` arguments (each a comma-separated list; later words win)."""
    opts = MountOptions()
    for group in groups or []:
        for word in group.split(","):
            word = word.strip()
            if word:
                _apply(opts, word)
    if opts.kernel == "2.6.26-rc1" and not opts.readonly:
        # Its do_wp_page copies a raw pfn into an anonymous page even in a shared
        # mapping: every write to an XIP page would be lost (fixed in 2.6.26).
        raise UsageError("kernel=2.6.26-rc1 loses writes to XIP pages: mount it with -o ro")
    return opts


def _apply(opts: MountOptions, word: str) -> None:
    key, eq, value = word.partition("=")
    if eq and not value and key not in ("log", "shared_mmap"):
        raise UsageError(f"option {key!r} needs a value")
    if word not in _VFS_FLAGS and word not in _IGNORED and not word.startswith(_IGNORED_PREFIXES):
        opts.given.append(key)
    if word == "remount":
        opts.remount = True
    elif word == "ro":
        opts.readonly = True
    elif word == "rw":
        opts.readonly = False
    elif word == "allow_other":
        opts.allow_other = True
    elif word == "default_permissions":
        opts.default_permissions = True
    elif word == "trace_faults":
        opts.trace_faults = True
    elif key == "dram" and eq:
        opts.dram_bytes = parse_size(value)
        if opts.dram_bytes < PAGE_SIZE:
            raise UsageError(f"dram={value}: the budget must hold at least one 4 KiB frame")
    elif key == "policy" and eq:
        opts.policy = value
    elif key == "static" and eq:
        opts.static = os.path.abspath(value)
        opts.policy = "static"
    elif key == "log" and eq:
        if not value:
            raise UsageError("option 'log' needs a path")
        opts.log = value
    elif key == "trace" and eq:
        opts.trace = os.path.abspath(value)
    elif key == "cache" and eq:
        if value not in ("direct", "kernel"):
            raise UsageError(f"cache={value}: use cache=direct or cache=kernel")
        opts.cache = value
    elif key == "shared_mmap" and eq:
        pats = tuple(p for p in value.split(":") if p)
        if any("/" in p for p in pats):
            raise UsageError(f"shared_mmap={value}: patterns match file names, not paths")
        opts.shared_mmap = pats
    elif key == "sim" and eq:
        if value not in ("on", "off"):
            raise UsageError(f"sim={value}: use sim=on or sim=off")
        opts.sim = value == "on"
    elif key == "kernel" and eq:
        if value not in KERNELS:
            raise UsageError(
                f"kernel={value}: use kernel=modern, kernel=2.6.26 or kernel=2.6.26-rc1"
            )
        opts.kernel = value
    elif key == "medium" and eq:
        from nvramfs.device import load_medium

        load_medium(value)  # a usage error (exit 2) naming the built-in media
        opts.medium = value
    elif key == "writeback" and eq:
        try:
            opts.writeback = float(value)
        except ValueError:
            raise UsageError(f"writeback={value}: give seconds, e.g. writeback=5") from None
        if not opts.writeback > 0:
            raise UsageError(f"writeback={value}: must be more than 0 seconds")
    elif key == "promote_cap" and eq:
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"promote_cap={value}: give a number of pages, at least 1")
        opts.promote_cap = int(value)
    elif key in ("dirty_background", "dirty_limit") and eq:
        try:
            pct = float(value.rstrip("%"))
        except ValueError:
            raise UsageError(f"{key}={value}: give a percentage, e.g. {key}=10") from None
        if not 0 < pct <= 100:
            raise UsageError(f"{key}={value}: must be more than 0 and at most 100 (%)")
        setattr(opts, key, pct)
        bg = opts.dirty_background if opts.dirty_background is not None else 10.0
        lim = opts.dirty_limit if opts.dirty_limit is not None else 20.0
        if opts.dirty_background is not None and opts.dirty_limit is not None and not bg < lim:
            raise UsageError(f"dirty_background={bg:g} must be below dirty_limit={lim:g} (percent)")
    elif word in _VFS_FLAGS:
        opts.vfs_flags.append(word)
    elif word in _IGNORED or word.startswith(_IGNORED_PREFIXES):
        pass
    else:
        raise UsageError(f"unknown mount option {word!r} (see nvramfs mount --help)")
