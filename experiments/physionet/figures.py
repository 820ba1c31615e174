"""PhysioNet's declared outputs: Figure 10 (params_auc), Figure 11 (auc_by_arch), Table 2 (timing, table2).

Both figures read every run's ``cycles.csv``: a neuron cycle's score is its validation-selected test score
(the test score at the cycle's best validation epoch), and its parameter count is the network's at that
epoch. A pb run gives one point per dendrite count; a baseline run (one cycle) its width's only point; a
compute-matched baseline (several dendrite-free cycles) the test score at its best validation epoch over
the whole run (its "max"), drawn apart.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from pb_core.records import atomic_write_text, write_csv

from ..errors import UserError
from ..plotting import save_figure_atomic
from ..widen import VARIANT as WIDER  # a wider run's width factor is the width it was widened from

CYCLE_COLUMNS = ["variant", "width", "seed", "cycle", "dendrites", "params", "val", "test"]
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
MATCHED = "baseline_matched"
MARKERS = {"pb": "o", "baseline": "D", WIDER: "^"}  # other variants "v"; the width gives the colour


def neuron_cycles(runs) -> pd.DataFrame:
    """Every neuron cycle of the runs ``[(variant, factors, seed, folder)]`` (``ctx.runs()``)."""
    rows = []
    for variant, factors, seed, folder in runs:
        path = Path(folder) / "cycles.csv"
        if not path.is_file():
            raise UserError(f"{path} does not exist: the run {variant} {factors} seed {seed} has not finished; "
                            f"train it first (python -m experiments run ..., or let Snakemake do it)")
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["phase"] == "neuron":
                    rows.append({"variant": variant, "width": float(factors.get("width", 1)), "seed": int(seed),
                                 "cycle": int(row["cycle"]), "dendrites": int(row["dendrites"]),
                                 "params": int(row["params"]), "val": float(row["val"]), "test": float(row["test"])})
    return pd.DataFrame(rows, columns=CYCLE_COLUMNS)


def run_best(cycles: pd.DataFrame) -> pd.DataFrame:
    """Per run, the neuron cycle with the best validation score (the earliest on ties): its "max" score."""
    ordered = cycles.sort_values(["variant", "width", "seed", "val", "cycle"], ascending=[True, True, True, False, True])
    return ordered.groupby(["variant", "width", "seed"], as_index=False).first()


def mean_interval(values, level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the Student-t interval of the mean, n); half-width NaN for n < 2."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return float(values.mean()) if n else float("nan"), float("nan"), n
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean()), float(half), n


def points(cycles: pd.DataFrame) -> pd.DataFrame:
    """Figure 10's points: per (variant, width, dendrites) the mean parameters and mean test score with its
    95% interval over seeds. pb and baseline runs: one point per neuron cycle's dendrite count;
    baseline_matched: the run's best-validation cycle (dendrites 0)."""
    parts = [cycles[cycles["variant"] != MATCHED], run_best(cycles[cycles["variant"] == MATCHED])]
    data = pd.concat([p for p in parts if len(p)]) if any(len(p) for p in parts) else cycles
    rows = []
    for (variant, width, dendrites), group in data.groupby(["variant", "width", "dendrites"]):
        mean, half, n = mean_interval(group["test"])
        rows.append({"variant": variant, "width": width, "dendrites": dendrites, "params": group["params"].mean(),
                     "test": mean, "ci95": half, "n": n})
    return pd.DataFrame(rows, columns=["variant", "width", "dendrites", "params", "test", "ci95", "n"])


def _profile_note(ctx) -> str:
    return ctx.note() if hasattr(ctx, "note") else f"profile: {ctx.profile}"


def params_auc(ctx) -> Figure:
    """Figure 10: parameter count (log scale) vs mean test ROC-AUC, one line per width through its dendrite counts."""
    pts = points(neuron_cycles(ctx.runs()))
    fig = params_auc_figure(pts, f"PhysioNet 2012, mTAN: parameters vs test AUC ({ctx.profile} profile)",
                            _profile_note(ctx))
    save_figure_atomic(fig, ctx.path)
    return fig


def params_auc_figure(pts: pd.DataFrame, title: str = "", note: str = "") -> Figure:
    fig = Figure(figsize=(7.0, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    widths = sorted(pts["width"].unique())
    for i, width in enumerate(widths):
        color = COLORS[i % len(COLORS)]
        main = pts[(pts["width"] == width) & (pts["variant"] != MATCHED)].sort_values("dendrites")
        for variant in main["variant"].unique():
            line = main[main["variant"] == variant]
            yerr = line["ci95"].fillna(0).to_numpy()
            name = "" if variant == "pb" else " (wider: widened to pb's parameters)" if variant == WIDER \
                else f" ({variant})"
            bars = ax.errorbar(line["params"], line["test"], yerr=yerr, color=color, capsize=3,
                               marker=MARKERS.get(variant, "v"), label=f"width {width:g}{name}")
            bars.lines[0].set_gid(f"line:{variant}:{width:g}")
            for _, p in line.iterrows():
                ax.annotate(f"{int(p['dendrites'])}d", (p["params"], p["test"]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color=color)
        matched = pts[(pts["width"] == width) & (pts["variant"] == MATCHED)]
        if len(matched):
            bars = ax.errorbar(matched["params"], matched["test"], yerr=matched["ci95"].fillna(0).to_numpy(),
                               color=color, marker="s", markerfacecolor="white", linestyle="none", capsize=3)
            bars.lines[0].set_gid(f"line:{MATCHED}:{width:g}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("mean test ROC-AUC (95% interval over seeds)")
    cut = _auc_limits(ax, pts)
    handles, labels = ax.get_legend_handles_labels()
    if (pts["variant"] == MATCHED).any():
        handles.append(Line2D([], [], color="black", marker="s", markerfacecolor="white", linestyle="none"))
        labels.append("compute-matched baseline (no dendrites)")
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    if note or cut:
        text = "; ".join(filter(None, [note, "point labels: dendrites",
                                       "intervals cut at the AUC's range [0, 1]" if cut else ""]))
        fig.text(0.01, -0.03, text, fontsize=7, color="gray")
    return fig


def _auc_limits(ax, pts: pd.DataFrame) -> bool:
    """Show the points and their intervals, but never beyond [0, 1], where no AUC lies: with 2 or 3 seeds a
    Student-t interval can reach far past it and would squeeze the means into a line. True when cut."""
    if pts.empty:
        return False
    half = pts["ci95"].fillna(0)
    lo, hi = float((pts["test"] - half).min()), float((pts["test"] + half).max())
    pad = 0.03 * (min(hi, 1.0) - max(lo, 0.0)) or 0.01
    ax.set_ylim(max(lo, 0.0) - pad, min(hi, 1.0) + pad)
    return lo < 0 or hi > 1


def auc_by_arch(ctx) -> Figure:
    """Figure 11: test ROC-AUC per width and dendrite count over seeds."""
    fig = auc_by_arch_figure(neuron_cycles(ctx.runs()),
                             f"PhysioNet 2012, mTAN: test AUC by architecture ({ctx.profile} profile)",
                             _profile_note(ctx))
    save_figure_atomic(fig, ctx.path)
    return fig


def candle_groups(cycles: pd.DataFrame) -> list[tuple[str, str, float, int, np.ndarray]]:
    """(label, variant, width, dendrites, test scores over seeds) per candle, by width then dendrites."""
    groups = []
    best = run_best(cycles[cycles["variant"] == MATCHED]) if (cycles["variant"] == MATCHED).any() else None
    for width in sorted(cycles["width"].unique()):
        at = cycles[(cycles["width"] == width) & (cycles["variant"] != MATCHED)]
        for (variant, d), group in at.groupby(["variant", "dendrites"]):
            # pb's cycles are the architectures; any other variant says its name (a baseline of the same width
            # is pb's first cycle; a wider run is built wider than its width factor says)
            label = f"w={width:g}\n{d}d" if variant == "pb" else (
                f"w={width:g}\nwidened" if variant == WIDER else f"w={width:g}\n{d}d\n{variant}")
            groups.append((label, variant, width, int(d), group["test"].to_numpy(float)))
        if best is not None and (best["width"] == width).any():
            groups.append((f"w={width:g}\nmatched", MATCHED, width, 0,
                           best.loc[best["width"] == width, "test"].to_numpy(float)))
    return groups


def auc_by_arch_figure(cycles: pd.DataFrame, title: str = "", note: str = "") -> Figure:
    groups = candle_groups(cycles)
    fig = Figure(figsize=(max(5.0, 0.75 * len(groups) + 1.5), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    widths = sorted(cycles["width"].unique())
    rng = np.random.default_rng(0)
    for x, (label, variant, width, d, values) in enumerate(groups):
        color = COLORS[widths.index(width) % len(COLORS)]
        lo, q1, q3, hi = np.percentile(values, [0, 25, 75, 100])
        gid = f"{variant}:{width:g}:{d}"
        ax.add_line(Line2D([x, x], [lo, hi], color="black", linewidth=1.0, zorder=1, gid=f"wick:{gid}"))
        ax.add_patch(Rectangle((x - 0.3, q1), 0.6, q3 - q1, facecolor=color if variant != MATCHED else "white",
                               edgecolor=color if variant == MATCHED else "black", linewidth=1.2, alpha=0.85,
                               zorder=2, gid=f"box:{gid}"))
        ax.plot([x], [values.mean()], marker="o", color="white", markeredgecolor="black", markersize=5,
                linestyle="none", zorder=4, gid=f"mean:{gid}")
        ax.plot(x + rng.uniform(-0.18, 0.18, len(values)), values, marker=".", color="black", alpha=0.5,
                linestyle="none", markersize=4, zorder=3)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g[0]}\n(n={len(g[4])})" for g in groups], fontsize=7)
    ax.set_xlim(-0.7, len(groups) - 0.3)
    ax.set_ylabel("test ROC-AUC")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    # Below the tick labels (the saved figure's bounding box is tight, so it grows to include the note).
    fig.text(0.01, -0.06, (note + "; " if note else "") + "box Q1-Q3, wick min-max, white dot mean, black dots seeds",
             fontsize=7, color="gray")
    return fig


# ---------------------------------------------------------------------------------------------- Table 2
def timing(ctx) -> Path:
    """Measure Table 2 (experiments/physionet/timing.py) into results/<benchmark>/timing.csv."""
    from .timing import COLUMNS, measure

    rows = measure(ctx.cfg, ctx.benchmark, ctx.prepared(), threads=getattr(ctx, "threads", None),
                   options=ctx.settings)
    write_csv(ctx.path, rows, COLUMNS)
    return ctx.path


TABLE2_COLUMNS = ["width", "phase", "dendrites", "params", "seconds_per_epoch", "paper_seconds_per_epoch",
                  "epochs_per_cycle", "seconds_per_cycle", "gpu_inputs_per_second", "cpu_inputs_per_second",
                  "paper_total_seconds", "device", "machine", "note"]


def table2_frame(measured: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """Table 2: the measured rows next to the paper's values, then one "total" row per width."""
    paper = {(float(r["width"]), r["phase"], int(r["dendrites"])): r["seconds_per_epoch"]
             for r in settings.get("paper", [])}
    totals = {float(r["width"]): r["seconds"] for r in settings.get("paper_totals", [])}
    rows = []
    for width, group in measured.groupby("width", sort=True):
        for _, r in group.iterrows():
            rows.append({**{k: r.get(k) for k in TABLE2_COLUMNS if k in r},
                         "paper_seconds_per_epoch": paper.get((float(width), r["phase"], int(r["dendrites"])))})
        first = group.iloc[0]
        rows.append({"width": width, "phase": "total", "seconds_per_cycle": first.get("width_total_seconds"),
                     "paper_total_seconds": totals.get(float(width)), "device": first.get("device"),
                     "machine": first.get("machine"), "note": "the width's whole schedule: sum of its cycles"})
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


def _markdown(df: pd.DataFrame, device: str) -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    cols = [c for c in TABLE2_COLUMNS if c not in ("machine",)]
    lines = [f"Table 2 (PhysioNet 2012, mTAN): measured vs the paper ({device})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines) + "\n"


def table2(ctx) -> Path:
    """Table 2 rendered: results/<benchmark>/table2.csv and table2.md beside it, from timing.csv."""
    source = Path(ctx.path).parent / "timing.csv"
    if not source.is_file():
        raise UserError(f"{source} does not exist; make it with `python -m experiments output {ctx.benchmark} timing`")
    df = table2_frame(pd.read_csv(source), ctx.settings)
    write_csv(ctx.path, df.to_dict("records"), TABLE2_COLUMNS)
    atomic_write_text(Path(ctx.path).with_suffix(".md"),
                      _markdown(df, f"paper: {ctx.settings.get('paper_device', '?')}"))
    return ctx.path
