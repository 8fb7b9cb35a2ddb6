"""The life of a mount: open the image, mount, serve, and always end cleanly.

    nvramfs mount IMAGE DIR      fork; the child opens the image, builds mm and
                                 the operations, calls pyfuse3.init (the mount
                                 exists from here), and writes `OK` to a pipe;
                                 the parent prints the log path and exits 0
                                 (or prints the child's one-line error, exit 1).
    serving                      trio.run: pyfuse3.main, a ticker calling
                                 mm.tick() once a second (policy pass, dirty
                                 expiry, counters) and flushing the log, the
                                 flusher (background writeback past
                                 dirty_background, fuse/flusher.py), and a
                                 signal watcher (SIGINT/SIGTERM/SIGHUP end the
                                 loop as an unmount would).
    the end                      the kernel mount goes (fusermount3 -u, or we
                                 unmount after a signal); then metadata and
                                 every dirty frame are written back, orphans
                                 freed, the `unmount` event written, the log
                                 closed and the image closed clean.

After `kill -9` nothing of the end runs; the image layer's journal keeps the
image consistent, and the next mount sees `was_clean == False`, says what
recovery did (stderr and the `mount` event's `recovered`) and how many dirty
pages of which files were lost, from the dirty summary the ticker keeps in the
superblock (`Image.note_dirty`, at most once a second; the event's `lost_*`).
The daemon holds the image's lock (nvramfs/image/lock.py) for its lifetime, so
mkfs --force and fsck's repairs refuse the image meanwhile.

The pipe protocol (child -> parent), one line each: `MSG text` (print it to
stderr), then `OK pid log` or `ERR exit_code text`.
"""

from __future__ import annotations

import faulthandler
import inspect
import logging
import os
import re
import signal
import sys
import time
from typing import Any

import pyfuse3
import trio

from nvramfs.errors import NvramfsError, UsageError
from nvramfs.events import schema
from nvramfs.fuse.control import Control
from nvramfs.fuse.options import PAGE_SIZE, MountOptions

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


def check_mountpoint(mountpoint: str, warn: Any = None) -> str:
    """The absolute mountpoint, or a one-line NvramfsError (exit 1) saying what is wrong.

    A non-empty directory is allowed, as libfuse 3 and mount(8) allow it: its
    entries are hidden (not lost) while the mount lasts, which `warn` is told
    in one line."""
    path = os.path.abspath(mountpoint)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NvramfsError(f"mountpoint {mountpoint} does not exist") from None
    except OSError as exc:
        raise NvramfsError(
            f"mountpoint {mountpoint}: {exc.strerror}"
            + (" (a dead FUSE mount? try fusermount3 -uz)" if exc.errno == 107 else "")
        ) from None
    import stat as stat_

    if not stat_.S_ISDIR(st.st_mode):
        raise NvramfsError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(path) or path in mounted_paths():
        raise NvramfsError(f"mountpoint {mountpoint} is already a mountpoint")
    if warn is not None:
        try:
            with os.scandir(path) as it:
                nonempty = any(True for _ in it)
        except OSError:
            nonempty = False
        if nonempty:
            warn(f"mountpoint {mountpoint} is not empty: its entries are hidden until unmount")
    return path


def unescape_mounts_field(field: str) -> str:
    """A /proc/mounts field as the path it stands for: the kernel writes space, tab,
    newline and backslash as the octal escapes \\040 \\011 \\012 \\134."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounted_paths(fstype_prefix: str = "") -> set[str]:
    """Mountpoints listed in /proc/mounts (optionally of types starting with a prefix)."""
    out = set()
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].startswith(fstype_prefix):
                    out.add(unescape_mounts_field(parts[1]))
    except OSError:
        pass
    return out


def daemon_log_path(event_log: str) -> str:
    """Where a background daemon's Python log (warnings, tracebacks) goes."""
    base = event_log[: -len(".events.jsonl")] if event_log.endswith(".events.jsonl") else event_log
    return base + ".daemon.log"


# --------------------------------------------------------------------- parent


def mount(
    image: str, mountpoint: str, opts: MountOptions, *, foreground: bool, debug: bool = False
) -> int:
    """`nvramfs mount`: returns 0 once the mount is ready (or when it ends, with -f)."""
    image = os.path.abspath(image)
    if not os.path.exists(image):
        raise NvramfsError(f"image {image} does not exist")
    mountpoint = check_mountpoint(
        mountpoint, warn=lambda text: print(f"nvramfs: warning: {text}", file=sys.stderr)
    )
    if opts.sim and opts.policy is not None:
        from nvramfs.mm.policy import POLICIES

        if opts.policy in ("opt", "opt-nox"):
            raise UsageError(
                f"policy={opts.policy} needs the future accesses: it runs in replays only "
                f"(nvramfs replay TRACE -o policy={opts.policy})"
            )
        if opts.policy == "static":
            if not opts.static:
                raise UsageError("policy static needs a profile: -o static=PROFILE")
            from nvramfs.trace.policies import load_profile

            load_profile(opts.static)  # a bad profile is a usage error before mounting
        elif opts.policy not in POLICIES:
            names = ", ".join([*POLICIES, "static=PROFILE"])
            raise UsageError(f"policy={opts.policy}: unknown (one of: {names})")
    if opts.trace is not None and not opts.sim:
        raise UsageError("trace= records the simulation's calls: it needs sim=on")
    if opts.trace is not None and os.path.commonpath([opts.trace, mountpoint]) == mountpoint:
        raise UsageError(f"trace={opts.trace}: inside the mount it records (put it elsewhere)")
    if foreground:
        return serve(image, mountpoint, opts, report=_print_report, debug=debug)

    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        code = 1
        try:
            os.close(r)
            os.setsid()
            _detach(opts.log_path(image), debug)
            pipe = os.fdopen(w, "w", buffering=1)

            def report(kind: str, text: str) -> None:
                try:
                    pipe.write(f"{kind} {' '.join(text.split())}\n")  # one line each
                except OSError:
                    pass

            code = serve(image, mountpoint, opts, report=report, debug=debug, pipe=pipe)
        except BaseException:
            logging.getLogger(__name__).exception("daemon failed")
        finally:
            os._exit(code)

    os.close(w)
    with os.fdopen(r) as pipe:
        for line in pipe:
            kind, _, text = line.rstrip("\n").partition(" ")
            if kind == "MSG":
                print(f"nvramfs: {text}", file=sys.stderr)
            elif kind == "OK":
                dpid, _, logpath = text.partition(" ")
                print(f"mounted {image} on {mountpoint} (pid {dpid}); event log: {logpath}")
                return 0
            elif kind == "ERR":
                code_s, _, msg = text.partition(" ")
                os.waitpid(pid, 0)
                raise NvramfsError(msg, int(code_s))
    _, status = os.waitpid(pid, 0)
    raise NvramfsError(f"the mount daemon exited before the mount was ready (status {status})")


def _print_report(kind: str, text: str) -> None:
    if kind == "MSG":
        print(f"nvramfs: {text}", file=sys.stderr)
    elif kind == "OK":
        dpid, _, logpath = text.partition(" ")
        print(f"serving in the foreground (pid {dpid}); event log: {logpath}", flush=True)
    elif kind == "ERR":
        code_s, _, msg = text.partition(" ")
        raise NvramfsError(msg, int(code_s))


def _detach(event_log: str, debug: bool) -> None:
    """Daemon file descriptors: stdin from /dev/null, stdout/stderr to the daemon log.

    The parent's stdout/stderr must not stay open here, or whoever captures
    `nvramfs mount`'s output would wait for the daemon to exit."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        out = os.open(daemon_log_path(event_log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        out = null
    os.dup2(out, 1)
    os.dup2(out, 2)
    # A fatal signal (SIGBUS from a store into an unbacked page, SIGSEGV) leaves
    # its traceback in the daemon log instead of a silent death.
    faulthandler.enable()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


# --------------------------------------------------------------------- daemon


def make_mm(img: Any, opts: MountOptions, events: Any) -> Any:
    """The page-serving backend: the simulated MemoryManager, or NoSim for sim=off."""
    if not opts.sim:
        from nvramfs.fuse.nosim import NoSim

        return NoSim(img)
    from nvramfs.device import DeviceModel, load_medium
    from nvramfs.device.meter import Meter
    from nvramfs.mm import MemoryManager

    # The device model prices what mm moves on the medium (docs/COSTS.md):
    # blocks in use at the mount hold programmed data, the rest are erased.
    programmed = img.used_blocks()
    meter = Meter(DeviceModel(load_medium(opts.medium), img.nr_blocks, programmed=programmed))
    kw: dict[str, Any] = {"events": events, "device": meter}
    params = inspect.signature(MemoryManager).parameters
    if opts.policy is not None:
        kw["policy"] = opts.policy
    if opts.policy == "static":
        kw["policy"] = static_policy(img, opts)
    if "nr_nvram_pages" in params:
        kw["nr_nvram_pages"] = img.nr_blocks
    if opts.promote_cap is not None:
        kw["max_promote_per_tick"] = opts.promote_cap
    if opts.kernel != "modern":
        kw["kernel"] = opts.kernel
    if opts.writeback is not None:
        for name in ("writeback_seconds", "dirty_expire", "writeback", "dirty_expire_seconds"):
            if name in params:
                kw[name] = opts.writeback
                break
    if opts.dirty_background is not None:
        kw["dirty_background_ratio"] = opts.dirty_background / 100
    if opts.dirty_limit is not None:
        kw["dirty_ratio"] = opts.dirty_limit / 100
    backing = meter.backing(img)
    if opts.trace is None:
        return MemoryManager(backing, opts.dram_pages, **kw)
    # Recording: mm runs on the recorder's backing proxy and clock, and the FUSE
    # layer calls the recording proxy instead of mm (docs/TRACE.md).
    from nvramfs.trace.record import Recorder, save_programmed

    config = trace_config(img, opts, params, kw)
    t0 = getattr(events, "t0", None)
    if isinstance(t0, float):
        config["events_t0_us"] = round(t0 * 1e6)  # the event log's time 0 (same clock)
    medium_file = "/" in opts.medium or opts.medium.endswith(".toml")
    config["medium"] = os.path.abspath(opts.medium) if medium_file else opts.medium
    rec = Recorder(opts.trace, backing, config, size_of=lambda ino: img.getattr(ino).size)
    save_programmed(opts.trace, programmed)  # the device model's starting state
    mm = MemoryManager(rec.backing, opts.dram_pages, clock=rec.clock, **kw)
    return rec.wrap(mm)


def static_policy(img: Any, opts: MountOptions) -> Any:
    """policy static: the profile's paths looked up in the image (a path not there is
    skipped, as a file the profile named but the image no longer has)."""
    from nvramfs.mm.policy import make_policy
    from nvramfs.trace.policies import load_profile

    profile = load_profile(opts.static)
    policy = make_policy("static", opts.dram_pages + 1, profile=profile)
    for path in policy.chosen:
        ino = img.root_ino
        try:
            for name in path.strip("/").split("/"):
                ino = img.lookup(ino, os.fsencode(name))
        except OSError:
            log.warning("static: %s is not in the image; its pages are not pinned", path)
            continue
        policy.bind(ino, path)
    return policy


def trace_config(img: Any, opts: MountOptions, params: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """The trace header's configuration: what a replay needs to run the same mm
    (`mm`: every MemoryManager setting, as passed or defaulted), and what the mount was."""

    def default(name: str, fallback: Any) -> Any:
        p = params.get(name)
        return fallback if p is None or p.default is inspect.Parameter.empty else p.default

    config = {
        "dram_pages": opts.dram_pages,
        "policy": opts.policy or default("policy", "2q"),
        "writeback_seconds": float(opts.writeback or default("writeback_seconds", 5.0)),
        "tick_seconds": TICK_SECONDS,
        "cache": opts.cache,
        "pte_special": kw.get("pte_special", default("pte_special", None)),  # None: the kernel's
        "image": getattr(img, "path", None),
        "uuid": _image_uuid(img).get("uuid"),  # as the mount event spells it
        "nr_blocks": int(img.nr_blocks),
        "block_size": PAGE_SIZE,
        "readonly": opts.readonly,
    }
    if "kernel" in params:
        config["kernel"] = kw.get("kernel", default("kernel", None))
    settings: dict[str, Any] = {}
    for name, p in params.items():
        if name in ("backing", "dram_pages", "events", "clock", "nr_nvram_pages"):
            continue
        value = kw.get(name, p.default)
        if value is inspect.Parameter.empty or not isinstance(value, int | float | str | None):
            continue
        settings[name] = value
    if opts.static:
        # policy static: the policy object is built here; the trace names it and its profile.
        settings["policy"] = "static"
        settings["static"] = config["static"] = opts.static
    config["mm"] = settings
    return config


def serve(
    image: str,
    mountpoint: str,
    opts: MountOptions,
    *,
    report: Any,
    debug: bool = False,
    pipe: Any = None,
) -> int:
    """Open, mount, serve until unmounted or signalled, then end cleanly. Returns the exit code."""
    from nvramfs.events.writer import EventWriter
    from nvramfs.fuse.operations import Operations
    from nvramfs.image import Image
    from nvramfs.image.lock import ImageInUse, lock_image

    logpath = opts.log_path(image)
    # One daemon per image: a second writer would corrupt it. The lock lives as
    # long as this process (also after kill -9, the kernel drops it).
    # mkfs --force and fsck's repairs take the same lock (nvramfs/image/lock.py).
    try:
        _held = lock_image(image)  # an fd, open (and the lock held) until the daemon exits
    except ImageInUse:
        report("ERR", f"1 image {image} is in use (mounted elsewhere?)")
        return 1
    except OSError as exc:
        report("ERR", f"1 image {image}: {exc.strerror or exc}")
        return 1
    try:
        img = Image.open(image, readonly=opts.readonly)
    except NvramfsError as exc:
        report("ERR", f"{exc.exit_code} {exc}")
        return exc.exit_code
    except OSError as exc:
        report("ERR", f"1 image {image}: {exc.strerror or exc}")
        return 1

    if not opts.readonly:
        from nvramfs.image.hostspace import growth_warning

        warning = growth_warning(image)
        if warning:
            report("MSG", f"warning: {warning}")
            log.warning("%s", warning)

    recovered = not img.was_clean
    lost: dict[str, Any] = {}
    if recovered:
        what = "; ".join(getattr(img, "recovery", []) or []) or "nothing to replay"
        report("MSG", f"{image} was not cleanly unmounted; recovery ran: {what}")
        log.warning("%s was not cleanly unmounted; recovery ran: %s", image, what)
        lost, line = lost_dirty_report(img)
        report("MSG", f"{image}: {line}")
        log.warning("%s: %s", image, line)

    events = None
    mm = None
    try:
        events = EventWriter(logpath, trace_faults=opts.trace_faults, offload=True)
        mm = make_mm(img, opts, events)
    except Exception as exc:
        if events is not None:
            events.close()
        img.close(clean=True)
        msg = (
            str(exc)
            if isinstance(exc, NvramfsError | ValueError | KeyError | OSError)
            else repr(exc)
        )
        if isinstance(exc, ValueError | KeyError):
            report("ERR", f"2 {msg}")
            return 2
        report("ERR", f"1 cannot start: {msg}")
        return 1

    policy = getattr(mm, "policy_name", None) or getattr(mm, "policy", None)
    if not isinstance(policy, str):
        policy = getattr(policy, "name", None) or opts.policy or "default"
    info = {
        "pid": os.getpid(),
        "image": image,
        "mountpoint": mountpoint,
        "log": logpath,
        "sim": opts.sim,
        "cache": opts.cache,
        "policy": policy,
        "dram_pages": opts.dram_pages,
        "recovered": recovered,
        "image_readonly": opts.readonly,
        "medium": opts.medium if opts.sim else None,
    }
    control = Control(mm, events, info)
    ops = Operations(
        img,
        mm,
        events,
        cache=opts.cache,
        readonly=opts.readonly,
        control=control,
        atime=opts.atime,
        shared_mmap=opts.shared_mmap,
    )
    control.ops = ops
    recorder = getattr(mm, "recorder", None)
    if recorder is not None:
        recorder.path_of = ops._paths.get  # each file's path at first touch
    flusher = None
    if hasattr(mm, "writeback_batch"):
        from nvramfs.fuse.flusher import Flusher

        flusher = ops.flusher = Flusher(mm, on_error=ops.translate)
    try:
        pyfuse3.init(ops, mountpoint, opts.fuse_options(image))
    except RuntimeError as exc:
        mm.close()
        events.close()
        img.close(clean=True)
        report("ERR", f"1 cannot mount on {mountpoint}: {exc}")
        return 1

    events.emit(
        schema.MOUNT,
        image=image,
        dram_pages=opts.dram_pages,
        page_size=PAGE_SIZE,
        policy=policy,
        pte_special=bool(getattr(getattr(mm, "machine", None), "pte_special", True)),
        kernel=str(getattr(getattr(mm, "machine", None), "kernel", opts.kernel)),
        cache=opts.cache,
        sim=opts.sim,
        medium=opts.medium if opts.sim else None,
        recovered=recovered,
        wall=time.time(),
        mountpoint=mountpoint,
        **_image_uuid(img),
        **lost,
    )
    events.flush()
    report("OK", f"{os.getpid()} {logpath}")
    if pipe is not None:
        pipe.close()

    signalled = False
    try:
        signalled = _run_profiled(_serve, ops, mm, events, flusher)
    except BaseException as exc:
        log.exception("the FUSE main loop failed: %s", exc)
    finally:
        # A second Ctrl-C or SIGTERM must not cut the writeback short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        _finish(ops, mm, events, img, unmount=True)
    log.info("unmounted %s%s", mountpoint, " after a signal" if signalled else "")
    return 0


def _run_profiled(fn: Any, *args: Any) -> Any:
    """trio.run(fn, *args); under NVRAMFS_PROFILE=PATH the daemon's serving loop runs
    in cProfile and its stats go to PATH at unmount (for `python -m pstats PATH`):
    how the write path's per-request costs were found (README, "Benchmarks")."""
    path = os.environ.get("NVRAMFS_PROFILE")
    if not path:
        return trio.run(fn, *args)
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(trio.run, fn, *args)
    finally:
        prof.dump_stats(path)


async def _serve(ops: Any, mm: Any, events: Any, flusher: Any = None) -> bool:
    """pyfuse3.main with the ticker, the flusher and the signal watcher beside it."""
    state = {"signalled": False}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ticker, ops, mm, events)
        if flusher is not None:
            nursery.start_soon(flusher.run)
        nursery.start_soon(_signals, state)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    return state["signalled"]


async def _ticker(ops: Any, mm: Any, events: Any) -> None:
    """Once a second: mm's policy pass and dirty expiry, sizes to the image, the log out."""
    while True:
        await trio.sleep(TICK_SECONDS)
        try:
            mm.tick()
            ops.flush_all_meta()
            note_dirty(ops.img, mm)
        except Exception as exc:
            ops.translate("tick", exc)
        try:
            events.flush(wait=False)  # handed to the sink; written while we serve
        except Exception:
            log.exception("cannot flush the event log")


def note_dirty(img: Any, mm: Any) -> None:
    """The tick's hook: the image keeps a summary of what is dirty (what a crash would lose)."""
    counts = getattr(mm, "dirty_counts", None)
    if img is not None and counts is not None:
        img.note_dirty(counts())


def lost_dirty_report(img: Any) -> tuple[dict[str, Any], str]:
    """After an unclean end: the `mount` event's lost_* fields and one line for stderr.

    From the superblock's dirty summary of the last session (written at most
    once a second, so it is as of its `lost_dirty_as_of`); unknown when the
    image holds none."""
    summ = getattr(img, "lost_dirty", None)
    if summ is None:
        fields = {"lost_dirty_pages": None, "lost_dirty_files": None, "lost_dirty": []}
        return fields, "what was dirty in DRAM at the end is not known (no dirty summary)"
    paths = img.paths_of([i for i, _ in summ.pairs]) if summ.pairs else {}
    files = [{"ino": i, "pages": n, "path": paths.get(i)} for i, n in summ.pairs]
    fields = {
        "lost_dirty_pages": summ.pages,
        "lost_dirty_files": summ.files,
        "lost_dirty": files,
        "lost_dirty_as_of": summ.time_ns / 1e9,
    }
    when = time.strftime("%H:%M:%S", time.localtime(summ.time_ns / 1e9))
    if not summ.pages:
        return fields, f"no dirty pages were lost (dirty summary of {when})"
    shown = ", ".join(f"{f['path'] or 'inode ' + str(f['ino'])} ({f['pages']})" for f in files[:5])
    more = f", and {summ.files - 5} more files" if summ.files > 5 else ""
    return fields, (
        f"{summ.pages} dirty pages of {summ.files} file{'s' * (summ.files != 1)} were lost "
        f"(dirty summary of {when}): {shown}{more}"
    )


async def _signals(state: dict[str, bool]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.warning("%s: unmounting", signal.Signals(signum).name)
            state["signalled"] = True
            pyfuse3.terminate()
            return


def _image_uuid(img: Any) -> dict[str, str]:
    """{"uuid": ...} for the mount event: with it, files are known across mounts."""
    try:
        return {"uuid": str(img.uuid)}
    except Exception:
        return {}


def _finish(ops: Any, mm: Any, events: Any, img: Any, *, unmount: bool) -> None:
    """Unmount (if still mounted), write everything back, close log and image clean.

    The `unmount` event says `clean: false` when a step here failed, or when a
    fatal error (a broken invariant, a corrupt image) turned the mount
    read-only while it ran: the log then says what the image's state says.
    """
    try:
        pyfuse3.close(unmount=unmount)
    except Exception:
        log.exception("pyfuse3.close failed")
    clean = True
    for what, step in (
        ("shutdown", ops.shutdown),
        ("mm.close", mm.close),
        # Sizes the ordered-data rule held back are now covered by written-back data.
        ("flush_meta", getattr(ops, "flush_all_meta", lambda: None)),
    ):
        try:
            step()
        except Exception as exc:
            clean = False
            ops.translate(what, exc)
    fatal = int(getattr(ops, "fatal_errors", 0) or 0)
    if fatal or getattr(img, "corrupt", None):
        clean = False
    meter = getattr(mm, "device", None)
    if meter is not None:
        try:
            t = float(getattr(events, "_clock", time.monotonic)() - getattr(events, "t0", 0.0))
            events.emit(schema.WEAR, **meter.wear(t))
        except Exception:
            log.exception("cannot log the device model's wear")
    try:
        events.emit(schema.UNMOUNT, clean=clean, **({"fatal_errors": fatal} if fatal else {}))
        events.close()
    except Exception:
        log.exception("cannot close the event log")
    try:
        img.close(clean=True)
    except Exception:
        log.exception("cannot close the image")
