"""The Snakemake workflow end to end on real PhysioNet 2012 records: prepare -> train -> aggregate -> Figures 10
and 11, and the timing job -> Table 2.

A tiny profile runs the real Snakefile in a scratch working directory: the first 80 records of set A by
RecordID (``data.limit``), one seed, 1-epoch cycles; width 0.125 trains pb with 2 dendrites (every count, as
the paper's protocol: ``stop_on_no_improvement: false``), width 0.25 a baseline only, and the cross-width
comparison is pb's cycle with 2 dendrites against the width-0.25 baseline (the paper's 0.125-with-3 vs 1,
made small). The data folder holds links to the real files, so a pipeline that rewrote its input would
break the links, not the data.

Checked: every run and every neuron cycle reaches the tables (summary per width, by_dendrites per dendrite
count, scores equal to the runs' own records), the cross-width row of stats.csv is the difference of those
very scores, the prepared cache holds exactly the first 80 records, and the timing table was measured by
its own rule, with a row for every neuron and dendrite cycle of each width's schedule.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from workflow import link_user_data, run_tiny_profile

LIMIT = 80
TARGETS = ["figures/physionet_params_auc.pdf", "figures/physionet_auc_by_arch.pdf", "results/physionet/table2.csv"]
TINY = {
    "download": False,
    "benchmarks": {"physionet": {
        "seeds": 1,
        "factors": {"width": [0.125, 0.25]},
        "factor_overrides": {"width": {0.125: {"variants": ["pb"], "pb": {"max_dendrites": 2}},
                                       0.25: {"variants": ["baseline"]}}},
        "comparisons": {"treatments": ["pb"], "controls": [], "extra": [
            {"treatment": {"variant": "pb", "factors": {"width": 0.125}, "dendrites": 2, "column": "test"},
             "control": {"variant": "baseline", "factors": {"width": 0.25}, "column": "max_test"}}]},
        "data": {"limit": LIMIT},
        "pb": {"fixed_cycle_epochs": 1},
        "outputs": {"timing": {"train_batches": 1, "eval_batches": 1, "warmup_batches": 0,
                               "cpu_inference_inputs": 2}},
    }},
}
# (width, phase, dendrites) of every cycle of each width's schedule: pb with 2 dendrites, a baseline.
SCHEDULE = [(0.125, "neuron", 0), (0.125, "dendrite", 0), (0.125, "neuron", 1), (0.125, "dendrite", 1),
            (0.125, "neuron", 2), (0.25, "neuron", 0)]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, real_data_dir):
    work = tmp_path_factory.mktemp("physionet_pipeline")
    user = link_user_data(work, real_data_dir, ["physionet2012/set-a.tar.gz", "physionet2012/Outcomes-a.txt"])
    run_tiny_profile(work, {**TINY, "data_dir": str(user)}, TARGETS)
    return work


def run_folder(work: Path, variant: str, width: float) -> Path:
    return work / "results/physionet" / variant / f"width{width:g}-seed0"


def test_figures_and_tables_exist(pipeline):
    for name in ("physionet_params_auc", "physionet_auc_by_arch"):
        for suffix in (".pdf", ".png"):
            assert (pipeline / "figures" / f"{name}{suffix}").stat().st_size > 5000
    assert (pipeline / "results/physionet/table2.md").is_file()
    for link in (pipeline / "userdata" / "physionet2012").iterdir():
        assert link.is_symlink()  # the user's data is untouched


def test_prepared_cache_holds_the_first_records(pipeline, real_data_dir):
    cache = torch.load(pipeline / f"data/cache/physionet/prepared-a-q0.016-first{LIMIT}.pt", weights_only=True)
    outcomes = (real_data_dir / "physionet2012" / "Outcomes-a.txt").read_text().splitlines()[1:]
    first = sorted((int(line.split(",")[0]), int(line.split(",")[-1])) for line in outcomes if line.strip())[:LIMIT]
    assert cache["record_ids"].tolist() == [i for i, _ in first]
    assert cache["labels"].tolist() == [label for _, label in first]
    assert cache["data"]["limit"] == LIMIT


def test_every_run_and_cycle_reaches_the_tables(pipeline):
    work = pipeline
    summary = pd.read_csv(work / "results/physionet/summary.csv")
    assert sorted(zip(summary["variant"], summary["width"])) == [("baseline", 0.25), ("pb", 0.125)]
    pb = summary[summary["variant"] == "pb"].iloc[0]
    record = json.loads((run_folder(work, "pb", 0.125) / "summary.json").read_text())
    # 64 of the 80 records are the training part: 51 train, 13 validation (80/20, then 80/20), 16 test.
    assert record["records"] == {"train": 51, "val": 13, "test": 16}
    assert record["params_by_part"]["total"] == 27_289 and pb["params_original"] == 27_289
    assert pb["epochs"] == 5  # 3 neuron and 2 dendrite cycles of one epoch: every dendrite count was trained
    by_d = pd.read_csv(work / "results/physionet/by_dendrites.csv")
    pb_rows = by_d[by_d["variant"] == "pb"].sort_values("dendrites")
    assert pb_rows["dendrites"].tolist() == [0, 1, 2] and (pb_rows["width"] == 0.125).all()
    assert pb_rows["params"].is_monotonic_increasing and pb_rows["params"].iloc[2] > 2 * 27_289
    assert by_d[by_d["variant"] == "baseline"][["width", "dendrites"]].values.tolist() == [[0.25, 0]]
    # Each neuron cycle's score is that cycle's own epoch in the run's records (1-epoch cycles).
    epochs = pd.read_csv(run_folder(work, "pb", 0.125) / "epochs.csv")
    neuron = epochs[epochs["phase"] == "neuron"].sort_values("dendrites")
    assert pb_rows["test"].tolist() == pytest.approx(neuron["test"].tolist())
    assert pb_rows["val"].tolist() == pytest.approx(neuron["val"].tolist())
    assert epochs["phase"].tolist() == ["neuron", "dendrite", "neuron", "dendrite", "neuron"]


def test_cross_width_comparison_pairs_the_right_scores(pipeline):
    work = pipeline
    stats = pd.read_csv(work / "results/physionet/stats.csv")
    cross = stats[stats["factors"] == "width=0.125 vs width=0.25"]
    assert len(cross) == 1
    row = cross.iloc[0]
    assert (row["treatment"], row["control"], row["column"], row["n"]) == ("pb", "baseline", "test", 1)
    by_d = pd.read_csv(work / "results/physionet/by_dendrites.csv")
    treated = by_d[(by_d["variant"] == "pb") & (by_d["dendrites"] == 2)]["test"].item()
    summary = pd.read_csv(work / "results/physionet/summary.csv")
    control = summary[summary["variant"] == "baseline"]["max_test"].item()
    assert row["mean_diff"] == pytest.approx(treated - control)
    # The within-run comparison of the width that has dendrites; none for a baseline-only width.
    assert set(stats[stats["factors"] == "width=0.125"]["comparison"]) == {"pb max - pb original"}
    assert not (stats["factors"] == "width=0.25").any()


def test_timing_was_measured_by_its_own_rule_for_every_cycle(pipeline):
    work = pipeline
    assert (work / "logs/measure/physionet_timing.benchmark.tsv").is_file()
    assert not (work / "logs/table/physionet_timing.log").exists()
    timing = pd.read_csv(work / "results/physionet/timing.csv")
    assert list(zip(timing["width"], timing["phase"], timing["dendrites"])) == SCHEDULE
    assert (timing["seconds_per_epoch"] > 0).all() and (timing["epochs_per_cycle"] == 1).all()
    assert (timing["train_batches"] == 2).all() and (timing["train_batches_timed"] == 1).all()  # 51 / batch 50
    # The parameters timed are those the run trained with, dendrite by dendrite.
    by_d = pd.read_csv(work / "results/physionet/by_dendrites.csv").set_index(["variant", "dendrites"])
    neuron = timing[(timing["phase"] == "neuron") & (timing["width"] == 0.125)]
    assert neuron["params"].tolist() == [by_d.loc[("pb", k), "params"] for k in range(3)]
    table2 = pd.read_csv(work / "results/physionet/table2.csv")
    assert table2["phase"].tolist() == [p for _, p, _ in SCHEDULE[:5]] + ["total", "neuron", "total"]
    assert table2.iloc[0]["paper_seconds_per_epoch"] == 5.15  # width 0.125, no dendrite: the paper's value
    totals = table2[table2["phase"] == "total"].set_index("width")["seconds_per_cycle"]
    assert totals[0.125] == pytest.approx(timing[timing["width"] == 0.125]["seconds_per_cycle"].sum())
