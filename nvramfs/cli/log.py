"""`nvramfs log LOGFILE ACTION`: read what the memory manager did.

    nvramfs log LOG summary [--json] [--bucket S]   counts by event, direction, reason, over time
    nvramfs log LOG top [-n N] [--by reads|writes|total] [--json]   hottest files and pages
    nvramfs log LOG filter [--ev E] [--path P] [--ino N] [--since T] [--until T] [-o OUT]
    nvramfs log LOG follow [--from-start] [--raw]    a live view, one line per event
    nvramfs log LOG export --csv [-o OUT]           flat CSV (one row per event; access: per page)
    nvramfs log LOG profile [-o OUT]                AXFS mkfs profile: path,offset,count lines

`nvramfs log ACTION LOG ...` works too. Every action takes `--session
N|last|all` (a log beside an image collects one session per mount). Every
action works on a log that is still being written and on one a crash cut:
skipped lines are counted and said in one line on stderr. The analysis
functions here (`split_sessions`, `summarize`, `hottest_files`, ...) are also
what `nvramfs demo` and `nvramfs plot` use, so their numbers are the same as
this command's.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from nvramfs.errors import NvramfsError, UsageError
from nvramfs.events import schema
from nvramfs.events.reader import ReadReport, check_log, load_events, read_events
from nvramfs.units import format_bytes as human_bytes  # the one byte formatter

PAGE_SIZE = 4096
ACTIONS = ("summary", "top", "filter", "follow", "export", "profile")

# --------------------------------------------------------------------------- sessions


@dataclass
class Session:
    """The events of one mount: from its `mount` line to the next (or the end)."""

    number: int  # 1-based, in file order
    events: list[dict[str, Any]] = field(default_factory=list)
    mount: dict[str, Any] | None = None
    offset: float = 0.0  # start, in seconds after the first session's start

    @property
    def duration(self) -> float:
        return max((float(e.get("t", 0.0)) for e in self.events[-1:]), default=0.0)

    @property
    def unmount(self) -> dict[str, Any] | None:
        for e in reversed(self.events):
            if e["ev"] == schema.UNMOUNT:
                return e
        return None

    @property
    def clean(self) -> bool:
        u = self.unmount
        return bool(u and u.get("clean", True))

    def abs_t(self, ev: dict[str, Any]) -> float:
        return self.offset + float(ev.get("t", 0.0))


def split_sessions(events: Iterable[dict[str, Any]]) -> list[Session]:
    """Cut a log into mount sessions: at each `mount` event, or where `seq` starts over."""
    sessions: list[Session] = []
    cur: Session | None = None
    last_seq = -1
    for ev in events:
        seq = ev.get("seq", last_seq + 1)
        seq = seq if isinstance(seq, int) else last_seq + 1
        new = ev["ev"] == schema.MOUNT or cur is None or seq <= last_seq
        if new:
            cur = Session(number=len(sessions) + 1)
            sessions.append(cur)
        assert cur is not None
        if ev["ev"] == schema.MOUNT and cur.mount is None:
            cur.mount = ev
        cur.events.append(ev)
        last_seq = seq
    # Place sessions on one time axis: by wall clock when known, never overlapping.
    end = 0.0
    wall0 = None
    for s in sessions:
        wall = s.mount.get("wall") if s.mount else None
        if isinstance(wall, int | float) and wall0 is None:
            wall0 = float(wall) - end
        start = end
        if isinstance(wall, int | float) and wall0 is not None:
            start = max(end, float(wall) - wall0)
        s.offset = start
        end = start + s.duration
    return sessions


def pick_sessions(sessions: list[Session], which: str) -> list[Session]:
    """`all`, `last`, or a 1-based number (a UsageError if there is no such session)."""
    if which == "all" or not sessions:
        return sessions
    if which == "last":
        return sessions[-1:]
    try:
        n = int(which)
    except ValueError:
        raise UsageError(f"--session {which}: use a number, 'last' or 'all'") from None
    if not 1 <= n <= len(sessions):
        raise UsageError(f"--session {n}: the log has {len(sessions)} session(s)")
    return [sessions[n - 1]]


def path_names(sessions: Iterable[Session]) -> dict[int, str]:
    """ino -> path, from `path` events (a later one, e.g. after a rename, wins)."""
    names: dict[int, str] = {}
    for s in sessions:
        for ev in s.events:
            if ev["ev"] == schema.PATH and "ino" in ev and "path" in ev:
                names[int(ev["ino"])] = str(ev["path"])
    return names


def name_of(names: dict[int, str], ino: int) -> str:
    return names.get(ino, f"<ino {ino}>")


# --------------------------------------------------------------------------- analysis


def _add_nested(into: dict[str, Any], add: dict[str, Any]) -> None:
    for k, v in add.items():
        if isinstance(v, dict):
            _add_nested(into.setdefault(k, {}), v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            into[k] = into.get(k, 0) + v


def _last_counters(s: Session) -> dict[str, Any] | None:
    for ev in reversed(s.events):
        if ev["ev"] == schema.COUNTERS:
            return ev
    return None


def file_access(sessions: Iterable[Session]) -> dict[int, dict[str, Any]]:
    """Per inode: reads, writes, and per page [reads, writes], from `access` histograms."""
    files: dict[int, dict[str, Any]] = {}
    for s in sessions:
        for ev in s.events:
            if ev["ev"] != schema.ACCESS:
                continue
            ino = int(ev.get("ino", 0))
            f = files.setdefault(
                ino, {"reads": 0, "writes": 0, "pages": defaultdict(lambda: [0, 0])}
            )
            pages = ev.get("pages") or []
            reads = ev.get("reads") or [0] * len(pages)
            writes = ev.get("writes") or [0] * len(pages)
            for p, r, w in zip(pages, reads, writes, strict=False):
                cell = f["pages"][int(p)]
                cell[0] += int(r)
                cell[1] += int(w)
                f["reads"] += int(r)
                f["writes"] += int(w)
    return files


def _score(reads: int, writes: int, by: str) -> int:
    return reads if by == "reads" else writes if by == "writes" else reads + writes


def hottest_files(sessions: list[Session], n: int = 10, by: str = "total") -> list[dict[str, Any]]:
    """The `n` most accessed files: path, ino, reads, writes, pages touched, migrations, cow."""
    names = path_names(sessions)
    files = file_access(sessions)
    moved: Counter[tuple[int, str]] = Counter()
    for s in sessions:
        for ev in s.events:
            if ev["ev"] == schema.MIGRATE:
                moved[(int(ev.get("ino", 0)), _direction(ev))] += 1
            elif ev["ev"] == schema.COW:
                moved[(int(ev.get("ino", 0)), "cow")] += 1
    rows = [
        {
            "path": name_of(names, ino),
            "ino": ino,
            "accesses": f["reads"] + f["writes"],
            "reads": f["reads"],
            "writes": f["writes"],
            "pages": len(f["pages"]),
            "promote": moved[(ino, "promote")],
            "demote": moved[(ino, "demote")],
            "cow": moved[(ino, "cow")],
        }
        for ino, f in files.items()
    ]
    rows.sort(key=lambda r: (-_score(r["reads"], r["writes"], by), r["path"]))
    return rows[:n] if n > 0 else rows


def hottest_pages(sessions: list[Session], n: int = 10, by: str = "total") -> list[dict[str, Any]]:
    """The `n` most accessed pages (path, ino, index, offset, reads, writes)."""
    names = path_names(sessions)
    rows = []
    for ino, f in file_access(sessions).items():
        for index, (r, w) in f["pages"].items():
            rows.append(
                {
                    "path": name_of(names, ino),
                    "ino": ino,
                    "index": index,
                    "offset": index * PAGE_SIZE,
                    "accesses": r + w,
                    "reads": r,
                    "writes": w,
                }
            )
    rows.sort(key=lambda r: (-_score(r["reads"], r["writes"], by), r["path"], r["index"]))
    return rows[:n] if n > 0 else rows


def _direction(ev: dict[str, Any]) -> str:
    if ev.get("from") == schema.XIP and ev.get("to") == schema.PAGECACHE:
        return "promote"
    if ev.get("from") == schema.PAGECACHE and ev.get("to") == schema.XIP:
        return "demote"
    return f"{ev.get('from')}->{ev.get('to')}"


_NICE_BUCKETS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


def choose_bucket(duration: float, max_buckets: int = 12) -> float:
    """A round bucket width that cuts `duration` into at most `max_buckets` rows."""
    for b in _NICE_BUCKETS:
        if duration / b <= max_buckets:
            return float(b)
    return float(math.ceil(duration / max_buckets))


def summarize(
    sessions: list[Session],
    report: ReadReport | None = None,
    *,
    bucket: float | None = None,
    top: int = 10,
    log: str | None = None,
) -> dict[str, Any]:
    """Everything `log summary` and the demo print, as one JSON-able dict.

    Migrations, COW and writebacks are counted from their events; faults,
    accesses and struct page memory come from the `counters` snapshots (the
    last one of each session, summed; peaks over all of them).
    """
    by_event: Counter[str] = Counter()
    migrations: dict[str, Counter[str]] = {"promote": Counter(), "demote": Counter()}
    cow_via: Counter[str] = Counter()
    cow_to: Counter[str] = Counter()
    writebacks: Counter[str] = Counter()
    errors: list[dict[str, Any]] = []
    totals: dict[str, Any] = {}
    peak = {
        "frames_used": 0,
        "dirty": 0,
        "struct_page_bytes_used": 0,
        "struct_page_bytes_avoided": 0,
    }
    dram_pages = None
    timed: list[tuple[float, str, dict[str, Any]]] = []
    for s in sessions:
        for ev in s.events:
            kind = ev["ev"]
            by_event[kind] += 1
            if kind == schema.MIGRATE:
                migrations.setdefault(_direction(ev), Counter())[str(ev.get("reason"))] += 1
            elif kind == schema.COW:
                cow_via[str(ev.get("via"))] += 1
                cow_to[str(ev.get("to"))] += 1
            elif kind == schema.WRITEBACK:
                writebacks[str(ev.get("reason"))] += 1
            elif kind == schema.ERROR:
                errors.append(ev)
            elif kind == schema.COUNTERS:
                for k in peak:
                    v = ev.get(k)
                    if isinstance(v, int | float):
                        peak[k] = max(peak[k], v)
                if isinstance(ev.get("dram_pages"), int):
                    dram_pages = ev["dram_pages"]
            elif kind == schema.MOUNT and isinstance(ev.get("dram_pages"), int):
                dram_pages = dram_pages or ev["dram_pages"]
            if kind in (
                schema.MIGRATE,
                schema.COW,
                schema.WRITEBACK,
                schema.ACCESS,
                schema.COUNTERS,
            ):
                timed.append((s.abs_t(ev), kind, ev))
        last = _last_counters(s)
        if last is not None:
            _add_nested(
                totals,
                {
                    k: last[k]
                    for k in ("faults", "accesses", "migrations", "writebacks")
                    if isinstance(last.get(k), dict)
                },
            )

    faults = {k: int(totals.get("faults", {}).get(k, 0)) for k in schema.FAULT_KINDS}
    for k, v in totals.get("faults", {}).items():
        faults.setdefault(k, int(v))
    acc = totals.get("accesses", {})
    accesses = {"read": int(acc.get("read", 0)), "write": int(acc.get("write", 0))}
    n_acc = accesses["read"] + accesses["write"] or sum(faults.values())
    hit_ratio = faults.get("pagecache_hit", 0) / n_acc if n_acc else None

    duration = max((s.offset + s.duration for s in sessions), default=0.0)
    width = bucket or choose_bucket(duration)
    timeline = _timeline(timed, width, duration)

    mount = sessions[0].mount if sessions and sessions[0].mount else {}
    counted_mig = {
        d: {str(k): int(v) for k, v in (totals.get("migrations", {}).get(d) or {}).items()}
        for d in ("promote", "demote")
    }
    return {
        "log": log,
        "sessions": len(sessions),
        "clean_unmount": [s.clean for s in sessions],
        "unmounted": [s.unmount is not None for s in sessions],
        "duration_s": round(duration, 3),
        "events": sum(by_event.values()),
        "by_event": dict(sorted(by_event.items())),
        "image": mount.get("image"),
        "policy": mount.get("policy"),
        "cache": mount.get("cache"),
        "dram_pages": dram_pages,
        "faults": faults,
        "accesses": accesses,
        "pagecache_hit_ratio": None if hit_ratio is None else round(hit_ratio, 6),
        "migrations": {d: dict(sorted(c.items())) for d, c in migrations.items()},
        "migrations_counters": counted_mig,
        "cow": {"total": sum(cow_via.values()), "via": dict(cow_via), "to": dict(cow_to)},
        "writebacks": dict(sorted(writebacks.items())),
        "writebacks_counters": {
            str(k): int(v) for k, v in (totals.get("writebacks") or {}).items()
        },
        "peak": peak,
        "struct_page": {
            "bytes_used_peak": peak["struct_page_bytes_used"],
            "bytes_avoided_peak": peak["struct_page_bytes_avoided"],
        },
        "errors": len(errors),
        "fatal_errors": sum(1 for e in errors if e.get("fatal")),
        "timeline": {"bucket_s": width, "rows": timeline},
        "hottest_files": hottest_files(sessions, top),
        "skipped": report.as_dict() if report else None,
    }


def _timeline(
    timed: list[tuple[float, str, dict[str, Any]]], width: float, duration: float
) -> list[dict[str, Any]]:
    n = max(1, math.ceil(duration / width - 1e-9)) if duration > 0 else 1
    rows = [
        {
            "t0": round(i * width, 3),
            "t1": round((i + 1) * width, 3),
            "reads": 0,
            "writes": 0,
            "promote": 0,
            "demote": 0,
            "cow": 0,
            "writeback": 0,
            "frames_used": None,
        }
        for i in range(n)
    ]
    for t, kind, ev in timed:
        i = min(n - 1, max(0, int(t // width)))
        row = rows[i]
        if kind == schema.MIGRATE:
            d = _direction(ev)
            if d in ("promote", "demote"):
                row[d] += 1
        elif kind == schema.COW:
            row["cow"] += 1
        elif kind == schema.WRITEBACK:
            row["writeback"] += 1
        elif kind == schema.ACCESS:
            row["reads"] += sum(int(x) for x in ev.get("reads") or [])
            row["writes"] += sum(int(x) for x in ev.get("writes") or [])
        elif kind == schema.COUNTERS and isinstance(ev.get("frames_used"), int):
            row["frames_used"] = ev["frames_used"]
    return rows


# --------------------------------------------------------------------------- text output


def _i(n: int | float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def _reasons(c: dict[str, int]) -> str:
    if not c:
        return ""
    return ", ".join(f"{k} {_i(v)}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def format_summary(s: dict[str, Any], *, timeline: bool = True, top: bool = True) -> str:
    """The summary a person reads in ten seconds."""
    out: list[str] = []
    cleans = s["clean_unmount"]
    unmounted = s.get("unmounted", [True] * len(cleans))
    if not cleans:
        state = "no sessions"
    elif all(cleans):
        state = "clean unmount"
    elif not unmounted[-1]:
        state = "no unmount event yet (still mounted, or the daemon died)"
    elif not cleans[-1]:
        state = "the last unmount was not clean"
    else:
        state = "some sessions were not cleanly unmounted"
    n_sess = s["sessions"]
    out.append(
        f"event log    {s['log'] or '-'}: {n_sess} session{'s' if n_sess != 1 else ''}, "
        f"{s['duration_s']:.1f} s, {_i(s['events'])} events, {state}"
    )
    if s.get("image"):
        dram = s.get("dram_pages")
        dram_txt = f"{_i(dram)} frames ({human_bytes(dram * PAGE_SIZE)})" if dram else "?"
        out.append(
            f"mount        {s['image']}: policy {s.get('policy')}, DRAM budget {dram_txt}, "
            f"cache={s.get('cache')}"
        )
    faults = s["faults"]
    total = sum(faults.values())
    acc = s["accesses"]
    n_acc = acc["read"] + acc["write"]
    if total:
        parts = [f"{k} {_i(v)}" for k, v in faults.items() if v]
        on = f" in {_i(n_acc)} page accesses" if n_acc else ""
        out.append(f"faults       {_i(total)}{on}: " + ", ".join(parts))
    else:
        out.append("faults       none counted (no counters event in the log)")
    if s["pagecache_hit_ratio"] is not None:
        out.append(
            f"hit ratio    {100 * s['pagecache_hit_ratio']:.1f}% of page accesses served by "
            f"pagecache ({_i(acc['read'])} reads, {_i(acc['write'])} writes)"
        )
    mig = s["migrations"]
    for d, arrow in (("promote", "xip→pagecache"), ("demote", "pagecache→xip")):
        c = mig.get(d, {})
        label = "migrations" if d == "promote" else ""
        line = f"{label:<12} {d:<7} {arrow} {_i(sum(c.values())):>8}"
        if c:
            line += f"   {_reasons(c)}"
        counted = s.get("migrations_counters", {}).get(d) or {}
        if counted and sum(counted.values()) != sum(c.values()):
            line += f"   (counters say {_i(sum(counted.values()))})"
        out.append(line)
    for d, c in mig.items():
        if d not in ("promote", "demote"):
            out.append(f"{'':<12} {d} {_i(sum(c.values()))}   {_reasons(c)}")
    cow = s["cow"]
    out.append(
        f"cow          {_i(cow['total'])}"
        + (f"   via {_reasons(cow['via'])}" if cow["total"] else "")
    )
    wb = s["writebacks"]
    out.append(f"writebacks   {_i(sum(wb.values()))}" + (f"   {_reasons(wb)}" if wb else ""))
    sp = s["struct_page"]
    peak = s["peak"]
    budget = s.get("dram_pages")
    out.append(
        f"struct page  {human_bytes(sp['bytes_used_peak'])} used at the peak "
        f"({_i(peak['frames_used'])} frames{f' of {_i(budget)}' if budget else ''}), "
        f"{human_bytes(sp['bytes_avoided_peak'])} avoided (XIP pages mapped with no struct page)"
    )
    if s["errors"]:
        out.append(
            f"errors       {s['errors']} ({s['fatal_errors']} fatal): see `filter --ev error`"
        )
    out.append("events       " + ", ".join(f"{k} {_i(v)}" for k, v in s["by_event"].items()))
    if timeline and s["timeline"]["rows"] and s["duration_s"] > 0:
        w = s["timeline"]["bucket_s"]
        out.append("")
        out.append(f"over time ({w:g} s buckets)")
        out.append(
            f"  {'t (s)':>11} {'reads':>9} {'writes':>9} {'promote':>8} {'demote':>8} "
            f"{'cow':>7} {'wb':>7} {'frames':>8}"
        )
        for r in s["timeline"]["rows"]:
            fr = "" if r["frames_used"] is None else _i(r["frames_used"])
            span = f"{r['t0']:g}-{r['t1']:g}"
            out.append(
                f"  {span:>11} {_i(r['reads']):>9} {_i(r['writes']):>9} "
                f"{_i(r['promote']):>8} {_i(r['demote']):>8} {_i(r['cow']):>7} "
                f"{_i(r['writeback']):>7} {fr:>8}"
            )
    if top and s["hottest_files"]:
        out.append("")
        out.append(format_files(s["hottest_files"], title="hottest files"))
    return "\n".join(out)


def format_files(rows: list[dict[str, Any]], *, title: str) -> str:
    width = max([len(r["path"]) for r in rows] + [4])
    width = min(width, 60)
    out = [
        f"{title}",
        f"  {'path':<{width}} {'accesses':>10} {'reads':>10} {'writes':>9} {'pages':>8} "
        f"{'promote':>8} {'demote':>7} {'cow':>6}",
    ]
    for r in rows:
        out.append(
            f"  {_clip(r['path'], width):<{width}} {_i(r['accesses']):>10} {_i(r['reads']):>10} "
            f"{_i(r['writes']):>9} {_i(r['pages']):>8} {_i(r['promote']):>8} "
            f"{_i(r['demote']):>7} {_i(r['cow']):>6}"
        )
    return "\n".join(out)


def format_pages(rows: list[dict[str, Any]], *, title: str) -> str:
    width = min(max([len(r["path"]) for r in rows] + [4]), 60)
    out = [
        title,
        f"  {'path':<{width}} {'page':>8} {'offset':>12} {'accesses':>9} {'reads':>9} {'writes':>8}",
    ]
    for r in rows:
        out.append(
            f"  {_clip(r['path'], width):<{width}} {r['index']:>8} {r['offset']:>12} "
            f"{_i(r['accesses']):>9} {_i(r['reads']):>9} {_i(r['writes']):>8}"
        )
    return "\n".join(out)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _pfn(v: Any) -> str:
    return hex(v) if isinstance(v, int) else str(v)


def format_event(ev: dict[str, Any], names: dict[int, str]) -> str:
    """One readable line for `follow`."""
    kind = ev["ev"]
    t = ev.get("t", 0.0)
    head = f"{t:10.3f}  " if isinstance(t, int | float) else f"{t!s:>10}  "
    ino = ev.get("ino")
    where = ""
    if isinstance(ino, int):
        where = name_of(names, ino)
        if "index" in ev:
            where += f" page {ev['index']}"
    if kind == schema.MOUNT:
        body = (
            f"mount      {ev.get('image')}  policy={ev.get('policy')} "
            f"dram={ev.get('dram_pages')} frames cache={ev.get('cache')} sim={ev.get('sim')} "
            f"pte_special={ev.get('pte_special')} recovered={ev.get('recovered')}"
        )
    elif kind == schema.PATH:
        body = f"path       ino {ino} is {ev.get('path')}"
    elif kind == schema.MIGRATE:
        body = (
            f"{_direction(ev):<10} {where}  {ev.get('from')}→{ev.get('to')}  "
            f"pfn {_pfn(ev.get('pfn_from'))}→{_pfn(ev.get('pfn_to'))}  reason={ev.get('reason')}  "
            f"ref={ev.get('refcount')} map={ev.get('mapcount')}"
        )
    elif kind == schema.COW:
        body = (
            f"cow        {where}  {ev.get('from')}→{ev.get('to')} via {ev.get('via')}  "
            f"pfn {_pfn(ev.get('pfn_from'))}→{_pfn(ev.get('pfn_to'))}  "
            f"ref={ev.get('refcount')} map={ev.get('mapcount')}"
        )
    elif kind == schema.WRITEBACK:
        body = (
            f"writeback  {where}  {ev.get('from')}→{ev.get('to')}  "
            f"pfn {_pfn(ev.get('pfn_from'))}→{_pfn(ev.get('pfn_to'))}  reason={ev.get('reason')}"
        )
    elif kind == schema.COUNTERS:
        f = ev.get("faults") or {}
        tot = sum(v for v in f.values() if isinstance(v, int))
        hit = f.get("pagecache_hit", 0)
        ratio = f"hit {100 * hit / tot:.1f}%" if tot else "hit -"
        body = (
            f"counters   {ratio}  faults "
            + " ".join(f"{k}={v}" for k, v in f.items())
            + f"  frames {ev.get('frames_used')}/{ev.get('dram_pages')} dirty {ev.get('dirty')}"
        )
    elif kind == schema.ACCESS:
        reads = sum(ev.get("reads") or [])
        writes = sum(ev.get("writes") or [])
        body = (
            f"access     {where}  {len(ev.get('pages') or [])} pages  reads {reads} writes {writes}"
            f"  ({ev.get('t0')}–{ev.get('t1')} s)"
        )
    elif kind == schema.FAULT:
        body = f"fault      {where}  {ev.get('kind')}{' write' if ev.get('write') else ''}"
    elif kind == schema.ERROR:
        body = f"ERROR      {ev.get('what')}{'  (fatal: the mount is read-only)' if ev.get('fatal') else ''}"
    elif kind == schema.UNMOUNT:
        body = f"unmount    {'clean' if ev.get('clean', True) else 'NOT clean'}"
    else:
        rest = {k: v for k, v in ev.items() if k not in ("v", "seq", "t", "ev")}
        body = f"{kind:<10} {json.dumps(rest, separators=(',', ':'))}"
    return head + body


# --------------------------------------------------------------------------- commands


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "log",
        help="read an event log: summary, top, filter, follow, export, profile",
        description="Read an nvramfs event log (docs/EVENTS.md): nvramfs log LOGFILE ACTION. "
        "Works on a log that is still being written and on one a crash cut off "
        "(skipped lines are reported on stderr).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
    )
    p.add_argument("logfile", metavar="LOGFILE", help="the event log (IMAGE.events.jsonl)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--session",
        default="all",
        metavar="N|last|all",
        help="which mount session(s) of the log to read (default all)",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    s = sub.add_parser("summary", parents=[common], help="counts by event, direction, reason, time")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--bucket", type=float, metavar="SECONDS", help="time bucket width (auto)")
    s.add_argument("-n", "--top", type=int, default=10, help="hottest files to list (10)")

    t = sub.add_parser("top", parents=[common], help="hottest files and pages (access histograms)")
    t.add_argument("-n", type=int, default=10, help="how many of each (10; 0 = all)")
    t.add_argument("--by", choices=("total", "reads", "writes"), default="total")
    t.add_argument("--what", choices=("both", "files", "pages"), default="both")
    t.add_argument("--json", action="store_true")

    f = sub.add_parser("filter", parents=[common], help="select events; writes JSON Lines")
    f.add_argument("--ev", action="append", metavar="EV[,EV]", help="event type(s)")
    f.add_argument("--path", action="append", metavar="GLOB", help="file path (glob, or a dir)")
    f.add_argument("--ino", action="append", type=int, metavar="N", help="inode number")
    f.add_argument("--reason", action="append", metavar="R", help="reason(s)")
    f.add_argument("--since", type=float, metavar="T", help="from t >= T (s since mount)")
    f.add_argument("--until", type=float, metavar="T", help="to t <= T (s since mount)")
    f.add_argument(
        "--context",
        action="store_true",
        help="keep mount, unmount and path events too, so the output is itself a usable log",
    )
    f.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")

    fo = sub.add_parser("follow", help="a live view, one line per event (all sessions)")
    fo.add_argument("--from-start", action="store_true", help="show the log from its start")
    fo.add_argument("--ev", action="append", metavar="EV[,EV]", help="only these event types")
    fo.add_argument("--raw", action="store_true", help="print the JSON lines as they are")
    fo.add_argument("--until-unmount", action="store_true", help="stop after an unmount event")
    fo.add_argument(
        "--idle-exit", type=float, metavar="SECONDS", help="stop after this long with no new event"
    )

    e = sub.add_parser("export", parents=[common], help="flat CSV for spreadsheets and pandas")
    e.add_argument("--csv", action="store_true", help="CSV (the default and only format)")
    e.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")

    pr = sub.add_parser(
        "profile",
        parents=[common],
        help="access profile as AXFS mkfs path,offset,count lines",
        description="Write the access profile as the CSV lines AXFS's mkfs.axfs takes with -i: "
        "'path,offset,count', path relative to the image root prefixed with '.', offset in bytes "
        "of a 4 KiB page, count = accesses of that page (from the log's access histograms).",
    )
    pr.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    pr.add_argument("--reads", action="store_true", help="count reads only (XIP is for reading)")
    pr.add_argument("--min-count", type=int, default=1, metavar="N", help="drop pages below N")
    pr.add_argument("-n", "--top", type=int, default=0, metavar="N", help="only the N hottest")
    p.set_defaults(func=main)
    _accept_action_first(p)
    return p


def _accept_action_first(p: argparse.ArgumentParser) -> None:
    """Also take `nvramfs log ACTION LOGFILE ...` (the order of `git log`-like tools)."""
    parse = p.parse_known_args

    def parse_known_args(args: Any = None, namespace: Any = None) -> Any:
        if (
            args
            and len(args) >= 2
            and args[0] in ACTIONS
            and args[1] not in ACTIONS
            and not args[1].startswith("-")
        ):
            args = [args[1], args[0], *args[2:]]
        return parse(args, namespace)

    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


def main(args: argparse.Namespace) -> int:
    action = args.action
    if action == "follow":
        return _follow(args)
    events, report = load_events(args.logfile)
    sessions = pick_sessions(split_sessions(events), args.session)
    _say_skipped(args.logfile, report)
    if not events:
        raise NvramfsError(
            f"{args.logfile}: the event log is empty"
            if report.lines == 0
            else f"{args.logfile}: no readable events"
        )
    if action == "summary":
        summary = summarize(sessions, report, bucket=args.bucket, top=args.top, log=args.logfile)
        if args.json:
            json.dump(summary, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(format_summary(summary))
        return 0
    if action == "top":
        return _top(args, sessions)
    if action == "filter":
        return _filter(args, sessions)
    if action == "export":
        with _output(args.output) as out:
            export_csv(sessions, out)
        return 0
    if action == "profile":
        return _profile(args, sessions)
    raise UsageError(f"unknown action {action}")


def _say_skipped(logfile: str, report: ReadReport) -> None:
    text = report.describe()
    if text:
        print(f"nvramfs log: {logfile}: {text}", file=sys.stderr)


class _output:
    """stdout, or a file opened for writing (a one-line error if it cannot be)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.f: TextIO | None = None

    def __enter__(self) -> TextIO:
        if self.path is None or self.path == "-":
            return sys.stdout
        try:
            self.f = open(self.path, "w", newline="")
        except OSError as exc:
            raise NvramfsError(f"{self.path}: {exc.strerror}") from None
        return self.f

    def __exit__(self, *exc: object) -> None:
        if self.f is not None:
            self.f.close()


def _top(args: argparse.Namespace, sessions: list[Session]) -> int:
    files = hottest_files(sessions, args.n, args.by) if args.what != "pages" else []
    pages = hottest_pages(sessions, args.n, args.by) if args.what != "files" else []
    if args.json:
        json.dump({"files": files, "pages": pages}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not files and not pages:
        print("no accesses in the log (no access events)")
        return 0
    if files:
        print(format_files(files, title=f"hottest files (by {args.by})"))
    if pages:
        if files:
            print()
        print(format_pages(pages, title=f"hottest pages (by {args.by})"))
    return 0


def _split_list(values: list[str] | None) -> set[str]:
    return {v.strip() for group in values or [] for v in group.split(",") if v.strip()}


def _path_matches(path: str | None, patterns: list[str]) -> bool:
    if path is None:
        return False
    for pat in patterns:
        if any(c in pat for c in "*?["):
            if fnmatch.fnmatchcase(path, pat):
                return True
        else:
            norm = "/" + pat.strip("/") if pat.strip("/") else "/"
            if path == norm or path.startswith(norm.rstrip("/") + "/"):
                return True
    return False


def select_events(
    sessions: list[Session],
    *,
    evs: set[str] | None = None,
    paths: list[str] | None = None,
    inos: set[int] | None = None,
    reasons: set[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    context: bool = False,
) -> Iterator[dict[str, Any]]:
    """The events that pass every given test (the `filter` action)."""
    unknown = (evs or set()) - set(schema.EVENT_TYPES)
    if unknown:
        raise UsageError(
            f"unknown event type {', '.join(sorted(unknown))} (one of {', '.join(schema.EVENT_TYPES)})"
        )
    final = path_names(sessions)
    for s in sessions:
        names: dict[int, str] = {}
        for ev in s.events:
            kind = ev["ev"]
            ino = ev.get("ino")
            if kind == schema.PATH and isinstance(ino, int):
                names[ino] = str(ev.get("path"))
            if context and kind in (schema.MOUNT, schema.UNMOUNT):
                yield ev
                continue
            if evs and kind not in evs:
                if not (context and kind == schema.PATH):
                    continue
            if inos or paths:
                if not isinstance(ino, int):
                    continue
                ok_ino = bool(inos) and ino in inos
                ok_path = bool(paths) and _path_matches(names.get(ino, final.get(ino)), paths or [])
                if not (ok_ino or ok_path):
                    continue
            if context and kind == schema.PATH:
                yield ev
                continue
            if reasons and str(ev.get("reason")) not in reasons:
                continue
            t = ev.get("t")
            if since is not None and (not isinstance(t, int | float) or t < since):
                continue
            if until is not None and (not isinstance(t, int | float) or t > until):
                continue
            yield ev


def _filter(args: argparse.Namespace, sessions: list[Session]) -> int:
    n = 0
    with _output(args.output) as out:
        for ev in select_events(
            sessions,
            evs=_split_list(args.ev) or None,
            paths=args.path,
            inos=set(args.ino) if args.ino else None,
            reasons=_split_list(args.reason) or None,
            since=args.since,
            until=args.until,
            context=args.context,
        ):
            out.write(json.dumps(ev, separators=(",", ":")) + "\n")
            n += 1
    if args.output:
        print(f"{n} events written to {args.output}", file=sys.stderr)
    return 0


def _follow(args: argparse.Namespace) -> int:
    path = check_log(args.logfile)
    evs = _split_list(args.ev) or None
    report = ReadReport()
    names: dict[int, str] = {}
    if not args.from_start:
        # Name the files of what follows from the path events already written.
        for ev in read_events(path, report=ReadReport()):
            if ev["ev"] == schema.PATH and isinstance(ev.get("ino"), int):
                names[ev["ino"]] = str(ev.get("path"))
    state = {"unmounted": False, "last": time.monotonic()}

    def stop() -> bool:
        if args.until_unmount and state["unmounted"]:
            return True
        return args.idle_exit is not None and time.monotonic() - state["last"] > args.idle_exit

    shown = 0
    try:
        for ev in read_events(
            path, follow=True, from_start=args.from_start, report=report, stop=stop
        ):
            state["last"] = time.monotonic()
            if ev["ev"] == schema.PATH and isinstance(ev.get("ino"), int):
                names[ev["ino"]] = str(ev.get("path"))
            if ev["ev"] == schema.UNMOUNT:
                state["unmounted"] = True
            if evs and ev["ev"] not in evs:
                continue
            if args.raw:
                print(json.dumps(ev, separators=(",", ":")), flush=True)
            else:
                print(format_event(ev, names), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass  # the normal way to stop following
    _say_skipped(args.logfile, report)
    return 0


# --------------------------------------------------------------------------- export, profile

CSV_COLUMNS = [
    "session",
    "seq",
    "t",
    "ev",
    "ino",
    "path",
    "index",
    "offset",
    "from",
    "to",
    "pfn_from",
    "pfn_to",
    "reason",
    "via",
    "refcount",
    "mapcount",
    "kind",
    "write",
    "t0",
    "t1",
    "page",
    "reads",
    "writes",
    *(f"faults.{k}" for k in schema.FAULT_KINDS),
    "accesses.read",
    "accesses.write",
    "migrations.promote",
    "migrations.demote",
    "writebacks",
    "frames_used",
    "dram_pages",
    "dirty",
    "struct_page_bytes_used",
    "struct_page_bytes_avoided",
    "image",
    "policy",
    "page_size",
    "pte_special",
    "cache",
    "sim",
    "recovered",
    "wall",
    "what",
    "fatal",
    "clean",
    "extra",
]
_BASE = {"v", "seq", "t", "ev"}


def export_rows(sessions: list[Session]) -> Iterator[dict[str, Any]]:
    """Flat rows of CSV_COLUMNS: one per event; an `access` event gives one row per page."""
    known = set(CSV_COLUMNS)
    for s in sessions:
        names: dict[int, str] = {}
        for ev in s.events:
            kind = ev["ev"]
            ino = ev.get("ino")
            if kind == schema.PATH and isinstance(ino, int):
                names[ino] = str(ev.get("path"))
            row: dict[str, Any] = {"session": s.number}
            extra: dict[str, Any] = {}
            for k, v in ev.items():
                if k == "v":
                    continue
                if kind == schema.COUNTERS and k in ("faults", "accesses") and isinstance(v, dict):
                    for kk, vv in v.items():
                        col = f"{k}.{kk}"
                        if col in known:
                            row[col] = vv
                        else:
                            extra[col] = vv
                elif kind == schema.COUNTERS and k == "migrations" and isinstance(v, dict):
                    for d in ("promote", "demote"):
                        row[f"migrations.{d}"] = sum((v.get(d) or {}).values())
                elif kind == schema.COUNTERS and k == "writebacks" and isinstance(v, dict):
                    row["writebacks"] = sum(v.values())
                elif kind == schema.ACCESS and k in ("pages", "reads", "writes"):
                    continue
                elif k in known and not isinstance(v, dict | list):
                    row[k] = v
                else:
                    extra[k] = v
            if isinstance(ino, int):
                row["path"] = names.get(ino, "")
                if isinstance(ev.get("index"), int):
                    row["offset"] = ev["index"] * PAGE_SIZE
            if kind == schema.COUNTERS:
                extra.update(
                    {
                        f"migrations.{d}.{r}": n
                        for d, rs in (ev.get("migrations") or {}).items()
                        for r, n in (rs or {}).items()
                    }
                )
                extra.update(
                    {f"writebacks.{r}": n for r, n in (ev.get("writebacks") or {}).items()}
                )
            row["extra"] = json.dumps(extra, separators=(",", ":")) if extra else ""
            if kind == schema.ACCESS:
                pages = ev.get("pages") or []
                reads = ev.get("reads") or [0] * len(pages)
                writes = ev.get("writes") or [0] * len(pages)
                for p, r, w in zip(pages, reads, writes, strict=False):
                    yield {**row, "page": p, "offset": int(p) * PAGE_SIZE, "reads": r, "writes": w}
            else:
                yield row


def export_csv(sessions: list[Session], out: TextIO) -> int:
    """Write the CSV (header + rows); returns the number of rows."""
    w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    n = 0
    for row in export_rows(sessions):
        w.writerow(row)
        n += 1
    return n


def profile_lines(
    sessions: list[Session], *, reads_only: bool = False, min_count: int = 1, top: int = 0
) -> tuple[list[str], list[str]]:
    """AXFS profile lines (`./path,offset,count`) and notes on what could not be written."""
    names = path_names(sessions)
    rows: list[tuple[str, int, int]] = []
    nameless: set[int] = set()
    unwritable: set[str] = set()
    for ino, f in file_access(sessions).items():
        path = names.get(ino)
        if path is None:
            nameless.add(ino)
            continue
        if "," in path or "\n" in path or "\r" in path:
            unwritable.add(path)
            continue
        rel = "." + (path if path.startswith("/") else "/" + path)
        for index, (r, w) in f["pages"].items():
            count = r if reads_only else r + w
            if count >= max(1, min_count):
                rows.append((rel, index * PAGE_SIZE, count))
    if top > 0:
        rows.sort(key=lambda x: (-x[2], x[0], x[1]))
        rows = rows[:top]
    rows.sort(key=lambda x: (x[0], x[1]))
    notes = []
    if nameless:
        notes.append(
            f"left out the pages of {len(nameless)} inode(s) with no path event "
            f"({', '.join(str(i) for i in sorted(nameless)[:5])})"
        )
    if unwritable:
        notes.append(
            f"left out {len(unwritable)} file(s) whose path has a comma or newline "
            "(the AXFS profile format cannot say it)"
        )
    return [f"{p},{o},{c}" for p, o, c in rows], notes


def _profile(args: argparse.Namespace, sessions: list[Session]) -> int:
    lines, notes = profile_lines(
        sessions, reads_only=args.reads, min_count=args.min_count, top=args.top
    )
    for note in notes:
        print(f"nvramfs log: profile: {note}", file=sys.stderr)
    with _output(args.output) as out:
        for line in lines:
            out.write(line + "\n")
    if args.output:
        print(f"{len(lines)} pages written to {args.output}", file=sys.stderr)
    elif not lines:
        print("nvramfs log: profile: no accessed pages in the log", file=sys.stderr)
    return 0
