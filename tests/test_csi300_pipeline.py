"""CSI300 end to end through the real Snakefile: prepare (qlib) -> train -> aggregate -> Figure 9 and the
ranking table.

A tiny profile runs in a scratch working directory whose data folder holds only a link to the real HIST stock
index (../shared/data/csi300): the prepare job writes a small market in qlib's format over those real codes
and reads it through qlib's Alpha360 handler; one seed of baseline, pb (one dendrite) and baseline_matched
trains on one-epoch cycles. Then the tables are checked against the runs' own records (the paper's score
selection, its gain above chance 0.5, the pairing by seed), the ranking table against the runs' saved
networks, and Figure 9 is drawn again in this process, to the same PNG bytes, and its artists read back.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments import config as cfgmod
from experiments.csi300.figures import draw_precision
from experiments.outputs import OutputContext
from experiments.registry import get_info

from workflow import link_user_data, run_tiny_profile

STOCK_INDEX = "csi300/csi300_stock_index.npy"
VARIANTS = ["baseline", "pb", "baseline_matched", "wider"]  # wider: the ranking table rebuilds it at its matched width
SEED = 0
HIST_PARAMETERS = 67_969  # hidden size 64 (config/benchmarks/csi300.yaml)
TARGETS = ["figures/csi300_precision.pdf", "results/csi300/ranking_metrics.csv"]

# Three months of history before the first training day (Alpha360 looks 60 trading days back), then one
# month per segment; 14 stocks, 10 in the index at a time. One-epoch cycles: pb trains a neuron epoch, a
# dendrite epoch and a neuron epoch with its dendrite.
TINY = {
    "profile": "tiny",
    "download": False,
    "benchmarks": {"csi300": {
        "seeds": 1, "variants": VARIANTS,
        "data": {"source": "fixture",
                 "fixture": {"start": "2013-01-01", "end": "2013-06-30", "stocks": 14, "members": 10,
                             "concepts": 6, "rebalance_days": 30, "seed": 3},
                 "segments": {"train": ["2013-04-01", "2013-04-30"], "valid": ["2013-05-01", "2013-05-31"],
                              "test": ["2013-06-01", "2013-06-30"]}},
        "pb": {"neuron_patience": 1, "dendrite_patience": 1, "max_cycle_epochs": 1, "max_dendrites": 1},
    }},
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, real_data_dir):
    work = tmp_path_factory.mktemp("csi300_pipeline")
    user = link_user_data(work, real_data_dir, [STOCK_INDEX])
    run_tiny_profile(work, {**TINY, "data_dir": str(user)}, TARGETS)
    return work


def run_folder(work: Path, variant: str) -> Path:
    return work / "results" / "csi300" / variant / f"seed{SEED}"


def records(work: Path) -> dict:
    return {v: json.loads((run_folder(work, v) / "summary.json").read_text()) for v in VARIANTS}


def test_summary_holds_every_run_scored_as_the_paper_selects(pipeline):
    work = pipeline
    summary = pd.read_csv(work / "results/csi300/summary.csv").set_index("variant")
    assert sorted(zip(summary.index, summary["seed"])) == sorted((v, SEED) for v in VARIANTS)
    assert set(summary["metric"]) == {"precision_at_1"}
    recs = records(work)
    for variant, row in summary.iterrows():
        epochs = pd.read_csv(run_folder(work, variant) / "epochs.csv")
        neuron = epochs[epochs["phase"] == "neuron"]
        # SPEC section 2: max = the test score at the best validation epoch of the run; original = the same
        # within the first neuron cycle
        assert row["max_test"] == pytest.approx(neuron.loc[neuron["val"].idxmax(), "test"])
        first = neuron[neuron["cycle"] == 0]
        assert row["original_test"] == pytest.approx(first.loc[first["val"].idxmax(), "test"])
        # Precision@1 is a mean over days of a hit (1) or a miss (0): a multiple of 1 / days of the split
        days = recs[variant]["days"]
        for column, split in (("original_val", "valid"), ("max_val", "valid"), ("max_test", "test")):
            hits = row[column] * days[split]
            assert hits == pytest.approx(round(hits)), (variant, column)
        if variant != "wider":  # wider is the network made as large as pb's final one
            assert row["params_original"] == HIST_PARAMETERS
    assert summary.loc["wider", "params"] == pytest.approx(summary.loc["pb", "params"], rel=0.01)
    # Every variant of the seed but wider (a network of its own) starts from the same first neuron cycle
    shared = summary.drop(index="wider")
    assert shared["original_val"].nunique() == shared["original_test"].nunique() == 1
    # pb grew a dendrite on every wrapped layer (about one more HIST), after a dendrite phase of its own
    pb_epochs = pd.read_csv(run_folder(work, "pb") / "epochs.csv")
    assert recs["pb"]["dendrites_added"] == 1 and "dendrite" in set(pb_epochs["phase"])
    assert 1.8 * HIST_PARAMETERS < pb_epochs["params"].max() < 2.2 * HIST_PARAMETERS
    assert len(pd.read_csv(run_folder(work, "pb") / "correlations.csv")) > 0
    # The compute-matched control trained exactly as many epochs as pb; the plain baseline one cycle
    assert summary.loc["baseline_matched", "epochs"] == summary.loc["pb", "epochs"] == len(pb_epochs)
    assert summary.loc["baseline", "stopped_because"] == "baseline finished"


def test_improvement_is_the_papers_gain_above_chance(pipeline):
    summary = pd.read_csv(pipeline / "results/csi300/summary.csv")
    o, m = summary["original_test"], summary["max_test"]
    # The check below tells the formulas apart only where a run moved and started above chance.
    assert ((m != o) & (o > 0.5)).any(), "the tiny run no longer exercises the formula; change the fixture seed"
    expected = np.where(o > 0.5, (m - o) / (o - 0.5), np.nan)
    np.testing.assert_allclose(summary["improvement"], expected, rtol=1e-12)
    improvement = pd.read_csv(pipeline / "results/csi300/improvement.csv").set_index("variant")
    assert improvement.loc["pb", "mean_improvement"] == pytest.approx(
        summary.loc[summary.variant == "pb", "improvement"].mean())


def test_stats_pair_pb_with_both_controls_on_precision_and_on_the_gain(pipeline):
    summary = pd.read_csv(pipeline / "results/csi300/summary.csv").set_index("variant")
    stats = pd.read_csv(pipeline / "results/csi300/stats.csv").set_index("comparison")
    for control in ("baseline", "baseline_matched"):
        for column, name in (("max_test", "max"), ("improvement", "improvement")):
            row = stats.loc[f"pb {name} - {control} {name}"]
            assert (row["treatment"], row["control"], row["n"]) == ("pb", control, 1)
            assert row["mean_diff"] == pytest.approx(summary.loc["pb", column] - summary.loc[control, column])
        # same seed, same first cycle: the originals agree exactly
        assert stats.loc[f"pb original - {control} original", "mean_diff"] == 0
    # a baseline's one neuron cycle is its whole run: its gain is 0, so the row is pb's own mean gain
    assert summary.loc["baseline", "improvement"] == 0
    assert stats.loc["pb max - pb original", "mean_diff"] == pytest.approx(
        summary.loc["pb", "max_test"] - summary.loc["pb", "original_test"])


def test_ranking_table_scores_each_runs_best_validation_network(pipeline):
    summary = pd.read_csv(pipeline / "results/csi300/summary.csv").set_index("variant")
    table = pd.read_csv(pipeline / "results/csi300/ranking_metrics.csv")
    assert sorted(zip(table["variant"], table["seed"], table["split"])) == sorted(
        (v, SEED, s) for v in VARIANTS for s in ("valid", "test"))
    recs = records(pipeline)
    for row in table.itertuples():
        # model.pt is the network of the run's best validation epoch, dendrites included: scored again, it
        # gives the run's max scores
        column = "max_val" if row.split == "valid" else "max_test"
        assert row.precision_at_1 == pytest.approx(summary.loc[row.variant, column])
        assert row.params == summary.loc[row.variant, "params"]
        assert row.days == recs[row.variant]["days"][row.split]
        assert -1 <= row.ic <= 1 and -1 <= row.rank_ic <= 1
        # with at most 10 stocks a day, the top 100 are every stock, divided by 100 as HIST does
        assert row.precision_at_100 <= 0.1


def by_gid(ax, prefix: str) -> dict:
    return {a.get_gid(): a for a in ax.findobj(lambda a: (a.get_gid() or "").startswith(prefix))}


def test_figure_9_shows_validation_and_test_original_vs_max_of_every_run(pipeline, tmp_path):
    work = pipeline
    files = list((work / "logs" / "config").glob("*.json"))
    assert len(files) == 1, files
    cfg = cfgmod.read_config_json(files[0])  # the configuration the jobs read
    for key in ("data_dir", "cache_dir", "results_dir", "logs_dir"):
        cfg[key] = str(work / cfg[key])
    cfg["figures_dir"] = str(tmp_path)
    info = get_info(cfg, "csi300")
    fig = draw_precision(OutputContext(cfg, "csi300", info, info.output("precision")))
    # the figure checked below is the one the pipeline wrote
    assert (tmp_path / "csi300_precision.png").read_bytes() == (work / "figures/csi300_precision.png").read_bytes()
    assert (work / "figures/csi300_precision.pdf").stat().st_size > 5000
    summary = pd.read_csv(work / "results/csi300/summary.csv").set_index("variant")
    val_ax, test_ax = fig.axes[:2]
    for ax, split in ((val_ax, "val"), (test_ax, "test")):
        seeds = by_gid(ax, "seeds:")
        # wider's first cycle is not the others' shared one: each variant gets its original and its max candle
        assert set(seeds) == {f"seeds:{v}:{kind}" for v in VARIANTS for kind in ("original", "max")}
        for variant in VARIANTS:
            for kind in ("original", "max"):
                assert list(seeds[f"seeds:{variant}:{kind}"].get_ydata()) == pytest.approx(
                    [summary.loc[variant, f"{kind}_{split}"]])
        assert by_gid(ax, "chance:")[f"chance:{'validation' if split == 'val' else 'test'}"].get_ydata()[0] == 0.5
    paper = by_gid(test_ax, "paper:")
    assert paper["paper:paper, best run: original"].get_ydata()[0] == 0.610
    assert paper["paper:paper, best run: max"].get_ydata()[0] == 0.648
    assert not by_gid(val_ax, "paper:")
    assert "tiny profile" in fig.get_suptitle()


def test_the_data_folder_is_untouched_and_qlib_left_nothing_behind(pipeline, real_data_dir):
    work = pipeline
    link = work / "userdata" / STOCK_INDEX
    assert link.is_symlink() and link.resolve() == (real_data_dir / STOCK_INDEX).resolve()
    assert sorted(p.relative_to(work / "userdata").as_posix() for p in (work / "userdata").rglob("*")) == [
        "csi300", STOCK_INDEX]
    assert not (work / "logs" / "download").exists()
    # qlib ran in this working directory (the prepare job): no mlruns or other tracking folder appeared
    assert sorted(p.name for p in work.iterdir()) == sorted(
        [".snakemake", "data", "figures", "logs", "results", "tiny.yaml", "userdata"])
    assert not list(work.rglob("mlruns"))
