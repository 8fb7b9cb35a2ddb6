"""`nvramfs plot LOGFILE [-o DIR]`: pictures of what the memory manager did.

    heatmap.png        page accesses, page × time, every accessed file on one
                       page axis (file boundaries drawn, files named), with
                       promotions, demotions and COWs marked where they happened
    heatmap-N-NAME.png the same for each of the --per-file hottest files
    residency.png      pagecache frames in use and dirty against the DRAM
                       budget, migrations per second, and the pagecache hit
                       ratio per interval (from `counters` and `migrate` events)

matplotlib is imported only here and only when plotting (Agg backend, no
display needed); without it the command says how to get it in one line.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from nvramfs.cli.log import (
    Session,
    file_access,
    hottest_files,
    name_of,
    path_names,
    pick_sessions,
    split_sessions,
)
from nvramfs.errors import NvramfsError
from nvramfs.events import schema
from nvramfs.events.reader import load_events

MAX_ROWS = 400  # page rows of a heatmap
MAX_COLS = 300  # time columns
MAX_MARKS = 20000  # migration/COW marks drawn per heatmap


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plot",
        help="draw PNGs from an event log: access heatmap, pagecache residency",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("logfile", metavar="LOGFILE", help="the event log (IMAGE.events.jsonl)")
    p.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="directory for the PNGs (default: LOG's name with .plots, beside it)",
    )
    p.add_argument(
        "--per-file",
        type=int,
        default=0,
        metavar="N",
        help="also one heatmap for each of the N hottest files (0)",
    )
    p.add_argument("--session", default="all", metavar="N|last|all", help="(default all)")
    p.add_argument("--dpi", type=int, default=110, help="resolution (110)")
    p.set_defaults(func=main)
    return p


def default_outdir(logfile: str) -> Path:
    base = logfile[: -len(".events.jsonl")] if logfile.endswith(".events.jsonl") else logfile
    return Path(base + ".plots")


def main(args: argparse.Namespace) -> int:
    events, report = load_events(args.logfile)
    text = report.describe()
    if text:
        print(f"nvramfs plot: {args.logfile}: {text}", file=sys.stderr)
    if not events:
        raise NvramfsError(
            f"{args.logfile}: the event log is empty"
            if report.lines == 0
            else f"{args.logfile}: no readable events"
        )
    sessions = pick_sessions(split_sessions(events), args.session)
    outdir = Path(args.output) if args.output else default_outdir(args.logfile)
    for path in make_plots(sessions, outdir, per_file=args.per_file, dpi=args.dpi):
        print(path)
    return 0


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise NvramfsError(
            "plotting needs matplotlib, which is not installed: "
            "pip install 'nvramfs[plot]' (make demo and make test install it)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def make_plots(
    sessions: list[Session],
    outdir: str | os.PathLike[str],
    *,
    per_file: int = 0,
    dpi: int = 110,
    spans: list[tuple[str, float, float]] | None = None,
) -> list[Path]:
    """Draw every picture of the log into `outdir` (created); returns the paths written.

    `spans` are named time ranges (seconds on the plots' time axis), e.g. the
    demo's fio phases, drawn as labelled bands.
    """
    plt = _pyplot()
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NvramfsError(f"{out}: {exc.strerror}") from None
    spans = spans or []
    written = []
    written.append(_heatmap(plt, sessions, out / "heatmap.png", None, dpi, spans))
    for i, f in enumerate(hottest_files(sessions, per_file) if per_file > 0 else [], 1):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f["path"].strip("/"))[:60] or f"ino{f['ino']}"
        written.append(
            _heatmap(plt, sessions, out / f"heatmap-{i}-{slug}.png", f["ino"], dpi, spans)
        )
    written.append(_residency(plt, sessions, out / "residency.png", dpi, spans))
    return written


def _draw_spans(ax: Any, spans: list[tuple[str, float, float]], *, label: bool) -> None:
    """Named time ranges as alternating bands, names along the top."""
    for k, (name, t0, t1) in enumerate(spans):
        ax.axvspan(t0, t1, color="#888888" if k % 2 == 0 else "#bbbbbb", alpha=0.12, lw=0)
        if label:
            ax.text(
                (t0 + t1) / 2,
                1.01,
                name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                color="#444444",
                clip_on=False,
            )


def _duration(sessions: list[Session]) -> float:
    return max((s.offset + s.duration for s in sessions), default=0.0)


def _layout(sessions: list[Session], only: int | None) -> tuple[list[tuple[int, int, int]], int]:
    """Files on one page axis: [(ino, base, npages)] in path order, and the total pages."""
    extent: dict[int, int] = {}
    for ino, f in file_access(sessions).items():
        if f["pages"]:
            extent[ino] = max(f["pages"]) + 1
    for s in sessions:
        for ev in s.events:
            if ev["ev"] in (schema.MIGRATE, schema.COW) and isinstance(ev.get("index"), int):
                ino = int(ev.get("ino", 0))
                extent[ino] = max(extent.get(ino, 0), ev["index"] + 1)
    names = path_names(sessions)
    inos = sorted(extent, key=lambda i: (name_of(names, i), i))
    if only is not None:
        inos = [i for i in inos if i == only]
    layout = []
    base = 0
    for ino in inos:
        layout.append((ino, base, extent[ino]))
        base += extent[ino]
    return layout, base


def _heatmap(
    plt: Any,
    sessions: list[Session],
    path: Path,
    only: int | None,
    dpi: int,
    spans: list[tuple[str, float, float]],
) -> Path:
    from matplotlib.colors import LogNorm

    names = path_names(sessions)
    layout, total = _layout(sessions, only)
    duration = max(_duration(sessions), 1.0)
    bases = {ino: base for ino, base, _ in layout}
    width = max(1.0, duration / MAX_COLS)
    ncols = max(1, math.ceil(duration / width))
    nrows = max(1, min(total, MAX_ROWS))
    per_row = max(1, math.ceil(total / nrows)) if total else 1
    nrows = max(1, math.ceil(total / per_row)) if total else 1
    grid = np.zeros((nrows, ncols), dtype=np.float64)
    marks: dict[str, list[tuple[float, int]]] = {"promote": [], "demote": [], "cow": []}
    for s in sessions:
        for ev in s.events:
            kind = ev["ev"]
            ino = ev.get("ino")
            if not isinstance(ino, int) or ino not in bases:
                continue
            if kind == schema.ACCESS:
                pages = np.asarray(ev.get("pages") or [], dtype=np.int64)
                if not len(pages):
                    continue
                counts = np.asarray(ev.get("reads") or np.zeros(len(pages)), dtype=np.float64)
                counts = counts + np.asarray(
                    ev.get("writes") or np.zeros(len(pages)), dtype=np.float64
                )
                t0 = ev.get("t0", ev.get("t", 0.0))
                t1 = ev.get("t1", ev.get("t", 0.0))
                t = s.offset + (float(t0) + float(t1)) / 2
                col = min(ncols - 1, max(0, int(t // width)))
                rows = np.minimum((bases[ino] + pages) // per_row, nrows - 1)
                np.add.at(grid, (rows, col), counts[: len(rows)])
            elif kind == schema.MIGRATE and isinstance(ev.get("index"), int):
                d = "promote" if ev.get("to") == schema.PAGECACHE else "demote"
                marks[d].append((s.abs_t(ev), bases[ino] + ev["index"]))
            elif kind == schema.COW and isinstance(ev.get("index"), int):
                marks["cow"].append((s.abs_t(ev), bases[ino] + ev["index"]))

    fig, ax = plt.subplots(figsize=(11, 6.5))
    title = "page accesses over time"
    if only is not None:
        title += f": {name_of(names, only)}"
    ax.set_title(title)
    if grid.max() > 0:
        img = ax.imshow(
            np.where(grid > 0, grid, np.nan),
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            extent=(0, ncols * width, 0, nrows * per_row),
            cmap="viridis",
            norm=LogNorm(vmin=1, vmax=max(1.0, grid.max())),
        )
        cb = fig.colorbar(img, ax=ax, pad=0.01)
        cb.set_label(f"accesses per {width:g} s × {per_row} page{'s' if per_row > 1 else ''}")
    else:
        ax.text(0.5, 0.5, "no access events in the log", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    ax.set_facecolor("#111111")
    style = {
        "promote": ("^", "#00e5ff", "promote xip→pagecache"),
        "demote": ("v", "#ff4d4d", "demote pagecache→xip"),
        "cow": ("x", "#ffffff", "cow"),
    }
    rng = np.random.default_rng(0)
    for kind, pts in marks.items():
        if not pts:
            continue
        arr = np.asarray(pts, dtype=np.float64)
        label = f"{style[kind][2]} ({len(arr):,})"
        if len(arr) > MAX_MARKS:
            arr = arr[rng.choice(len(arr), MAX_MARKS, replace=False)]
            label += ", sampled"
        ax.scatter(arr[:, 0], arr[:, 1] + 0.5, s=9, marker=style[kind][0], c=style[kind][1],
                   linewidths=0.7, label=label, alpha=0.8)  # fmt: skip
    if any(marks.values()):
        ax.legend(loc="upper right", fontsize=8, framealpha=0.7)
    # File boundaries and names.
    if len(layout) > 1:
        for _, base, _ in layout[1:]:
            ax.axhline(base, color="#cccccc", lw=0.5, alpha=0.6)
    big = sorted(layout, key=lambda x: -x[2])[:25]
    ticks = sorted(big, key=lambda x: x[1])
    ax.set_yticks([b + n / 2 for _, b, n in ticks])
    ax.set_yticklabels([_short(name_of(names, i)) for i, _, _ in ticks], fontsize=7)
    ax.set_ylabel(
        f"page ({total:,} pages of {len(layout)} file{'s' if len(layout) != 1 else ''})"
        if only is None
        else "page index"
    )
    if only is not None and layout:
        ax.set_yticks(np.linspace(0, total, 6).round())
        ax.set_yticklabels([str(int(x)) for x in np.linspace(0, total, 6).round()])
    for s in sessions[1:]:
        ax.axvline(s.offset, color="orange", ls="--", lw=0.8)
    for name, t0, t1 in spans:
        ax.axvline(t0, color="white", ls=":", lw=0.7, alpha=0.8)
        ax.text((t0 + t1) / 2, 1.01, name, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=7, color="#444444", clip_on=False)  # fmt: skip
    if spans:
        ax.set_title(title, pad=14)
    ax.set_xlim(0, ncols * width)
    ax.set_ylim(0, max(1, nrows * per_row))
    ax.set_xlabel("seconds since the (first) mount")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def _residency(
    plt: Any, sessions: list[Session], path: Path, dpi: int, spans: list[tuple[str, float, float]]
) -> Path:
    ts, used, dirty, budget, hit = [], [], [], [], []
    for s in sessions:
        prev = None
        for ev in s.events:
            if ev["ev"] != schema.COUNTERS:
                continue
            t = s.abs_t(ev)
            ts.append(t)
            used.append(ev.get("frames_used", 0) or 0)
            dirty.append(ev.get("dirty", 0) or 0)
            budget.append(ev.get("dram_pages", 0) or 0)
            f = ev.get("faults") or {}
            a = ev.get("accesses") or {}
            cur = (f.get("pagecache_hit", 0), a.get("read", 0) + a.get("write", 0))
            if prev is not None and cur[1] > prev[1]:
                hit.append((t, 100.0 * (cur[0] - prev[0]) / (cur[1] - prev[1])))
            prev = cur
    duration = max(_duration(sessions), 1.0)
    width = max(1.0, duration / MAX_COLS)
    nb = max(1, math.ceil(duration / width))
    rates = {k: np.zeros(nb) for k in ("promote", "demote", "cow", "writeback")}
    for s in sessions:
        for ev in s.events:
            kind = ev["ev"]
            if kind == schema.MIGRATE:
                key = "promote" if ev.get("to") == schema.PAGECACHE else "demote"
            elif kind == schema.COW:
                key = "cow"
            elif kind == schema.WRITEBACK:
                key = "writeback"
            else:
                continue
            rates[key][min(nb - 1, max(0, int(s.abs_t(ev) // width)))] += 1
    edges = np.arange(nb) * width
    # step() draws a value from its edge to the next: repeat the last one at the end.
    step_x = np.append(edges, nb * width)

    fig, (ax1, ax2, ax3) = plt.subplots(
        3, 1, figsize=(11, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.4]}
    )
    ax1.set_title("pagecache residency against the DRAM budget")
    if ts:
        ax1.fill_between(ts, used, step="post", alpha=0.35, color="tab:blue")
        ax1.step(ts, used, where="post", color="tab:blue", lw=1.4, label="frames in use")
        ax1.step(ts, dirty, where="post", color="tab:orange", lw=1.2, label="dirty frames")
        ax1.step(ts, budget, where="post", color="red", ls="--", lw=1.4, label="DRAM budget",
                 zorder=5)  # fmt: skip
        ax1.set_ylim(0, max(max(budget), max(used), 1) * 1.1)
        ax1.legend(loc="upper left", fontsize=8)
        sec = ax1.secondary_yaxis(
            "right", functions=(lambda x: x * 64 / 1024, lambda k: k * 1024 / 64)
        )
        sec.set_ylabel("struct page KiB")
    else:
        ax1.text(0.5, 0.5, "no counters events in the log", ha="center", va="center",
                 transform=ax1.transAxes)  # fmt: skip
    ax1.set_ylabel("frames (4 KiB)")
    ax2.bar(edges, rates["promote"] / width, width=width, align="edge", color="#00a0c0",
            label="promote /s")  # fmt: skip
    ax2.bar(edges, -rates["demote"] / width, width=width, align="edge", color="#d03030",
            label="demote /s (down)")  # fmt: skip
    for key, color in (("cow", "black"), ("writeback", "tab:green")):
        y = rates[key] / width
        ax2.step(step_x, np.append(y, y[-1]), where="post", color=color, lw=1.0,
                 label=f"{key} /s")  # fmt: skip
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set_ylabel("events per second")
    ax2.legend(loc="upper right", fontsize=8, ncols=4)
    if hit:
        h = np.asarray(hit)
        ax3.step(h[:, 0], h[:, 1], where="pre", color="tab:purple", lw=1.2)
    else:
        ax3.text(0.5, 0.5, "no accesses counted", ha="center", va="center", transform=ax3.transAxes)
    ax3.set_ylim(0, 100)
    ax3.set_ylabel("hit ratio %")
    ax3.set_xlabel("seconds since the (first) mount")
    for ax in (ax1, ax2, ax3):
        for s in sessions[1:]:
            ax.axvline(s.offset, color="orange", ls="--", lw=0.8)
        _draw_spans(ax, spans, label=ax is ax1)
    if spans:
        ax1.set_title("pagecache residency against the DRAM budget", pad=14)
    ax3.set_xlim(0, nb * width)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
