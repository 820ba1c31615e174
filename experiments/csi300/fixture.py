"""A small but realistic stock market in qlib's own on-disk format, for tests and the quick profile.

qlib's CN bundle cannot be downloaded on every machine, so the CSI300 pipeline is proven on a market
this module writes, read back by qlib's real data layer. What it writes under ``root``:

* ``calendars/day.txt``: the trading days (weekdays, minus a few holidays), one ``YYYY-MM-DD`` a line;
* ``instruments/all.txt``: ``CODE<TAB>first day<TAB>last day`` of every stock's listing;
* ``instruments/csi300.txt``: the index membership, one line per contiguous spell (a stock can leave
  and come back), rebuilt every ``rebalance_days`` from the largest market values, as CSI300 is;
* ``features/<code>/<field>.day.bin`` for open, high, low, close, vwap, volume, factor: little-endian
  float32, the first value is the calendar index of the stock's first day, then one value per day
  (qlib's layout); suspended days are NaN, late listings start later, delistings end earlier;
* HIST's side files beside it: ``csi300_stock2concept.npy`` (rows = the real stock index, columns =
  concepts, 0/1), and ``csi300_market_value.pkl`` (a pandas Series of market values in yuan indexed by
  (datetime, instrument), some values missing, as HIST's file).

Prices follow a market factor, concept factors and noise, plus a weak predictable part (tomorrow's
return leans on today's return of the stock's concept peers), so a model can beat chance a little.
Prices are split-adjusted as in qlib's bundle; ``factor`` jumps at a few splits.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pb_core.records import atomic_write_bytes, atomic_write_text

FIELDS = ("open", "high", "low", "close", "vwap", "volume", "factor")
CONCEPT_FILE = "csi300_stock2concept.npy"
MARKET_VALUE_FILE = "csi300_market_value.pkl"


@dataclass(frozen=True)
class FixtureMarket:
    """What :func:`write_market` wrote: paths, and the ground truth tests compare qlib's output with."""
    root: Path
    calendar: np.ndarray          # datetime64[D], the trading days
    codes: list                   # the stocks written (real CSI300 codes)
    prices: dict                  # field -> (days, stocks) float64 array, NaN where not trading
    listed: np.ndarray            # (days, stocks) bool: the stock trades that day (not suspended, listed)
    members: np.ndarray           # (days, stocks) bool: in the index that day
    concept_matrix: Path
    market_value: Path


def trading_calendar(start: str, end: str, rng: np.random.Generator, holidays: float = 0.02) -> np.ndarray:
    days = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
    days = days[np.is_busday(days)]
    keep = rng.random(len(days)) >= holidays
    keep[[0, -1]] = True
    return days[keep]


def write_market(root: Path, stock_index: dict, *, start: str = "2013-01-01", end: str = "2015-12-31",
                 stocks: int = 60, members: int = 40, concepts: int = 12, rebalance_days: int = 60,
                 seed: int = 0) -> FixtureMarket:
    """Write the market under ``root`` (see the module docstring) and return its ground truth.

    ``stock_index`` is HIST's map from code to concept-matrix row (the real 735 CSI300 codes); ``stocks``
    of its codes are drawn (seeded), ``members`` of them form the index at any time.
    """
    if members > stocks or stocks > len(stock_index):
        raise ValueError(f"need members <= stocks <= {len(stock_index)} codes, got {members}, {stocks}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    calendar = trading_calendar(start, end, rng)
    n_days = len(calendar)
    codes = sorted(rng.choice(sorted(stock_index), size=stocks, replace=False).tolist())

    # Listing life: most stocks trade throughout; some list late, some delist early.
    first = np.zeros(stocks, dtype=int)
    last = np.full(stocks, n_days - 1)
    late = rng.random(stocks) < 0.15
    first[late] = rng.integers(1, n_days // 2, size=late.sum())
    early = rng.random(stocks) < 0.08
    last[early] = rng.integers(n_days // 2, n_days - 1, size=early.sum())
    alive = (np.arange(n_days)[:, None] >= first) & (np.arange(n_days)[:, None] <= last)
    suspended = rng.random((n_days, stocks)) < 0.01
    listed = alive & ~suspended

    # Concepts: each stock in 1-3 of them; concept factors drive correlated moves.
    membership = np.zeros((stocks, concepts))
    for s in range(stocks):
        membership[s, rng.choice(concepts, size=rng.integers(1, 4), replace=False)] = 1.0
    peers = membership @ membership.T
    np.fill_diagonal(peers, 0.0)
    peers /= np.maximum(peers.sum(1, keepdims=True), 1.0)
    market = rng.normal(0.0, 0.012, n_days)
    concept_moves = rng.normal(0.0, 0.008, (n_days, concepts))
    beta = rng.uniform(0.6, 1.4, stocks)
    returns = np.zeros((n_days, stocks))
    for t in range(1, n_days):
        predictable = 0.3 * peers @ returns[t - 1]
        returns[t] = (beta * market[t] + (membership @ concept_moves[t]) / membership.sum(1)
                      + predictable + rng.normal(0.0, 0.015, stocks))
    close = rng.uniform(5.0, 60.0, stocks) * np.exp(np.cumsum(returns, axis=0))
    prev_close = np.vstack([close[:1], close[:-1]])
    open_ = prev_close * np.exp(rng.normal(0.0, 0.004, close.shape))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.006, close.shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.006, close.shape)))
    vwap = low + (high - low) * rng.uniform(0.3, 0.7, close.shape)
    shares = rng.uniform(0.5e9, 20e9, stocks)
    volume = shares * 0.004 * np.exp(rng.normal(0.0, 0.5, close.shape))
    factor = np.ones_like(close)
    for s in np.flatnonzero(rng.random(stocks) < 0.3):  # a split: the adjustment factor steps up
        factor[rng.integers(1, n_days):, s] *= 2.0
    prices = {"open": open_, "high": high, "low": low, "close": close, "vwap": vwap, "volume": volume,
              "factor": factor}
    prices = {k: np.where(listed, v, np.nan) for k, v in prices.items()}

    market_value = close * shares
    in_index = _index_membership(np.where(alive, market_value, -np.inf), alive, members, rebalance_days)

    _write_calendar(root, calendar)
    _write_instruments(root / "instruments" / "all.txt", codes, calendar, alive)
    _write_instruments(root / "instruments" / "csi300.txt", codes, calendar, in_index)
    for j, code in enumerate(codes):
        for field in FIELDS:
            values = prices[field][first[j]:last[j] + 1, j]
            data = np.concatenate([[first[j]], values]).astype("<f4")
            atomic_write_bytes(root / "features" / code.lower() / f"{field}.day.bin", data.tobytes())

    concept_path = root / CONCEPT_FILE
    matrix = np.zeros((len(stock_index), concepts), dtype=np.float32)
    for j, code in enumerate(codes):
        matrix[stock_index[code]] = membership[j]
    buffer = _npy_bytes(matrix)
    atomic_write_bytes(concept_path, buffer)

    mv_path = root / MARKET_VALUE_FILE
    atomic_write_bytes(mv_path, _market_value_pickle(calendar, codes, np.where(listed, market_value, np.nan), rng))
    return FixtureMarket(root=root, calendar=calendar, codes=codes, prices=prices, listed=listed,
                         members=in_index, concept_matrix=concept_path, market_value=mv_path)


def _index_membership(value: np.ndarray, alive: np.ndarray, members: int, every: int) -> np.ndarray:
    """The ``members`` largest living stocks, chosen at every rebalance day and held until the next."""
    n_days, n_stocks = value.shape
    chosen = np.zeros((n_days, n_stocks), dtype=bool)
    for t0 in range(0, n_days, every):
        top = np.argsort(-value[t0], kind="stable")[:members]
        chosen[t0:t0 + every, top] = True
    return chosen & alive  # a stock that delists leaves the index with it


def _write_calendar(root: Path, calendar: np.ndarray) -> None:
    atomic_write_text(root / "calendars" / "day.txt", "".join(f"{d}\n" for d in calendar))


def _write_instruments(path: Path, codes: list, calendar: np.ndarray, inside: np.ndarray) -> None:
    lines = []
    for j, code in enumerate(codes):
        flags = np.concatenate([[False], inside[:, j], [False]])
        starts = np.flatnonzero(~flags[:-1] & flags[1:])
        ends = np.flatnonzero(flags[:-1] & ~flags[1:]) - 1
        lines += [f"{code}\t{calendar[a]}\t{calendar[b]}\n" for a, b in zip(starts, ends)]
    atomic_write_text(path, "".join(lines))


def _npy_bytes(array: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _market_value_pickle(calendar: np.ndarray, codes: list, value: np.ndarray, rng: np.random.Generator) -> bytes:
    import pandas as pd
    days, stocks = np.nonzero(np.isfinite(value))
    keep = rng.random(len(days)) >= 0.02  # HIST's file lacks some (day, stock) values: filled at prepare
    index = pd.MultiIndex.from_arrays([pd.DatetimeIndex(calendar[days[keep]]),
                                       [codes[s] for s in stocks[keep]]], names=["datetime", "instrument"])
    series = pd.Series(value[days[keep], stocks[keep]], index=index, name="market_value").sort_index()
    return pickle.dumps(series, protocol=4)
