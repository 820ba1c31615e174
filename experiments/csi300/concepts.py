"""Substitutes for HIST's predefined concepts (``data.concepts``), for data that has no concept file.

HIST's predefined-concept module reads a static stock-to-concept matrix (the authors crawled industry and
concept boards). Where that matrix is absent, two substitutes:

* ``none``: HIST without the predefined-concept module (the model leaves it out, see model.py); the
  cache holds an empty matrix.
* ``return_clusters``: each stock's concept is its cluster of training-period returns. Daily returns
  ``$close / Ref($close, 1) - 1`` of every stock of the universe, on the training segment's days only,
  as market-model residuals (each return minus the stock's beta times the day's equal-weighted mean return:
  the market's move otherwise dominates every correlation, and a plain demeaning still groups by beta);
  the correlation ``rho`` of two stocks over the days both traded (at least ``min_days``); Mantegna's
  distance ``sqrt(2 (1 - rho))``, which is the Euclidean distance of the two standardised return series,
  so Ward's linkage applies; the tree cut into ``clusters`` groups. A stock with fewer than ``min_days``
  training returns (listed later, long suspended) belongs to no concept, as a stock missing from HIST's
  stock index does. Only prices of the training days are read: nothing of the validation or test
  period enters the matrix.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

CHOICES = ("hist", "none", "return_clusters")


def describe(data: dict) -> str:
    """How a figure or table names the predefined concepts of the data block ``data``."""
    choice = data["concepts"]
    if choice == "hist":
        return "concepts: HIST's predefined concept matrix"
    if choice == "none":
        return "concepts: none (HIST without the predefined-concept module)"
    return f"concepts: {data['return_clusters']['clusters']} clusters of training-period returns (no concept data)"


def cluster_matrix(returns, clusters: int, min_days: int) -> tuple[dict, np.ndarray, dict]:
    """(stock index, one-hot concept matrix, stats) from a (days x stocks) DataFrame of daily returns.

    The stock index maps every column to its row; columns with fewer than ``min_days`` returns get an
    all-zero row."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    codes = [str(c) for c in returns.columns]
    counts = returns.notna().sum(0).to_numpy()
    usable = np.flatnonzero(counts >= min_days)
    if len(usable) < clusters:
        raise DataError(f"return_clusters: only {len(usable)} stocks have {min_days} training-day returns, fewer "
                        f"than the {clusters} clusters asked for; lower data.return_clusters.clusters or min_days")
    sub = returns.iloc[:, usable]
    # market-model residuals: each stock's return minus its beta times the day's (equal-weighted) market
    # return; the market otherwise dominates every correlation, and a plain demeaning would still group
    # stocks by their beta
    market = sub.mean(axis=1)
    centred_market = market - market.mean()
    beta = sub.sub(sub.mean()).mul(centred_market, axis=0).mean() / sub.notna().mul(centred_market ** 2, axis=0).mean()
    residual = sub - np.outer(market.to_numpy(), beta.to_numpy())
    rho = residual.corr(min_periods=min_days).to_numpy()
    rho = np.where(np.isfinite(rho), rho, 0.0)   # too few common days: treated as uncorrelated
    np.fill_diagonal(rho, 1.0)
    distance = np.sqrt(np.clip(2.0 * (1.0 - rho), 0.0, None))
    labels = fcluster(linkage(squareform(distance, checks=False), method="ward"), clusters, criterion="maxclust")
    matrix = np.zeros((len(codes), int(labels.max())), dtype=np.float32)
    matrix[usable, labels - 1] = 1.0
    sizes = np.bincount(labels - 1)
    stats = {"clusters": int(labels.max()), "stocks_clustered": int(len(usable)),
             "stocks_without_concept": int(len(codes) - len(usable)),
             "cluster_sizes": [int(s) for s in sorted(sizes, reverse=True)],
             "mean_within_cluster_rho": float(np.mean([rho[np.ix_(labels == k, labels == k)][
                 ~np.eye(int((labels == k).sum()), dtype=bool)].mean() for k in range(1, labels.max() + 1)
                 if (labels == k).sum() > 1]))}
    return {code: i for i, code in enumerate(codes)}, matrix, stats
