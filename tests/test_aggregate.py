"""Tests for experiments/aggregate.py and experiments/stats.py on synthetic run folders."""
import csv
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from experiments import aggregate
from experiments.aggregate import (
    RunRecordError, dendrite_counts, improvement, improvement_summary, load_summaries,
    write_csv_atomic,
)
from experiments.stats import (
    STATS_COLUMNS, bootstrap_mean_ci, default_comparisons, paired_difference, stats_table,
)


def write_run(root, benchmark, variant, seed, original_test, max_test, dendrites=0,
              metric="auc", params=1000, factors=None):
    """Write results/<benchmark>/<variant>/<point>/ exactly as the runner's contract says."""
    from experiments.grid import Run, run_dir

    run = run_dir(root, Run(benchmark, variant, seed, tuple((factors or {}).items())))
    run.mkdir(parents=True)
    per_dendrite = params  # about one model's worth of parameters per dendrite
    original = {"epoch": 3, "cycle": 0, "dendrites": 0, "params": params,
                "train": 0.95, "val": original_test + 0.01, "test": original_test}
    best = {"epoch": 3 + 4 * dendrites, "cycle": 2 * dendrites, "dendrites": dendrites,
            "params": params + dendrites * per_dendrite, "train": 0.97,
            "val": max_test + 0.01, "test": max_test}
    summary = {"benchmark": benchmark, "variant": variant, "seed": seed, "factors": factors or {}, "metric": metric,
               "mode": "max", "original": original, "max": best, "final_dendrites": dendrites,
               "dendrites_added": dendrites + 1, "params_final": best["params"],
               "epochs": 5 + 4 * dendrites, "seconds": 12.5, "stopped_because": "no_improvement"}
    (run / "summary.json").write_text(json.dumps(summary))
    with open(run / "epochs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "cycle", "phase", "dendrites", "train", "val", "test", "loss",
                    "correlation", "lr", "params", "seconds"])
        for e in range(summary["epochs"]):
            cycle = 0 if e < 5 else 1 + (e - 5) // 2
            phase = "neuron" if cycle % 2 == 0 else "dendrite"
            d = cycle // 2
            w.writerow([e, cycle, phase, d, 0.9, 0.8, 0.79, 0.3,
                        0.1 if phase == "dendrite" else "", 1e-3, params * (1 + d), 1.0])
    with open(run / "cycles.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cycle", "phase", "dendrites", "params", "epochs", "best_epoch", "val", "test"])
        w.writerow([0, "neuron", 0, params, 5, 3, original["val"], original_test])
        for d in range(1, dendrites + 1):
            w.writerow([2 * d - 1, "dendrite", d - 1, params * d, 2, 0, original["val"], original_test])
            w.writerow([2 * d, "neuron", d, params * (1 + d), 2, 0, max_test + 0.01, max_test])
    return run


@pytest.fixture
def runs(tmp_path):
    """tox21: pb seeds 1-4 (dendrites 0, 2, 2, 5), baseline seeds 1-4."""
    root = tmp_path / "results"
    dirs = []
    for seed, (o, m, d) in enumerate([(0.78, 0.80, 0), (0.79, 0.83, 2), (0.80, 0.82, 2),
                                      (0.77, 0.81, 5)], start=1):
        dirs.append(write_run(root, "tox21", "pb", seed, o, m, dendrites=d))
        dirs.append(write_run(root, "tox21", "baseline", seed, o, o))
    return dirs


def test_load_summaries_rows_and_columns(runs):
    df = load_summaries(runs, benchmark="tox21")
    assert list(df.columns) == aggregate.SUMMARY_COLUMNS
    assert len(df) == 8
    assert list(df["variant"]) == ["baseline"] * 4 + ["pb"] * 4
    row = df[(df.variant == "pb") & (df.seed == 4)].iloc[0]
    assert row.original_test == pytest.approx(0.77) and row.max_test == pytest.approx(0.81)
    assert row.original_val == pytest.approx(0.78) and row.max_val == pytest.approx(0.82)
    assert row.dendrites == 5 and row.params == 6000 and row.params_original == 1000
    assert row.epochs == 25 and row.seconds == 12.5 and row.metric == "auc"
    assert row.improvement == pytest.approx(0.04 / 0.23)


def test_missing_summary_names_file_and_fix(runs):
    (runs[0] / "summary.json").unlink()
    with pytest.raises(RunRecordError) as err:
        load_summaries(runs)
    msg = str(err.value)
    assert str(runs[0] / "summary.json") in msg
    assert "python -m experiments run tox21 --variant pb --seed 1" in msg
    assert "summary.json is missing" in msg


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"benchmark": "tox21"}'])
def test_malformed_summary_names_file(runs, content):
    (runs[3] / "summary.json").write_text(content)
    with pytest.raises(RunRecordError) as err:
        load_summaries(runs)
    assert str(runs[3] / "summary.json") in str(err.value)
    assert "--variant baseline --seed 2" in str(err.value)


def test_summary_missing_score_key_is_error(runs):
    path = runs[2] / "summary.json"
    rec = json.loads(path.read_text())
    del rec["max"]["test"]
    path.write_text(json.dumps(rec))
    with pytest.raises(RunRecordError, match=r"'max' lacks the keys \['test'\]"):
        load_summaries(runs)


def test_summary_in_wrong_folder_is_error(tmp_path):
    run = write_run(tmp_path / "results", "tox21", "pb", 1, 0.7, 0.8)
    rec = json.loads((run / "summary.json").read_text())
    rec["seed"] = 2
    (run / "summary.json").write_text(json.dumps(rec))
    with pytest.raises(RunRecordError, match="folder is tox21/pb/seed1"):
        load_summaries([run])


def test_wrong_benchmark_and_duplicates_are_errors(runs):
    with pytest.raises(RunRecordError, match="expected 'emnist'"):
        load_summaries(runs, benchmark="emnist")
    with pytest.raises(ValueError, match="more than once"):
        load_summaries(runs + [runs[0]])


def test_dendrite_counts_lists_zeros():
    df = pd.DataFrame({"variant": ["pb"] * 5 + ["baseline"] * 2,
                       "dendrites": [0, 2, 2, 5, 5, 0, 0]})
    counts = dendrite_counts(df)
    assert list(counts.columns) == ["variant", "dendrites", "runs"]
    pb = counts[counts.variant == "pb"]
    assert list(pb.dendrites) == [0, 1, 2, 3, 4, 5]
    assert list(pb.runs) == [1, 0, 2, 0, 0, 2]
    base = counts[counts.variant == "baseline"]
    assert list(base.runs) == [2, 0, 0, 0, 0, 0]
    assert counts.runs.sum() == len(df)


def test_dendrite_counts_paper_table1():
    paper = {0: 2, 1: 2, 2: 8, 3: 11, 4: 5, 5: 2, 6: 7, 7: 7, 8: 2, 9: 2, 10: 1, 11: 0, 12: 1}
    df = pd.DataFrame({"variant": "pb", "dendrites": [k for k, n in paper.items() for _ in range(n)]})
    counts = dendrite_counts(df)
    assert dict(zip(counts.dendrites, counts.runs)) == paper


def test_improvement_formulas_hand_computed():
    # EMNIST: 86.55% -> 87.13%: error 0.1345 -> 0.1287, 4.31% of the error removed.
    assert improvement(0.8655, 0.8713, "accuracy") == pytest.approx(0.0058 / 0.1345)
    assert improvement(0.8655, 0.8713, "accuracy") == pytest.approx(0.0431, abs=5e-5)
    # AUC: 0.8 -> 0.85 closes a quarter of the distance to 1.
    assert improvement(0.8, 0.85, "auc") == pytest.approx(0.25)
    assert improvement(0.789, 0.822, "auc") == pytest.approx(0.033 / 0.211)
    # Precision@1: 0.610 -> 0.648 grows the margin above 0.5 (0.110) by 0.038.
    assert improvement(0.610, 0.648, "precision_at_1") == pytest.approx(0.038 / 0.110)
    assert improvement(0.6, 0.55, "precision_at_1") == pytest.approx(-0.5)
    # Undefined cases are NaN, not a crash or an infinity.
    assert math.isnan(improvement(1.0, 1.0, "auc"))
    assert math.isnan(improvement(0.5, 0.6, "precision_at_1"))
    assert math.isnan(improvement(0.45, 0.6, "precision_at_1"))
    # Vectorised.
    np.testing.assert_allclose(improvement(np.array([0.8, 0.9]), np.array([0.9, 0.9]), "auc"),
                               [0.5, 0.0])
    with pytest.raises(ValueError, match="fractions"):
        improvement(86.55, 87.13, "accuracy")
    with pytest.raises(ValueError, match="no improvement formula"):
        improvement(0.5, 0.6, "f1")


def test_improvement_summary(runs):
    df = load_summaries(runs)
    summ = improvement_summary(df).set_index("variant")
    pb = df[df.variant == "pb"]
    mo, mm = pb.original_test.mean(), pb.max_test.mean()
    assert summ.loc["pb", "improvement_of_means"] == pytest.approx((mm - mo) / (1 - mo))
    assert summ.loc["pb", "mean_improvement"] == pytest.approx(pb.improvement.mean())
    assert summ.loc["baseline", "mean_improvement"] == 0.0


def _shifted(shift, seeds=range(10), rng_seed=3):
    rng = np.random.default_rng(rng_seed)
    base = rng.uniform(0.7, 0.8, size=len(seeds))
    return pd.DataFrame({
        "variant": ["baseline"] * len(seeds) + ["pb"] * len(seeds),
        "seed": list(seeds) * 2,
        "max_test": np.concatenate([base, base + shift]),
        "original_test": np.concatenate([base, base]),
    })


def test_paired_constant_shift():
    res = paired_difference(_shifted(0.03), "pb", "baseline", "max_test")
    assert res["n"] == 10
    assert res["mean_diff"] == pytest.approx(0.03)
    assert res["ci_low"] <= 0.03 + 1e-12 and res["ci_high"] >= 0.03 - 1e-12
    assert res["ci_high"] - res["ci_low"] < 1e-9


def test_paired_matches_scipy_and_ci_contains_mean():
    df = _shifted(0.0)
    noise = np.random.default_rng(11).normal(0.02, 0.03, size=10)
    df.loc[df.variant == "pb", "max_test"] += noise
    res = paired_difference(df, "pb", "baseline", "max_test")
    t = df[df.variant == "pb"].set_index("seed").max_test
    c = df[df.variant == "baseline"].set_index("seed").max_test
    diff = (t - c).sort_index().to_numpy()
    assert res["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon(diff).pvalue)
    assert res["mean_diff"] == pytest.approx(diff.mean())
    assert res["ci_low"] < diff.mean() < res["ci_high"]
    # The bootstrap is deterministic per seed, and the seed matters.
    again = paired_difference(df, "pb", "baseline", "max_test")
    other = paired_difference(df, "pb", "baseline", "max_test", seed=1)
    assert (again["ci_low"], again["ci_high"]) == (res["ci_low"], res["ci_high"])
    assert (other["ci_low"], other["ci_high"]) != (res["ci_low"], res["ci_high"])
    assert bootstrap_mean_ci(diff, seed=5) == bootstrap_mean_ci(diff, seed=5)


def test_unpaired_seeds_raise_or_drop(capsys):
    df = _shifted(0.01)
    df = df[~((df.variant == "baseline") & df.seed.isin([2, 7]))]
    df = pd.concat([df, pd.DataFrame({"variant": ["baseline"], "seed": [42], "max_test": [0.7],
                                      "original_test": [0.7]})])
    with pytest.raises(ValueError) as err:
        paired_difference(df, "pb", "baseline", "max_test")
    assert "only in pb: [2, 7]" in str(err.value) and "only in baseline: [42]" in str(err.value)
    res = paired_difference(df, "pb", "baseline", "max_test", allow_unpaired=True)
    assert res["n"] == 8 and res["seeds"] == [0, 1, 3, 4, 5, 6, 8, 9]
    assert "warning" in capsys.readouterr().out


def test_degenerate_cases_give_nan_with_note():
    one = paired_difference(_shifted(0.02, seeds=[5]), "pb", "baseline", "max_test")
    assert one["n"] == 1 and math.isnan(one["wilcoxon_p"]) and "n=1" in one["note"]
    assert one["ci_low"] == pytest.approx(0.02) and one["ci_high"] == pytest.approx(0.02)
    zero = paired_difference(_shifted(0.0), "pb", "baseline", "max_test")
    assert math.isnan(zero["wilcoxon_p"]) and "all differences are zero" in zero["note"]


def test_stats_table_rows(runs):
    df = load_summaries(runs)
    table = stats_table(df, default_comparisons("pb", "baseline"))
    assert list(table.columns) == STATS_COLUMNS
    assert list(table.comparison) == ["pb max - baseline max", "pb original - baseline original",
                                      "pb max - pb original"]
    within = table.iloc[2]
    pb = df[df.variant == "pb"]
    assert within.mean_diff == pytest.approx((pb.max_test - pb.original_test).mean())
    assert within.mean_treatment == pytest.approx(pb.max_test.mean())
    assert within.n == 4
    assert math.isnan(table.iloc[1].wilcoxon_p)  # original scores are identical here
    with pytest.raises(ValueError, match="no runs of variant 'gd_dendrites'"):
        stats_table(df, default_comparisons("gd_dendrites", "baseline"))


def test_write_csv_atomic_leaves_no_temp(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    out = write_csv_atomic(df, tmp_path / "sub" / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out), df)
    write_csv_atomic(df.iloc[:1], out)  # overwrite
    assert len(pd.read_csv(out)) == 1
    assert os.listdir(tmp_path / "sub") == ["t.csv"]
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_write_csv_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    out = write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_csv_atomic(pd.DataFrame({"a": [2]}), out)
    assert os.listdir(tmp_path) == ["t.csv"]
    assert pd.read_csv(out).a.tolist() == [1]


def test_cli_aggregate_writes_tables_and_names_a_broken_run(runs, tmp_path, capsys):
    from experiments.__main__ import main

    args = ["aggregate", "tox21", "--set", f"results_dir={tmp_path / 'results'}",
            "--set", "benchmarks.tox21.seeds=[1, 2, 3, 4]", "--set", "benchmarks.tox21.variants=[baseline, pb]"]
    assert main(args) == 0
    out = tmp_path / "results" / "tox21"
    assert len(pd.read_csv(out / "summary.csv")) == 8
    counts = pd.read_csv(out / "dendrite_counts.csv")
    assert counts[counts.variant == "pb"].runs.tolist() == [1, 0, 2, 0, 0, 1]
    assert pd.read_csv(out / "stats.csv").comparison.tolist()[0] == "pb max - baseline max"
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    (runs[1] / "summary.json").write_text("")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(runs[1] / "summary.json") in err and "python -m experiments run tox21 --variant baseline --seed 1" in err


def test_factor_columns_pairs_by_factor_and_seed_and_cross_factor_comparisons(tmp_path):
    from experiments.aggregate import by_dendrites
    from experiments.stats import comparison_table, configured_comparisons

    root = tmp_path / "results"
    dirs = []
    pb = {0.5: [0.70, 0.72, 0.74], 1: [0.80, 0.81, 0.79]}
    base = {0.5: [0.68, 0.69, 0.71], 1: [0.78, 0.80, 0.80]}
    for width in (0.5, 1):
        for seed in range(3):
            dirs.append(write_run(root, "physio", "pb", seed, base[width][seed], pb[width][seed], dendrites=2,
                                  factors={"width": width}))
            dirs.append(write_run(root, "physio", "baseline", seed, base[width][seed], base[width][seed],
                                  factors={"width": width}))
    df = load_summaries(dirs)
    assert list(df.columns[:4]) == ["benchmark", "variant", "width", "seed"]
    assert (root / "physio" / "pb" / "width0.5-seed2" / "summary.json").is_file()
    block = {"comparisons": {"treatments": ["pb"], "controls": ["baseline"], "extra": [
        {"treatment": {"variant": "pb", "factors": {"width": 0.5}, "dendrites": 2},
         "control": {"variant": "baseline", "factors": {"width": 1}}}]}}
    cycles = by_dendrites(dirs)
    assert set(cycles[cycles.variant == "pb"]["dendrites"]) == {0, 1, 2}
    table = comparison_table(configured_comparisons(block, df, ["width"]), df, cycles)
    rows = table.set_index(["comparison", "factors"])
    half = rows.loc[("pb max - baseline max", "width=0.5")]
    assert half.n == 3 and half.mean_diff == pytest.approx(np.mean(np.subtract(pb[0.5], base[0.5])))
    one = rows.loc[("pb max - baseline max", "width=1")]
    assert one.mean_diff == pytest.approx(np.mean(np.subtract(pb[1], base[1])))
    cross = table[table.factors == "width=0.5 vs width=1"].iloc[0]
    assert cross.comparison == "pb width=0.5 2 dendrites test - baseline width=1 max"
    assert cross.mean_diff == pytest.approx(np.mean(np.subtract(pb[0.5], base[1])))
    # A factor combination where one side has no runs gives no row for it (and no error).
    table = comparison_table(configured_comparisons(block, df[~((df.variant == "baseline") & (df.width == 1))],
                                                    ["width"])[:3], df, cycles)
    assert set(table.factors) == {"width=0.5"}


def test_stats_has_a_header_even_without_pairs(runs, tmp_path):
    from experiments.__main__ import main
    from experiments.stats import comparison_table

    assert list(comparison_table([], load_summaries(runs)).columns) == STATS_COLUMNS
    args = ["aggregate", "tox21", "--set", f"results_dir={tmp_path / 'results'}",
            "--set", "benchmarks.tox21.seeds=[1, 2, 3, 4]", "--set", "benchmarks.tox21.variants=[baseline]"]
    assert main(args) == 0
    stats = (tmp_path / "results" / "tox21" / "stats.csv").read_text()
    assert stats.strip() == ",".join(STATS_COLUMNS)
    improvement = pd.read_csv(tmp_path / "results" / "tox21" / "improvement.csv")
    assert improvement.variant.tolist() == ["baseline"] and improvement.n.tolist() == [4]


def test_an_undefined_score_drops_its_pair_with_a_note():
    from experiments.stats import Side, comparison_table

    df = pd.DataFrame({"variant": ["pb"] * 3 + ["baseline"] * 3, "seed": [0, 1, 2] * 2,
                       "improvement": [0.2, np.nan, 0.4, 0.0, 0.0, 0.0]})
    row = comparison_table([(Side("pb", (), "improvement"), Side("baseline", (), "improvement"))], df).iloc[0]
    assert row.n == 2 and row.mean_diff == pytest.approx(0.3) and "dropped seeds [1]" in row.note


def _cycles_run(tmp_path, lengths, pb):
    """A run folder with epochs.csv of the given (phase, epochs) cycles and config.json's pb limits."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"pb": pb}))
    rows = [f"{e},{c},{phase},0,0.9,0.8,0.8,0.1,,0.001,100,1.0"
            for c, (phase, n) in enumerate(lengths) for e in range(n)]
    (folder / "epochs.csv").write_text("epoch,cycle,phase,dendrites,train,val,test,loss,correlation,lr,params,seconds\n"
                                       + "\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("lengths, pb, stopped, expected", [
    # cap_dendrite_phase: a dendrite phase as long as the first neuron cycle (6) hit the cap; a shorter one did not
    ([("neuron", 6), ("dendrite", 6), ("neuron", 4), ("dendrite", 3), ("neuron", 5)], {"cap_dendrite_phase": True},
     "neuron cycle did not improve validation", (0, 1)),
    # max_cycle_epochs 4: every cycle of 4 epochs, either phase
    ([("neuron", 4), ("dendrite", 2), ("neuron", 4)], {"max_cycle_epochs": 4}, "max_dendrites reached", (2, 0)),
    # fixed cycle lengths are the protocol, not a cap; max_total_epochs cut the last (dendrite) phase
    ([("neuron", 5), ("dendrite", 5)], {"fixed_cycle_epochs": 5, "max_cycle_epochs": 5}, "max_total_epochs reached",
     (0, 1)),
    # by patience throughout
    ([("neuron", 9), ("dendrite", 3), ("neuron", 7)], {"cap_dendrite_phase": False}, "max_dendrites reached", (0, 0)),
])
def test_cycles_at_cap_count_the_cycles_a_limit_ended(tmp_path, lengths, pb, stopped, expected):
    assert aggregate.cycles_at_cap(_cycles_run(tmp_path, lengths, pb), stopped) == expected


def test_cycles_at_cap_are_unknown_without_the_runs_settings(runs):
    df = load_summaries(runs)
    assert df["neuron_cycles_at_cap"].isna().all() and df["dendrite_phases_at_cap"].isna().all()
