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
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

N_RESAMPLES = 10_000
STATS_COLUMNS = [
    "comparison", "treatment", "control", "factors", "column", "control_column", "n", "mean_treatment",
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
    return paired_scores(_scores_by_seed(df, treatment, column), _scores_by_seed(df, control, control_column),
                         treatment, control, allow_unpaired=allow_unpaired, n_resamples=n_resamples, seed=seed)


def paired_scores(t: pd.Series, c: pd.Series, treatment: str = "treatment", control: str = "control", *,
                  allow_unpaired: bool = False, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """The paired statistics of two score series indexed by seed (see :func:`paired_difference`)."""
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
    # A score can be undefined for one run (e.g. the gain above chance of a run that started at chance):
    # that pair is dropped, said in the note, and the others are compared.
    undefined = [s for s in seeds if not (np.isfinite(float(t.loc[s])) and np.isfinite(float(c.loc[s])))]
    if undefined:
        notes.append(f"dropped seeds {undefined}: a score is undefined (NaN)")
        seeds = [s for s in seeds if s not in undefined]
    if not seeds:
        raise ValueError(f"no seed has runs of both {treatment} and {control}")
    tv, cv = t.loc[seeds].to_numpy(dtype=float), c.loc[seeds].to_numpy(dtype=float)
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
            "treatment": treatment, "control": control, "factors": "",
            "column": column, "control_column": control_column,
            **{k: res[k] for k in STATS_COLUMNS[6:]},
        })
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


# ---------------------------------------------------------------------------------------------- a benchmark's comparisons
@dataclass(frozen=True)
class Side:
    """One side of a comparison: the runs of ``variant`` at ``factors``, scored by ``column`` of summary.csv,
    or, with ``dendrites``, by the neuron cycle with that many dendrites (``column`` "test" or "val" of
    by_dendrites.csv)."""
    variant: str
    factors: tuple = ()
    column: str = "max_test"
    dendrites: int | None = None

    def describe(self, with_factors: bool) -> str:
        parts = [self.variant]
        if with_factors and self.factors:
            parts.append(_factor_text(self.factors))
        if self.dendrites is not None:
            parts.append(f"{self.dendrites} dendrite{'s' if self.dendrites != 1 else ''} {self.column}")
        else:
            parts.append(_short(self.column))
        return " ".join(parts)


def _factor_text(factors) -> str:
    from .grid import format_value

    return ",".join(f"{k}={format_value(v)}" for k, v in factors)


def side_scores(side: Side, summary: pd.DataFrame, by_dendrites: pd.DataFrame | None = None) -> pd.Series:
    """The side's scores by seed (ValueError naming what is missing)."""
    table = summary if side.dendrites is None else by_dendrites
    if table is None:
        raise ValueError("a comparison by dendrite count needs the by_dendrites table")
    rows = table[table["variant"] == side.variant]
    for name, value in side.factors:
        if name not in rows.columns:
            raise ValueError(f"no factor {name!r} in the runs table")
        rows = rows[rows[name].astype(float) == float(value)] if not isinstance(value, str) else rows[rows[name] == value]
    if side.dendrites is not None:
        rows = rows[rows["dendrites"] == side.dendrites]
    if rows.empty:
        raise ValueError(f"no runs for {side.describe(True)}")
    if rows["seed"].duplicated().any():
        raise ValueError(f"{side.describe(True)} has several runs of one seed")
    if side.column not in rows.columns:
        raise ValueError(f"no column {side.column!r} in the runs table (columns: {list(rows.columns)})")
    return rows.set_index("seed")[side.column].astype(float)


def configured_comparisons(block: dict, summary: pd.DataFrame, factor_names: list[str]) -> list[tuple[Side, Side]]:
    """The comparisons a benchmark's configuration asks for, where both sides have runs.

    For every combination of factor values: each treatment against each control (max - max, and original -
    original, which should be about 0 when the two share their first cycle), and each treatment's max against
    its own original; then the ``extra`` comparisons across factor values or dendrite counts.
    """
    pairs: list[tuple[Side, Side]] = []
    combos = (summary[factor_names].drop_duplicates().to_dict("records") if factor_names and len(summary)
              else [{}])
    wanted = block["comparisons"]
    for combo in combos:
        factors = tuple((k, combo[k]) for k in factor_names)
        at = summary
        for k, v in combo.items():
            at = at[at[k] == v]
        present = set(at["variant"])
        for treatment in (t for t in wanted["treatments"] if t in present):
            rows = []
            for control in (c for c in wanted["controls"] if c in present and c != treatment):
                rows += [(Side(treatment, factors), Side(control, factors)),
                         (Side(treatment, factors, "original_test"), Side(control, factors, "original_test"))]
            rows.append((Side(treatment, factors), Side(treatment, factors, "original_test")))
            pairs += [p for p in rows if p not in pairs]
    for extra in wanted.get("extra", []):
        sides = []
        for key in ("treatment", "control"):
            spec = extra[key]
            order = [f for f in factor_names if f in spec.get("factors", {})]
            sides.append(Side(spec["variant"], tuple((f, spec["factors"][f]) for f in order),
                              spec.get("column", "max_test" if "dendrites" not in spec else "test"),
                              spec.get("dendrites")))
        pairs.append(tuple(sides))
    return pairs


def comparison_table(pairs: list[tuple[Side, Side]], summary: pd.DataFrame,
                     by_dendrites: pd.DataFrame | None = None, *, seed: int = 0,
                     n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """One row per (treatment, control) pair of :class:`Side`, paired by seed (columns ``STATS_COLUMNS``);
    always has the header, even with no pair."""
    rows = []
    for t, c in pairs:
        cross = t.factors != c.factors
        res = paired_scores(side_scores(t, summary, by_dendrites), side_scores(c, summary, by_dendrites),
                            t.describe(cross), c.describe(cross), n_resamples=n_resamples, seed=seed)
        factors = (f"{_factor_text(t.factors)} vs {_factor_text(c.factors)}" if cross else _factor_text(t.factors))
        rows.append({"comparison": f"{t.describe(cross)} - {c.describe(cross)}", "treatment": t.variant,
                     "control": c.variant, "factors": factors, "column": t.column, "control_column": c.column,
                     **{k: res[k] for k in STATS_COLUMNS[6:]}})
    return pd.DataFrame(rows, columns=STATS_COLUMNS)
