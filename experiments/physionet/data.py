"""PhysioNet Challenge 2012 data: parse the raw archives once, then split, normalise and batch per run.

* :func:`parse_record` turns one record's ``Time,Parameter,Value`` lines into mTAN's irregular series:
  rows of quantised time stamps (hours), the values of the 41 :data:`VARIABLES` and their observation
  mask. It follows the loader the mTAN authors use (``physionet.py``, from Rubanova et al.'s latent ODE
  code): a first row at time 0; a time stamp ``HH:MM`` is ``HH + MM/60`` hours, rounded to a multiple
  of ``quantization`` (``round(t / q) * q``, half to even); a new row starts whenever the rounded time
  differs from the previous row's; several values of one variable in one row are averaged. The general
  descriptors Age, Gender, Height, ICUType and Weight are variables like the others, observed at time 0
  (their -1 "unknown" codes are kept as observed values, as the original does); RecordID is dropped.
* :func:`read_set` parses one set's ``set-x.tar.gz`` directly (nothing is extracted) with its
  ``Outcomes-x.txt``; the label is In-hospital_death. Records are returned sorted by RecordID, so the
  order (and every seeded split) does not depend on the archive's member order. ``data.limit`` keeps
  only the first N records by RecordID (over the sets in their configured order): a tiny profile for tests.
* :func:`split_indices` is the original's protocol, seeded: 80/20 train/test, then 80/20 of the
  training part into train/validation.
* :func:`normalisation` computes each variable's minimum and maximum over the TRAINING records only
  (the original used all of set A, so test values leaked into the normalisation); :func:`pad_split`
  applies the original's transform ``(x - min) / max`` (max 0 -> 1; unobserved entries 0) and divides
  time stamps by the training records' latest time (the original divides by each split's latest time;
  all are 48 h on this data).
"""
from __future__ import annotations

import gzip
import logging
import math
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger(__name__)

# The original's variables and their order (physionet.py's ``params``): 4 general descriptors that are
# only recorded at time 0, then the 37 time series (Weight is both a descriptor and a time series).
VARIABLES = (
    "Age", "Gender", "Height", "ICUType", "Weight", "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN",
    "Cholesterol", "Creatinine", "DiasABP", "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate",
    "Mg", "MAP", "MechVent", "Na", "NIDiasABP", "NIMAP", "NISysABP", "PaCO2", "PaO2", "pH", "Platelets",
    "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT", "Urine", "WBC",
)
VARIABLE_INDEX = {name: i for i, name in enumerate(VARIABLES)}
# Descriptors recorded at 00:00 on admission; a record with nothing else has no time series.
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
LABEL_COLUMN = "In-hospital_death"
OUTCOME_COLUMNS = ("RecordID", "SAPS-I", "SOFA", "Length_of_stay", "Survival", LABEL_COLUMN)
SOURCE_PAGE = "https://physionet.org/content/challenge-2012/1.0.0/"
_TIME = re.compile(r"(\d+):(\d\d)")


def _fix(path: Path) -> str:
    return (f"delete {path} and re-run `python -m experiments download physionet` (or download it by hand "
            f"from {SOURCE_PAGE} into {Path(path).parent}/)")


def quantised_hours(stamp: str, quantization: float) -> float:
    """``"HH:MM"`` -> hours, rounded to a multiple of ``quantization`` exactly as the original does."""
    match = _TIME.fullmatch(stamp)
    if match is None:
        raise ValueError(f"time stamp {stamp!r} is not HH:MM")
    hours = float(match.group(1)) + float(match.group(2)) / 60.0
    return round(hours / quantization) * quantization


@dataclass
class Record:
    record_id: int
    times: np.ndarray   # (T,) float64 hours, first row 0
    values: np.ndarray  # (T, 41) float32 raw values, 0 where unobserved
    mask: np.ndarray    # (T, 41) bool
    has_series: bool    # False: nothing but the 00:00 general descriptors


def parse_record(lines: Iterable[str], quantization: float, where: str = "record") -> Record:
    """One record's lines (header first) -> :class:`Record`. Raises DataError naming ``where`` and the line."""
    lines = iter(lines)
    header = next(lines, "").strip()
    if header.replace(" ", "") != "Time,Parameter,Value":
        raise DataError(f"{where}: first line is {header!r}, expected 'Time,Parameter,Value'")
    times = [0.0]
    rows, cols, observed = [], [], []  # one entry per observation: (row of its time, variable, value)
    record_id, has_series = None, False
    last_stamp, time = None, 0.0
    for number, line in enumerate(lines, start=2):
        parts = line.split(",")
        try:
            stamp, name, text = parts
            value = float(text)
            if stamp != last_stamp:  # consecutive lines mostly share their time stamp
                time, last_stamp = quantised_hours(stamp, quantization), stamp
        except ValueError:
            if not line.strip():
                continue
            raise DataError(f"{where}, line {number}: cannot read {line.strip()!r} as 'HH:MM,Parameter,Value'") from None
        if name == "RecordID":
            record_id = int(value)
            continue
        column = VARIABLE_INDEX.get(name)
        if column is None:
            raise DataError(f"{where}, line {number}: unknown parameter {name!r} (known: {', '.join(VARIABLES)})")
        if not has_series and not (stamp == "00:00" and name in DESCRIPTORS):
            has_series = True
        if time != times[-1]:  # the original starts a row whenever the rounded time changes
            times.append(time)
        rows.append(len(times) - 1)
        cols.append(column)
        observed.append(value)
    if record_id is None:
        raise DataError(f"{where}: no RecordID line")
    shape = (len(times), len(VARIABLES))
    sums, count = np.zeros(shape), np.zeros(shape, dtype=np.int64)
    np.add.at(sums, (rows, cols), observed)  # several values of one variable in one row: their mean
    np.add.at(count, (rows, cols), 1)
    values = np.where(count > 0, sums / np.maximum(count, 1), 0.0).astype(np.float32)
    return Record(record_id, np.asarray(times, dtype=np.float64), values, count > 0, has_series)


def read_outcomes(path: Path) -> dict[int, int]:
    """``Outcomes-x.txt`` -> {RecordID: In-hospital_death (0/1)}."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); {_fix(path)}") from None
    header = [c.strip() for c in (lines[0].split(",") if lines else [])]
    if header != list(OUTCOME_COLUMNS):
        raise DataError(f"{path} is not a PhysioNet 2012 outcomes file: header {header}, expected "
                        f"{list(OUTCOME_COLUMNS)}; {_fix(path)}")
    labels = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split(",")
        try:
            record_id, label = int(cells[0]), int(float(cells[-1]))
        except (ValueError, IndexError):
            raise DataError(f"{path}, line {number}: cannot read {line!r}; {_fix(path)}") from None
        if label not in (0, 1) or len(cells) != len(OUTCOME_COLUMNS):
            raise DataError(f"{path}, line {number}: {line!r} has no 0/1 {LABEL_COLUMN} in column 6; {_fix(path)}")
        labels[record_id] = label
    if not labels:
        raise DataError(f"{path} has a header but no records; {_fix(path)}")
    return labels


def _members(tar_path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".txt"):
                    yield member.name, tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {tar_path} ({type(exc).__name__}: {exc}); the archive is corrupt or "
                        f"truncated: {_fix(tar_path)}") from None


def _first_by_record_id(members: list[tuple[str, bytes]], limit: int | None) -> list[tuple[str, bytes]]:
    """The members to parse: with a ``limit``, the first ``limit`` by RecordID when every file is named
    ``<RecordID>.txt`` (as the challenge names them; parsing checks the name against the RecordID line),
    else all of them (the records are cut after parsing)."""
    stems = [Path(name).stem for name, _ in members]
    if limit is None or not all(stem.isdigit() for stem in stems):
        return members
    order = sorted(range(len(members)), key=lambda i: int(stems[i]))
    return [members[i] for i in order[:limit]]


def read_set(tar_path: Path, outcomes_path: Path, quantization: float,
             limit: int | None = None) -> tuple[list[Record], np.ndarray]:
    """Parse every record of one set (straight from its tar.gz) -> (records sorted by RecordID, labels).

    ``limit``: only the first ``limit`` records by RecordID (tests and tiny profiles; only those are parsed).
    """
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise DataError(f"{tar_path} does not exist; get it with `python -m experiments download physionet`, "
                        f"or download it by hand from {SOURCE_PAGE} into {tar_path.parent}/")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of records or None, got {limit}")
    outcomes = read_outcomes(outcomes_path)
    records = []
    for name, raw in _first_by_record_id(list(_members(tar_path)), limit):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{tar_path}: member {name} is not UTF-8 text; {_fix(tar_path)}") from None
        record = parse_record(text.splitlines(), quantization, where=f"{tar_path}:{name}")
        stem = Path(name).stem
        if stem.isdigit() and int(stem) != record.record_id:
            raise DataError(f"{tar_path}:{name} holds RecordID {record.record_id}; {_fix(tar_path)}")
        records.append(record)
    if not records:
        raise DataError(f"{tar_path} holds no record files (*.txt); {_fix(tar_path)}")
    records.sort(key=lambda r: r.record_id)
    records = records[:limit]
    ids = [r.record_id for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"{tar_path} holds some RecordID twice; {_fix(tar_path)}")
    missing = [i for i in ids if i not in outcomes]
    if missing:
        raise DataError(f"{outcomes_path} has no outcome for {len(missing)} records of {tar_path} (e.g. "
                        f"{missing[:5]}): the two files are not from the same set; {_fix(outcomes_path)}")
    if limit is None and len(outcomes) != len(ids):
        log.warning("%s lists %d outcomes for records not in %s", outcomes_path, len(outcomes) - len(ids), tar_path)
    return records, np.asarray([outcomes[i] for i in ids], dtype=np.int64)


# ---------------------------------------------------------------------------------------------- per run
def split_indices(n: int, seed: int, fractions=(0.8, 0.8)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The original's split, seeded: (train, validation, test) indices of ``range(n)``.

    ``fractions = (a, b)``: a share ``a`` of the records (``floor(a * n)``, as scikit-learn's
    ``train_test_split(train_size=a)``) is the training part, the rest the test set; of the training
    part, ``floor(b * m)`` train and the rest validate. One permutation from
    ``numpy.random.default_rng(seed)``: test = its first ``n - floor(a n)`` indices, then validation,
    then train. Same seed, same split on every machine.
    """
    a, b = (float(f) for f in fractions)
    if not (0 < a < 1 and 0 < b < 1):
        raise ValueError(f"split fractions must lie strictly between 0 and 1, got {fractions}")
    n_train_part = math.floor(a * n + 1e-9)
    n_train = math.floor(b * n_train_part + 1e-9)
    if n_train < 1 or n_train_part - n_train < 1 or n - n_train_part < 1:
        raise ValueError(f"cannot split {n} records {fractions}: a part would be empty")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    n_test = n - n_train_part
    return perm[n_test + n_train_part - n_train:], perm[n_test:n_test + n_train_part - n_train], perm[:n_test]


def _layout(offsets: np.ndarray, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the records ``idx`` (in that order): (their rows in the flat arrays, the position of each row's
    record in ``idx``, each row's time step within its record)."""
    idx = np.asarray(idx, dtype=np.int64)
    lengths = offsets[idx + 1] - offsets[idx]
    record = np.repeat(np.arange(len(idx)), lengths)
    step = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return offsets[idx][record] + step, record, step


def record_rows(offsets: np.ndarray, idx) -> np.ndarray:
    """Row indices (into the flat time-step arrays) of the records ``idx``."""
    return _layout(offsets, idx)[0]


def normalisation(values: np.ndarray, mask: np.ndarray, offsets: np.ndarray, train_idx) -> tuple[np.ndarray, np.ndarray]:
    """Per variable (minimum, maximum) of the observed values of the training records only.

    A variable never observed in those records gets (0, 1): it is all-zero after normalisation anyway.
    """
    rows = record_rows(offsets, np.asarray(train_idx))
    v, m = values[rows], mask[rows]
    lo = np.where(m, v, np.inf).min(axis=0)
    hi = np.where(m, v, -np.inf).max(axis=0)
    never = ~m.any(axis=0)
    if never.any():
        log.warning("physionet: variables never observed in the training records: %s",
                    [VARIABLES[j] for j in np.flatnonzero(never)])
    return np.where(never, 0.0, lo).astype(np.float32), np.where(never, 1.0, hi).astype(np.float32)


def normalise(values: np.ndarray, mask: np.ndarray, minimum: np.ndarray, maximum: np.ndarray) -> np.ndarray:
    """The original's ``normalize_masked_data``: ``(x - min) / max`` (max 0 -> 1), unobserved entries 0."""
    scale = np.where(maximum == 0, 1.0, maximum).astype(np.float32)
    return np.where(mask, (values - minimum) / scale, 0.0).astype(np.float32)


@dataclass
class Split:
    """One split as padded tensors: record i's time steps are rows ``[:lengths[i]]``, the rest zero."""
    values: torch.Tensor   # (N, T, 41) float32, normalised
    mask: torch.Tensor     # (N, T, 41) float32 0/1
    times: torch.Tensor    # (N, T) float32, scaled to [0, 1] by the training records' latest time
    lengths: torch.Tensor  # (N,) int64
    labels: torch.Tensor   # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: str) -> Split:
        return Split(*(t.to(device) for t in (self.values, self.mask, self.times, self.lengths, self.labels)))

    def batch(self, idx: torch.Tensor, device: str = "cpu") -> tuple[torch.Tensor, ...]:
        """(values, mask, times, labels) of the records ``idx``, cut to the longest of them."""
        steps = int(self.lengths[idx].max())
        return tuple(t.to(device) for t in (self.values[idx, :steps], self.mask[idx, :steps],
                                            self.times[idx, :steps], self.labels[idx]))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: str = "cpu") -> Iterator[tuple[torch.Tensor, ...]]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        order = order.to(self.labels.device)
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start:start + batch_size], device)


def pad_split(times: np.ndarray, values: np.ndarray, mask: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
              idx, minimum: np.ndarray, maximum: np.ndarray, time_scale: float) -> Split:
    """The records ``idx`` (in that order) as a padded, normalised :class:`Split`."""
    idx = np.asarray(idx, dtype=np.int64)
    rows, record, step = _layout(offsets, idx)
    lengths = offsets[idx + 1] - offsets[idx]
    shape = (len(idx), int(lengths.max()))
    out_v = np.zeros((*shape, len(VARIABLES)), dtype=np.float32)
    out_m = np.zeros((*shape, len(VARIABLES)), dtype=np.float32)
    out_t = np.zeros(shape, dtype=np.float32)
    out_v[record, step] = normalise(values[rows], mask[rows], minimum, maximum)
    out_m[record, step] = mask[rows]
    out_t[record, step] = times[rows] / time_scale
    return Split(torch.from_numpy(out_v), torch.from_numpy(out_m), torch.from_numpy(out_t),
                 torch.from_numpy(lengths.astype(np.int64)), torch.from_numpy(labels[idx].astype(np.int64)))


# ---------------------------------------------------------------------------------------------- the cache
CACHE_FORMAT = 1


def build_cache(data_settings: dict, files: dict[str, tuple[Path, Path]], cache_path: Path,
                extra: dict | None = None) -> dict:
    """Parse the sets in ``files`` ({set name: (tar.gz, outcomes)}, in that order) and save them at
    ``cache_path`` (atomically) as flat arrays: record i's time steps are rows ``offsets[i]:offsets[i+1]``.

    ``data_settings`` (the configuration's ``data`` block) and ``extra`` are recorded, so a run made with
    other data settings can tell the cache is stale. Returns the cache's contents.
    """
    import time

    from pb_core.records import atomic_torch_save

    from ..download import file_digest

    start = time.perf_counter()
    records, labels, set_of = [], [], []
    sources = {}
    limit = data_settings.get("limit")
    for name, (tar_path, outcomes_path) in files.items():
        if limit is not None and len(records) >= limit:
            log.info("physionet: set %s not read: data.limit %d reached", name, limit)
            continue
        recs, labs = read_set(tar_path, outcomes_path, float(data_settings["quantization"]),
                              limit=None if limit is None else limit - len(records))
        log.info("physionet: set %s: %d records, %d in-hospital deaths, %d without time series", name,
                 len(recs), int(labs.sum()), sum(not r.has_series for r in recs))
        records += recs
        labels.append(labs)
        set_of += [name] * len(recs)
        sources[Path(tar_path).name] = file_digest(tar_path, "sha256")
        sources[Path(outcomes_path).name] = file_digest(outcomes_path, "sha256")
    ids = [r.record_id for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"the sets {list(files)} share RecordIDs; each set must be listed once")
    offsets = np.cumsum([0] + [len(r.times) for r in records]).astype(np.int64)
    cache = {
        "format": CACHE_FORMAT, "data": dict(data_settings), "variables": list(VARIABLES),
        "record_ids": torch.tensor(ids, dtype=torch.int64), "sets": set_of,
        "labels": torch.from_numpy(np.concatenate(labels)),
        "offsets": torch.from_numpy(offsets),
        "times": torch.from_numpy(np.concatenate([r.times for r in records])),
        "values": torch.from_numpy(np.concatenate([r.values for r in records])),
        "mask": torch.from_numpy(np.concatenate([r.mask for r in records])),
        "without_series": [r.record_id for r in records if not r.has_series],
        "sources_sha256": sources, "seconds": time.perf_counter() - start, **(extra or {}),
    }
    atomic_torch_save(cache, cache_path)
    log.info("physionet: parsed %d records (%d time steps) in %.1f s -> %s", len(ids), int(offsets[-1]),
             cache["seconds"], cache_path)
    return cache


def load_cache(path: Path) -> dict | None:
    """The cache at ``path``, or None when it is missing, unreadable or of another format."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: derived data, so the caller rebuilds it
        log.warning("physionet: cannot read %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    if not isinstance(cache, dict) or cache.get("format") != CACHE_FORMAT:
        return None
    return cache
