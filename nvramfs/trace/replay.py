"""Replay: the recorded calls into a fresh MemoryManager, on a virtual clock, with no image.

    result = replay("run.trace")                              # the recorded configuration
    result = replay("run.trace", {"dram_pages": 4096, "policy": "clock"})
    result.counters        # mm.stats() at the end (the `counters` object of EVENTS.md)
    result.summary         # what `nvramfs log summary --json` says of the replay's own log

Each record goes to the MemoryManager method of the same name (format.OPS),
at its place in the stream, with mm's clock set to the record's time: ticks
run where the mount ran them, dirty expiry sees the same ages. Runs of
one-page reads go through mm's batch path (`mm.batch.load_pages`). With the
recorded configuration the replay reproduces the live counters exactly.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nvramfs.errors import NvramfsError, UsageError
from nvramfs.events import schema
from nvramfs.mm.bug import MMBug

from .format import CALLS, OP, OPS, Header, TraceError, cut_parts, iter_parts, read_header
from .record import PROGRAMMED
from .shadow import TraceBacking

log = logging.getLogger(__name__)

# Configuration keys a replay takes (header `config` names); the rest of the
# header describes the recording only.
REPLAY_KEYS = (
    "dram_pages",
    "policy",
    "writeback_seconds",
    "pte_special",
    "max_promote_per_tick",
    "static",  # the profile of policy static (docs/POLICIES.md)
)


@dataclass
class ReplayResult:
    """What one replay did: the final counters, the summary of its log, and its cost."""

    trace: str
    config: dict[str, Any]
    counters: dict[str, Any]
    summary: dict[str, Any] | None
    records: int
    accesses: int
    seconds: float
    parts: int
    complete: bool
    warnings: list[str] = field(default_factory=list)
    log: str | None = None
    errors: int = 0


class VirtualClock:
    """mm's clock in a replay: the time of the record being replayed (seconds)."""

    __slots__ = ("now",)

    def __init__(self, t0: float) -> None:
        self.now = t0

    def __call__(self) -> float:
        return self.now


def recorded_config(header: Header) -> dict[str, Any]:
    """The MemoryManager settings of the recording: `dram_pages` and every keyword
    setting the header's `mm` holds (older headers: the named keys)."""
    rec = header.config
    cfg: dict[str, Any] = {"dram_pages": rec.get("dram_pages"), "medium": rec.get("medium")}
    mm = rec.get("mm")
    if isinstance(mm, dict):
        cfg.update(mm)
    else:
        cfg.update({k: rec[k] for k in REPLAY_KEYS if k in rec and k != "dram_pages"})
    return cfg


def replay_config(header: Header, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recorded configuration with `overrides` applied, checked (UsageError, exit 2).
    Any MemoryManager keyword setting can be overridden (a library caller's sweep);
    the CLI offers dram, policy and writeback."""
    import inspect

    from nvramfs.mm import MemoryManager
    from nvramfs.mm.policy import OFFLINE, POLICIES

    cfg = recorded_config(header)
    known = set(inspect.signature(MemoryManager).parameters) - {
        "backing", "events", "clock", "nr_nvram_pages", "device"
    } | {"medium"}  # fmt: skip
    known.add("static")  # the profile of policy static (docs/POLICIES.md)
    for k, v in (overrides or {}).items():
        if k not in known:
            raise UsageError(f"replay option {k}: unknown (one of: {', '.join(sorted(known))})")
        if v is not None:
            cfg[k] = v
    if overrides and overrides.get("medium") is not None:
        from nvramfs.device import load_medium

        load_medium(str(overrides["medium"]))  # a usage error naming the built-in media
    dram = cfg.get("dram_pages")
    if not isinstance(dram, int) or dram < 1:
        raise UsageError(f"dram: the budget must hold at least one 4 KiB frame (got {dram})")
    if (overrides or {}).get("static") and not (overrides or {}).get("policy"):
        cfg["policy"] = "static"
    policy = cfg.get("policy") or "2q"
    if policy not in POLICIES and policy not in OFFLINE:
        raise UsageError(f"policy={policy}: unknown (one of: {', '.join([*POLICIES, *OFFLINE])})")
    if policy == "static" and not cfg.get("static"):
        raise UsageError("policy static needs a profile: -o static=PROFILE")
    cfg["policy"] = policy
    wb = cfg.get("writeback_seconds", 5.0)
    if not isinstance(wb, int | float) or not wb > 0:
        raise UsageError(f"writeback={wb}: must be more than 0 seconds")
    return cfg


class Replayer:
    """One replay in progress: the mm, its backing, the clock, the event log."""

    def __init__(
        self,
        header: Header,
        config: dict[str, Any],
        events: Any,
        clock: VirtualClock,
        policy: Any = None,
    ) -> None:
        import inspect

        from nvramfs.mm import MemoryManager

        rec = header.config
        nr_blocks = int(rec.get("nr_blocks") or 1 << 20)
        recorded = recorded_config(header)
        exact = all(config.get(k) == v for k, v in recorded.items() if k != "medium")
        self.exact = exact
        self.backing = TraceBacking(nr_blocks, exact=exact)
        self.clock = clock
        self.events = events
        params = inspect.signature(MemoryManager).parameters
        kw: dict[str, Any] = {k: v for k, v in config.items() if k in params and k != "dram_pages"}
        kw.update(events=events, nr_nvram_pages=nr_blocks, clock=clock)
        backing: Any = self.backing
        self.notes: list[str] = []
        meter = self._device(header, config.get("medium"), nr_blocks)
        if meter is not None and "device" in params:
            kw["device"] = meter
            backing = meter.backing(self.backing)
        if policy is not None:
            kw["policy"] = policy  # built by trace.policies (opt, opt-nox, static)
        try:
            self.mm = MemoryManager(backing, int(config["dram_pages"]), **kw)
        except (ValueError, KeyError) as exc:
            raise UsageError(f"replay configuration: {exc}") from None
        # lru, opt, opt-nox, static: a ctl `policy` command recorded live is not replayed
        # (it would switch away from the policy asked for).
        self.skip_set_policy = config["policy"] in ("lru", "opt", "opt-nox", "static")
        self.skipped: list[str] = []
        self.records = 0
        self.closed = False
        self.batch = True
        self.errors = 0  # calls that failed with an errno, as they would have live
        self._ones = b"\x01" * (1 << 20)
        self._paths: dict[int, tuple[str, int]] = {}

    def _device(self, header: Header, medium: Any, nr_blocks: int) -> Any:
        """The device model the mount ran (medium and the blocks in use at its start),
        so that `modelled_ns` comes out the same; None when there was none."""
        if not isinstance(medium, str):
            return None
        try:
            from nvramfs.device import DeviceModel, load_medium
            from nvramfs.device.meter import Meter
        except ImportError:
            return None
        programmed = None
        path = os.path.join(header.path, PROGRAMMED)
        if os.path.exists(path):
            try:
                programmed = np.unpackbits(np.load(path))[:nr_blocks].astype(bool)
            except (OSError, ValueError) as exc:
                raise TraceError(f"{path}: unreadable ({exc})") from None
        else:
            self.notes.append(f"{path} missing: the device model starts with every block erased")
        return Meter(DeviceModel(load_medium(medium), nr_blocks, programmed=programmed))

    # -- records ----------------------------------------------------------------

    def run_part(self, part: Any) -> None:
        """Every record of one part, in order."""
        c = part.cols
        ops = c["op"]
        n = len(ops)
        self.records += n
        backing = self.backing
        maps = ops == OP["map"]
        map_rows = np.flatnonzero(maps)
        if self.exact:
            # `map` records wait for the backing call of their number.
            for i in map_rows.tolist():
                runs = part.runs.get(i) or []
                backing.expect(int(c["seq"][i]), int(c["ino"][i]), runs, bool(c["flags"][i] & 1))
        # Runs of one-page reads are fed to mm's batch path.
        single = (ops == OP["read"]) & (c["npages"] == 1)
        if not self.batch:
            single[:] = False
        other = np.flatnonzero(~single & ~maps)
        t, ino, page = c["t_us"], c["ino"], c["page"]
        pos = 0
        free = not self.exact and len(map_rows) > 0
        for j in [*other.tolist(), n]:
            if j > pos:
                if free:
                    self._maps(part, map_rows, pos, j)
                self._reads(t[pos:j], ino[pos:j], page[pos:j], single[pos:j])
            if j < n:
                if free:
                    # The image changes found during a call happened before it.
                    k = j + 1
                    while k < n and maps[k]:
                        k += 1
                    self._maps(part, map_rows, j + 1, k)
                self._one(part, j)
            pos = j + 1

    def _maps(self, part: Any, rows: np.ndarray, lo: int, hi: int) -> None:
        """Replaying another configuration: apply the `map` records in rows [lo, hi)."""
        a, b = np.searchsorted(rows, [lo, hi])
        for i in rows[a:b].tolist():
            self._op_map(part, i, int(part.cols["ino"][i]))

    def _reads(self, t: np.ndarray, ino: np.ndarray, page: np.ndarray, single: np.ndarray) -> None:
        from nvramfs.mm.batch import load_pages

        sel = np.flatnonzero(single)
        if not len(sel):
            return
        ino, page = ino[sel], page[sel]
        cut = np.flatnonzero(ino[1:] != ino[:-1]) + 1
        bounds = [0, *cut.tolist(), len(sel)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            self.clock.now = int(t[sel[b - 1]]) * 1e-6
            load_pages(self.mm, int(ino[a]), page[a:b])

    def _one(self, part: Any, i: int) -> None:
        c = part.cols
        op = OPS[int(c["op"][i])]
        self.clock.now = int(c["t_us"][i]) * 1e-6
        handler = getattr(self, "_op_" + op, None)
        if handler is None and op not in CALLS:
            raise TraceError(f"{part.path}: record {op!r} cannot be replayed")
        try:
            if handler is not None:
                handler(part, i, int(c["ino"][i]))
            else:
                self._plain(part, i, op)
        except OSError as exc:
            # The live mount answered the request with this errno and went on (e.g.
            # ENOMEM from a budget of a few frames): so does the replay.
            self.errors += 1
            if self.errors == 1:
                log.info("replay: %s at record %d of %s: %s", op, i, part.path, exc)
        except MMBug as exc:
            raise NvramfsError(f"{part.path}: record {i} ({op}): mm BUG: {exc}") from None

    def _plain(self, part: Any, i: int, op: str) -> None:
        """A CALLS record: the method of the same name, its arguments from their columns."""
        if op == "set_policy" and self.skip_set_policy:
            self.skipped.append(str(part.text.get(i)))
            return
        method = getattr(self.mm, op, None)
        if method is None:
            raise TraceError(f"{part.path}: record {op!r}: this MemoryManager has no {op}()")
        args = [part.text.get(i) if f == "text" else int(part.cols[f][i]) for f in CALLS[op]]
        method(*args)

    def _offset(self, c: dict[str, np.ndarray], i: int) -> int:
        return (int(c["page"][i]) << 12) + int(c["pgoff"][i])

    def _op_file(self, part: Any, i: int, ino: int) -> None:
        self.backing.shadow.set_file(ino, int(part.cols["npages"][i]), part.runs.get(i) or [])
        gen = int(part.cols["gen"][i])
        self.backing.generations[ino] = gen
        path = part.text.get(i)
        bind = getattr(self.mm.policy, "bind", None)
        if bind is not None and path is not None:
            bind(ino, path)  # static: the profile names paths
        if path is not None and self._paths.get(ino) != (path, gen):
            self._paths[ino] = (path, gen)
            self.events.emit(schema.PATH, ino=ino, gen=gen, path=path)

    def _op_path(self, part: Any, i: int, ino: int) -> None:
        path = part.text.get(i)
        gen = int(part.cols["gen"][i])
        if path is not None and self._paths.get(ino) != (path, gen):
            self._paths[ino] = (path, gen)
            self.events.emit(schema.PATH, ino=ino, gen=gen, path=path)

    def _op_map(self, part: Any, i: int, ino: int) -> None:
        c = part.cols
        self.backing.expect(int(c["seq"][i]), ino, part.runs.get(i) or [], bool(c["flags"][i] & 1))

    def _op_read(self, part: Any, i: int, ino: int) -> None:
        self.mm.read(ino, self._offset(part.cols, i), int(part.cols["nbytes"][i]))

    def _op_write(self, part: Any, i: int, ino: int) -> None:
        n = int(part.cols["nbytes"][i])
        if n > len(self._ones):
            self._ones = b"\x01" * n
        self.mm.write(ino, self._offset(part.cols, i), memoryview(self._ones)[:n])

    def _op_truncate(self, part: Any, i: int, ino: int) -> None:
        size = int(part.cols["arg"][i])
        reason = part.text.get(i)
        if reason is None:
            self.mm.truncate(ino, size)
        else:
            self.mm.truncate(ino, size, reason)
        self.backing.shadow.drop_from(ino, (size + 4095) >> 12)

    def _op_evict_inode(self, part: Any, i: int, ino: int) -> None:
        self.mm.evict_inode(ino)
        self.backing.shadow.forget(ino)

    def _op_tick(self, part: Any, i: int, ino: int) -> None:
        self.mm.tick()

    def _op_setattr(self, part: Any, i: int, ino: int) -> None:
        name, value = json.loads(part.text.get(i) or "[]")
        if not hasattr(self.mm, name):
            raise TraceError(f"{part.path}: record setattr: this MemoryManager has no {name}")
        setattr(self.mm, name, value)

    def _op_close(self, part: Any, i: int, ino: int) -> None:
        self.mm.close()
        self.closed = True

    def finish(self) -> None:
        """A trace cut short (no `close`): the last counters, no writeback (the live run
        never wrote those pages back either)."""
        if not self.closed:
            self.events.emit(schema.COUNTERS, **self.mm.stats_.snapshot(self.mm.machine))
            self.events.flush()


def replay(
    trace: str,
    config: dict[str, Any] | None = None,
    *,
    log: str | None = None,
    summary: bool = True,
    batch: bool = True,
) -> ReplayResult:
    """Replay `trace` (a directory) under its recorded configuration with `config` applied.

    `log` keeps the replay's event log there (else it lives in a temporary file for
    the summary and is removed). `batch=False` hands every record to mm on its own
    (the benchmark's baseline; the result is the same). TraceError for a trace that cannot be read (exit 1),
    UsageError for a configuration that makes no sense (exit 2)."""
    from nvramfs.events.writer import EventWriter, NullEventWriter

    header = read_header(trace)
    cfg = replay_config(header, config)
    notes: list[str] = []
    if header.config.get("cache") == "kernel":
        notes.append(
            f"{trace}: recorded on a cache=kernel mount: the trace holds only the kernel's "
            "page cache misses"
        )
    cut = cut_parts(trace)
    tmpdir = None
    if log is None and summary:
        tmpdir = tempfile.mkdtemp(prefix="nvramfs-replay-")
        log_path: str | None = os.path.join(tmpdir, "replay.events.jsonl")
    else:
        log_path = log
    # The events' times are the replay's virtual times (the recorded ones).
    ev_t0 = header.config.get("events_t0_us")
    clock = VirtualClock((ev_t0 if isinstance(ev_t0, int) else header.t0_us) * 1e-6)
    if log_path is not None:
        if log is not None and os.path.exists(log_path):
            os.unlink(log_path)
        events: Any = EventWriter(log_path, clock=clock)
    else:
        events = NullEventWriter()
    start = time.perf_counter()
    try:
        clock.now = header.t0_us * 1e-6  # mm starts when the recording started
        from .policies import replay_policy

        r = Replayer(header, cfg, events, clock, replay_policy(trace, cfg))
        r.batch = batch
        notes.extend(r.notes)
        _emit_mount(events, trace, header, cfg, r.mm)
        parts = 0
        for part in iter_parts(trace):
            r.run_part(part)
            parts += 1
        if cut or not r.closed:
            notes.append(f"{trace}: the recording was cut short; replayed {parts} complete part(s)")
        if r.skipped:
            notes.append(
                f"{trace}: {len(r.skipped)} recorded ctl `policy` command(s) not replayed "
                f"under policy {cfg['policy']}"
            )
        r.finish()
        meter = getattr(r.mm, "device", None)
        if meter is not None and hasattr(schema, "WEAR"):
            events.emit(schema.WEAR, **meter.wear(clock.now - events_t0(events, clock)))
        events.emit(schema.UNMOUNT, clean=r.closed)
        events.flush()
        seconds = time.perf_counter() - start
        counters = r.mm.stats()
        acc = counters["accesses"]
        result = ReplayResult(
            trace=trace,
            config=cfg,
            counters=counters,
            summary=None,
            records=r.records,
            accesses=int(acc["read"]) + int(acc["write"]),
            seconds=seconds,
            parts=parts,
            complete=r.closed and not cut,
            warnings=notes,
            log=log,
            errors=r.errors,
        )
        events.close()
        if summary and log_path is not None:
            result.summary = summarize_log(log_path)
            if log is None:
                result.summary["log"] = f"not kept (replay of {trace}; --log PATH keeps it)"
        return result
    finally:
        if tmpdir is not None:
            for name in os.listdir(tmpdir):
                os.unlink(os.path.join(tmpdir, name))
            os.rmdir(tmpdir)


def events_t0(events: Any, clock: VirtualClock) -> float:
    """The event log's time 0 (the virtual clock's reading when the writer was made)."""
    t0 = getattr(events, "t0", None)
    return float(t0) if isinstance(t0, float) else clock.now


def _emit_mount(events: Any, trace: str, header: Header, cfg: dict[str, Any], mm: Any) -> None:
    rec = header.config
    events.emit(
        schema.MOUNT,
        image=rec.get("image"),
        dram_pages=cfg["dram_pages"],
        page_size=4096,
        policy=cfg["policy"],
        pte_special=bool(getattr(mm, "pte_special", True)),
        kernel=getattr(mm, "kernel", "modern"),
        uuid=rec.get("uuid"),
        medium=cfg.get("medium"),
        cache=rec.get("cache"),
        sim=True,
        recovered=False,
        wall=time.time(),
        mountpoint=None,
        replay=os.path.abspath(trace),
    )


def summarize_log(path: str) -> dict[str, Any]:
    """The `log summary --json` object of an event log: the same functions as
    `nvramfs log LOG summary` (the columnar engine, nvramfs.events.analysis, when
    this nvramfs has it)."""
    try:
        from nvramfs.events.analysis import summarize_log as engine
    except ImportError:
        engine = None
    if engine is not None:
        summary, _scan = engine(path)
        return summary
    from nvramfs.cli import log as logcli
    from nvramfs.events.reader import load_events

    events, report = load_events(path)
    sessions = logcli.split_sessions(events)
    return logcli.summarize(sessions, report, log=path)
