"""Sweeps: one trace replayed under many configurations, one configuration per process.

    from nvramfs.trace.sweep import configurations, run_local
    configs = configurations(["2q", "lru"], [1024, 4096], xips=[True, False], guests=[1, 10])
    rows = run_local("run.trace", configs, jobs=2)      # or run_dask(..., "tcp://host:8786")

A configuration is (policy, DRAM budget, XIP on/off, guests); its row holds
the replay's counters reduced to the sweep's figures (docs/TRACE.md,
"Sweeps", defines each column). Rows come back in configuration order, on
local cores (ProcessPoolExecutor) or on a Dask cluster (the same function,
`run_config`, runs in both); a configuration that failed has its error in
its row and the others are still there.

Guests (docs/TRACE.md): `guests=N > 1` replays N guests mounting the same
read-only image, each with its own DRAM budget and `struct page` array, the
NVRAM shared. Guest k replays the trace's reads (writes dropped) rotated by
k/V of them (V = `variants` distinct starting points, guest k uses k mod V):
guests that share a rotation replay the same calls into identical fresh
MemoryManagers, so their counters are equal and are computed once and
multiplied; guests with different rotations are replayed.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nvramfs.errors import NvramfsError, UsageError

PAGE = 4096
STRUCT_PAGE = 64
PAGES_PER_SUBSECTION = 512  # 2 MiB / 4 KiB

# What xip=off replays for each policy: the page cache without XIP (every page
# touched read into a frame, the policy deciding only eviction). opt's
# counterpart is opt-nox (Belady's MIN); lru has no XIP to switch off; the
# tick policies (none, 2q, mq, clock) promote at ticks and keep no per-access
# eviction order, so their page cache without XIP is lru (what Linux's page
# cache is, without the active/inactive split).
NOXIP = {"opt": "opt-nox", "opt-nox": "opt-nox", "lru": "lru"}

# The columns of a row, in table/CSV order (docs/TRACE.md, "Sweeps").
COLUMNS = (
    "policy",
    "xip",
    "dram_bytes",
    "guests",
    "replayed",
    "accesses",
    "hit_ratio",
    "promotions",
    "demotions",
    "cow",
    "writebacks",
    "peak_frames",
    "memmap_device_bytes",
    "mixedmap_bytes",
    "saved_bytes",
    "guest_mixedmap_bytes",
    "guest_memmap_bytes",
    "guest_dram_bytes",
    "total_mixedmap_bytes",
    "total_memmap_bytes",
    "total_dram_bytes",
    "nox_dram_bytes",
    "image_bytes",
    "medium",
    "modelled_ns",
    "modelled_write_ns",
    "erases",
    "worst_sector_wear",
    "write_amplification",
    "lifetime_years",
    "seconds",
    "accesses_per_s",
    "error",
)


@dataclass(frozen=True)
class Config:
    """One point of the sweep."""

    policy: str
    dram_pages: int
    xip: bool = True
    guests: int = 1
    medium: str | None = None  # the device model's medium (None: the trace's own)

    @property
    def policy_run(self) -> str:
        """The policy the replay runs (xip=off: the policy's page cache without XIP)."""
        return self.policy if self.xip else NOXIP.get(self.policy, "lru")


def known_policies() -> list[str]:
    """Every policy name a sweep takes: mm's registry (and the offline ones it has)."""
    from nvramfs.mm import policy as pol

    names = list(pol.POLICIES)
    names += [n for n in getattr(pol, "OFFLINE", {}) if n != "static"]
    return names


def configurations(
    policies: Sequence[str],
    drams: Sequence[int],
    xips: Sequence[bool] = (True,),
    guests: Sequence[int] = (1,),
    media: Sequence[str | None] = (None,),
) -> list[Config]:
    """The product of the axes, checked (UsageError, exit 2): policy-major, then DRAM,
    XIP, guests, medium. DRAM in pages (frames of 4 KiB)."""
    known = known_policies()
    for p in policies:
        if p not in known:
            raise UsageError(f"policy {p}: unknown (one of: {', '.join(known)})")
    for d in drams:
        if d < 1:
            raise UsageError("dram: each size must hold at least one 4 KiB frame")
    for g in guests:
        if g < 1:
            raise UsageError(f"guests {g}: give at least 1")
    if not policies or not drams or not xips or not guests or not media:
        raise UsageError("every axis needs at least one value")
    for m in media:
        if m is not None:
            from nvramfs.device import load_medium

            load_medium(m)  # a usage error naming the built-in media
    return [
        Config(p, int(d), bool(x), int(g), m)
        for p in policies
        for d in drams
        for x in xips
        for g in guests
        for m in media
    ]


# -- one configuration --------------------------------------------------------------


def memmap_device_bytes(device_pages: int) -> int:
    """A memmap of the whole device: 64 bytes per page in whole 2 MiB subsections
    (mm's struct_page_figures when this nvramfs has it)."""
    try:
        from nvramfs.mm.stats import struct_page_figures
    except ImportError:
        sections = -(-device_pages // PAGES_PER_SUBSECTION)
        return STRUCT_PAGE * PAGES_PER_SUBSECTION * sections
    return int(struct_page_figures(device_pages, 0)["memmap_device_bytes"])


def replay_counters(
    trace: str, policy: str, dram_pages: int, medium: str | None = None
) -> tuple[dict[str, Any], int, float]:
    """Replay `trace` under (policy, dram_pages[, medium]) with no event log; returns mm's
    counters (with `wear`, the device model's summary, when one priced the replay), the
    peak number of frames in use, and the replay's wall seconds."""
    from nvramfs.events.writer import NullEventWriter

    from .format import iter_parts, read_header
    from .policies import replay_policy
    from .replay import Replayer, VirtualClock, replay_config

    header = read_header(trace)
    over: dict[str, Any] = {"policy": policy, "dram_pages": dram_pages}
    if medium is not None:
        over["medium"] = medium
    cfg = replay_config(header, over)
    clock = VirtualClock(header.t0_us * 1e-6)
    start = time.perf_counter()
    r = Replayer(header, cfg, NullEventWriter(), clock, replay_policy(trace, cfg))
    machine = r.mm.machine
    peak = [machine.frames_used]
    hooked: list[Any] = []

    def hook(pol: Any) -> None:
        # Every frame allocation goes through policy.on_alloc: the peak is seen there.
        inner = pol.on_alloc

        def on_alloc(frame: int) -> None:
            inner(frame)
            used = machine.frames_used
            if used > peak[0]:
                peak[0] = used

        pol.on_alloc = on_alloc
        hooked.append(pol)

    hook(r.mm.policy)
    for part in iter_parts(trace):
        if r.mm.policy is not hooked[-1]:
            hook(r.mm.policy)  # a recorded set_policy switched it
        r.run_part(part)
    r.finish()
    seconds = time.perf_counter() - start
    counters = r.mm.stats()
    meter = getattr(r.mm, "device", None)
    if meter is not None:
        span = max(0.0, clock() - header.t0_us * 1e-6)  # the workload's own length
        counters["wear"] = meter.model.summary(span)
        counters["wear"]["worst"] = int(
            (meter.model.sector_programs if meter.model.medium.in_place
             else meter.model.sector_erases).max(initial=0)
        )  # fmt: skip
    return counters, max(peak[0], machine.frames_used), seconds


def _hit_ratio(hits: int, accesses: int) -> float:
    """The one hit ratio (nvramfs.events.numbers.hit_ratio: page accesses served by a
    pagecache frame over all page accesses), over every guest's accesses; 0 for none."""
    from nvramfs.events.numbers import hit_ratio

    both = {"faults": {"pagecache_hit": hits}, "accesses": {"read": accesses, "write": 0}}
    return hit_ratio(both) or 0.0


def _sum(obj: Any) -> int:
    return int(sum(obj.values())) if isinstance(obj, dict) else int(obj or 0)


def _figures(counters: dict[str, Any], peak: int) -> dict[str, int]:
    f = counters["faults"]
    acc = counters["accesses"]
    return {
        "accesses": int(acc["read"]) + int(acc["write"]),
        "hits": int(f["pagecache_hit"]),
        "promotions": _sum(counters["migrations"]["promote"]),
        "demotions": _sum(counters["migrations"]["demote"]),
        "cow": int(f["cow"]),
        "writebacks": _sum(counters["writebacks"]),
        "peak_frames": int(peak),
    }


def run_config(trace: str | dict[str, bytes], config: Config | dict[str, Any], **kw: Any) -> dict:
    """The row of one configuration (never raises: an error is the row's `error`).

    `trace`: a trace directory, or a packed trace (`pack_trace`, as a Dask worker gets
    it). Keywords: `variants` (distinct guest rotations, default 8), `guest_traces`
    (one trace per guest: --trace-per-guest)."""
    if isinstance(config, dict):
        config = Config(**config)
    row: dict[str, Any] = {k: None for k in COLUMNS}
    row.update(policy=config.policy, xip=config.xip, guests=config.guests, medium=config.medium)
    row["dram_bytes"] = config.dram_pages * PAGE
    try:
        path = unpack_trace(trace) if isinstance(trace, dict) else trace
        guest_traces = kw.get("guest_traces")
        if isinstance(guest_traces, list):
            guest_traces = [unpack_trace(t) if isinstance(t, dict) else t for t in guest_traces]
        row.update(_run(path, config, kw.get("variants", 8), guest_traces))
    except NvramfsError as exc:
        row["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - one configuration's failure is its row's
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _run(
    trace: str, config: Config, variants: int, guest_traces: list[str] | None
) -> dict[str, Any]:
    from .format import read_header

    header = read_header(trace)
    device_pages = int(header.config.get("nr_blocks") or 1 << 20)
    memmap = memmap_device_bytes(device_pages)
    n = config.guests
    if n == 1 and not guest_traces:
        plan = [(trace, 1)]  # one mount: the trace as recorded, writes included
    else:
        plan = guest_plan(trace, n, variants, guest_traces)
    totals: dict[str, int] = {}
    seconds = 0.0
    peaks: list[int] = []
    replayed = 0  # accesses the replays made (a guest computed once counts once)
    wear: dict[str, Any] | None = None
    modelled = modelled_write = 0
    for path, mult in plan:
        counters, peak, secs = replay_counters(
            path, config.policy_run, config.dram_pages, config.medium
        )
        if "wear" in counters and wear is None:
            wear = counters["wear"]  # guests share the image: the first guest's wear
        ns = counters.get("modelled_ns") or {}
        modelled += mult * sum(ns.values())
        modelled_write += mult * sum(ns.get(k, 0) for k in ("cow", "writeback", "erase"))
        seconds += secs
        replayed += int(counters["accesses"]["read"]) + int(counters["accesses"]["write"])
        for k, v in _figures(counters, peak).items():
            totals[k] = totals.get(k, 0) + v * mult
        peaks += [peak] * mult
    acc = totals["accesses"]
    peak_max = max(peaks)
    mixed_total = STRUCT_PAGE * sum(peaks)
    return {
        "replayed": len(plan),
        "accesses": acc,
        "hit_ratio": _hit_ratio(totals["hits"], acc),
        "promotions": totals["promotions"],
        "demotions": totals["demotions"],
        "cow": totals["cow"],
        "writebacks": totals["writebacks"],
        "peak_frames": peak_max,
        "memmap_device_bytes": memmap,
        "mixedmap_bytes": STRUCT_PAGE * peak_max,
        "saved_bytes": memmap - STRUCT_PAGE * peak_max,
        "guest_mixedmap_bytes": STRUCT_PAGE * peak_max,
        "guest_memmap_bytes": memmap,
        "guest_dram_bytes": PAGE * peak_max,
        "total_mixedmap_bytes": mixed_total,
        "total_memmap_bytes": memmap * n,
        "total_dram_bytes": PAGE * sum(peaks),
        "image_bytes": device_pages * PAGE,
        "medium": (wear or {}).get("medium", config.medium),
        "modelled_ns": modelled if wear is not None else None,
        "modelled_write_ns": modelled_write if wear is not None else None,
        "erases": (wear or {}).get("erases"),
        "worst_sector_wear": (wear or {}).get("worst"),
        "write_amplification": ((wear or {}).get("write_amplification") or {}).get("programmed"),
        "lifetime_years": (wear or {}).get("lifetime_years"),
        "seconds": round(seconds, 6),
        # Replayed accesses per second of replay (guests computed once count once).
        "accesses_per_s": replayed / seconds if seconds else None,
    }


# -- guests -------------------------------------------------------------------------

_GUEST_CACHE: dict[tuple[str, int, int], str] = {}
_GUEST_DIR: list[str] = []


def guest_plan(
    trace: str, n: int, variants: int, guest_traces: list[str] | None = None
) -> list[tuple[str, int]]:
    """(guest trace, how many guests replay it) for N guests. With `guest_traces`, guest k
    replays the reads of trace k mod len; else the reads of `trace` rotated by
    (k mod V)/V of them, V = min(n, variants). Identical guests are grouped."""
    if guest_traces:
        sources = [(t, 0, 1) for t in guest_traces]
        count = len(sources)
    else:
        count = max(1, min(n, variants))
        sources = [(trace, v, count) for v in range(count)]
    mult = [0] * count
    for k in range(n):
        mult[k % count] += 1
    return [(guest_trace(*sources[i]), mult[i]) for i in range(count) if mult[i]]


def guest_trace(trace: str, variant: int, variants: int) -> str:
    """A guest's trace: `trace`'s reads, rotated by variant/variants of them, writes
    dropped (the image is read-only to guests). Built once per process (cached)."""
    key = (os.path.abspath(trace), variant, variants)
    if key in _GUEST_CACHE:
        return _GUEST_CACHE[key]
    if not _GUEST_DIR:
        _GUEST_DIR.append(tempfile.mkdtemp(prefix="nvramfs-guests-"))
        atexit.register(shutil.rmtree, _GUEST_DIR[0], True)
    out = os.path.join(_GUEST_DIR[0], f"g{len(_GUEST_CACHE)}")
    write_guest_trace(trace, out, variant, variants)
    _GUEST_CACHE[key] = out
    return out


def write_guest_trace(trace: str, out: str, variant: int, variants: int) -> None:
    """Write the read-only guest trace (see guest_trace) into the new directory `out`.

    Every `file` and `map` record of the image comes first (a guest's files are all
    there when it starts: a rotated read may come before the record that named its
    file live), then one `set_size` per file, the largest size the trace gave it (so
    no rotated read lands past the end of its file); `map` records of blocks a
    writeback got, writes, truncates, `set_size` records and evictions are dropped;
    the read records keep their times and slots, their contents rotated. The header is
    the recording's, marked as a guest's (so a replay never takes it for the recorded
    configuration)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .format import OP, Buffer, part_files, read_header, write_header, write_part

    header = read_header(trace)
    table = pa.concat_tables([pq.read_table(p) for p in part_files(trace)])
    table = table.unify_dictionaries()
    ops = np.asarray(pc.cast(table["op"], pa.string()).to_numpy(zero_copy_only=False))
    flags = table["flags"].to_numpy()
    image = (ops == "file") | ((ops == "map") & ((flags & 1) == 0))
    drop = np.isin(ops, ["write", "truncate", "evict_inode", "map", "file", "set_size"])
    # Each file's largest size: its `file`, `set_size` and `truncate` sizes, the end
    # of every read and write.
    ino = table["ino"].to_numpy()
    ends = (table["page"].to_numpy() << 12) + table["pgoff"].to_numpy() + table["nbytes"].to_numpy()
    size = np.where(np.isin(ops, ["file", "set_size", "truncate"]), table["arg"].to_numpy(), 0)
    size = np.where(np.isin(ops, ["read", "write"]), ends, size)
    sized = np.isin(ops, ["file", "set_size", "truncate", "read", "write"])
    sizes: dict[int, int] = {}
    for i, n in zip(ino[sized].tolist(), size[sized].tolist(), strict=True):
        if n > sizes.get(i, -1):
            sizes[i] = n
    buf = Buffer()
    for i, n in sorted(sizes.items()):
        row = buf.add(header.t0_us, OP["set_size"], i, 0, 0)
        buf.sparse["arg"][row] = n
    rest = np.flatnonzero(~drop)
    reads = rest[ops[rest] == "read"]
    order = np.concatenate([np.flatnonzero(image), rest])
    if len(reads) and variants > 1:
        shift = len(reads) * variant // variants
        src = rest.copy()
        src[ops[rest] == "read"] = np.roll(reads, -shift)
        order = np.concatenate([np.flatnonzero(image), src])
    times = np.concatenate(
        [np.full(int(image.sum()), header.t0_us, dtype=np.int64), table["t_us"].to_numpy()[rest]]
    )
    new = table.take(pa.array(order, type=pa.int64()))
    new = new.set_column(new.schema.get_field_index("t_us"), "t_us", pa.array(times))
    if len(buf):
        head = int(image.sum())
        new = pa.concat_tables(
            [new.slice(0, head), buf.table().cast(new.schema), new.slice(head)]
        ).unify_dictionaries()
    config = dict(header.config)
    config["guest"] = {"source": os.path.abspath(trace), "variant": variant, "of": variants}
    config["dram_pages"] = -1  # never the recorded configuration: maps applied as found
    write_header(out, header.t0_us, config)
    write_part(out, 0, new)


# -- packing a trace for remote workers ---------------------------------------------


def pack_trace(trace: str) -> dict[str, bytes]:
    """The trace directory's files as {name: bytes} (sent once to every Dask worker)."""
    from .format import HEADER, part_files, read_header

    read_header(trace)
    out = {}
    for p in [os.path.join(trace, HEADER), *part_files(trace)]:
        with open(p, "rb") as f:
            out[os.path.basename(p)] = f.read()
    return out


_UNPACKED: dict[str, str] = {}


def unpack_trace(blob: dict[str, bytes]) -> str:
    """A packed trace as a directory of this process (written once, by content)."""
    h = hashlib.sha256()
    for name in sorted(blob):
        h.update(name.encode())
        h.update(blob[name])
    key = h.hexdigest()[:20]
    if key not in _UNPACKED:
        d = tempfile.mkdtemp(prefix="nvramfs-sweep-")
        atexit.register(shutil.rmtree, d, True)
        path = os.path.join(d, "trace")
        os.mkdir(path)
        for name, data in blob.items():
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)
        _UNPACKED[key] = path
    return _UNPACKED[key]


# -- running many -------------------------------------------------------------------

Progress = Callable[[int, int], None]


def finish_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill `nox_dram_bytes` of each row from the xip=off row of the same policy, DRAM and
    guests (the DRAM copies the page cache without XIP holds), when the sweep has it."""
    off = {
        (r["policy"], r["dram_bytes"], r["guests"], r.get("medium")): r["total_dram_bytes"]
        for r in rows
        if not r["xip"] and not r["error"]
    }
    for r in rows:
        r["nox_dram_bytes"] = off.get((r["policy"], r["dram_bytes"], r["guests"], r.get("medium")))
    return rows


def distinct(configs: Sequence[Config]) -> tuple[list[Config], list[int]]:
    """The configurations that replay different calls, and for each configuration the
    index of the one it shares a replay with: (policy run, DRAM, guests) decides the
    replay (lru with XIP on or off is one replay; 2q with XIP off is lru's)."""
    keys: dict[tuple[str, int, int, str | None], int] = {}
    todo: list[Config] = []
    where: list[int] = []
    for c in configs:
        k = (c.policy_run, c.dram_pages, c.guests, c.medium)
        if k not in keys:
            keys[k] = len(todo)
            todo.append(c)
        where.append(keys[k])
    return todo, where


# Policies that see every page access in Python (mm/demand.py): the slow replays.
PER_ACCESS = ("lru", "opt", "opt-nox")


def longest_first(configs: Sequence[Config]) -> list[int]:
    """Indices of `configs`, the likely longest replays first (more guests, per-access
    policies, larger budgets), so that the last ones to finish are short."""
    return sorted(
        range(len(configs)),
        key=lambda i: (
            -configs[i].guests,
            configs[i].policy_run not in PER_ACCESS,
            -configs[i].dram_pages,
        ),
    )


def _spread(configs: Sequence[Config], where: list[int], rows: list[dict]) -> list[dict]:
    out = []
    for c, i in zip(configs, where, strict=True):
        r = dict(rows[i])
        r.update(policy=c.policy, xip=c.xip)
        out.append(r)
    return finish_rows(out)


def run_local(
    trace: str,
    configs: Sequence[Config],
    jobs: int | None = None,
    progress: Progress | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    """Every distinct configuration in its own process (ProcessPoolExecutor, `jobs` at a
    time); rows in configuration order. jobs=1 runs them here, one after the other."""
    todo, where = distinct(configs)
    return _spread(configs, where, _run_local(trace, todo, jobs, progress, **kw))


def _run_local(
    trace: str,
    configs: Sequence[Config],
    jobs: int | None = None,
    progress: Progress | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    rows: list[dict[str, Any] | None] = [None] * len(configs)
    done = 0
    if jobs == 1 or len(configs) == 1:
        for i, c in enumerate(configs):
            rows[i] = run_config(trace, c, **kw)
            done += 1
            if progress:
                progress(done, len(configs))
        return [r for r in rows if r is not None]
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = {
            pool.submit(run_config, trace, asdict(configs[i]), **kw): i
            for i in longest_first(configs)
        }
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                rows[i] = fut.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker process: its row says so
                rows[i] = _error_row(configs[i], f"{type(exc).__name__}: {exc}")
            done += 1
            if progress:
                progress(done, len(configs))
    return [r for r in rows if r is not None]


def _error_row(config: Config, error: str) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in COLUMNS}
    row.update(
        policy=config.policy,
        xip=config.xip,
        guests=config.guests,
        medium=config.medium,
        dram_bytes=config.dram_pages * PAGE,
        error=error,
    )
    return row


def _key(c: Config, run: str) -> str:
    """A future's name on the cluster (its dashboard shows it): the configuration."""
    medium = f"-{c.medium}" if c.medium else ""
    return (
        f"sweep-{c.policy}-{'xip' if c.xip else 'noxip'}-{c.dram_pages}p-{c.guests}g{medium}-{run}"
    )


def _worker_version() -> str:
    import nvramfs

    return nvramfs.__version__


def connect(scheduler: str, timeout: float = 5.0) -> Any:
    """A Dask client of `scheduler`, or NvramfsError (exit 1) in one line."""
    try:
        from distributed import Client
    except ImportError:
        raise NvramfsError("--scheduler needs the `distributed` package") from None
    try:
        return Client(scheduler, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise NvramfsError(f"scheduler {scheduler}: unreachable ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_versions(client: Any) -> None:
    """Every worker runs this nvramfs version (NvramfsError otherwise, before any work)."""
    import nvramfs

    try:
        versions = client.run(_worker_version)
    except Exception as exc:  # noqa: BLE001 - e.g. a worker with no nvramfs to import
        raise NvramfsError(f"workers: cannot run nvramfs ({_one_line(exc)})") from None
    if not versions:
        raise NvramfsError("scheduler: no workers")
    bad = {w: v for w, v in versions.items() if v != nvramfs.__version__}
    if bad:
        w, v = next(iter(bad.items()))
        raise NvramfsError(
            f"worker {w} runs nvramfs {v}, this client {nvramfs.__version__} "
            f"({len(bad)} of {len(versions)} workers differ)"
        )


def run_dask(
    trace: str,
    configs: Sequence[Config],
    scheduler: str | Any,
    progress: Progress | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    """The same sweep on a Dask cluster: the trace scattered once to every worker, each
    configuration a future. A future that failed (KilledWorker after Dask's retries,
    or any exception) is reported in its row. `scheduler`: an address or a Client."""
    todo, where = distinct(configs)
    return _spread(configs, where, _run_dask(trace, todo, scheduler, progress, **kw))


def _run_dask(
    trace: str,
    configs: Sequence[Config],
    scheduler: str | Any,
    progress: Progress | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    from distributed import as_completed

    own = isinstance(scheduler, str)
    client = connect(scheduler) if own else scheduler
    try:
        check_versions(client)
        blob = client.scatter(pack_trace(trace), broadcast=True)
        extra = dict(kw)
        if extra.get("guest_traces"):
            extra["guest_traces"] = [
                client.scatter(pack_trace(t), broadcast=True) for t in extra["guest_traces"]
            ]
        order = longest_first(configs)
        run = uuid.uuid4().hex[:8]
        futures = [
            client.submit(run_config, blob, asdict(configs[i]), key=_key(configs[i], run), **extra)
            for i in order
        ]
        index = {f.key: i for f, i in zip(futures, order, strict=True)}
        rows: list[dict[str, Any] | None] = [None] * len(configs)
        done = 0
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                rows[i] = fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker and the like: this row
                rows[i] = _error_row(configs[i], f"{type(exc).__name__}: {_one_line(exc)}")
            done += 1
            if progress:
                progress(done, len(configs))
        return [r for r in rows if r is not None]
    finally:
        if own:
            client.close()


# -- results ------------------------------------------------------------------------


def write_csv(rows: Iterable[dict[str, Any]], path: str) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def write_json(rows: list[dict[str, Any]], path: str, meta: dict[str, Any]) -> None:
    import json

    with open(path, "w") as f:
        json.dump({**meta, "rows": [{k: r.get(k) for k in COLUMNS} for r in rows]}, f, indent=1)
        f.write("\n")


def plot(rows: list[dict[str, Any]], prefix: str) -> list[str]:
    """The sweep's pictures (PNG): the miss-ratio curve (hit ratio against DRAM per policy
    and XIP), DRAM copies and demotions, COW and writebacks, peak frames and struct page
    bytes against DRAM; with several guest counts, total memory against guests with the
    image's size as a line. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r["error"]]
    out: list[str] = []
    if not ok:
        return out
    g1 = min(r["guests"] for r in ok)
    base = [r for r in ok if r["guests"] == g1]
    lines = sorted({(r["policy"], r["xip"], r.get("medium") or "") for r in base})
    several_media = len({m for _, _, m in lines}) > 1

    def series(key: str) -> Iterable[tuple[str, list[int], list[Any]]]:
        for p, x, m in lines:
            pts = sorted(
                (r["dram_bytes"], r[key])
                for r in base
                if (r["policy"], r["xip"], r.get("medium") or "") == (p, x, m)
                and r.get(key) is not None
            )
            label = (p if x else f"{p} (xip off)") + (f", {m}" if several_media else "")
            if pts:
                yield label, [a / 2**20 for a, _ in pts], [b for _, b in pts]

    panels = [
        ("hit_ratio", "hit ratio (page accesses served by a frame)", "mrc"),
        ("promotions", "DRAM copies (promotions)", "copies"),
        ("demotions", "demotions", "copies"),
        ("cow", "COW copies", "writes"),
        ("writebacks", "writebacks", "writes"),
        ("peak_frames", "peak frames in use", "frames"),
        ("mixedmap_bytes", "struct page bytes, MIXEDMAP (at peak)", "frames"),
    ]
    if any(r.get("modelled_ns") is not None for r in base):
        panels += [
            ("modelled_s", "modelled time (s), the device model", "cost"),
            ("worst_sector_wear", "worst sector: erases (NOR) or programs", "cost"),
        ]
        for r in base:
            ns = r.get("modelled_ns")
            r["modelled_s"] = None if ns is None else ns / 1e9
    figs: dict[str, Any] = {}
    for key, title, name in panels:
        if name not in figs:
            n = sum(1 for p in panels if p[2] == name)
            figs[name] = (plt.subplots(1, n, figsize=(6 * n, 4.2), squeeze=False), 0)
        (fig, axes), k = figs[name]
        ax = axes[0][k]
        figs[name] = ((fig, axes), k + 1)
        for label, xs, ys in series(key):
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        if key == "modelled_s":
            ax.set_yscale("log")  # media differ by orders of magnitude
        ax.set_xlabel("DRAM budget (MiB)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        if key == "mixedmap_bytes":
            ax.axhline(
                base[0]["memmap_device_bytes"], color="k", ls="--", label="memmap of the device"
            )
        ax.legend(fontsize=7)
    for name, ((fig, _), _k) in figs.items():
        path = f"{prefix}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    guests = sorted({r["guests"] for r in ok})
    if len(guests) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        keys = sorted({(r["policy"], r["xip"], r["dram_bytes"]) for r in ok if r["xip"]})
        keys = keys or sorted({(r["policy"], r["xip"], r["dram_bytes"]) for r in ok})
        for p, x, d in keys[:6]:
            pts = sorted(
                (r["guests"], r["total_mixedmap_bytes"])
                for r in ok
                if (r["policy"], r["xip"], r["dram_bytes"]) == (p, x, d)
            )
            ax.plot(
                [a for a, _ in pts],
                [b / 2**20 for _, b in pts],
                marker="o",
                label=f"MIXEDMAP {p}{'' if x else ' xip off'} {d / 2**20:g} MiB",
            )
        memmap = sorted({(r["guests"], r["total_memmap_bytes"]) for r in ok})
        ax.plot(
            [a for a, _ in memmap],
            [b / 2**20 for _, b in memmap],
            "k-",
            marker="s",
            label="memmap of the whole device, every guest",
        )
        ax.axhline(ok[0]["image_bytes"] / 2**20, color="r", ls="--", label="image size")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("guests mounting the image")
        ax.set_ylabel("struct page bytes, all guests (MiB)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = f"{prefix}-guests.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out


def run_bounded(
    trace: str, configs: Sequence[Config], seconds: float, jobs: int | None = None
) -> list[dict[str, Any] | None]:
    """The rows of `configs`, each in its own process, waiting at most `seconds` in all:
    a configuration not finished by then is None (its process is terminated)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a caller's threads
    todo, where = distinct(configs)
    with ctx.Pool(processes=max(1, min(len(todo), jobs or os.cpu_count() or 1))) as pool:
        pending = [pool.apply_async(run_config, (trace, asdict(c))) for c in todo]
        deadline = time.monotonic() + seconds
        got: list[dict[str, Any] | None] = []
        for p in pending:
            try:
                got.append(p.get(timeout=max(0.0, deadline - time.monotonic())))
            except multiprocessing.TimeoutError:
                got.append(None)
        pool.terminate()
    out: list[dict[str, Any] | None] = []
    for c, i in zip(configs, where, strict=True):
        r = got[i]
        out.append(None if r is None else {**r, "policy": c.policy, "xip": c.xip})
    return out


def xip_line(
    policy: str,
    dram_pages: int,
    on: dict | None,
    off: dict | None,
    opt: dict | None,
    opt_missing: str = "not run",
) -> str:
    """The demo's one line: what XIP saves for `policy` at its budget against the same
    policy without XIP (DRAM copies, struct page bytes), and how close it comes to opt
    (`opt_missing` says why there is no opt row, when `opt` is None)."""
    head = f"XIP at {dram_pages * PAGE / 2**20:g} MiB, {policy}: "
    if on is None or on.get("error"):
        return head + "the sweep did not finish (" + ((on or {}).get("error") or "time") + ")"
    parts = []
    if off is not None and not off.get("error"):
        parts.append(
            f"DRAM copies {on['promotions']:,} against {off['promotions']:,} without XIP "
            f"(peak {_human(PAGE * on['peak_frames'])} of frames against "
            f"{_human(PAGE * off['peak_frames'])}); struct page {_human(on['mixedmap_bytes'])} "
            f"against {_human(off['mixedmap_bytes'])} without XIP and "
            f"{_human(on['memmap_device_bytes'])} for a memmap of the whole device "
            f"(saved {_human(on['saved_bytes'])})"
        )
    else:
        parts.append("no run without XIP in time")
    hr = on["hit_ratio"]
    if opt is None:
        parts.append(f"hit ratio {hr:.3f}; opt: {opt_missing}")
    elif opt.get("error"):
        parts.append(f"hit ratio {hr:.3f}; opt failed ({opt['error']})")
    else:
        o = opt["hit_ratio"]
        parts.append(f"hit ratio {hr:.3f}, opt's {o:.3f} ({hr / o:.0%} of the optimum)" if o else
                     f"hit ratio {hr:.3f}, opt's 0")  # fmt: skip
    return head + "; ".join(parts)


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"
