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

from nvramfs.errors import NvramfsError
from nvramfs.events import schema
from nvramfs.events.reader import ReadReport

MAX_ROWS = 400  # page rows of a heatmap
MAX_COLS = 300  # time columns
MAX_MARKS = 400  # more migration/COW events than this are drawn as a density


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
    report = ReadReport()
    view = load_view(args.logfile, args.session, report)
    text = report.describe()
    if text:
        print(f"nvramfs plot: {args.logfile}: {text}", file=sys.stderr)
    if view is None:
        raise NvramfsError(
            f"{args.logfile}: the event log is empty"
            if report.lines == 0
            else f"{args.logfile}: no readable events"
        )
    if view.note:
        print(f"nvramfs plot: {args.logfile}: {view.note}", file=sys.stderr)
    outdir = Path(args.output) if args.output else default_outdir(args.logfile)
    for path in make_plots(view, outdir, per_file=args.per_file, dpi=args.dpi):
        print(path)
    return 0


class View:
    """The rows of the chosen sessions of one image, on the time axis of the result."""

    def __init__(self, df: Any, chosen: list[Any], note: str | None) -> None:
        from nvramfs.events.analysis import time_axis

        self.df = df
        self.sessions = chosen
        self.note = note
        self.time, self.duration = time_axis(chosen)
        # Where each session starts on that axis (0 for a session on its own clock).
        self.offset = {s.number: (s.offset if self.time == "t_log" else 0.0) for s in chosen}


def load_view(logfile: str | os.PathLike[str], which: str, report: ReadReport) -> View | None:
    """Read the log once (the engine's loader) and keep the sessions `which` names."""
    import polars as pl

    from nvramfs.events.analysis import Sessions, annotate, choose
    from nvramfs.events.loader import iter_frames

    frames = list(iter_frames(logfile, report))
    if not frames:
        return None
    sessions = Sessions()
    df = annotate(pl.concat(frames), sessions)
    chosen, note = choose(sessions.infos, which)
    df = df.filter(pl.col("session").is_in([s.number for s in chosen]))
    return View(df, chosen, note)


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
    view: View,
    outdir: str | os.PathLike[str],
    *,
    per_file: int = 0,
    dpi: int = 110,
    spans: list[tuple[str, float, float]] | None = None,
) -> list[Path]:
    """Draw every picture of the view into `outdir` (created); returns the paths written.

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
    files = _files(view)
    written = [_heatmap(plt, view, files, out / "heatmap.png", None, dpi, spans)]
    hot = sorted(files, key=lambda f: (-f["accesses"], f["name"], f["ino"]))
    for i, f in enumerate(hot[:per_file] if per_file > 0 else [], 1):
        if not f["accesses"]:
            break
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f["name"].strip("/"))[:60] or f"ino{f['ino']}"
        written.append(
            _heatmap(plt, view, files, out / f"heatmap-{i}-{slug}.png", f["key"], dpi, spans)
        )
    written.append(_residency(plt, view, out / "residency.png", dpi, spans))
    written += _device_plots(plt, view, out, dpi)
    return written


_KIND_COLOURS = {
    "hit": "#4c9be8",
    "xip_read": "#7fc97f",
    "fault": "#bbbbbb",
    "promote": "#1b7837",
    "cow": "#d6604d",
    "demote": "#8073ac",
    "writeback": "#f4a742",
    "erase": "#8c2d04",
}


def _device_plots(plt: Any, view: View, out: Path, dpi: int) -> list[Path]:
    """The device model's pictures (docs/COSTS.md): modelled time by kind per phase, and
    the wear of the image's sectors. None when no session was priced."""
    from nvramfs.events.analysis import choose_bucket, device_summary

    d = device_summary(view.sessions, choose_bucket(view.duration))
    if d is None:
        return []
    written = []
    phases = [p for p in d["phases"] if p["modelled_ns_total"]]
    if phases:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(phases) + 3), 4.2))
        labels = [p["phase"] if len(view.sessions) == 1 else f"{p['session']}:{p['phase']}"
                  for p in phases]  # fmt: skip
        x = np.arange(len(phases))
        bottom = np.zeros(len(phases))
        peak = max(p["modelled_ns_total"] for p in phases)
        unit, div = ("s", 1e9) if peak >= 1e9 else ("ms", 1e6) if peak >= 1e6 else ("µs", 1e3)
        for kind, colour in _KIND_COLOURS.items():
            v = np.array([p["modelled_ns"].get(kind, 0) for p in phases], dtype=float) / div
            if v.any():
                ax.bar(x, v, bottom=bottom, color=colour, label=kind, width=0.7)
                bottom += v
        for xi, p in zip(x, phases, strict=True):
            ax.text(xi, bottom[xi], f"{bottom[xi]:.3g} {unit}\nwall {p['wall_s']:.3g} s",
                    ha="center", va="bottom", fontsize=8, color="#333333")  # fmt: skip
        ax.set_xticks(x, labels, rotation=20 if len(phases) > 4 else 0, ha="right"
                      if len(phases) > 4 else "center")  # fmt: skip
        ax.set_ylabel(f"modelled time ({unit})")
        ax.set_ylim(0, max(bottom.max() * 1.2, 1e-9))
        ax.set_title(f"Modelled time by kind per phase, medium {d['medium']}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        fig.tight_layout()
        path = out / "modelled.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
    wear = next((s.wear for s in reversed(view.sessions) if s.wear), None)
    if wear and wear.get("erase_bins") is not None:
        written.append(_wear(plt, wear, out / "wear.png", dpi))
    return written


def _wear(plt: Any, wear: dict[str, Any], path: Path, dpi: int) -> Path:
    """Erases and programs per sector of the device, binned, as two heatmaps."""
    per_bin = int(wear.get("sectors_per_bin") or 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, key, title, cmap in (
        (axes[0], "erase_bins", "erases", "Reds"),
        (axes[1], "program_bins", "programs", "Blues"),
    ):
        v = np.asarray(wear.get(key) or [0], dtype=float)
        cols = int(np.ceil(np.sqrt(len(v) * 2)))
        rows = int(np.ceil(len(v) / cols))
        grid = np.full(rows * cols, np.nan)
        grid[: len(v)] = v
        im = ax.imshow(grid.reshape(rows, cols), cmap=cmap, aspect="auto",
                       interpolation="nearest", vmin=0, vmax=max(1.0, float(np.nanmax(grid))))  # fmt: skip
        ax.set_facecolor("#eeeeee")
        unit = "sector" if per_bin == 1 else f"{per_bin} sectors"
        ax.set_title(f"{title} per {unit} (max {int(v.max())})", fontsize=10)
        ax.set_xlabel(f"one cell = {unit}, in block order, row by row (grey: past the end)")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    wa = wear.get("write_amplification") or {}
    life = wear.get("lifetime_years")
    n = int(wear.get("erases") or 0)
    sub = [f"{n} erase{'' if n == 1 else 's'}"]
    if wa.get("programmed") is not None:
        sub.append(f"programmed {wa['programmed']:.2f}x, erased {wa['erased']:.2f}x written back")
    if life is not None:
        sub.append(f"lifetime at this rate {life:.3g} years")
    fig.suptitle(f"NVRAM wear, medium {wear.get('medium')}: " + "; ".join(sub), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


_KEY = ["image_uuid", "ino", "file_gen", "fkey"]


def _files(view: View) -> list[dict[str, Any]]:
    """Every file the view touches (by identity): name, page extent, accesses."""
    import polars as pl

    df = view.df
    acc = df.filter((pl.col("ev") == schema.ACCESS) & pl.col("ino").is_not_null())
    ext = (
        acc.select(
            *_KEY,
            pl.col("pages").list.max().alias("top"),
            (
                pl.col("reads").list.sum().fill_null(0) + pl.col("writes").list.sum().fill_null(0)
            ).alias("n"),
        )
        .group_by(_KEY)
        .agg(pl.col("top").max(), pl.col("n").sum())
    )
    moves = (
        df.filter(
            pl.col("ev").is_in([schema.MIGRATE, schema.COW])
            & pl.col("ino").is_not_null()
            & pl.col("index").is_not_null()
        )
        .group_by(_KEY)
        .agg(pl.col("index").max().alias("top"), pl.lit(0).cast(pl.Int64).alias("n"))
    )
    both = (
        pl.concat([ext, moves], how="vertical_relaxed")
        .group_by(_KEY)
        .agg(pl.col("top").max(), pl.col("n").sum())
    )
    names = (
        df.filter(pl.col("file_path").is_not_null()).group_by(_KEY).agg(pl.col("file_path").last())
    )
    both = both.join(names, on=_KEY, how="left", nulls_equal=True)
    files = []
    for r in both.iter_rows(named=True):
        if r["top"] is None:
            continue
        key = tuple(r[k] for k in _KEY)
        files.append(
            {
                "key": key,
                "ino": r["ino"],
                "name": r["file_path"] or f"<ino {r['ino']}>",
                "npages": int(r["top"]) + 1,
                "accesses": int(r["n"] or 0),
            }
        )
    files.sort(key=lambda f: (f["name"], f["ino"], str(f["key"])))
    return files


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


def _event_times(view: View, df: Any) -> Any:
    """The time of each row on the view's axis."""
    import polars as pl

    return pl.col(view.time) if view.time in df.columns else pl.col("t")


def _heatmap(
    plt: Any,
    view: View,
    files: list[dict[str, Any]],
    path: Path,
    only: tuple[Any, ...] | None,
    dpi: int,
    spans: list[tuple[str, float, float]],
) -> Path:
    import polars as pl
    from matplotlib.colors import LogNorm

    layout = [f for f in files if only is None or f["key"] == only]
    bases: dict[tuple[Any, ...], int] = {}
    total = 0
    for f in layout:
        bases[f["key"]] = total
        total += f["npages"]
    duration = max(view.duration, 1.0)
    width = max(1.0, duration / MAX_COLS)
    ncols = max(1, math.ceil(duration / width))
    nrows = max(1, min(total, MAX_ROWS))
    per_row = max(1, math.ceil(total / nrows)) if total else 1
    nrows = max(1, math.ceil(total / per_row)) if total else 1
    grid = np.zeros((nrows, ncols), dtype=np.float64)
    base_df = pl.DataFrame(
        {k: [key[i] for key in bases] for i, k in enumerate(_KEY)}
        | {"_base": list(bases.values())},
        schema={
            "image_uuid": pl.String,
            "ino": pl.Int64,
            "file_gen": pl.Int64,
            "fkey": pl.Int32,
            "_base": pl.Int64,
        },
    )
    df = view.df.join(base_df, on=_KEY, how="inner", nulls_equal=True)
    shift = pl.col(view.time) - pl.col("t")  # the session's offset on the axis
    acc = df.filter(pl.col("ev") == schema.ACCESS)
    if acc.height:
        cells = (
            acc.select(
                "_base",
                ((pl.col("t0").fill_null(pl.col("t")) + pl.col("t1").fill_null(pl.col("t"))) / 2
                 + shift).alias("tm"),
                "pages",
                (pl.col("reads").fill_null(pl.col("pages").list.eval(pl.element() * 0)))
                .alias("r"),
                (pl.col("writes").fill_null(pl.col("pages").list.eval(pl.element() * 0)))
                .alias("w"),
            )
            .explode("pages", "r", "w")
            .drop_nulls("pages")
        )  # fmt: skip
        rows = np.minimum((cells["_base"] + cells["pages"]).to_numpy() // per_row, nrows - 1)
        cols = np.clip((cells["tm"].to_numpy() // width).astype(np.int64), 0, ncols - 1)
        np.add.at(grid, (rows, cols), (cells["r"] + cells["w"]).to_numpy().astype(np.float64))
    marks: dict[str, np.ndarray] = {}
    mv = df.filter(
        pl.col("ev").is_in([schema.MIGRATE, schema.COW]) & pl.col("index").is_not_null()
    ).select(
        pl.when(pl.col("ev") == schema.COW)
        .then(pl.lit("cow"))
        .when(pl.col("to") == schema.PAGECACHE)
        .then(pl.lit("promote"))
        .otherwise(pl.lit("demote"))
        .alias("what"),
        pl.col(view.time).alias("tm"),
        (pl.col("_base") + pl.col("index")).alias("y"),
    )
    for what in ("promote", "demote", "cow"):
        sel = mv.filter(pl.col("what") == what)
        if sel.height:
            marks[what] = sel.select("tm", "y").to_numpy().astype(np.float64)

    fig, ax = plt.subplots(figsize=(11, 6.5))
    title = "page accesses over time"
    if only is not None and layout:
        title += f": {layout[0]['name']}"
    ax.set_title(title)
    if grid.max() > 0:
        ax.set_facecolor("#111111")
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
        ax.set_facecolor("#f4f4f4")
        what = "no access events in the log" if not files else "no accesses in this file"
        if view.sessions and len(view.sessions) == 1:
            what += f" (session {view.sessions[0].number})"
        ax.text(0.5, 0.5, what, ha="center", va="center", fontsize=13, color="#222222",
                transform=ax.transAxes)  # fmt: skip
    style = {
        "promote": ("^", "#00e5ff", "promote xip→pagecache"),
        "demote": ("v", "#ff4d4d", "demote pagecache→xip"),
        "cow": ("x", "#ff66ff", "cow"),
    }
    handles = []
    for kind, pts in marks.items():
        marker, color, label = style[kind]
        label = f"{label} ({len(pts):,})"
        if len(pts) <= MAX_MARKS:
            handles.append(
                ax.scatter(
                    pts[:, 0],
                    pts[:, 1] + 0.5,
                    s=12,
                    marker=marker,
                    c=color,
                    linewidths=0.8,
                    label=label,
                    alpha=0.9,
                )  # fmt: skip
            )
            continue
        # Many marks: their density on a coarse grid (about 40 × 30 cells), drawn as
        # filled contours over the accesses, so a write phase is a shape, not a wall.
        handles.append(_density(ax, pts, color, label, ncols * width, max(1, nrows * per_row)))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    # File boundaries and names.
    if len(layout) > 1:
        for f in layout[1:]:
            ax.axhline(bases[f["key"]], color="#cccccc", lw=0.5, alpha=0.6)
    if only is None:
        big = sorted(layout, key=lambda f: -f["npages"])[:25]
        ticks = sorted(big, key=lambda f: bases[f["key"]])
        ax.set_yticks([bases[f["key"]] + f["npages"] / 2 for f in ticks])
        ax.set_yticklabels([_short(f["name"]) for f in ticks], fontsize=7)
        ax.set_ylabel(
            f"page ({total:,} pages of {len(layout)} file{'s' if len(layout) != 1 else ''})"
        )
    else:
        ax.set_ylabel("page index")
        if layout:
            ax.set_yticks(np.linspace(0, total, 6).round())
            ax.set_yticklabels([str(int(x)) for x in np.linspace(0, total, 6).round()])
    for s in view.sessions[1:]:
        ax.axvline(view.offset[s.number], color="orange", ls="--", lw=0.8)
    for name, t0, t1 in spans:
        ax.axvline(t0, color="white", ls=":", lw=0.7, alpha=0.8)
        ax.text((t0 + t1) / 2, 1.01, name, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=7, color="#444444", clip_on=False)  # fmt: skip
    if spans:
        ax.set_title(title, pad=14)
    ax.set_xlim(0, ncols * width)
    ax.set_ylim(0, max(1, nrows * per_row))
    ax.set_xlabel(_xlabel(view))
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _density(ax: Any, pts: np.ndarray, color: str, label: str, xmax: float, ymax: float) -> Any:
    """Draw where `pts` (time, page) are dense as three filled contour bands; the legend
    handle says what a band means (events per coarse cell)."""
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    nx, ny = 40, 30
    dx, dy = xmax / nx, ymax / ny
    dens = np.zeros((ny, nx))
    c = np.clip((pts[:, 0] / dx).astype(np.int64), 0, nx - 1)
    r = np.clip((pts[:, 1] / dy).astype(np.int64), 0, ny - 1)
    np.add.at(dens, (r, c), 1.0)
    # A light blur (3×3 box) so that bands are shapes, not single cells.
    pad = np.pad(dens, 1)
    dens = sum(pad[i : i + ny, j : j + nx] for i in range(3) for j in range(3)) / 9.0
    top = float(dens.max())
    levels = [top * f for f in (0.1, 0.4, 0.8)] + [top * 1.01]
    base = to_rgba(color)
    colors = [(*base[:3], a) for a in (0.18, 0.32, 0.5)]
    xs = (np.arange(nx) + 0.5) * dx
    ys = (np.arange(ny) + 0.5) * dy
    ax.contourf(xs, ys, dens, levels=levels, colors=colors)
    ax.contour(xs, ys, dens, levels=levels[:1], colors=[color], linewidths=1.0)
    per = f"{dx:.3g} s × {dy:,.0f} pages"
    return Patch(
        facecolor=colors[1], edgecolor=color,
        label=f"{label}: density, bands at 10/40/80% of {top:,.0f} per {per}",
    )  # fmt: skip


def _xlabel(view: View) -> str:
    if len(view.sessions) == 1:
        return f"seconds since the mount (session {view.sessions[0].number})"
    return "seconds since the first mount"


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def hit_intervals(view: View) -> list[tuple[float, float, float]]:
    """(from, to, percent): the hit ratio of each interval between two counters snapshots
    of a session (the one definition, `analysis.hit_ratio`); an interval with no page
    access has no ratio and is left out (a gap in the plot, not the next value)."""
    from nvramfs.events.analysis import hit_ratio

    out = []
    for s in view.sessions:
        prev = None
        off = view.offset[s.number]
        for c in s.counters:
            if prev is not None:
                h = hit_ratio(c, prev)
                if h is not None:
                    out.append(
                        (off + float(prev.get("t", 0.0)), off + float(c.get("t", 0.0)), 100.0 * h)
                    )
            prev = c
    return out


def _residency(
    plt: Any, view: View, path: Path, dpi: int, spans: list[tuple[str, float, float]]
) -> Path:
    import polars as pl

    ts, used, dirty, budget = [], [], [], []
    for s in view.sessions:
        off = view.offset[s.number]
        for c in s.counters:
            ts.append(off + float(c.get("t", 0.0)))
            used.append(c.get("frames_used", 0) or 0)
            dirty.append(c.get("dirty", 0) or 0)
            budget.append(c.get("dram_pages", 0) or 0)
    hit = hit_intervals(view)
    duration = max(view.duration, 1.0)
    width = max(1.0, duration / MAX_COLS)
    nb = max(1, math.ceil(duration / width))
    rates = {k: np.zeros(nb) for k in ("promote", "demote", "cow", "writeback")}
    mv = view.df.filter(pl.col("ev").is_in([schema.MIGRATE, schema.COW, schema.WRITEBACK]))
    if mv.height:
        kinds = mv.select(
            pl.when(pl.col("ev") == schema.COW)
            .then(pl.lit("cow"))
            .when(pl.col("ev") == schema.WRITEBACK)
            .then(pl.lit("writeback"))
            .when(pl.col("to") == schema.PAGECACHE)
            .then(pl.lit("promote"))
            .otherwise(pl.lit("demote"))
            .alias("k"),
            pl.col(view.time).alias("tm"),
        )
        for k in rates:
            tm = kinds.filter(pl.col("k") == k)["tm"].to_numpy()
            if len(tm):
                idx = np.clip((tm // width).astype(np.int64), 0, nb - 1)
                np.add.at(rates[k], idx, 1.0)
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
        # Each interval's ratio over that interval only: an interval with no
        # access has no ratio, and the line breaks there.
        h = np.asarray(hit)
        ax3.hlines(h[:, 2], h[:, 0], h[:, 1], color="tab:purple", lw=1.6)
        ax3.plot((h[:, 0] + h[:, 1]) / 2, h[:, 2], "o", color="tab:purple", ms=2)
    else:
        ax3.text(0.5, 0.5, "no accesses counted", ha="center", va="center", transform=ax3.transAxes)
    ax3.axhline(100, color="#999999", lw=0.6, ls=":")
    ax3.set_ylim(-4, 108)  # 0% and 100% stay clear of the borders
    ax3.set_yticks([0, 25, 50, 75, 100])
    ax3.set_ylabel("hit ratio %")
    ax3.set_xlabel(_xlabel(view))
    for ax in (ax1, ax2, ax3):
        for s in view.sessions[1:]:
            ax.axvline(view.offset[s.number], color="orange", ls="--", lw=0.8)
        _draw_spans(ax, spans, label=ax is ax1)
    if spans:
        ax1.set_title("pagecache residency against the DRAM budget", pad=14)
    ax3.set_xlim(0, nb * width)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
