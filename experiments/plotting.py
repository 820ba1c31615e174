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


def candlestick_figure(df: pd.DataFrame, out_pdf: Path, metric_label: str,
                       paper_means: dict[str, float] | None = None,
                       variants_order: list[str] | None = None, *, title: str | None = None,
                       columns: tuple[str, str] = ("original_test", "max_test")) -> Figure:
    """Candlesticks of original vs max scores per variant (rows of ``aggregate.load_summaries``).

    ``variants_order`` fixes the x order; a listed variant without runs keeps its slot, labelled
    n=0; variants with runs but not listed are appended. ``paper_means`` maps a label to a score
    drawn as a dashed horizontal line. ``columns`` are the (original, max) score columns (e.g.
    ``("original_val", "max_val")`` for validation). Saves ``out_pdf`` and its ``.png``; returns
    the figure.
    """
    present = list(dict.fromkeys(df["variant"])) if len(df) else []
    order = list(variants_order or [])
    order += [v for v in sorted(present) if v not in order]
    if not order:
        raise ValueError("nothing to plot: no runs and no variants_order")
    kinds = [(name, col, color) for (name, _, color), col in zip(CANDLE_KINDS, columns)]

    fig = Figure(figsize=(max(4.0, 1.3 * len(order) + 2.0), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    labels = []
    for i, variant in enumerate(order):
        rows = df[df["variant"] == variant] if len(df) else df
        n = len(rows)
        labels.append(f"{variant}\n(n={n})")
        for (name, col, color), dx in zip(kinds, (-CANDLE_OFFSET, CANDLE_OFFSET)):
            values = rows[col].dropna().to_numpy(dtype=float) if n else np.array([])
            if values.size:
                _draw_candle(ax, i + dx, values, color, f"{variant}:{name}")

    handles = [
        Patch(facecolor=kinds[0][2], edgecolor="black", label="original (first neuron cycle)"),
        Patch(facecolor=kinds[1][2], edgecolor="black", label="max (best validation epoch)"),
        Line2D([], [], color="black", label="box Q1-Q3, wick min-max"),
        Line2D([], [], marker="o", color="white", markeredgecolor="black", linestyle="none",
               label="mean"),
    ]
    for j, (label, value) in enumerate((paper_means or {}).items()):
        line = ax.axhline(value, color=PAPER_LINE_COLORS[j % len(PAPER_LINE_COLORS)],
                          linestyle="--", linewidth=1.0, zorder=0, label=f"{label}: {value:g}",
                          gid=f"paper:{label}")
        handles.append(line)

    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(labels)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.autoscale(enable=True, axis="y")
    ax.relim()
    ax.autoscale_view(scalex=False)
    ax.set_ylabel(metric_label)
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
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
