"""Paired statistics over runs of the same seeds (input: the table of ``aggregate.load_summaries``).

Two variants are compared seed by seed: run ``s`` of the treatment against run ``s`` of the
control (same data split and initial weights), or, within one variant, one score column against
another (e.g. the max score against the original score of the same runs). Reported per
comparison: n pairs, the two means, the mean difference, a percentile bootstrap 95% interval of
the mean difference (10,000 resamples of the pairs, ``numpy.random.default_rng(seed)``, so the
interval is reproducible) and the two-sided Wilcoxon signed-rank p-value (scipy defaults).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

N_RESAMPLES = 10_000
STATS_COLUMNS = [
    "comparison", "treatment", "control", "column", "control_column", "n", "mean_treatment",
    "mean_control", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "note",
]


def _scores_by_seed(df: pd.DataFrame, variant: str, column: str) -> pd.Series:
    if column not in df.columns:
        raise ValueError(f"no column {column!r} in the runs table (columns: {list(df.columns)})")
    rows = df[df["variant"] == variant]
    if rows.empty:
        raise ValueError(f"no runs of variant {variant!r} (present: {sorted(df['variant'].unique())})")
    if rows["seed"].duplicated().any():
        raise ValueError(f"variant {variant!r} has several runs of seeds "
                         f"{sorted(rows.loc[rows['seed'].duplicated(), 'seed'].unique())}")
    scores = rows.set_index("seed")[column].astype(float)
    if scores.isna().any():
        raise ValueError(f"variant {variant!r} has no {column} for seeds "
                         f"{sorted(scores.index[scores.isna()])}")
    return scores


def bootstrap_mean_ci(values, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling with replacement)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_resamples, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def wilcoxon_p(differences) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences, with a note when undefined."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return math.nan, f"Wilcoxon test undefined for n={d.size} < 2"
    if np.all(d == 0):
        return math.nan, "Wilcoxon test undefined: all differences are zero"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            p = float(_scipy_stats.wilcoxon(d, alternative="two-sided").pvalue)
        except ValueError as err:
            return math.nan, f"Wilcoxon test failed: {err}"
    note = "; ".join(sorted({str(w.message) for w in caught}))
    return p, (f"scipy: {note}" if note else "")


def paired_difference(df: pd.DataFrame, treatment: str, control: str, column: str,
                      control_column: str | None = None, *, allow_unpaired: bool = False,
                      n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """Treatment minus control, paired by seed, on ``column`` (the control's column is
    ``control_column``, default the same). Seeds present in only one side are an error listing
    them, or with ``allow_unpaired=True`` dropped with a printed warning.

    Returns a dict: n, seeds, mean_treatment, mean_control, mean_diff, ci_low, ci_high,
    wilcoxon_p, note.
    """
    control_column = control_column or column
    t = _scores_by_seed(df, treatment, column)
    c = _scores_by_seed(df, control, control_column)
    only_t = sorted(set(t.index) - set(c.index))
    only_c = sorted(set(c.index) - set(t.index))
    notes = []
    if only_t or only_c:
        message = (f"unpaired seeds comparing {treatment} with {control}: only in {treatment}: "
                   f"{only_t}; only in {control}: {only_c}")
        if not allow_unpaired:
            raise ValueError(message + ". Run the missing seeds, or pass allow_unpaired=True "
                                       "(--allow-unpaired) to drop them.")
        print(f"warning: {message}; dropping them", flush=True)
        notes.append(f"dropped unpaired seeds {only_t + only_c}")
    seeds = sorted(set(t.index) & set(c.index))
    if not seeds:
        raise ValueError(f"no seed has runs of both {treatment} and {control}")
    tv, cv = t.loc[seeds].to_numpy(), c.loc[seeds].to_numpy()
    diff = tv - cv
    low, high = bootstrap_mean_ci(diff, n_resamples=n_resamples, seed=seed)
    if len(seeds) == 1:
        notes.append("n=1: the interval is the single difference")
    p, note = wilcoxon_p(diff)
    if note:
        notes.append(note)
    return {
        "n": len(seeds), "seeds": seeds,
        "mean_treatment": float(tv.mean()), "mean_control": float(cv.mean()),
        "mean_diff": float(diff.mean()), "ci_low": low, "ci_high": high,
        "wilcoxon_p": p, "note": "; ".join(notes),
    }


def _short(column: str) -> str:
    """'max_test' -> 'max', 'original_test' -> 'original', 'max_val' -> 'max val'."""
    name = column[:-len("_test")] if column.endswith("_test") else column
    return name.replace("_", " ")


def default_comparisons(treatment: str = "pb", control: str | None = "baseline",
                        columns=("max_test",)) -> list[tuple[str, str, str, str]]:
    """The suite's comparisons as (treatment, column, control, control_column):

    * ``treatment max - control max``          (does the variant beat the control?)
    * ``treatment original - control original`` (same seed, same first cycle: should be ~0)
    * ``treatment max - treatment original``   (within-run gain from dendrites)
    """
    out = []
    for col in columns:
        orig = col.replace("max", "original")
        if control:
            out.append((treatment, col, control, col))
            out.append((treatment, orig, control, orig))
        out.append((treatment, col, treatment, orig))
    return out


def stats_table(df: pd.DataFrame, comparisons, *, seed: int = 0, allow_unpaired: bool = False,
                n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """One row per comparison ``(treatment, column, control, control_column)`` (columns:
    ``STATS_COLUMNS``); e.g. ("pb", "max_test", "baseline", "max_test") is
    "pb max - baseline max" and ("pb", "max_test", "pb", "original_test") "pb max - pb original".
    """
    rows = []
    for treatment, column, control, control_column in comparisons:
        res = paired_difference(df, treatment, control, column, control_column,
                                allow_unpaired=allow_unpaired, n_resamples=n_resamples, seed=seed)
        rows.append({
            "comparison": f"{treatment} {_short(column)} - {control} {_short(control_column)}",
            "treatment": treatment, "control": control,
            "column": column, "control_column": control_column,
            **{k: res[k] for k in STATS_COLUMNS[5:]},
        })
    return pd.DataFrame(rows, columns=STATS_COLUMNS)
