"""The paper's Figure 9 for CSI300: validation and test Precision@1, original vs max, over the seeds.

Two panels drawn by the suite's candlestick helper (one shared "first cycle" candle when every variant
of a seed starts from the same first neuron cycle, then one "max" candle per variant, each seed a dot and
a seed's runs joined by a line), the chance level 0.5 dotted, and on the test panel the paper's best run
(original 0.610 -> max 0.648) as two dashed lines.
"""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..grid import grid, seeds
from ..plotting import candlestick_figure, save_figure_atomic
from .concepts import describe

PANELS = (("validation", ("original_val", "max_val")), ("test", ("original_test", "max_test")))


def precision_figure(summary: pd.DataFrame, variants_order: list[str], *, chance: float = 0.5,
                     paper_best_run: dict | None = None, note: str | None = None, title: str = "") -> Figure:
    """The figure (not saved) from ``summary.csv`` rows: columns variant, seed, original_val, max_val,
    original_test, max_test."""
    fig = Figure(figsize=(11.0, 4.6))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (panel, columns) in zip(axes, PANELS):
        paper = {}
        if panel == "test" and paper_best_run:
            paper = {"paper, best run: original": paper_best_run["original"],
                     "paper, best run: max": paper_best_run["max"]}
        candlestick_figure(summary, None, "Precision@1", paper_means=paper, variants_order=variants_order,
                           columns=columns, ax=ax, save=False, title=f"{panel} Precision@1")
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1.0, zorder=0, gid=f"chance:{panel}")
    axes[0].get_legend().remove()  # one legend, beside the right panel
    axes[1].tick_params(labelleft=True)
    if title:
        fig.suptitle(title, fontsize=11)
        fig.subplots_adjust(top=0.80)  # room for a two-line title above the panels' own titles
    if note:
        fig.text(0.01, -0.04, f"{note}; dotted: chance ({chance:g})", fontsize=7, va="top", gid="note")
    return fig


def draw_precision(ctx) -> Figure:
    """Declared output ``precision`` (meta.py): reads the benchmark's summary.csv, writes the .pdf and .png."""
    summary = ctx.summary()
    first_seed = seeds(ctx.cfg, ctx.benchmark)[0]
    order = [run.variant for run in grid(ctx.cfg, ctx.benchmark) if run.seed == first_seed]
    fig = precision_figure(summary, list(dict.fromkeys(order)), chance=ctx.info.chance,
                           paper_best_run=ctx.settings.get("paper_best_run"), note=ctx.note(),
                           title=f"{ctx.benchmark}: HIST, first neuron cycle vs best validation epoch "
                                 f"({ctx.profile} profile)\n{describe(ctx.block['data'])}")
    save_figure_atomic(fig, ctx.path)
    return fig
