"""Figures of finished runs: the paper's candlesticks (Figures 7-9, 11) and per-epoch curves
(Figure 6). Uses matplotlib's object API (``Figure``, no pyplot, no display) and writes every
figure as ``.pdf`` and ``.png`` with the same stem, each through a temp file and ``os.replace``.

Candle (per variant, two side by side: "original" = the first neuron cycle, "max" = the test
score at the best validation epoch of the run): a box from Q1 to Q3 (numpy's default linear
percentiles), a wick from min to max, and the mean as a dot. No median line. The artists carry
gids ``box:<variant>:<original|max>``, ``wick:...`` and ``mean:...`` so tests can find them.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from pb_core.records import atomic_write_bytes

CANDLE_KINDS = (("original", "original_test", "#b0b0b0"), ("max", "max_test", "#1f77b4"))
CANDLE_OFFSET, CANDLE_WIDTH = 0.2, 0.32
PAPER_LINE_COLORS = ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def save_figure_atomic(fig: Figure, out_pdf: Path, dpi: int = 150) -> tuple[Path, Path]:
    """Save ``fig`` as ``out_pdf`` and as the ``.png`` of the same stem, each atomically."""
    out_pdf = Path(out_pdf)
    targets = (out_pdf.with_suffix(".pdf"), out_pdf.with_suffix(".png"))
    for target in targets:
        buf = io.BytesIO()
        fig.savefig(buf, format=target.suffix[1:], dpi=dpi, bbox_inches="tight")
        atomic_write_bytes(target, buf.getvalue())
    return targets


def _draw_candle(ax, x: float, values: np.ndarray, color: str, gid: str) -> None:
    lo, q1, q3, hi = np.percentile(values, [0, 25, 75, 100])
    ax.add_line(Line2D([x, x], [lo, hi], color="black", linewidth=1.0, zorder=1,
                       gid=f"wick:{gid}"))
    ax.add_patch(Rectangle((x - CANDLE_WIDTH / 2, q1), CANDLE_WIDTH, q3 - q1, facecolor=color,
                           edgecolor="black", linewidth=1.0, zorder=2, gid=f"box:{gid}"))
    ax.plot([x], [float(np.mean(values))], marker="o", color="white", markeredgecolor="black",
            markersize=5, linestyle="none", zorder=3, gid=f"mean:{gid}")


SEED_POINTS_MAX = 30  # draw each seed's point (and the lines pairing a seed's runs) up to this many seeds


def _shared_originals(df: pd.DataFrame, group_column: str, column: str) -> bool:
    """True when every group's runs of a seed start from the same first cycle (the same original score).

    Variants of one seed share their first neuron cycle (same initialisation, same data order, no dendrite
    yet), so one "original" candle stands for all of them; where they differ, each keeps its own."""
    if df.empty or df[group_column].nunique() < 2:
        return False
    spread = df.groupby("seed")[column].agg(lambda s: float(s.max() - s.min()))
    return bool((spread <= 1e-12).all())


def candlestick_figure(df: pd.DataFrame, out_pdf: Path, metric_label: str,
                       paper_means: dict[str, float] | None = None,
                       variants_order: list[str] | None = None, *, title: str | None = None,
                       columns: tuple[str, str] = ("original_test", "max_test"), group_column: str = "variant",
                       note: str | None = None, ax=None, save: bool = True) -> Figure:
    """Candlesticks of original vs max scores per group (rows of ``aggregate.load_summaries``).

    Groups are the values of ``group_column`` (the variant, or a variant-and-factors label). When every group
    of a seed shares the same original score (its first neuron cycle), one grey "first cycle" candle stands
    for all of them at the left, followed by one "max" candle per group; otherwise each group has an
    original and a max candle side by side. With at most ``SEED_POINTS_MAX`` seeds each run is a dot, and a
    thin line joins one seed's max dots from group to group (from its shared first cycle when there is one),
    so the pairing behind the statistics is visible; an unshared original is a dot without a line, since a
    line through it would zigzag between two kinds of score.

    ``variants_order`` fixes the x order of the groups; a listed group without runs keeps its slot, labelled
    n=0; groups with runs but not listed are appended. ``paper_means`` maps a label to a score drawn as a
    dashed horizontal line; ``note`` is written under the axes (e.g. profile and seeds). ``ax``: draw into
    this axes (a panel of a larger figure) instead of a new figure; ``save``: write ``out_pdf`` and its .png.
    """
    present = list(dict.fromkeys(df[group_column])) if len(df) else []
    order = list(variants_order or [])
    order += [v for v in sorted(present) if v not in order]
    if not order:
        raise ValueError("nothing to plot: no runs and no variants_order")
    (orig_name, _, orig_color), (max_name, _, max_color) = CANDLE_KINDS
    shared = _shared_originals(df, group_column, columns[0])

    if ax is None:
        width = max(4.0, (0.8 if shared else 1.3) * len(order) + (3.0 if shared else 2.0))
        fig = Figure(figsize=(width, 4.4))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    # slots: (x, group or None for the shared first cycle, kind, column, colour)
    slots = []
    if shared:
        slots.append((0, None, "original", columns[0], orig_color))
        slots += [(i + 1, g, "max", columns[1], max_color) for i, g in enumerate(order)]
    else:
        for i, g in enumerate(order):
            slots += [(i - CANDLE_OFFSET, g, "original", columns[0], orig_color),
                      (i + CANDLE_OFFSET, g, "max", columns[1], max_color)]
    seeds = sorted(df["seed"].unique()) if len(df) else []
    show_points = 0 < len(seeds) <= SEED_POINTS_MAX
    jitter = {s: (k / max(len(seeds) - 1, 1) - 0.5) * 0.18 for k, s in enumerate(seeds)}
    points: dict = {}  # seed -> [(x, y)] in slot order, for the pairing lines
    for x, group, kind, col, color in slots:
        rows = df if group is None else df[df[group_column] == group]
        if group is None:  # one value per seed: the shared first cycle
            rows = rows.drop_duplicates("seed")
        rows = rows.dropna(subset=[col])
        values = rows[col].to_numpy(dtype=float)
        gid = f"{'first_cycle' if group is None else group}:{kind}"
        if values.size:
            _draw_candle(ax, x, values, color, gid)
        if show_points and values.size:
            xs = [x + jitter[s] for s in rows["seed"]]
            ax.plot(xs, values, marker="o", markersize=3, linestyle="none", color="black", alpha=0.6,
                    zorder=4, gid=f"seeds:{gid}")
            if kind == "max" or group is None:
                for s, xp, yp in zip(rows["seed"], xs, values):
                    points.setdefault(s, []).append((xp, yp))
    if show_points:
        for s, pts in points.items():
            if len(pts) > 1:
                ax.plot(*zip(*pts), color="grey", linewidth=0.5, alpha=0.5, zorder=1, gid=f"pair:{s}")

    counts = {g: int((df[group_column] == g).sum()) if len(df) else 0 for g in order}
    if shared:
        ticks = [0, *range(1, len(order) + 1)]
        labels = [f"first cycle\n(all, n={len(seeds)})", *(f"{g}\n(n={counts[g]})" for g in order)]
    else:
        ticks = list(range(len(order)))
        labels = [f"{g}\n(n={counts[g]})" for g in order]
    handles = [
        Patch(facecolor=orig_color, edgecolor="black",
              label="original: first neuron cycle" + (" (shared by every variant of a seed)" if shared else "")),
        Patch(facecolor=max_color, edgecolor="black", label="max: test at the best validation epoch"),
        Line2D([], [], color="black", label="box Q1-Q3, wick min-max"),
        Line2D([], [], marker="o", color="white", markeredgecolor="black", linestyle="none", label="mean"),
    ]
    if show_points:
        handles.append(Line2D([], [], marker="o", markersize=3, color="black", linestyle="-", linewidth=0.5,
                              label="one seed (lines join its max scores)"))
    for j, (label, value) in enumerate((paper_means or {}).items()):
        line = ax.axhline(value, color=PAPER_LINE_COLORS[j % len(PAPER_LINE_COLORS)],
                          linestyle="--", linewidth=1.0, zorder=0, label=f"{label}: {value:g}",
                          gid=f"paper:{label}")
        handles.append(line)

    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlim(min(ticks) - 0.6, max(ticks) + 0.6)
    ax.autoscale(enable=True, axis="y")
    ax.relim()
    ax.autoscale_view(scalex=False)
    ax.set_ylabel(metric_label)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if note:
        ax.annotate(note, xy=(0, -0.22), xycoords="axes fraction", fontsize=7, va="top", gid="note")
    if save:
        save_figure_atomic(fig, out_pdf)
    return fig


EPOCH_COLUMNS = ("epoch", "cycle", "phase", "dendrites", "train", "val", "test")


def epoch_curves_figure(epochs_csv: Path, out_pdf: Path, *, metric_label: str = "score",
                        title: str | None = None, mode: str = "max") -> Figure:
    """Figure 6: train/validation/test score per epoch of one run (its ``epochs.csv``).

    Dendrite-phase epochs are shaded; a dotted vertical line marks each epoch where the
    dendrite count rises (a dendrite is added); a star marks the best validation epoch
    (``mode`` "max" or "min"). Saves ``out_pdf`` and its ``.png``; returns the figure.
    """
    epochs_csv = Path(epochs_csv)
    ep = pd.read_csv(epochs_csv)
    missing = [c for c in EPOCH_COLUMNS if c not in ep.columns]
    if missing:
        raise ValueError(f"{epochs_csv}: lacks the columns {missing}")
    if ep.empty:
        raise ValueError(f"{epochs_csv}: has no epochs")
    ep = ep.sort_values("epoch", kind="stable").reset_index(drop=True)
    x = ep["epoch"].to_numpy()

    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    # Shade each contiguous run of dendrite-phase epochs.
    is_dend = (ep["phase"] == "dendrite").to_numpy()
    shaded = False
    start = None
    for k in range(len(ep) + 1):
        inside = k < len(ep) and is_dend[k]
        if inside and start is None:
            start = k
        elif not inside and start is not None:
            ax.axvspan(x[start] - 0.5, x[k - 1] + 0.5, color="#ffe8b0", alpha=0.6, zorder=0,
                       label=None if shaded else "dendrite phase", gid=f"dendrite_phase:{x[start]}")
            shaded, start = True, None
    # A dendrite is added where the count rises between consecutive epochs.
    dend = ep["dendrites"].to_numpy()
    added = [k for k in range(1, len(ep)) if dend[k] > dend[k - 1]]
    for j, k in enumerate(added):
        ax.axvline(x[k] - 0.5, color="black", linestyle=":", linewidth=1.0, zorder=1,
                   label=None if j else "dendrite added", gid=f"dendrite_added:{x[k]}")
    for col, color in (("train", "#1f77b4"), ("val", "#ff7f0e"), ("test", "#2ca02c")):
        ax.plot(x, ep[col].to_numpy(dtype=float), color=color, linewidth=1.2,
                label={"val": "validation"}.get(col, col), gid=f"curve:{col}")
    val = ep["val"].to_numpy(dtype=float)
    if np.isfinite(val).any():
        best = int(np.nanargmax(val) if mode == "max" else np.nanargmin(val))
        ax.plot([x[best]], [val[best]], marker="*", color="#ff7f0e", markeredgecolor="black",
                markersize=11, linestyle="none", zorder=4, label="best validation", gid="best_val")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    save_figure_atomic(fig, out_pdf)
    return fig
