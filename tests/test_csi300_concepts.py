"""HIST's predefined concepts and their substitutes (data.concepts), and the width factor: return clusters
recover planted groups from training-period returns only, HIST without the predefined-concept module ignores
concept inputs, the run's width scales the hidden size, and every output names the concepts used."""
import copy
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from csi300_market import SEGMENTS, fixture_config, prepared_market, settings_for
from experiments.config import load_config
from experiments.csi300 import benchmark as bench
from experiments.csi300 import qlib_data
from experiments.csi300.concepts import cluster_matrix, describe
from experiments.csi300.data import load_prepared
from experiments.csi300.model import HIST, parameter_count
from experiments.errors import DataError
from experiments.grid import make_run
from experiments.config import run_settings


def _planted_returns(groups=3, size=6, days=300, seed=0):
    rng = np.random.default_rng(seed)
    market = rng.normal(0, 0.02, days)
    columns, data = [], []
    for g in range(groups):
        factor = rng.normal(0, 0.015, days)
        for s in range(size):
            columns.append(f"G{g}S{s}")
            data.append(market + factor + rng.normal(0, 0.01, days))
    return pd.DataFrame(np.array(data).T, columns=columns), groups, size


def test_return_clusters_recover_planted_groups_and_leave_short_histories_out():
    returns, groups, size = _planted_returns()
    returns["LATE"] = np.nan
    returns.loc[returns.index[-50:], "LATE"] = 0.01 * np.random.default_rng(1).normal(size=50)
    index, matrix, stats = cluster_matrix(returns, clusters=groups, min_days=100)
    assert list(index) == list(returns.columns) and matrix.shape == (len(returns.columns), groups)
    assert matrix[index["LATE"]].sum() == 0 and stats["stocks_without_concept"] == 1
    labels = matrix[:-1].argmax(1)
    assert (matrix[:-1].sum(1) == 1).all()
    for g in range(groups):  # each planted group is one cluster, and no two groups share one
        assert len(set(labels[g * size:(g + 1) * size])) == 1
    assert len(set(labels)) == groups and stats["cluster_sizes"] == [size] * groups
    with pytest.raises(DataError, match="only 18 stocks have 300 training-day returns, fewer than the 20 clusters"):
        cluster_matrix(returns.iloc[:, :-1].iloc[:, ::1], clusters=20, min_days=300)


def test_the_market_move_alone_does_not_make_a_cluster():
    """Without removing each day's mean, a strong common market factor would dominate the correlations; the
    clusters follow the group factors even when the market's move is ten times theirs."""
    rng = np.random.default_rng(2)
    days = 400
    market = rng.normal(0, 0.05, days)
    data = {f"G{g}S{s}": market * (0.5 + s / 4) + f + rng.normal(0, 0.003, days)
            for g, f in enumerate(rng.normal(0, 0.005, (2, days))) for s in range(5)}
    _, matrix, _ = cluster_matrix(pd.DataFrame(data), clusters=2, min_days=100)
    labels = matrix.argmax(1)
    assert len(set(labels[:5])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[5]


def test_return_clusters_read_no_price_after_the_training_segment(real_data_dir, tmp_path):
    """Every price after the last training day is changed: the training-period returns the clusters are
    built from are identical."""
    market = prepared_market(str(real_data_dir))
    changed = tmp_path / "market"
    shutil.copytree(market.market_root, changed)
    calendar = market.truth.calendar
    cut = int(np.searchsorted(calendar, np.datetime64(SEGMENTS["train"][1]), side="right")) - 1
    rng = np.random.default_rng(0)
    for stock in (changed / "features").iterdir():
        path = stock / "close.day.bin"
        data = np.fromfile(path, dtype="<f4")
        days = int(data[0]) + np.arange(len(data) - 1)
        data[1:][days > cut] *= rng.uniform(0.8, 1.25, int((days > cut).sum())).astype(np.float32)
        data.tofile(path)
    data = dict(market.block["data"], concepts="return_clusters", return_clusters={"clusters": 3, "min_days": 20})
    common = dict(instruments="csi300", region="cn", kernels=1)
    a = bench.predefined_concepts(data, {}, None, market.market_root, common)
    b = bench.predefined_concepts(data, {}, None, changed, common)
    assert a[0] == b[0] and a[1].shape[1] == 3
    np.testing.assert_array_equal(a[1], b[1])
    # and the returns read stop at the last training day
    returns = qlib_data.universe_features(changed, instruments="csi300", expression="$close", start=SEGMENTS["train"][0],
                                          end=SEGMENTS["train"][1], members_only=False, kernels=1)
    assert returns.index.get_level_values("datetime").max() <= pd.Timestamp(SEGMENTS["train"][1])


def test_hist_without_predefined_concepts_ignores_them():
    torch.manual_seed(0)
    full, ablation = HIST(), HIST(predefined_concepts=False)
    assert parameter_count(full) == 67_969 and parameter_count(ablation) == 67_969 - 3 * (64 * 64 + 64)
    assert not any(name.startswith("fc_es") for name, _ in ablation.named_parameters())
    x = torch.randn(12, 360)
    concepts = (torch.rand(12, 5) > 0.5).float()
    value = torch.rand(12) * 10
    with torch.no_grad():
        out = ablation(x, concepts, value)
        assert torch.equal(out, ablation(x, torch.zeros(12, 0), torch.zeros(12)))
        # the full model does read them (the check above can fail)
        assert not torch.allclose(full(x, concepts, value), full(x, 1 - concepts, value))


def test_width_scales_the_hidden_size_and_the_concept_choice_reaches_the_model(real_data_dir):
    market = prepared_market(str(real_data_dir))
    cfg = copy.deepcopy(market.cfg)
    cfg["benchmarks"]["csi300"]["factors"] = {"width": [1, 2]}
    wide = run_settings(cfg, make_run(cfg, "csi300", "baseline", 0, factors={"width": 2}))
    exp = bench.BENCHMARK.build(wide, market.prepared, "cpu")
    assert exp.model.rnn.hidden_size == 128 and parameter_count(exp.model) == 267_009
    assert exp.extra["concepts"] == "hist" and exp.extra["hidden_size"] == 128
    narrow = bench.BENCHMARK.build(settings_for(market.cfg), market.prepared, "cpu")
    assert narrow.model.rnn.hidden_size == 64


def test_outputs_name_the_concepts_used():
    data = load_config()["benchmarks"]["csi300"]["data"]
    assert describe(data) == "concepts: HIST's predefined concept matrix"
    assert "HIST without the predefined-concept module" in describe(dict(data, concepts="none"))
    assert describe(dict(data, concepts="return_clusters")).startswith("concepts: 30 clusters of training-period")


@pytest.mark.slow
@pytest.mark.parametrize("concepts", ["none", "return_clusters"])
def test_prepare_and_train_with_a_substitute(real_data_dir, tmp_path, concepts):
    """The fixture market prepared with each substitute: the cache records it, the model built from it has
    the right modules, and a training day runs."""
    cfg = fixture_config(concepts=concepts, return_clusters={"clusters": 4, "min_days": 20})
    block = cfg["benchmarks"]["csi300"]
    prepared = bench.prepare(block, real_data_dir, tmp_path / "cache", False, kernels=1)
    cache = load_prepared(prepared, bench.prepare_settings(block), "csi300")
    assert cache["stats"]["concepts_source"] == concepts
    exp = bench.BENCHMARK.build(settings_for(cfg), prepared, "cpu")
    if concepts == "none":
        assert cache["concept_matrix"].shape[1] == 0 and not exp.model.has_predefined
    else:
        assert cache["concept_matrix"].shape[1] == 4 and exp.model.has_predefined
        assert cache["stats"]["unknown_stocks"] == []  # the clusters' own index covers every stock
        assert cache["stats"]["concept_stats"]["stocks_clustered"] > 0
    optimizer = exp.optimizer_factory(exp.model.parameters())
    before = [p.detach().clone() for p in exp.model.parameters()]
    from experiments.registry import EpochContext
    exp.train_epoch(exp.model.train(), optimizer, EpochContext(cycle=0, epoch=0, phase="neuron"))
    assert any(not torch.equal(a, b) for a, b in zip(before, exp.model.parameters()))
