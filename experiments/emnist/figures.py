"""The EMNIST benchmark's declared figures: the paper's Figure 6 (``curve``) and Figure 7 (``error_reduction``).

Each ``draw_*`` takes the output context (experiments/outputs.py: ``ctx.settings`` is the output's block in
``outputs:``, ``ctx.path`` the .pdf to write, whose .png sibling is written too), draws with matplotlib's
object API and returns the figure. The artists carry gids so tests can find them:

* curve: ``curve:train|val|test`` (accuracy in %), ``dendrite_phase:<first epoch>`` (shaded spans),
  ``switch:<epoch>`` (a cycle starts at that epoch), ``best_val``, ``paper:original_test|max_test``.
* error_reduction: per variant ``box:<v>`` (Q1..Q3), ``wick:<v>`` (min..max), ``mean:<v>``, ``seeds:<v>``
  (one point per seed), ``paper:<v>`` (the paper's value where the configuration gives one), ``zero``, and
  per control variant (``comparisons.controls``) ``control_mean:<v>``, a line across at its mean.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from pb_core.records import summarize

from ..errors import UserError
from ..plotting import save_figure_atomic

EPOCH_COLUMNS = ("epoch", "cycle", "phase", "dendrites", "train", "val", "test")
COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
LABELS = {"train": "train", "val": "validation", "test": "test"}
PAPER_COLOR = "#d62728"
CANDLE_WIDTH = 0.5
TREATMENT_COLOR, CONTROL_COLOR = "#9ecae1", "#d9d9d9"


def _note(ctx) -> str:
    """The line every figure of the suite carries (profile, seeds), from the context when it offers one."""
    note = getattr(ctx, "note", None)
    return note() if callable(note) else f"profile: {ctx.profile}"


# ---------------------------------------------------------------------------------------------- Figure 6
def draw_curve(ctx) -> Figure:
    """Figure 6 for the run named in ``outputs.curve`` (variant, seed, optional factors)."""
    settings = ctx.settings or {}
    variant, seed = settings.get("variant", "pb"), settings.get("seed", 0)
    folder = Path(ctx.run_dir(variant, seed, **settings.get("factors", {})))
    epochs_csv = folder / "epochs.csv"
    if not epochs_csv.is_file():
        raise UserError(f"{epochs_csv} is missing: Figure 6 shows the run {variant} seed {seed} "
                        f"(benchmarks.{ctx.benchmark}.outputs.curve); train it first, or choose a run of the "
                        f"configured grid there")
    epochs = pd.read_csv(epochs_csv)
    missing = [c for c in EPOCH_COLUMNS if c not in epochs.columns]
    if missing or epochs.empty:
        raise UserError(f"{epochs_csv} lacks the columns {missing} or has no epochs; delete that run folder and "
                        f"train the run again")
    title = f"EMNIST, {variant} seed {seed}\n{_note(ctx)}"
    running = ctx.block.get("train", {}).get("train_score") == "running"
    fig = curve_figure(epochs, settings.get("paper") or {}, title,
                       train_label="train (training pass: augmented, dropout on)" if running else "train")
    save_figure_atomic(fig, ctx.path)
    return fig


def curve_figure(epochs: pd.DataFrame, paper: dict, title: str = "", train_label: str = "train") -> Figure:
    """Train/validation/test accuracy (%) per epoch; dendrite phases shaded, switches marked."""
    ep = epochs.sort_values("epoch", kind="stable").reset_index(drop=True)
    x = ep["epoch"].to_numpy()
    fig = Figure(figsize=(8.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)

    dendrite = (ep["phase"] == "dendrite").to_numpy()
    starts = [k for k in range(len(ep)) if dendrite[k] and (k == 0 or not dendrite[k - 1])]
    for j, k in enumerate(starts):
        end = k
        while end + 1 < len(ep) and dendrite[end + 1]:
            end += 1
        ax.axvspan(x[k] - 0.5, x[end] + 0.5, color="#ffe8b0", alpha=0.7, zorder=0,
                   label=None if j else "dendrite phase", gid=f"dendrite_phase:{x[k]}")
    cycles = ep["cycle"].to_numpy()
    switches = [k for k in range(1, len(ep)) if cycles[k] != cycles[k - 1]]
    for j, k in enumerate(switches):
        ax.axvline(x[k] - 0.5, color="black", linestyle=":", linewidth=0.9, zorder=1,
                   label=None if j else "switch", gid=f"switch:{x[k]}")
    for col in ("train", "val", "test"):
        ax.plot(x, 100 * ep[col].to_numpy(dtype=float), color=COLORS[col], linewidth=1.3,
                label=train_label if col == "train" else LABELS[col], gid=f"curve:{col}")

    neuron_rows = ep[ep["phase"] == "neuron"].to_dict("records")
    note = ""
    if neuron_rows:
        scores = summarize(neuron_rows, "max")
        best = scores["max"]
        ax.plot([best["epoch"]], [100 * best["val"]], marker="*", color=COLORS["val"], markeredgecolor="black",
                markersize=12, linestyle="none", zorder=4, label="best validation (max)", gid="best_val")
        o, m = scores["original"]["test"], best["test"]
        note = (f"this run: test {100 * o:.2f}% -> {100 * m:.2f}% "
                f"({100 * _error_reduction(o, m):.1f}% of the error removed, {best['dendrites']} dendrite(s))")
    for key, text in (("original_test", "paper: first-cycle test"), ("max_test", "paper: final test")):
        if paper.get(key) is not None:
            value = 100 * paper[key]
            ax.axhline(value, color=PAPER_COLOR, linestyle="--" if key == "original_test" else "-.",
                       linewidth=0.9, zorder=1, label=f"{text} {value:.2f}%", gid=f"paper:{key}")
    if paper.get("original_test") is not None and paper.get("max_test") is not None:
        reduction = 100 * _error_reduction(paper["original_test"], paper["max_test"])
        note += ("\n" if note else "") + (f"paper's run: {100 * paper['original_test']:.2f}% -> "
                                          f"{100 * paper['max_test']:.2f}% ({reduction:.1f}% of the error)")
    if note:  # beside the plot, under the legend, where it hides no curve
        ax.text(1.02, 0.0, note.replace(" (", "\n("), transform=ax.transAxes, fontsize=7, va="bottom",
                ha="left", gid="note")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _error_reduction(original: float, maximum: float) -> float:
    err = 1.0 - original
    return (maximum - original) / err if err > 0 else float("nan")


# ---------------------------------------------------------------------------------------------- Figure 7
def draw_error_reduction(ctx) -> Figure:
    """Figure 7: per variant, the test error reduction (summary.csv's ``improvement``) over seeds."""
    settings = ctx.settings or {}
    summary = ctx.summary()
    if "improvement" not in summary.columns or "variant" not in summary.columns:
        raise UserError(f"the summary of {ctx.benchmark} lacks the columns variant/improvement; aggregate again "
                        f"(python -m experiments aggregate {ctx.benchmark})")
    order = settings.get("variants") or [v for v in ctx.block["variants"] if v != "baseline"]
    title = f"EMNIST: test error reduction, original -> max\n{_note(ctx)}"
    controls = ctx.block.get("comparisons", {}).get("controls", [])
    fig = error_reduction_figure(summary, list(order), settings.get("paper") or {}, title, controls)
    save_figure_atomic(fig, ctx.path)
    return fig


def error_reduction_figure(summary: pd.DataFrame, variants: list[str], paper: dict, title: str = "",
                           controls=()) -> Figure:
    """One candle per variant of ``summary["improvement"]`` in %: wick min-max, box Q1-Q3 (numpy's linear
    percentiles), mean as a white dot, each seed as a small grey point; the paper's value as a red diamond.

    Control variants (``baseline_matched``: the same epochs and restarts, no dendrites) get a grey box and a
    dotted line across at their mean: what a dendrite variant gains above that line is the dendrites' own
    share, below it is what longer training alone gives."""
    fig = Figure(figsize=(max(5.0, 1.1 * len(variants) + 2.5), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)  # fixed jitter: the same figure for the same table
    labels = []
    for i, variant in enumerate(variants):
        rows = summary[summary["variant"] == variant]
        values = 100 * rows["improvement"].dropna().to_numpy(dtype=float)
        labels.append(f"{variant}\n(n={len(values)})")
        if values.size:
            lo, q1, q3, hi = np.percentile(values, [0, 25, 75, 100])
            ax.add_line(Line2D([i, i], [lo, hi], color="black", linewidth=1.0, zorder=1, gid=f"wick:{variant}"))
            control = variant in controls
            ax.add_patch(Rectangle((i - CANDLE_WIDTH / 2, q1), CANDLE_WIDTH, q3 - q1,
                                   facecolor=CONTROL_COLOR if control else TREATMENT_COLOR,
                                   edgecolor="black", linewidth=1.0, zorder=2, gid=f"box:{variant}"))
            if control:
                ax.axhline(values.mean(), color="#777777", linestyle=":", linewidth=1.0, zorder=0,
                           gid=f"control_mean:{variant}")
            ax.plot([i], [values.mean()], marker="o", color="white", markeredgecolor="black", markersize=6,
                    linestyle="none", zorder=4, gid=f"mean:{variant}")
            jitter = rng.uniform(-0.15, 0.15, size=values.size)
            ax.scatter(i + 0.38 + jitter * 0.3, values, s=9, color="#555555", zorder=3, gid=f"seeds:{variant}")
        if paper.get(variant) is not None:
            ax.plot([i], [100 * paper[variant]], marker="D", color=PAPER_COLOR, markersize=6, linestyle="none",
                    zorder=5, gid=f"paper:{variant}")
    ax.axhline(0.0, color="black", linewidth=0.6, zorder=0, gid="zero")
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.set_ylabel("test error reduction (%)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=TREATMENT_COLOR, edgecolor="black", label="Q1-Q3, wick min-max")]
    shown_controls = [v for v in variants if v in controls and not summary[summary["variant"] == v].empty]
    if shown_controls:
        handles += [Patch(facecolor=CONTROL_COLOR, edgecolor="black", label="control (no dendrites)"),
                    Line2D([], [], color="#777777", linestyle=":", label="control's mean")]
    handles += [Line2D([], [], marker="o", color="white", markeredgecolor="black", linestyle="none", label="mean"),
                Line2D([], [], marker="o", color="#555555", markersize=3, linestyle="none", label="one seed")]
    if any(paper.get(v) is not None for v in variants):
        handles.append(Line2D([], [], marker="D", color=PAPER_COLOR, linestyle="none", label="paper"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
