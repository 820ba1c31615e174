"""Collect finished runs of one benchmark into tables.

A run is one (benchmark, variant, seed) in ``results/<benchmark>/<variant>/seed<seed>/``; the
training runner writes ``summary.json`` there (plus ``epochs.csv`` and ``cycles.csv``, which the
plots read). This module turns a list of run folders into

* a summary table, one row per (variant, seed)   -> ``load_summaries``
* the dendrite-count table (paper, Table 1)      -> ``dendrite_counts``
* the paired statistics (see ``experiments/stats.py``)

and writes every table with ``write_csv_atomic``. A run whose ``summary.json`` is missing or
malformed is an error that names the file and the command that re-runs it; it is never skipped.

Command line (what the Snakefile calls): ``python -m experiments aggregate tox21``.

Improvement formulas (SPEC section 2, paper section 5.1), ``o`` = original score (first neuron
cycle), ``m`` = max score (test score at the epoch of the best validation score of the run):

* accuracy:       error reduction ``(err_o - err_m) / err_o`` with ``err = 1 - acc``
                  (EMNIST: 86.55% -> 87.13% gives 0.0431, the paper's "4.3% of the error").
* auc:            ``(m - o) / (1 - o)``, the fraction of the distance to a perfect 1.0 closed.
                  Algebraically the same as the accuracy formula.
* precision_at_1: ``(m - o) / (o - 0.5)``, the relative growth of the margin above chance 0.5
                  (CSI300 best run 0.610 -> 0.648 gives 0.345). Undefined (NaN) when ``o <= 0.5``.

All three are NaN where the denominator is zero (or negative for precision_at_1). Scores must
be fractions in [0, 1], not percentages. ``load_summaries`` adds the per-run value as column
``improvement`` (test scores); ``improvement_summary`` gives, per variant, both the improvement
of the mean scores and the mean of per-run improvements, which differ. For Tox21 the paper's
"0.789 -> 0.822, 13.6% closer to 1.0" is not the formula applied to those two means (that would
be 15.6%); it matches an original (first-cycle) mean of about 0.794 for the dendrite runs, i.e.
the within-run comparison, which is what ``improvement_summary`` reports.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pb_core.records import atomic_write_text

from .errors import UserError
from .grid import Run

BASE_COLUMNS = ["benchmark", "variant"]
RUN_COLUMNS = [
    "seed", "metric", "original_val", "original_test", "max_val", "max_test", "dendrites", "params",
    "params_original", "epochs", "seconds", "improvement", "chance_level", "stopped_because",
    "neuron_cycles_at_cap", "dendrite_phases_at_cap", "profile",
]
SUMMARY_COLUMNS = BASE_COLUMNS + RUN_COLUMNS  # plus one column per factor after "variant", provenance at the end
BY_DENDRITES_COLUMNS = ["cycle", "dendrites", "params", "epochs", "best_epoch", "val", "test"]
SCORE_KEYS = ("epoch", "cycle", "dendrites", "params", "train", "val", "test")
TOP_LEVEL_KEYS = ("benchmark", "variant", "seed", "metric", "mode", "original", "max",
                  "final_dendrites", "dendrites_added", "params_final", "epochs", "seconds",
                  "stopped_because")

ACCURACY_METRICS = {"accuracy", "acc"}
AUC_METRICS = {"auc", "roc_auc"}
PRECISION_AT_1_METRICS = {"precision_at_1", "precision@1", "p@1"}
CHANCE_PRECISION_AT_1 = 0.5


class RunRecordError(UserError, ValueError):
    """A run folder whose summary.json is missing, unreadable or does not follow the contract."""


def _run_from_path(run_dir: Path) -> Run | None:
    """The run a folder ``.../<benchmark>/<variant>/<point>`` holds (factor values as written), if it is one."""
    parts = run_dir.resolve().parts
    match = re.fullmatch(r"(?:(.*)-)?seed(\d+)", parts[-1]) if parts else None
    if not match or len(parts) < 3:
        return None
    items = [re.fullmatch(r"([a-z_]+?)([^a-z_].*)", item) for item in
             (match.group(1).split("-") if match.group(1) else ())]
    if not all(items):
        return None
    return Run(parts[-3], parts[-2], int(match.group(2)), tuple(m.groups() for m in items))


def _fail(path: Path, problem: str, run: Run | None) -> RunRecordError:
    fix = f"re-run that run with `{run.command()}`" if run else "re-run that run"
    return RunRecordError(f"{path}: {problem}. Fix: {fix} (or take it out of the configuration).")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_summary(run_dir: Path) -> dict:
    """Read and check one run's summary.json; raise RunRecordError naming the file otherwise."""
    run_dir = Path(run_dir)
    if run_dir.name == "summary.json":
        run_dir = run_dir.parent
    path = run_dir / "summary.json"
    run = _run_from_path(run_dir)
    if not path.is_file():
        raise _fail(path, "summary.json is missing (the run did not finish)", run)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(path, f"summary.json is not valid JSON ({err})", run) from err
    if not isinstance(record, dict):
        raise _fail(path, "summary.json is not a JSON object", run)

    missing = [k for k in TOP_LEVEL_KEYS if k not in record]
    if missing:
        raise _fail(path, f"summary.json lacks the keys {missing}", run)
    for part in ("original", "max"):
        block = record[part]
        if not isinstance(block, dict):
            raise _fail(path, f"summary.json '{part}' is not an object", run)
        lacking = [k for k in SCORE_KEYS if k not in block]
        if lacking:
            raise _fail(path, f"summary.json '{part}' lacks the keys {lacking}", run)
        not_numbers = [k for k in SCORE_KEYS if not _is_number(block[k])]
        if not_numbers:
            raise _fail(path, f"summary.json '{part}' has non-numeric {not_numbers}", run)
    for key in ("final_dendrites", "dendrites_added", "params_final", "epochs", "seconds"):
        if not _is_number(record[key]):
            raise _fail(path, f"summary.json '{key}' is not a number ({record[key]!r})", run)
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        raise _fail(path, f"summary.json 'seed' is not an integer ({record['seed']!r})", run)
    if record["mode"] not in ("max", "min"):
        raise _fail(path, f"summary.json 'mode' must be 'max' or 'min', not {record['mode']!r}", run)
    factors = record.get("factors") or {}
    if not isinstance(factors, dict):
        raise _fail(path, f"summary.json 'factors' is not an object ({factors!r})", run)

    # The folder must be the one this record belongs in (a copied or misplaced summary is an error).
    recorded = Run(record["benchmark"], record["variant"], record["seed"], tuple(factors.items()))
    folder = "/".join(run_dir.resolve().parts[-3:])
    if folder != recorded.label:
        raise _fail(path, f"summary.json says {recorded.label} but the folder is {folder}", recorded)
    return record


def load_summaries(run_dirs: list[Path], benchmark: str | None = None) -> pd.DataFrame:
    """One row per run of the given run folders: benchmark, variant, one column per factor, then
    ``RUN_COLUMNS``, then the provenance columns of the session that finished the run.

    ``benchmark``, when given, must match every record. Two folders holding the same run, or an empty
    list, are errors.
    """
    if not run_dirs:
        raise ValueError("no run folders given (expected results/<benchmark>/<variant>/<point>)")
    rows, factor_names = [], []
    for run_dir in run_dirs:
        rec = read_summary(Path(run_dir))
        if benchmark is not None and rec["benchmark"] != benchmark:
            raise RunRecordError(f"{Path(run_dir) / 'summary.json'}: benchmark is "
                                 f"{rec['benchmark']!r}, expected {benchmark!r}")
        try:
            gain = improvement(rec["original"]["test"], rec["max"]["test"], rec["metric"])
        except ValueError as err:
            raise RunRecordError(f"{Path(run_dir) / 'summary.json'}: {err}") from err
        factors = rec.get("factors") or {}
        factor_names += [f for f in factors if f not in factor_names]
        rows.append({
            "benchmark": rec["benchmark"],
            "variant": rec["variant"],
            **factors,
            "seed": rec["seed"],
            "metric": rec["metric"],
            "original_val": float(rec["original"]["val"]),
            "original_test": float(rec["original"]["test"]),
            "max_val": float(rec["max"]["val"]),
            "max_test": float(rec["max"]["test"]),
            "dendrites": int(rec["final_dendrites"]),
            "params": int(rec["params_final"]),
            "params_original": int(rec["original"]["params"]),
            "epochs": int(rec["epochs"]),
            "seconds": float(rec["seconds"]),
            "improvement": gain,
            "chance_level": bool(rec.get("chance_level", False)),
            "stopped_because": rec["stopped_because"],
            **dict(zip(("neuron_cycles_at_cap", "dendrite_phases_at_cap"),
                       cycles_at_cap(Path(run_dir), rec["stopped_because"]))),
            "profile": rec.get("profile", ""),
            **provenance_columns(rec.get("provenance")),
        })
    provenance = [c for row in rows for c in row if c.startswith("prov_")]
    columns = BASE_COLUMNS + factor_names + RUN_COLUMNS + list(dict.fromkeys(provenance))
    df = pd.DataFrame(rows, columns=columns)
    keys = ["benchmark", "variant", *factor_names, "seed"]
    dup = df[df.duplicated(keys, keep=False)]
    if not dup.empty:
        raise ValueError(f"the same run appears more than once: {sorted(map(tuple, dup[keys].astype(str).values))}")
    if df["benchmark"].nunique() > 1:
        raise ValueError(f"runs of several benchmarks mixed: {sorted(df['benchmark'].unique())}")
    return df.sort_values(["variant", *factor_names, "seed"], kind="stable").reset_index(drop=True)


def cycles_at_cap(run_dir: Path, stopped_because: str) -> tuple[float, float]:
    """(neuron cycles, dendrite phases) of a run that ended at a length limit instead of by their patience, from
    its epochs.csv and the limits its config.json names (NaN, NaN when either file is missing).

    The limits: ``max_cycle_epochs`` (either phase), ``cap_dendrite_phase`` (no dendrite phase longer than the
    first neuron cycle), ``max_dendrite_epochs`` (no dendrite phase longer than that) and ``max_total_epochs``
    (it cuts the run's last cycle: ``stopped_because`` says so).
    Fixed cycle lengths (``fixed_cycle_epochs``) are a protocol, not a cap, and a compute-matched control's
    cycles copy its reference's: neither is counted. A cycle that reached its limit in the epoch its patience
    ran out is counted as at the limit (the records cannot tell the two apart)."""
    config, epochs = Path(run_dir) / "config.json", Path(run_dir) / "epochs.csv"
    if not (config.is_file() and epochs.is_file()):
        return math.nan, math.nan
    pb = json.loads(config.read_text()).get("pb", {})
    lengths: dict[int, list] = {}  # cycle -> [phase, epochs]
    with open(epochs, newline="") as f:
        for row in csv.DictReader(f):
            lengths.setdefault(int(row["cycle"]), [row["phase"], 0])[1] += 1
    order = sorted(lengths)
    first = lengths[order[0]][1] if order else 0
    fixed = pb.get("fixed_cycle_epochs") is not None
    cap = None if fixed else pb.get("max_cycle_epochs")
    dendrite_cap = None if fixed else pb.get("max_dendrite_epochs")
    counts = {"neuron": 0, "dendrite": 0}
    for i, cycle in enumerate(order):
        phase, n = lengths[cycle]
        at_cap = (cap is not None and n >= cap) \
            or (phase == "dendrite" and pb.get("cap_dendrite_phase", False) and n >= first) \
            or (phase == "dendrite" and dendrite_cap is not None and n >= dendrite_cap) \
            or (i == len(order) - 1 and stopped_because == "max_total_epochs reached")
        counts[phase] += int(at_cap)
    return counts["neuron"], counts["dendrite"]


def provenance_columns(provenance: dict | None) -> dict:
    """The flat provenance of a run's last session as ``prov_*`` columns (empty for older records)."""
    if not provenance:
        return {}
    from .provenance import provenance_row

    return {f"prov_{k}": v for k, v in provenance_row(provenance).items()}


def factor_columns(df: pd.DataFrame) -> list[str]:
    """The factor columns of a summary table (those between "variant" and "seed")."""
    cols = list(df.columns)
    return cols[cols.index("variant") + 1:cols.index("seed")]


def by_dendrites(run_dirs: list[Path]) -> pd.DataFrame:
    """Every neuron cycle of every run: its dendrite count, parameters, and the validation-selected
    scores of that cycle (from the run's ``cycles.csv``). PhysioNet's Figures 10 and 11 read this."""
    rows, factor_names = [], []
    for run_dir in run_dirs:
        rec = read_summary(Path(run_dir))
        factors = rec.get("factors") or {}
        factor_names += [f for f in factors if f not in factor_names]
        ids = {"benchmark": rec["benchmark"], "variant": rec["variant"], **factors, "seed": rec["seed"]}
        with open(Path(run_dir) / "cycles.csv", newline="") as f:
            for cycle in csv.DictReader(f):
                if cycle["phase"] == "neuron":
                    rows.append({**ids, **{k: float(cycle[k]) if k in ("val", "test") else int(cycle[k])
                                           for k in BY_DENDRITES_COLUMNS}})
    return pd.DataFrame(rows, columns=BASE_COLUMNS + factor_names + ["seed"] + BY_DENDRITES_COLUMNS)


def dendrite_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1: how many runs of each variant end with each number of dendrites.

    Columns variant, dendrites, runs. Every count from 0 to the largest count present in ``df``
    (over all variants, so the variants' rows line up) is listed, zeros included.
    """
    if df.empty:
        return pd.DataFrame({"variant": pd.Series(dtype=object), "dendrites": pd.Series(dtype=int),
                             "runs": pd.Series(dtype=int)})
    top = int(df["dendrites"].max())
    rows = []
    for variant in sorted(df["variant"].unique()):
        counts = df.loc[df["variant"] == variant, "dendrites"].astype(int).value_counts()
        rows += [{"variant": variant, "dendrites": k, "runs": int(counts.get(k, 0))}
                 for k in range(top + 1)]
    return pd.DataFrame(rows, columns=["variant", "dendrites", "runs"])


def improvement(original, maximum, metric: str):
    """Relative improvement of ``maximum`` over ``original`` for ``metric`` (see module doc).

    Works on scalars (returns a float) and on arrays/Series (returns an array). NaN where the
    formula is undefined.
    """
    o = np.asarray(original, dtype=float)
    m = np.asarray(maximum, dtype=float)
    finite = np.concatenate([o.ravel(), m.ravel()])
    finite = finite[np.isfinite(finite)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        raise ValueError(f"{metric} scores must be fractions in [0, 1] (got values in "
                         f"[{finite.min()}, {finite.max()}]); percentages are not accepted")
    name = metric.lower()
    with np.errstate(divide="ignore", invalid="ignore"):
        if name in ACCURACY_METRICS:
            err_o, err_m = 1.0 - o, 1.0 - m
            out = np.where(err_o > 0, (err_o - err_m) / err_o, np.nan)
        elif name in AUC_METRICS:
            out = np.where(1.0 - o > 0, (m - o) / (1.0 - o), np.nan)
        elif name in PRECISION_AT_1_METRICS:
            margin = o - CHANCE_PRECISION_AT_1
            out = np.where(margin > 0, (m - o) / margin, np.nan)
        else:
            known = sorted(ACCURACY_METRICS | AUC_METRICS | PRECISION_AT_1_METRICS)
            raise ValueError(f"no improvement formula for metric {metric!r}; known: {known}")
    return float(out) if out.ndim == 0 else out


IMPROVEMENT_COLUMNS = ["n", "metric", "mean_original_test", "mean_max_test", "improvement_of_means",
                       "mean_improvement", "median_improvement"]


def improvement_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant (and factor values): n, mean original/max test score, improvement of the means, and the
    mean and median of the per-run improvements."""
    keys = ["variant", *factor_columns(df)] if "seed" in df.columns and "variant" in df.columns else ["variant"]
    rows = []
    for ids, group in (df.groupby(keys, sort=True) if len(df) else []):
        ids = ids if isinstance(ids, tuple) else (ids,)
        metric = group["metric"].iloc[0]
        mo, mm = group["original_test"].mean(), group["max_test"].mean()
        per_run = improvement(group["original_test"].to_numpy(), group["max_test"].to_numpy(), metric)
        rows.append({
            **dict(zip(keys, ids)), "metric": metric, "n": len(group),
            "mean_original_test": mo, "mean_max_test": mm,
            "improvement_of_means": improvement(mo, mm, metric),
            "mean_improvement": float(np.nanmean(per_run)) if np.isfinite(per_run).any() else math.nan,
            "median_improvement": float(np.nanmedian(per_run)) if np.isfinite(per_run).any() else math.nan,
        })
    return pd.DataFrame(rows, columns=keys + IMPROVEMENT_COLUMNS)


def write_csv_atomic(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` (no index) to ``path`` atomically (see :func:`pb_core.records.atomic_write_bytes`)."""
    atomic_write_text(Path(path), df.to_csv(index=False))
    return Path(path)
