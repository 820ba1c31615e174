"""CSI300 data for HIST: HIST's side files, the prepared cache, and one trading day as a batch.

* :func:`load_stock_index`, :func:`load_concept_matrix`, :func:`load_market_value` read HIST's three side
  files and check them; every problem is a :class:`DataError` naming the file and the fix.
* :func:`assemble` turns qlib's Alpha360 frames (:mod:`.qlib_data`) and the side files into the prepared
  cache: per segment, the features (N x 360, float32), the rank-normalised labels, each row's market
  value and concept-matrix row, and where each trading day starts. HIST's rules: market values are
  divided by ``market_value_unit`` (1e9: billions of yuan) and a missing one is the mean over the
  training rows; a stock missing from the stock index gets an all-zero concept row (HIST's code gives it
  row 733, which is a real stock's, SZ002958; here it simply belongs to no predefined concept).
* :class:`DaySplit` serves one segment day by day, the tensors sliced without copies.
"""
from __future__ import annotations

import io
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..registry import load_prepared_cache

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
ALPHA360_COLUMNS = 360


def _fix(path: Path) -> str:
    return (f"delete {path} and run `python -m experiments download csi300` (or fetch it by hand from "
            f"https://github.com/Wentao-Xu/HIST/tree/main/data into {Path(path).parent}/)")


class _NumpyArrayOnly(pickle.Unpickler):
    """Unpickles a numpy object array and plain Python values, nothing else: HIST's stock index is a
    pickled dict inside a ``.npy``, and a pickle may otherwise run arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a plain array")
        return _reconstruct if name == "_reconstruct" else getattr(np, name)


def load_stock_index(path: Path) -> dict[str, int]:
    """HIST's map from stock code to concept-matrix row (a dict pickled in a ``.npy``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; {_fix(path)}")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, _, dtype = read_header(f)
            if dtype != np.dtype(object) or shape != ():
                raise ValueError(f"expected a pickled dict (0-d object array), found {dtype} of shape {shape}")
            mapping = _NumpyArrayOnly(io.BytesIO(f.read())).load().item()
    except (ValueError, OSError, EOFError, pickle.UnpicklingError, AttributeError) as exc:
        raise DataError(f"cannot read {path} as HIST's stock index ({exc}); {_fix(path)}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path} holds {type(mapping).__name__}, not a map from stock code to row; {_fix(path)}")
    bad = [(k, v) for k, v in mapping.items()
           if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0]
    if bad:
        raise DataError(f"{path}: entries that are not code -> non-negative row, e.g. {bad[:3]}; {_fix(path)}")
    return {code: int(row) for code, row in mapping.items()}


def load_concept_matrix(path: Path, rows_needed: int) -> np.ndarray:
    """HIST's stock-to-concept matrix (stocks x concepts, float32), with at least ``rows_needed`` rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; {_fix(path)}")
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} as a numeric .npy matrix ({exc}); {_fix(path)}") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise DataError(f"{path}: expected a 2-D numeric stock-to-concept matrix, found {matrix.dtype} "
                        f"{matrix.shape}; {_fix(path)}")
    if matrix.shape[0] < rows_needed:
        raise DataError(f"{path} has {matrix.shape[0]} rows but the stock index points at row "
                        f"{rows_needed - 1}; the two files do not belong together: {_fix(path)}")
    matrix = matrix.astype(np.float32)
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise DataError(f"{path}: the concept matrix has negative or non-finite entries; {_fix(path)}")
    return matrix


def load_market_value(path: Path):
    """HIST's market values: a pandas Series indexed by (datetime, instrument).

    HIST's file is a pickle written by an older pandas; pandas reads those. It is unpickled, which can
    run code: use the authors' file (or one you made). A one-column DataFrame or the index levels in the
    other order are accepted too.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; {_fix(path)}")
    try:
        value = pd.read_pickle(path)
    except Exception as exc:  # pickle raises many types: truncated file, foreign format, missing class
        raise DataError(f"cannot read {path} as a pandas pickle ({type(exc).__name__}: {exc}); {_fix(path)}") from None
    if isinstance(value, pd.DataFrame) and value.shape[1] == 1:
        value = value.iloc[:, 0]
    if not isinstance(value, pd.Series) or value.index.nlevels != 2:
        raise DataError(f"{path}: expected market values as a Series indexed by (datetime, instrument), "
                        f"found {type(value).__name__}; {_fix(path)}")
    levels = [_level_kind(value.index, i) for i in range(2)]
    if sorted(levels) != ["datetime", "instrument"]:
        raise DataError(f"{path}: cannot tell the date and instrument levels of the index apart "
                        f"(names {list(value.index.names)}); {_fix(path)}")
    if levels[0] == "instrument":
        value = value.swaplevel()
    value.index = value.index.set_names(["datetime", "instrument"])
    value.index = value.index.set_levels(pd.to_datetime(value.index.levels[0]), level=0)
    value = pd.to_numeric(value, errors="coerce").astype(np.float64)
    return value[~value.index.duplicated(keep="first")]


def _level_kind(index, level: int) -> str | None:
    import pandas as pd

    name = index.names[level]
    if name in ("datetime", "instrument"):
        return name
    values = index.levels[level]
    if isinstance(values, pd.DatetimeIndex):
        return "datetime"
    return "instrument" if len(values) and isinstance(values[0], str) else None


def assemble(frames: dict, stock_index: dict, concept_matrix: np.ndarray, market_value,
             market_value_unit: float) -> dict:
    """The prepared cache's content (see the module docstring) from qlib's frames and the side files."""
    first = next(iter(frames))
    unknown_row = concept_matrix.shape[0]  # an extra all-zero row: "belongs to no predefined concept"
    concepts = np.vstack([concept_matrix, np.zeros((1, concept_matrix.shape[1]), dtype=np.float32)])
    splits, unknown, train_mean, filled = {}, set(), None, {}
    for name, frame in frames.items():
        frame = frame.sort_index()
        # pandas hands out column-major blocks; one day must be contiguous rows
        features = np.ascontiguousarray(frame["feature"].to_numpy(dtype=np.float32))
        if features.shape[1] != ALPHA360_COLUMNS:
            raise DataError(f"qlib returned {features.shape[1]} feature columns, Alpha360 has {ALPHA360_COLUMNS}")
        labels = np.ascontiguousarray(frame["label"].to_numpy(dtype=np.float32)[:, 0])
        dates = frame.index.get_level_values("datetime")
        codes = frame.index.get_level_values("instrument").astype(str)
        rows = np.array([stock_index.get(code, unknown_row) for code in codes], dtype=np.int64)
        unknown.update(code for code in codes if code not in stock_index)
        values = market_value.reindex(frame.index).to_numpy(dtype=np.float64) / market_value_unit
        if train_mean is None:  # HIST fills every segment's gaps with the training rows' mean
            if not np.isfinite(values).any():
                raise DataError(f"no market value matches any training row ({first} segment): the market "
                                f"value file does not cover these dates or stock codes")
            train_mean = float(np.nanmean(values))
        filled[name] = int(np.isnan(values).sum())
        values = np.where(np.isnan(values), train_mean, values)
        day_starts = np.flatnonzero(np.r_[True, dates[1:] != dates[:-1]])
        offsets = np.r_[day_starts, len(frame)].astype(np.int64)
        unique_codes, code_ids = np.unique(np.asarray(codes), return_inverse=True)
        splits[name] = {
            "features": torch.from_numpy(features), "labels": torch.from_numpy(labels),
            "market_value": torch.from_numpy(values.astype(np.float32)),
            "stock_rows": torch.from_numpy(rows), "day_offsets": torch.from_numpy(offsets),
            "dates": [str(d.date()) for d in dates[day_starts]],
            "codes": unique_codes.tolist(), "code_ids": torch.from_numpy(code_ids.astype(np.int32)),
        }
    stocks_per_day = {name: np.diff(s["day_offsets"].numpy()) for name, s in splits.items()}
    stats = {
        "days": {n: len(s["dates"]) for n, s in splits.items()},
        "rows": {n: int(s["labels"].numel()) for n, s in splits.items()},
        "stocks_per_day": {n: [int(c.min()), float(np.median(c)), int(c.max())] for n, c in stocks_per_day.items()},
        "unknown_stocks": sorted(unknown), "market_values_filled": filled, "market_value_train_mean": train_mean,
        "concepts": int(concept_matrix.shape[1]),
        "stock_index_size": len(stock_index),
    }
    if unknown:
        # HIST's stock index, or (return_clusters) a training history too short to cluster
        log.warning("csi300: %d stock codes have no row in the stock-to-concept index and belong to no predefined "
                    "concept: %s", len(unknown), ", ".join(sorted(unknown)[:10]))
    return {"format": CACHE_FORMAT, "concept_matrix": torch.from_numpy(concepts), "splits": splits,
            "stats": stats}


def load_prepared(path: Path, expected: dict, benchmark: str) -> dict:
    """The prepared cache, if it was made with the ``expected`` prepare settings; else a stale-cache error."""
    return load_prepared_cache(path, benchmark, CACHE_FORMAT, expected, canonical=_canonical)


def cache_is_current(path: Path, expected: dict, inputs_sha256: str | None = None) -> bool:
    """True when ``path`` is a readable cache made with the ``expected`` prepare settings from the input files
    of checksum ``inputs_sha256`` (None where the source has none; read lazily: the real cache is over a
    gigabyte, and only its settings are looked at)."""
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, truncated or foreign: prepare makes it again
        return False
    return (isinstance(cache, dict) and cache.get("format") == CACHE_FORMAT
            and _canonical(cache.get("settings")) == _canonical(expected)
            and cache.get("inputs_sha256") == inputs_sha256)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class DaySplit:
    """One segment, served one trading day at a time (HIST's daily batches)."""
    features: torch.Tensor       # (rows, 360)
    labels: torch.Tensor         # (rows,)
    market_value: torch.Tensor   # (rows,)
    stock_rows: torch.Tensor     # (rows,) row of each stock in the concept matrix
    concept_matrix: torch.Tensor  # (stocks in the index + 1, concepts)
    offsets: np.ndarray          # (days + 1,) first row of each day, then the row count
    dates: list

    @classmethod
    def from_cache(cls, cache: dict, name: str, device: str | torch.device = "cpu") -> "DaySplit":
        split = cache["splits"][name]
        return cls(features=split["features"].to(device), labels=split["labels"].to(device),
                   market_value=split["market_value"].to(device), stock_rows=split["stock_rows"].to(device),
                   concept_matrix=cache["concept_matrix"].to(device),
                   offsets=split["day_offsets"].numpy(), dates=list(split["dates"]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def day(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, concept rows, market values, labels) of the ``i``-th trading day."""
        rows = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        return (self.features[rows], self.concept_matrix[self.stock_rows[rows]], self.market_value[rows],
                self.labels[rows])
