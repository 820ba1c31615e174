"""Tox21's metric and loss: masked mean ROC-AUC, and TrimNet's class-weighted masked cross-entropy.

Labels come as ``y`` (n, 12) with 0/1 where present and anything (0 by convention) where missing,
plus ``mask`` (n, 12), true where the label is present. The model gives two logits per task,
either as (n, 12, 2) or flat as (n, 24) with task ``t`` in columns ``2t, 2t+1`` (TrimNet's layout);
the score for the AUC is the softmax probability of the positive class.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def _numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy() if a.dtype != torch.bool else a.detach().cpu().numpy()
    return np.asarray(a)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy's rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # Start of each run of equal values in the sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]                    # exclusive
    run_rank = (starts + 1 + ends) / 2.0                     # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(y_true, y_score) -> float:
    """ROC-AUC of one binary task (Mann-Whitney U / (n_pos * n_neg)), ties counted as one half.

    NaN when the labels hold a single class (the AUC is undefined there)."""
    y_true = _numpy(y_true).astype(np.float64).reshape(-1)
    y_score = _numpy(y_score).astype(np.float64).reshape(-1)
    if np.isnan(y_score).any():
        raise ValueError("ROC-AUC of scores containing NaN: the model produced NaN outputs")
    pos = y_true == 1
    n_pos = int(pos.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(y_score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_task_roc_auc(y_true, y_score, mask) -> np.ndarray:
    """ROC-AUC of each task on its labelled rows; NaN for a task whose labelled rows in this split
    hold only one class (or none)."""
    y_true, y_score, mask = _numpy(y_true), _numpy(y_score), _numpy(mask).astype(bool)
    if not (y_true.shape == y_score.shape == mask.shape) or y_true.ndim != 2:
        raise ValueError(f"y_true, y_score and mask must all be (n, tasks); got {y_true.shape}, "
                         f"{y_score.shape}, {mask.shape}")
    return np.array([roc_auc(y_true[mask[:, t], t], y_score[mask[:, t], t]) for t in range(y_true.shape[1])])


def masked_mean_roc_auc(y_true, y_score, mask) -> float:
    """Mean over tasks of the per-task ROC-AUC, each on the rows where that task's label is present.

    A task whose labelled rows in this split are all one class (AUC undefined) is skipped: the mean
    is over the remaining tasks (on Tox21's 80/10/10 splits every task has both classes in every
    split, so this only happens on tiny subsets). If no task can be scored the result is NaN and a
    warning is logged. Ties in ``y_score`` count one half (average ranks), as in
    ``sklearn.metrics.roc_auc_score``; no sklearn needed at run time.
    """
    aucs = per_task_roc_auc(y_true, y_score, mask)
    scored = ~np.isnan(aucs)
    if not scored.any():
        log.warning("masked_mean_roc_auc: no task has both classes among the %d rows; returning NaN",
                    len(_numpy(y_true)))
        return float("nan")
    if not scored.all():
        log.debug("masked_mean_roc_auc: skipped single-class tasks %s", np.flatnonzero(~scored).tolist())
    return float(aucs[scored].mean())


def masked_class_weighted_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                               class_weights: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Class-weighted cross-entropy over two logits per task; missing labels contribute nothing.

    ``logits`` (n, T, 2) or (n, 2T); ``y`` (n, T) with 0/1 (values where ``mask`` is false are
    ignored, even NaN); ``mask`` (n, T) bool or 0/1; ``class_weights`` (T, 2) from
    :func:`experiments.tox21.data.class_weights`. Each present label (i, t) costs
    ``w[t, y] * CE(logits[i, t], y)``.

    ``reduction``:

    * ``"mean"`` (default): the sum of those costs divided by the number of present labels.
    * ``"trimnet"``: TrimNet's ``trainer.py`` exactly: per task ``t``,
      ``torch.nn.CrossEntropyLoss(weight=w[t], reduction="mean")`` on its present labels, i.e.
      ``sum(w * CE) / sum(w)`` over them, and the per-task losses SUMMED over the tasks that have a
      label in the batch. Tasks then count equally whatever their number of labels.

    With no label present at all the loss is a zero that still depends on ``logits`` (so
    ``backward`` works and does nothing).
    """
    n = y.shape[0]
    num_tasks = y.shape[1]
    logits = logits.reshape(n, num_tasks, 2)  # (n, 2T) -> task t is columns 2t, 2t+1
    mask = mask.bool() if mask.dtype != torch.bool else mask
    if class_weights.shape != (num_tasks, 2):
        raise ValueError(f"class_weights must be ({num_tasks}, 2), got {tuple(class_weights.shape)}")
    # Missing labels may hold anything (NaN, TrimNet's 6): replace before indexing, and use `where`
    # rather than multiplying by the mask, because NaN * 0 is NaN.
    target = torch.where(mask, y, torch.zeros_like(y)).long()
    ce = F.cross_entropy(logits.reshape(-1, 2), target.reshape(-1), reduction="none").view(n, num_tasks)
    w = class_weights.to(logits.dtype).to(logits.device)
    weight = w[torch.arange(num_tasks, device=logits.device).expand(n, num_tasks), target]
    weight = torch.where(mask, weight, torch.zeros_like(weight))
    cost = torch.where(mask, weight * ce, torch.zeros_like(ce))
    if reduction == "mean":
        count = mask.sum()
        if count == 0:
            return logits.sum() * 0.0
        return cost.sum() / count
    if reduction == "trimnet":
        per_task_w = weight.sum(0)
        used = per_task_w > 0
        if not used.any():
            return logits.sum() * 0.0
        return (cost.sum(0)[used] / per_task_w[used]).sum()
    raise ValueError(f"reduction must be 'mean' or 'trimnet', got {reduction!r}")
