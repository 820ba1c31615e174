"""Our results beside the paper's headline numbers: ``results/paper_comparison.csv``.

Each headline of ``config/paper.yaml`` becomes one row: the paper's value, ours (mean with a seeded bootstrap
95% interval, or the best run), the number of seeds, and whether the paper's value lies inside our interval.
Then the controls the paper lacks, from each benchmark's ``stats.csv``: every treatment against the
compute-matched ``baseline_matched``, and the ``extra`` comparisons (e.g. a parameter-matched width). A
benchmark whose tables do not exist yet gets its rows with a note saying how to make them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .stats import N_RESAMPLES, Side, bootstrap_mean_ci, side_scores

COLUMNS = ["benchmark", "kind", "quantity", "paper", "ours", "ci_low", "ci_high", "n", "paper_inside",
           "relation", "profile", "note"]


def _side(spec: dict) -> Side:
    factors = tuple(sorted((spec.get("factors") or {}).items()))
    return Side(spec["variant"], factors, spec.get("column", "max_test"), spec.get("dendrites"))


def _bootstrap_ratio(t: np.ndarray, c: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(t) / mean(c), resampling the paired seeds together."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, t.size, size=(N_RESAMPLES, t.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = t[idx].mean(axis=1) / c[idx].mean(axis=1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


def headline_row(spec: dict, summary: pd.DataFrame, by_dendrites: pd.DataFrame) -> dict:
    """One headline: ours beside the paper's (see the module docstring and config/paper.yaml)."""
    statistic = spec["statistic"]
    side = side_scores(_side(spec["side"]), summary, by_dendrites)
    row = {"quantity": spec["name"], "paper": spec["paper"], "relation": spec.get("relation", "equal"),
           "n": len(side), "note": ""}
    if statistic == "mean":
        row["ours"] = float(side.mean())
        row["ci_low"], row["ci_high"] = bootstrap_mean_ci(side.to_numpy())
    elif statistic == "best_run":
        rank_by = spec.get("rank_by")
        ranking = side if rank_by is None else side_scores(_side({**spec["side"], "column": rank_by}), summary,
                                                           by_dendrites)
        best = ranking.idxmax()
        row.update(ours=float(side.loc[best]), ci_low=math.nan, ci_high=math.nan,
                   note=f"seed {best}" + (f" (the run with the highest {rank_by})" if rank_by else ""))
    else:
        control = side_scores(_side(spec["control"]), summary, by_dendrites)
        seeds = sorted(set(side.index) & set(control.index))
        if not seeds:
            raise ValueError(f"no seed has runs of both sides of {spec['name']!r}")
        t, c = side.loc[seeds].to_numpy(float), control.loc[seeds].to_numpy(float)
        ratio = t.mean() / c.mean()
        low, high = _bootstrap_ratio(t, c)
        offset = 1.0 if statistic == "relative_difference" else 0.0
        row.update(ours=ratio - offset, ci_low=low - offset, ci_high=high - offset, n=len(seeds))
    if row["relation"] == "less_than":
        row["paper_inside"] = bool(row["ours"] < spec["paper"])
    elif math.isnan(row["ci_low"]):
        row["paper_inside"] = None
    else:
        row["paper_inside"] = bool(row["ci_low"] <= spec["paper"] <= row["ci_high"])
    return row


def control_rows(stats: pd.DataFrame) -> list[dict]:
    """The comparisons the paper does not make: against baseline_matched and wider, and across factor values."""
    rows = []
    for r in stats.itertuples():
        # the compute-matched and the parameter-matched controls
        matched = r.control in ("baseline_matched", "wider") and r.column == r.control_column == "max_test"
        cross = isinstance(r.factors, str) and " vs " in r.factors
        if matched or cross:
            rows.append({"kind": "control the paper lacks",
                         "quantity": r.comparison + (f" ({r.factors})" if isinstance(r.factors, str) and r.factors
                                                     and not cross else ""),
                         "paper": math.nan, "ours": r.mean_diff, "ci_low": r.ci_low, "ci_high": r.ci_high,
                         "n": r.n, "paper_inside": None, "relation": "", "note": f"Wilcoxon p = {r.wilcoxon_p:.3g}"
                         if not pd.isna(r.wilcoxon_p) else str(r.note or "")})
    return rows


def paper_comparison(cfg: dict) -> pd.DataFrame:
    """Every configured benchmark's headlines and controls, from its aggregated tables."""
    rows = []
    for benchmark, headlines in cfg["paper_headlines"].items():
        if benchmark not in cfg["benchmarks"]:
            continue
        results = Path(cfg["results_dir"]) / benchmark
        tables = {name: results / f"{name}.csv" for name in ("summary", "by_dendrites", "stats")}
        base = {"benchmark": benchmark, "profile": cfg["profile"]}
        if not all(p.is_file() for p in tables.values()):
            missing = f"no results yet: make them with `snakemake --cores 1 {tables['summary']}`"
            rows += [{**base, "kind": "paper headline", "quantity": h["name"], "paper": h["paper"], "n": 0,
                      "relation": h.get("relation", "equal"), "note": missing} for h in headlines]
            continue
        summary, by_dendrites, stats = (pd.read_csv(p) for p in tables.values())
        for spec in headlines:
            try:
                rows.append({**base, "kind": "paper headline", **headline_row(spec, summary, by_dendrites)})
            except ValueError as exc:  # the runs this headline needs are not in this profile
                rows.append({**base, "kind": "paper headline", "quantity": spec["name"], "paper": spec["paper"],
                             "n": 0, "relation": spec.get("relation", "equal"), "note": f"not computed: {exc}"})
        rows += [{**base, **r} for r in control_rows(stats)]
    return pd.DataFrame(rows, columns=COLUMNS)
