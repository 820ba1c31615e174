"""Ranking metrics of CSI300 against hand-computed values and against HIST's pandas definition."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.csi300.metric import (average_ranks, day_metrics, information_coefficient, mean_over_days,
                                       precision_at_k, rank_information_coefficient)

T = torch.tensor


def test_precision_at_k_by_hand():
    scores, labels = T([0.9, 0.1, 0.5, 0.7]), T([1.2, -0.3, -0.1, 0.4])
    assert precision_at_k(scores, labels, 1) == 1.0          # top: 0.9 -> label 1.2
    assert precision_at_k(scores, labels, 3) == 2 / 3        # 0.9, 0.7, 0.5 -> 1.2, 0.4, -0.1
    assert precision_at_k(scores, labels, 5) == 2 / 5        # fewer stocks than k: still divided by k (HIST)
    assert precision_at_k(scores, -labels, 1) == 0.0
    assert precision_at_k(T([0.0, 1.0]), T([0.5, 0.0]), 1) == 0.0   # a label of exactly 0 is not positive
    assert precision_at_k(T([1.0, 1.0, 0.0]), T([-1.0, 1.0, 1.0]), 1) == 0.0  # tie: the first row wins
    assert precision_at_k(T([3.0, 2.0, 1.0]), T([float("nan"), -1.0, 1.0]), 1) == 0.0  # NaN label dropped
    with pytest.raises(ValueError, match="k must be at least 1"):
        precision_at_k(scores, labels, 0)


def test_ic_and_rank_ic_by_hand():
    assert information_coefficient(T([1.0, 2.0, 3.0, 4.0]), T([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    # ranks of [1, 1, 2, 3] are [1.5, 1.5, 3, 4]: r = -4.5 / sqrt(4.5 * 5)
    assert rank_information_coefficient(T([4.0, 3.0, 2.0, 1.0]), T([1.0, 1.0, 2.0, 3.0])) == pytest.approx(
        -4.5 / math.sqrt(22.5))
    assert torch.equal(average_ranks(T([5.0, 1.0, 5.0, 3.0]).double()), T([3.5, 1.0, 3.5, 2.0]).double())
    assert math.isnan(information_coefficient(T([1.0, 1.0, 1.0]), T([0.1, 0.2, 0.3])))  # constant scores
    assert math.isnan(rank_information_coefficient(T([0.1, 0.2]), T([2.0, 2.0])))
    with pytest.raises(ValueError, match="NaN"):
        information_coefficient(T([float("nan"), 1.0]), T([1.0, 2.0]))


def _hist_metric_fn(frame: pd.DataFrame, ks) -> dict:
    """HIST's utils.metric_fn restated with pandas: per day, sort by score, share of positive labels in the
    top k over k; Pearson and Spearman correlations; means over days."""
    by_day = frame.groupby(level="datetime")
    out = {f"precision_at_{k}": by_day.apply(
        lambda d: (d.sort_values("score", ascending=False, kind="stable").label.iloc[:k] > 0).sum() / k).mean()
        for k in ks}
    out["ic"] = by_day.apply(lambda d: d.label.corr(d.score)).mean()
    out["rank_ic"] = by_day.apply(lambda d: d.label.corr(d.score, method="spearman")).mean()
    return out


@pytest.mark.filterwarnings("ignore")  # pandas warns about the constant day it scores as NaN, as intended
def test_day_metrics_averaged_over_days_match_hists_pandas_definition():
    rng = np.random.default_rng(0)
    frames, days = [], []
    for d, n in enumerate([30, 25, 40, 12]):
        score = rng.normal(size=n).astype(np.float32)
        label = (0.3 * score + rng.normal(size=n)).astype(np.float32)
        label[: n // 5] = np.round(label[: n // 5])  # some tied labels
        if d == 3:
            score[:] = 1.0                              # a day of constant scores: no correlation that day
        frames.append(pd.DataFrame({"score": score, "label": label},
                                   index=pd.MultiIndex.from_product([[pd.Timestamp("2020-01-01") + pd.Timedelta(days=d)],
                                                                     [f"S{i:03d}" for i in range(n)]],
                                                                    names=["datetime", "instrument"])))
        days.append(day_metrics(torch.from_numpy(score), torch.from_numpy(label), (1, 3, 5, 10, 30)))
    ours = mean_over_days(days)
    reference = _hist_metric_fn(pd.concat(frames), (1, 3, 5, 10, 30))
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, rel=1e-6), name


def test_mean_over_days_skips_undefined_days():
    assert mean_over_days([{"ic": 0.2}, {"ic": float("nan")}, {"ic": 0.4}]) == {"ic": pytest.approx(0.3)}
    assert math.isnan(mean_over_days([{"ic": float("nan")}])["ic"])
