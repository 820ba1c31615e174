"""The CSI300 Experiment on the fixture market: daily batches in a seeded order, clipping only in neuron
phases, Precision@1 as the selecting score, stale caches refused, the ranking table and Figure 9."""
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

import pb_core
from csi300_market import prepared_market, settings_for
from pb_core.controller import _snapshot  # the format of a run's model.pt
from experiments.csi300 import benchmark as bench
from experiments.csi300.data import DaySplit, load_prepared
from experiments.csi300.figures import precision_figure
from experiments.csi300.report import run_rows
from experiments.plotting import save_figure_atomic
from experiments.registry import EpochContext, StaleCacheError


@pytest.fixture(scope="module")
def market(real_data_dir):
    return prepared_market(str(real_data_dir))


@pytest.fixture
def experiment(market):
    return bench.BENCHMARK.build(settings_for(market.cfg, "pb", seed=4), market.prepared, "cpu")


def _recorded_days(monkeypatch):
    seen = []
    real = DaySplit.day

    def day(self, i):
        seen.append((len(self), i))
        return real(self, i)
    monkeypatch.setattr(DaySplit, "day", day)
    return seen


class Linear360(torch.nn.Module):
    """A stand-in for HIST where only the loop is under test (same inputs, a fraction of the cost)."""
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(360))

    def forward(self, x, concepts, market_value):
        return x @ self.w


def test_an_epoch_visits_every_training_day_once_in_a_seeded_order(experiment, market, monkeypatch):
    seen = _recorded_days(monkeypatch)
    days = experiment.extra["days"]["train"]

    def epoch_order(exp, epoch, cycle=0):
        seen.clear()
        model = Linear360()
        exp.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), EpochContext("neuron", epoch, cycle))
        return [i for n, i in seen]
    first = epoch_order(experiment, 0)
    assert sorted(first) == list(range(days)) and first != sorted(first)
    assert epoch_order(experiment, 1) != first and epoch_order(experiment, 0, cycle=2) != first
    again = bench.BENCHMARK.build(settings_for(market.cfg, "baseline", seed=4), market.prepared, "cpu")
    assert epoch_order(again, 0) == first  # the same order for every variant of a seed
    other_seed = bench.BENCHMARK.build(settings_for(market.cfg, "pb", seed=5), market.prepared, "cpu")
    assert epoch_order(other_seed, 0) != first


def test_training_updates_the_network_and_clips_only_its_gradients_in_neuron_phases(experiment, monkeypatch):
    model = experiment.model
    clipped = []
    real_clip = torch.nn.utils.clip_grad_value_

    def spy(parameters, clip_value):
        parameters = list(parameters)
        clipped.append((len(parameters), clip_value))
        return real_clip(parameters, clip_value)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_value_", spy)
    network = list(model.parameters())[:3]
    opt = experiment.optimizer_factory(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    loss = experiment.train_epoch(model, opt, EpochContext("neuron", 0, 0, network_parameters=network))
    days = experiment.extra["days"]["train"]
    assert clipped == [(3, 3.0)] * days  # every step, on the network's parameters the runner names
    assert np.isfinite(loss) and 0.5 < loss < 2  # MSE on labels of unit spread (CSRankNorm)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    clipped.clear()
    stand_in = Linear360()
    experiment.train_epoch(stand_in, torch.optim.SGD(stand_in.parameters(), lr=0.1),
                           EpochContext("dendrite", 1, 1, network_parameters=list(stand_in.parameters())))
    assert clipped == []  # a dendrite phase trains candidates: their gradients are not clipped


def test_evaluate_is_the_mean_daily_precision_at_1_of_train_valid_test(experiment, market):
    model = experiment.model.eval()
    scores = experiment.evaluate(model)
    cache = load_prepared(market.prepared, bench.prepare_settings(market.block), "csi300")
    for name, score in zip(bench.SPLITS, scores):
        split = DaySplit.from_cache(cache, name)
        hits = []
        with torch.no_grad():
            for i in range(len(split)):
                x, concepts, market_value, labels = split.day(i)
                hits.append(float(labels[torch.argmax(model(x, concepts, market_value))] > 0))
        assert score == pytest.approx(np.mean(hits))
    assert experiment.head == "fc_out" and experiment.extra["hist_parameters"] == 67_969


def test_running_train_score_is_the_training_pass_own_precision_and_scores_no_training_day_again(
        market, monkeypatch):
    settings = settings_for(market.cfg, "pb", seed=4)
    settings["train"]["train_score"] = "running"
    exp = bench.BENCHMARK.build(settings, market.prepared, "cpu")
    eval_exp = bench.BENCHMARK.build(settings_for(market.cfg, "pb", seed=4), market.prepared, "cpu")
    days = exp.extra["days"]
    with pytest.raises(RuntimeError, match="training pass"):
        exp.evaluate(exp.model)
    seen = _recorded_days(monkeypatch)
    expected, model = [], Linear360()
    torch.nn.init.normal_(model.w, std=0.1, generator=torch.Generator().manual_seed(0))
    forward = model.forward

    def recording(x, concepts, market_value):  # the prediction before the day's update, as the loop sees it
        pred = forward(x, concepts, market_value)
        expected.append((pred.detach().clone(), seen[-1]))
        return pred
    model.forward = recording
    exp.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.5), EpochContext("neuron", 0, 0))
    cache = load_prepared(market.prepared, bench.prepare_settings(market.block), "csi300")
    train_split = DaySplit.from_cache(cache, "train")
    hits = [float(train_split.day(i)[3][torch.argmax(pred)] > 0) for pred, (_, i) in expected]
    seen.clear()
    expected.clear()
    train, val, test = exp.evaluate(model)
    assert train == pytest.approx(np.mean(hits)) and len(hits) == days["train"]
    assert sorted(n for n, _ in seen) == sorted([days["valid"]] * days["valid"] + [days["test"]] * days["test"])
    assert (val, test) == eval_exp.evaluate(model)[1:]  # the selecting scores are the eval pass's, unchanged
    assert train != eval_exp.evaluate(model)[0]  # the weights moved during the pass: not the eval-mode score
    assert exp.extra["train_score"] == "running" and eval_exp.extra["train_score"] == "eval"


def test_build_refuses_a_missing_or_stale_cache(market, tmp_path):
    settings = settings_for(market.cfg, "baseline")
    with pytest.raises(StaleCacheError, match="does not exist.*python -m experiments prepare csi300"):
        bench.BENCHMARK.build(settings, tmp_path / "nothing.pt", "cpu")
    other = copy.deepcopy(settings)
    other["data"]["segments"]["test"] = ["2013-11-01", "2013-11-30"]
    with pytest.raises(StaleCacheError, match="other data settings"):
        bench.BENCHMARK.build(other, market.prepared, "cpu")


def test_ranking_table_rows_come_from_the_runs_final_network(market, tmp_path):
    settings = settings_for(market.cfg, "pb", seed=2)
    exp = bench.BENCHMARK.build(settings, market.prepared, "cpu")
    pb_core.wrap(exp.model, "all", head=exp.head)  # a pb run's network, as the runner saves it
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(settings))
    pb_core.records.atomic_torch_save(_snapshot(exp.model), folder / "model.pt")
    cache = load_prepared(market.prepared, bench.prepare_settings(market.block), "csi300")
    rows = run_rows(settings, folder, cache)
    _, val, test = exp.evaluate(exp.model.eval())
    assert [r["split"] for r in rows] == ["valid", "test"]
    assert rows[0]["precision_at_1"] == pytest.approx(val) and rows[1]["precision_at_1"] == pytest.approx(test)
    assert rows[0]["params"] == 67_969 and -1 <= rows[1]["ic"] <= 1 and -1 <= rows[1]["rank_ic"] <= 1
    assert set(f"precision_at_{k}" for k in settings["train"]["report_ks"]) <= set(rows[0])


def test_figure_9_has_both_panels_the_paper_run_and_the_chance_level(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(10):
        original = {"original_val": 0.52 + 0.02 * rng.random(), "original_test": 0.53 + 0.03 * rng.random()}
        for variant, gain in (("baseline", 0.0), ("pb", 0.02), ("baseline_matched", 0.005)):
            rows.append({"variant": variant, "seed": seed, **original,
                         "max_val": original["original_val"] + gain, "max_test": original["original_test"] + gain})
    summary = pd.DataFrame(rows)
    fig = precision_figure(summary, ["baseline", "pb", "baseline_matched"],
                           paper_best_run={"original": 0.610, "max": 0.648}, note="profile: test")
    val_ax, test_ax = fig.axes[:2]

    def gids(ax):
        return {a.get_gid() for a in [*ax.lines, *ax.patches] if a.get_gid()}
    for ax, column in ((val_ax, "max_val"), (test_ax, "max_test")):
        assert {"box:first_cycle:original", "box:pb:max", "box:baseline_matched:max"} <= gids(ax)
        box = next(p for p in ax.patches if p.get_gid() == "box:pb:max")
        q1, q3 = np.percentile(summary.loc[summary.variant == "pb", column], [25, 75])
        assert box.get_y() == pytest.approx(q1) and box.get_height() == pytest.approx(q3 - q1)
    assert {"paper:paper, best run: original", "paper:paper, best run: max"} <= gids(test_ax)
    assert not any(g.startswith("paper:") for g in gids(val_ax))
    assert {"chance:validation"} <= gids(val_ax) and {"chance:test"} <= gids(test_ax)
    pdf, png = save_figure_atomic(fig, tmp_path / "csi300_precision.pdf")
    assert pdf.stat().st_size > 0 and png.stat().st_size > 0
