"""Ranking metrics of one trading day, and their mean over days, as HIST reports them.

HIST (``utils.metric_fn``) scores a split day by day and averages over the days:

* Precision@k: the share of the day's k highest-scored stocks whose label is positive, ``(#positive
  among the top k) / k`` (divided by k even on a day with fewer than k stocks, as HIST does). The label
  is the one the model trains on: qlib's ``CSRankNorm`` of the next-day return, ``3.46 * (rank_pct -
  0.5)`` within the day. So "positive" means "above the day's median return", not "the price rose",
  and the chance level of Precision@k is 0.5 whatever the market did. HIST scores every split on this
  learn-processed label (``DK_L``), and so does this suite.
* IC: Pearson correlation of scores and labels within the day; rank IC: Spearman's (average ranks for
  ties, as pandas). A day where either is constant has no correlation (NaN) and is left out of the mean,
  as pandas' ``mean`` does.

Ties among scores: the top k are taken in a stable order (the day's row order, i.e. by stock code),
where HIST's pandas sort leaves the order of tied scores unspecified.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

PRECISION_KS = (1, 3, 5, 10, 20, 30, 50, 100)


def precision_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of the ``k`` highest ``scores`` with ``labels > 0`` (divided by ``k``); NaN labels are
    dropped first, as HIST does."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    scores, labels = _finite_labels(scores, labels)
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return float((labels[order] > 0).sum().item()) / k


def information_coefficient(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Pearson correlation of one day's scores and labels; NaN when either is constant."""
    scores, labels = _finite_labels(scores, labels)
    return _pearson(scores.double(), labels.double())


def rank_information_coefficient(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Spearman correlation (Pearson of average ranks) of one day's scores and labels."""
    scores, labels = _finite_labels(scores, labels)
    return _pearson(average_ranks(scores.double()), average_ranks(labels.double()))


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, tied values sharing the mean of their ranks (pandas' ``rank(method="average")``)."""
    sorted_values, order = torch.sort(values, stable=True)
    n = len(values)
    new_run = torch.ones(n, dtype=torch.bool, device=values.device)
    new_run[1:] = sorted_values[1:] != sorted_values[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=values.device)
    runs = int(run_id[-1].item()) + 1 if n else 0
    run_sum = torch.zeros(runs, dtype=torch.float64, device=values.device).index_add_(0, run_id, positions)
    run_len = torch.zeros(runs, dtype=torch.float64, device=values.device).index_add_(
        0, run_id, torch.ones_like(positions))
    ranks = torch.empty(n, dtype=torch.float64, device=values.device)
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def day_metrics(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = PRECISION_KS) -> dict:
    """Every metric of one day: ``{"precision_at_<k>": ..., "ic": ..., "rank_ic": ...}``."""
    out = {f"precision_at_{k}": precision_at_k(scores, labels, k) for k in ks}
    out["ic"] = information_coefficient(scores, labels)
    out["rank_ic"] = rank_information_coefficient(scores, labels)
    return out


def mean_over_days(per_day: Iterable[dict]) -> dict:
    """The mean of each metric over the days where it is defined (NaN days left out); NaN if none is."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for day in per_day:
        for name, value in day.items():
            sums.setdefault(name, 0.0)
            counts.setdefault(name, 0)
            if not math.isnan(value):
                sums[name] += value
                counts[name] += 1
    return {name: sums[name] / counts[name] if counts[name] else math.nan for name in sums}


def _finite_labels(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores, labels = scores.reshape(-1), labels.reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {len(scores)} != {len(labels)}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN: the model produced NaN outputs")
    keep = ~torch.isnan(labels)
    return scores[keep], labels[keep]


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) < 2 or bool(x.max() == x.min()) or bool(y.max() == y.min()):
        return math.nan  # a constant side has no correlation (pandas gives NaN too)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else math.nan
