"""`nvramfs log LOGFILE ACTION`: read what the memory manager did.

    nvramfs log LOG summary [--json] [--bucket S]   counts by event, direction, reason, over time
    nvramfs log LOG top [-n N] [--by reads|writes|total] [--json]   hottest files and pages
    nvramfs log LOG filter [--ev E] [--path P] [--ino N] [--since T] [--until T] [-o OUT]
    nvramfs log LOG follow [--from-start] [--raw]    a live view, one line per event
    nvramfs log LOG export [--csv|--parquet] [-o OUT]   flat CSV, or typed Parquet
    nvramfs log LOG profile [-o OUT]                AXFS mkfs profile: path,offset,count lines

`nvramfs log ACTION LOG ...` works too. Every action takes `--session
N|last|all` (a log beside an image collects one session per mount; `all`
reads the sessions of one image, the last, and says so when the log holds
others). Every action works on a log that is still being written and on one
a crash cut: skipped lines are counted and said in one line on stderr.

This module parses arguments and prints: the numbers come from
`nvramfs.events.analysis` (the columnar engine, also used by `nvramfs demo`
and `nvramfs plot`), the passed-through events from `nvramfs.events.records`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import Any, TextIO

from nvramfs.errors import NvramfsError, UsageError
from nvramfs.events import schema
from nvramfs.events.numbers import hit_ratio
from nvramfs.events.reader import ReadReport, check_log, load_events, read_events
from nvramfs.events.records import (
    PAGE_SIZE,
    Session,
    export_csv,
    name_of,
    pick_sessions,
    select_events,
    split_sessions,
)
from nvramfs.events.records import _direction as _direction
from nvramfs.units import format_bytes as human_bytes  # the one byte formatter

ACTIONS = ("summary", "top", "filter", "follow", "export", "profile")

__all__ = [
    "PAGE_SIZE",
    "Session",
    "format_summary",
    "human_bytes",
    "split_sessions",
    "summarize",
    "pick_sessions",
]


def summarize(
    sessions: list[Session],
    report: ReadReport | None = None,
    *,
    bucket: float | None = None,
    top: int = 10,
    log: str | None = None,
) -> dict[str, Any]:
    """The summary of sessions already read as dicts (the engine's `summarize`)."""
    from nvramfs.events import analysis

    scan = analysis.Scan.of_events(
        (ev for s in sessions for ev in s.events), report, unit=bucket or 0.5
    )
    return analysis.summarize(scan, bucket=bucket, top=top, log=log)


# --------------------------------------------------------------------------- text output


def _i(n: int | float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def _reasons(c: dict[str, int]) -> str:
    if not c:
        return ""
    return ", ".join(f"{k} {_i(v)}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _table(title: str, columns: list[tuple[str, str]], rows: list[list[str]]) -> str:
    """A plain-text table made by rich (no colour, no box lines: it reads in a pipe too)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=title,
        title_justify="left",
        title_style=None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        header_style=None,
    )
    for name, justify in columns:
        t.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        t.add_row(*r)
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None, force_terminal=False, soft_wrap=True).print(t)
    return "\n".join("  " + ln.rstrip() if k else ln.rstrip() for k, ln in
                     enumerate(buf.getvalue().rstrip("\n").splitlines()))  # fmt: skip


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
    nums = s.get("session_numbers") or []
    which = ""
    if nums and nums[0] != 1:
        which = f" (session{'s' if len(nums) > 1 else ''} {nums[0]}" + (
            f"-{nums[-1]})" if len(nums) > 1 else ")"
        )
    out.append(
        f"event log    {s['log'] or '-'}: {n_sess} session{'s' if n_sess != 1 else ''}{which}, "
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
    if s.get("device"):
        out += format_device(s["device"], phases=timeline)
    if timeline and s["timeline"]["rows"] and s["duration_s"] > 0:
        w = s["timeline"]["bucket_s"]
        out.append("")
        rows = []
        for r in s["timeline"]["rows"]:
            fr = "" if r["frames_used"] is None else _i(r["frames_used"])
            rows.append(
                [f"{r['t0']:g}-{r['t1']:g}", _i(r["reads"]), _i(r["writes"]), _i(r["promote"]),
                 _i(r["demote"]), _i(r["cow"]), _i(r["writeback"]), fr]
            )  # fmt: skip
        cols = ["t (s)", "reads", "writes", "promote", "demote", "cow", "wb", "frames"]
        out.append(_table(f"over time ({w:g} s buckets)", [(c, "right") for c in cols], rows))
    if top and s["hottest_files"]:
        out.append("")
        out.append(format_files(s["hottest_files"], title="hottest files"))
    return "\n".join(out)


def _dur(ns: float) -> str:
    """Modelled nanoseconds, in the unit a person reads."""
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if abs(ns) >= div:
            return f"{ns / div:.3g} {unit}"
    return f"{ns:.0f} ns"


def _shares(ns: dict[str, int]) -> str:
    total = sum(ns.values())
    if not total:
        return "nothing"
    top = sorted(((v, k) for k, v in ns.items() if v), reverse=True)
    shown = [(v, k) for v, k in top if 100 * v / total >= 0.5]
    rest = total - sum(v for v, _ in shown)
    text = ", ".join(f"{k} {100 * v / total:.0f}%" for v, k in shown)
    return text + (f", the rest {100 * rest / total:.1g}%" if rest else "")


def format_device(d: dict[str, Any], *, phases: bool = True) -> list[str]:
    """The device model's lines of the summary (docs/COSTS.md)."""
    out = [
        f"modelled     {_dur(d['modelled_ns_total'])} on {d['medium']}: "
        + _shares(d["modelled_ns"])
    ]
    for w in d.get("wear") or []:
        wa = w.get("write_amplification") or {}
        if wa.get("programmed") is not None:
            out.append(
                f"{'wear':<12} {_i(w.get('erases') or 0)} erases; written back "
                f"{human_bytes(w.get('bytes_written_back') or 0)}, programmed "
                f"{wa['programmed']:.2f}x and erased {wa['erased']:.2f}x that"
            )
        worst = w.get("worst_sectors") or []
        if worst:
            out.append(
                f"{'':<12} most worn: "
                + ", ".join(
                    f"sector {x['sector']} ({x['erases']} erases, {x['programs']} programs)"
                    for x in worst[:3]
                )
            )
        life = w.get("lifetime_years")
        if life is not None:
            out.append(f"{'':<12} lifetime at this write rate: {life:.3g} years")
    if phases and d.get("phases"):
        kinds = [k for k in d["modelled_ns"] if any(p["modelled_ns"].get(k) for p in d["phases"])]
        rows = [
            [p["phase"], f"{p['wall_s']:g}", _dur(p["modelled_ns_total"]),
             *(_dur(p["modelled_ns"].get(k, 0)) for k in kinds)]
            for p in d["phases"]
        ]  # fmt: skip
        cols = [("phase", "left"), ("wall (s)", "right"), ("modelled", "right")]
        cols += [(k, "right") for k in kinds]
        out.append("")
        out.append(_table("modelled time by phase", cols, rows))
    return out


def format_files(rows: list[dict[str, Any]], *, title: str) -> str:
    cols = ["accesses", "reads", "writes", "pages", "promote", "demote", "cow"]
    body = [[_clip(r["path"], 60), *(_i(r[c]) for c in cols)] for r in rows]
    return _table(title, [("path", "left")] + [(c, "right") for c in cols], body)


def format_pages(rows: list[dict[str, Any]], *, title: str) -> str:
    body = [
        [_clip(r["path"], 60), str(r["index"]), str(r["offset"]), _i(r["accesses"]),
         _i(r["reads"]), _i(r["writes"])]
        for r in rows
    ]  # fmt: skip
    cols = [("path", "left")] + [
        (c, "right") for c in ("page", "offset", "accesses", "reads", "writes")
    ]
    return _table(title, cols, body)


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
            + (f" uuid={ev['uuid']}" if ev.get("uuid") else "")
        )
    elif kind == schema.PATH:
        gen = f" (gen {ev['gen']})" if isinstance(ev.get("gen"), int) else ""
        body = f"path       ino {ino}{gen} is {ev.get('path')}"
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
        h = hit_ratio(ev)
        ratio = f"hit {100 * h:.1f}%" if h is not None else "hit -"
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

    fo = sub.add_parser(
        "follow",
        help="a live view, one line per event (all sessions)",
        description="Print each event as it is appended, as tail -F: a log that does not "
        "exist yet is waited for, a log replaced by a new one is read from its start.",
    )
    fo.add_argument("--from-start", action="store_true", help="show the log from its start")
    fo.add_argument("--ev", action="append", metavar="EV[,EV]", help="only these event types")
    fo.add_argument("--raw", action="store_true", help="print the JSON lines as they are")
    fo.add_argument("--until-unmount", action="store_true", help="stop after an unmount event")
    fo.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="stop after this long with no page access (no access, migrate, cow, writeback "
        "or fault event, and the counters' accesses unchanged)",
    )

    e = sub.add_parser(
        "export",
        parents=[common],
        help="flat CSV, or Parquet (one row per event, typed columns)",
        description="--csv (the default): one row per event, one per page of an access event. "
        "--parquet: the DataFrame of nvramfs.events.load() (docs/EVENTS.md), needs -o FILE.",
    )
    fmt = e.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV (the default)")
    fmt.add_argument("--parquet", action="store_true", help="Parquet, to -o FILE")
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
    if action in ("filter", "export") and not getattr(args, "parquet", False):
        return _records(args)
    if action == "export":
        return _parquet(args)
    from nvramfs.events import analysis

    if action == "summary":
        summary, scan = analysis.summarize_log(
            args.logfile, args.session, bucket=args.bucket, top=args.top
        )
        _check_read(args.logfile, scan.report, scan.sessions.infos, summary.get("note"))
        if args.json:
            json.dump(summary, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(format_summary(summary))
        return 0
    scan = analysis.Scan.of_log(args.logfile)
    chosen, note = analysis.choose(scan.sessions.infos, args.session)
    _check_read(args.logfile, scan.report, scan.sessions.infos, note)
    if action == "top":
        return _top(args, scan, chosen)
    if action == "profile":
        return _profile(args, scan, chosen)
    raise UsageError(f"unknown action {action}")


def _check_read(logfile: str, report: ReadReport, infos: list[Any], note: str | None) -> None:
    """Say what was skipped; a log with nothing readable is an error (exit 1)."""
    _say_skipped(logfile, report)
    if not infos:
        raise NvramfsError(
            f"{logfile}: the event log is empty"
            if report.lines == 0
            else f"{logfile}: no readable events"
        )
    if note:
        print(f"nvramfs log: {logfile}: {note}", file=sys.stderr)


def _records(args: argparse.Namespace) -> int:
    events, report = load_events(args.logfile)
    sessions = pick_sessions(split_sessions(events), args.session)
    _check_read(args.logfile, report, sessions, None)
    if args.action == "filter":
        return _filter(args, sessions)
    with _output(args.output) as out:
        export_csv(sessions, out)
    return 0


def _parquet(args: argparse.Namespace) -> int:
    from nvramfs.events import analysis, loader

    if not args.output or args.output == "-":
        raise UsageError("export --parquet: give the output file with -o FILE")
    report = ReadReport()
    df = loader.load(args.logfile, report)
    infos = sorted(set(df["session"].drop_nulls().to_list())) if df.height else []
    _check_read(args.logfile, report, infos, None)
    if args.session != "all":
        scan_infos = [analysis.SessionInfo(n) for n in infos]
        keep = [s.number for s in analysis.pick(scan_infos, args.session)]
        df = df.filter(df["session"].is_in(keep))
    try:
        df.write_parquet(args.output, use_pyarrow=True)
    except OSError as exc:
        raise NvramfsError(f"{args.output}: {exc.strerror or exc}") from None
    print(f"{df.height} events written to {args.output}", file=sys.stderr)
    return 0


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


def _top(args: argparse.Namespace, scan: Any, chosen: list[Any]) -> int:
    from nvramfs.events.analysis import hottest_files, hottest_pages

    files = hottest_files(scan, chosen, args.n, args.by) if args.what != "pages" else []
    pages = hottest_pages(scan, chosen, args.n, args.by) if args.what != "files" else []
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


# Events that mean pages were touched: what `--idle-exit` waits for the absence of.
_ACTIVITY = (schema.ACCESS, schema.MIGRATE, schema.COW, schema.WRITEBACK, schema.FAULT)


def _accesses(ev: dict[str, Any]) -> int | None:
    a = ev.get("accesses")
    if not isinstance(a, dict):
        return None
    return sum(v for v in a.values() if isinstance(v, int))


def _follow(args: argparse.Namespace) -> int:
    """tail -F for events: wait for the log, print each event, stop when asked."""
    logfile = os.fspath(args.logfile)
    evs = _split_list(args.ev) or None
    state: dict[str, Any] = {"unmounted": False, "last": time.monotonic(), "acc": None}

    def stop() -> bool:
        if args.until_unmount and state["unmounted"]:
            return True
        return args.idle_exit is not None and time.monotonic() - state["last"] > args.idle_exit

    try:
        if not _wait_for(logfile, stop):
            return 0
        path = check_log(logfile)
        report = ReadReport()
        names: dict[int, str] = {}
        if not args.from_start:
            # Name the files of what follows from the path events already written.
            for ev in read_events(path, report=ReadReport()):
                if ev["ev"] == schema.PATH and isinstance(ev.get("ino"), int):
                    names[ev["ino"]] = str(ev.get("path"))
        for ev in read_events(
            path, follow=True, from_start=args.from_start, report=report, stop=stop
        ):
            kind = ev["ev"]
            if kind in _ACTIVITY:
                state["last"] = time.monotonic()
            elif kind == schema.COUNTERS:
                n = _accesses(ev)
                if n is not None and state["acc"] is not None and n > state["acc"]:
                    state["last"] = time.monotonic()
                state["acc"] = n
            elif kind == schema.MOUNT:
                state["acc"] = None
                state["last"] = time.monotonic()
            if kind == schema.PATH and isinstance(ev.get("ino"), int):
                names[ev["ino"]] = str(ev.get("path"))
            if kind == schema.UNMOUNT:
                state["unmounted"] = True
            if evs and kind not in evs:
                continue
            if args.raw:
                print(json.dumps(ev, separators=(",", ":")), flush=True)
            else:
                print(format_event(ev, names), flush=True)
        _say_skipped(args.logfile, report)
    except KeyboardInterrupt:
        pass  # the normal way to stop following
    return 0


def _wait_for(logfile: str, stop: Any, poll: float = 0.2) -> bool:
    """Wait until `logfile` exists (tail -F); False if `stop()` came first.

    Says once on stderr that it waits. A directory in the way, or a parent
    that cannot exist, is the usual one-line error.
    """
    said = False
    while not os.path.exists(logfile):
        parent = os.path.dirname(os.path.abspath(logfile))
        if not os.path.isdir(parent):
            raise NvramfsError(f"{logfile}: no such event log (and no directory {parent})")
        if not said:
            print(f"nvramfs log: {logfile}: waiting for the log to appear", file=sys.stderr)
            said = True
        if stop():
            return False
        time.sleep(poll)
    return True


def _profile(args: argparse.Namespace, scan: Any, chosen: list[Any]) -> int:
    from nvramfs.events.analysis import profile_lines

    lines, notes = profile_lines(
        scan, chosen, reads_only=args.reads, min_count=args.min_count, top=args.top
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
