"""EMNIST end to end through the real Snakefile on real images: prepare -> train -> aggregate -> both figures.

A tiny profile (the first 192 training and 64 official test images of the shared partial copy, 2 seeds of
baseline, pb and baseline_matched, 1-epoch cycles, one dendrite) runs in a scratch working
directory whose data folder holds only a link to the real file. Then the figures are drawn again in this
process from the configuration the jobs read, to the same PNG bytes Snakemake wrote, and their artists are
checked against the tables: the curve is the configured run (seed 1, not the default 0), the candles are the
summary's ``improvement`` column, which is the test error reduction original -> max of each run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments import config as cfgmod
from experiments.emnist import figures
from experiments.emnist.meta import PARTIAL_NPZ
from experiments.outputs import OutputContext
from experiments.registry import get_info

from workflow import link_user_data, run_tiny_profile

VARIANTS = ["baseline", "pb", "baseline_matched"]
TREATMENTS, CONTROLS = ["pb"], ["baseline", "baseline_matched"]
SEEDS = (0, 1)
LIMIT = {"train": 192, "test": 64}
CURVE_SEED = 1
TARGETS = ["figures/emnist_curve.pdf", "figures/emnist_error_reduction.pdf"]

TINY = {
    "download": False,
    "benchmarks": {"emnist": {
        "seeds": len(SEEDS), "variants": VARIANTS,
        "comparisons": {"treatments": TREATMENTS, "controls": CONTROLS, "extra": []},
        "data": {"source": "partial_npz", "limit": LIMIT},
        "train": {"train_score": "running", "eval_batch_size": 64},
        "pb": {"neuron_patience": 1, "dendrite_patience": 1, "max_cycle_epochs": 1, "max_dendrites": 1,
               "candidates": 1},
        "outputs": {"curve": {"variant": "pb", "seed": CURVE_SEED},
                    "error_reduction": {"variants": ["pb", "baseline_matched"]}},
    }},
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, real_data_dir):
    work = tmp_path_factory.mktemp("emnist_pipeline")
    user = link_user_data(work, real_data_dir, [PARTIAL_NPZ])
    run_tiny_profile(work, {**TINY, "data_dir": str(user)}, TARGETS)
    return work


def resolved_config(work: Path, figures_dir: Path) -> dict:
    """The configuration the jobs read (logs/config/<hash>.json), its folders made absolute; figures elsewhere."""
    files = list((work / "logs" / "config").glob("*.json"))
    assert len(files) == 1, files
    cfg = cfgmod.read_config_json(files[0])
    for key in ("data_dir", "cache_dir", "results_dir", "logs_dir"):
        cfg[key] = str(work / cfg[key])
    cfg["figures_dir"] = str(figures_dir)
    return cfg


def redraw(work: Path, tmp_path: Path, name: str):
    """Draw output ``name`` again in this process; (its figure, its PNG bytes, the PNG Snakemake wrote)."""
    cfg = resolved_config(work, tmp_path)
    info = get_info(cfg, "emnist")
    ctx = OutputContext(cfg, "emnist", info, info.output(name))
    fig = figures.draw_curve(ctx) if name == "curve" else figures.draw_error_reduction(ctx)
    return fig, (tmp_path / f"emnist_{name}.png").read_bytes(), (work / f"figures/emnist_{name}.png").read_bytes()


def by_gid(fig, prefix):
    return {a.get_gid(): a for a in fig.findobj(lambda a: (a.get_gid() or "").startswith(prefix))}


def test_tables_hold_every_run_and_pair_every_treatment_with_both_controls(pipeline):
    work = pipeline
    for name in TARGETS:
        for suffix in (".pdf", ".png"):
            assert (work / name).with_suffix(suffix).stat().st_size > 5000
    summary = pd.read_csv(work / "results/emnist/summary.csv")
    assert sorted(zip(summary["variant"], summary["seed"])) == sorted((v, s) for v in VARIANTS for s in SEEDS)
    records = {(v, s): json.loads((work / f"results/emnist/{v}/seed{s}/summary.json").read_text())
               for v in VARIANTS for s in SEEDS}
    for record in records.values():
        # The limit reached the runs: 192 training images, the 64 official test images split half and half.
        assert (record["train_images"], record["val_images"], record["test_images"]) == (192, 32, 32)
        assert record["data_source"] == "partial_npz"
    for seed in SEEDS:
        # Every variant of a seed validates on the same images, each seed on its own split.
        assert len({records[(v, seed)]["split_digest"] for v in VARIANTS}) == 1
        # pb grew its one dendrite; the matched control trained exactly as long as pb, the baseline one cycle.
        assert records[("pb", seed)]["dendrites_added"] == 1
        assert records[("baseline", seed)]["epochs"] < records[("pb", seed)]["epochs"]
        assert records[("baseline_matched", seed)]["epochs"] == records[("pb", seed)]["epochs"]
    assert records[("pb", 0)]["split_digest"] != records[("pb", 1)]["split_digest"]
    stats = pd.read_csv(work / "results/emnist/stats.csv")
    for treatment in TREATMENTS:
        for control in CONTROLS:
            rows = stats[(stats.treatment == treatment) & (stats.control == control)]
            assert f"{treatment} max - {control} max" in set(rows["comparison"]), (treatment, control)
            assert (rows["n"] == len(SEEDS)).all()
    assert set(stats["treatment"]) <= set(TREATMENTS) | set(CONTROLS)


def test_error_reduction_figure_shows_each_runs_test_error_reduction(pipeline, tmp_path):
    work = pipeline
    fig, png, made = redraw(work, tmp_path, "error_reduction")
    assert png == made  # the figure checked below is the one the pipeline wrote
    summary = pd.read_csv(work / "results/emnist/summary.csv")
    shown = TINY["benchmarks"]["emnist"]["outputs"]["error_reduction"]["variants"]
    means = by_gid(fig, "mean:")
    assert set(means) == {f"mean:{v}" for v in shown}  # the configured variants, the plain baseline not among them
    for variant in shown:
        rows = summary[summary["variant"] == variant]
        # improvement is SPEC's error reduction (err_original - err_max) / err_original of each run's record
        for row in rows.itertuples():
            record = json.loads((work / f"results/emnist/{variant}/seed{row.seed}/summary.json").read_text())
            o, m = record["original"]["test"], record["max"]["test"]
            assert row.improvement == pytest.approx((m - o) / (1 - o))
        points = by_gid(fig, f"seeds:{variant}")[f"seeds:{variant}"].get_offsets()[:, 1]
        assert sorted(points) == pytest.approx(sorted(100 * rows["improvement"]))
        assert means[f"mean:{variant}"].get_ydata()[0] == pytest.approx(100 * rows["improvement"].mean())
        wick = by_gid(fig, f"wick:{variant}")[f"wick:{variant}"].get_ydata()
        assert list(wick) == pytest.approx([100 * rows["improvement"].min(), 100 * rows["improvement"].max()])


def test_curve_is_the_configured_run_with_its_dendrite_phase(pipeline, tmp_path):
    work = pipeline
    fig, png, made = redraw(work, tmp_path, "curve")
    assert png == made
    epochs = pd.read_csv(work / f"results/emnist/pb/seed{CURVE_SEED}/epochs.csv")
    other = pd.read_csv(work / f"results/emnist/pb/seed{1 - CURVE_SEED}/epochs.csv")
    lines = by_gid(fig, "curve:")
    for column in ("train", "val", "test"):
        y = lines[f"curve:{column}"].get_ydata()
        np.testing.assert_allclose(y, 100 * epochs[column].to_numpy())
    assert not np.allclose(lines["curve:val"].get_ydata(), 100 * other["val"].to_numpy())
    dendrite_epochs = epochs.loc[epochs["phase"] == "dendrite", "epoch"].tolist()
    assert dendrite_epochs and set(by_gid(fig, "dendrite_phase:")) == {f"dendrite_phase:{dendrite_epochs[0]}"}
    switches = epochs.loc[epochs["cycle"].diff().fillna(0) != 0, "epoch"]
    assert set(by_gid(fig, "switch:")) == {f"switch:{e}" for e in switches}
    assert {"paper:original_test", "paper:max_test"} <= set(by_gid(fig, "paper:"))


def test_the_users_data_folder_is_left_as_it_was(pipeline, real_data_dir):
    link = pipeline / "userdata" / PARTIAL_NPZ
    assert link.is_symlink() and link.resolve() == (real_data_dir / PARTIAL_NPZ).resolve()
    assert sorted(p.name for p in (pipeline / "userdata").rglob("*")) == sorted(
        ["emnist_balanced", Path(PARTIAL_NPZ).name])
    assert not (pipeline / "logs" / "download").exists()
