"""results/paper_comparison.csv and results/compute_budget.csv on synthetic run folders: each headline is
computed as config/paper.yaml says, with an interval that can miss the paper's value, and the budget is
measured seconds x protocol epochs x seeds."""
import math

import numpy as np
import pandas as pd
import pytest

from experiments import config as cfgmod
from experiments.budget import compute_budget, epochs
from experiments.paper import headline_row, paper_comparison
from experiments.pipeline import aggregate
from tests.test_aggregate import write_run


def test_mean_headline_interval_and_whether_the_paper_lies_inside():
    summary = pd.DataFrame({"variant": ["pb"] * 4, "seed": range(4), "max_test": [0.80, 0.81, 0.82, 0.83]})
    spec = {"name": "x", "paper": 0.822, "statistic": "mean", "side": {"variant": "pb", "column": "max_test"}}
    row = headline_row(spec, summary, pd.DataFrame())
    assert row["ours"] == pytest.approx(0.815) and row["n"] == 4
    assert row["ci_low"] < 0.815 < row["ci_high"] and row["paper_inside"] is True
    far = headline_row({**spec, "paper": 0.9}, summary, pd.DataFrame())
    assert far["paper_inside"] is False


def test_best_run_relative_difference_and_ratio():
    summary = pd.DataFrame({"variant": ["pb"] * 3 + ["baseline"] * 3, "width": [0.125] * 3 + [1] * 3,
                            "seed": [0, 1, 2] * 2, "original_test": [0.60, 0.61, 0.55, 0, 0, 0],
                            "max_test": [0.62, 0.64, 0.70, 0.80, 0.80, 0.80], "params": [10] * 3 + [100] * 3})
    best = headline_row({"name": "b", "paper": 0.61, "statistic": "best_run", "rank_by": "max_test",
                         "side": {"variant": "pb", "column": "original_test"}}, summary, pd.DataFrame())
    assert best["ours"] == 0.55 and "seed 2" in best["note"] and best["paper_inside"] is None
    cycles = pd.DataFrame({"variant": ["pb"] * 3, "width": [0.125] * 3, "seed": [0, 1, 2], "dendrites": [3] * 3,
                           "test": [0.88, 0.90, 0.92], "params": [40] * 3})
    rel = headline_row({"name": "r", "paper": 0.027, "statistic": "relative_difference",
                        "side": {"variant": "pb", "factors": {"width": 0.125}, "dendrites": 3, "column": "test"},
                        "control": {"variant": "baseline", "factors": {"width": 1}, "column": "max_test"}},
                       summary, cycles)
    assert rel["ours"] == pytest.approx(0.90 / 0.80 - 1) and rel["ci_low"] > 0.09  # every resample is >= 10%
    assert rel["paper_inside"] is False
    ratio = headline_row({"name": "p", "paper": 0.1, "statistic": "ratio", "relation": "less_than",
                          "side": {"variant": "pb", "factors": {"width": 0.125}, "dendrites": 3, "column": "params"},
                          "control": {"variant": "baseline", "factors": {"width": 1}, "column": "params"}},
                         summary, cycles)
    assert ratio["ours"] == pytest.approx(0.4) and ratio["paper_inside"] is False  # not under a tenth


def test_protocol_epochs_are_arithmetic_in_max_dendrites_only():
    assert epochs("250 * (max_dendrites + 1)", {"max_dendrites": 3}) == 1000
    assert epochs(160, {}) == 160
    with pytest.raises(ValueError, match="not arithmetic"):
        epochs("__import__('os')", {"max_dendrites": 1})


def test_comparison_and_budget_from_run_folders(tmp_path):
    root = tmp_path / "results"
    for seed, (o, m) in enumerate([(0.78, 0.80), (0.79, 0.83)]):
        write_run(root, "tox21", "pb", seed, o, m, dendrites=1)
        write_run(root, "tox21", "baseline", seed, o, o)
    cfg = cfgmod.load_config(overrides=[f"results_dir={root}", "benchmarks.tox21.seeds=2",
                                        "benchmarks.tox21.variants=[baseline, pb]"])
    aggregate(cfg, "tox21")
    table = paper_comparison(cfg)
    tox = table[(table.benchmark == "tox21") & (table.kind == "paper headline")].set_index("quantity")
    assert tox.loc["with dendrites (pb), mean test AUC", "ours"] == pytest.approx(0.815)
    assert tox.loc["replicated TrimNet baseline, mean test AUC", "n"] == 2
    assert (table[table.benchmark == "emnist"]["note"].str.contains("no results yet")).all()
    budget = compute_budget(cfg)
    pb = budget[(budget.benchmark == "tox21") & (budget.variant == "pb")].iloc[0]
    # write_run's epochs take 1.0 s each: 50 seeds x (neuron + dendrite epochs of the protocol) x 1 s
    assert pb.runs == 50 and pb.s_per_neuron_epoch == 1.0
    assert pb.hours == pytest.approx(50 * (pb.neuron_epochs + pb.dendrite_epochs) / 3600)
    assert math.isnan(budget[(budget.benchmark == "tox21") & (budget.variant == "baseline_matched")].iloc[0].hours)
    total = budget[budget.kind == "total"].iloc[0]
    assert total.hours == pytest.approx(np.nansum(budget[budget.kind == "runs"].hours))
