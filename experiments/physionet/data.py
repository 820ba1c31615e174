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
  Records come as they come in the wild: a line that cannot be read (an empty or unknown parameter name,
  a value that is not a number, a repeated header, a time past 48:00, ...) is skipped and counted per file
  and kind (:class:`Defects`, :data:`DEFECT_ACTIONS`), never costing the other records; only a file that
  cannot be read as a whole (an unreadable archive, a record file without its header, an outcomes file
  without its header or rows) is an error naming it.
* :func:`split_indices` is the original's protocol, seeded: 80/20 train/test, then 80/20 of the
  training part into train/validation. :func:`held_out_split` is the Challenge's own setting: one set held
  out for testing, the others split 80/20 into train/validation per seed.
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
from .meta import all_sets, defects_path

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
HEADER = ("Time", "Parameter", "Value")
# The Challenge's records cover the first 48 hours in the ICU; a later time stamp is outside the protocol.
WINDOW_MINUTES = 48 * 60

# Every kind of line, record or outcome that cannot be read as it stands, and what is done with it (the
# `action` column of the defects CSV beside the cache; docs/physionet.md gives the reason for each choice).
# Anything not listed (an unreadable archive or outcomes file, a record file without its header line, a
# member that is not UTF-8 text, a RecordID twice) stops with an error naming the file.
DEFECT_ACTIONS = {
    "windows_line_ends": "parsed: a line end \\r\\n is read as \\n (count: lines)",
    "blank_line": "ignored",
    "repeated_header": "line skipped",
    "malformed_line": "line skipped: not three comma-separated fields",
    "bad_time": "line skipped: time stamp not HH:MM with minutes 00-59",
    "empty_parameter": "line skipped",
    "unknown_parameter": "line skipped",
    "empty_value": "line skipped",
    "non_numeric_value": "line skipped: not a finite number",
    "after_48h": "observation dropped: after 48:00, outside the Challenge's window",
    "no_record_id": "record skipped: no RecordID line to label it with",
    "record_without_outcome": "record skipped: cannot be labelled",
    "conflicting_outcome": "record skipped: its outcome rows disagree",
    "bad_outcome_line": "line skipped: no RecordID and 0/1 In-hospital_death",
    "repeated_outcome": "line skipped: the RecordID's first row is used unless the labels disagree",
    "outcome_without_record": "not used: no record file has this RecordID",
}
DEFECT_COLUMNS = ["file", "kind", "action", "count", "first_line", "example"]
HARMLESS = ("windows_line_ends", "blank_line")  # nothing was lost: the summary line is no warning


def _fix(path: Path) -> str:
    return (f"delete {path} and re-run `python -m experiments download physionet` (or download it by hand "
            f"from {SOURCE_PAGE} into {Path(path).parent}/)")


def _clock(stamp: str) -> tuple[int, int] | None:
    """``"HH:MM"`` -> (hours, minutes), or None when it is not a clock reading with minutes 00-59."""
    match = _TIME.fullmatch(stamp)
    if match is None or int(match.group(2)) > 59:
        return None
    return int(match.group(1)), int(match.group(2))


def quantised_hours(stamp: str, quantization: float) -> float:
    """``"HH:MM"`` -> hours, rounded to a multiple of ``quantization`` exactly as the original does."""
    clock = _clock(stamp)
    if clock is None:
        raise ValueError(f"time stamp {stamp!r} is not HH:MM")
    hours = float(clock[0]) + float(clock[1]) / 60.0
    return round(hours / quantization) * quantization


class Defects:
    """How often each kind of defect (:data:`DEFECT_ACTIONS`) occurred in each file: its count, the first line
    it occurred on and that line's text. One collector serves every file a cache is made from."""

    def __init__(self):
        self._counts: dict[tuple[str, str], list] = {}  # (file, kind) -> [count, first line, example]

    def add(self, file: str, kind: str, line: int | None = None, text: str = "", count: int = 1) -> None:
        if kind not in DEFECT_ACTIONS:
            raise ValueError(f"unknown defect kind {kind!r}")
        entry = self._counts.setdefault((file, kind), [0, line, text.strip()[:80]])
        entry[0] += count

    def count(self, kind: str, file: str | None = None) -> int:
        return sum(c[0] for (f, k), c in self._counts.items() if k == kind and (file is None or f == file))

    def rows(self) -> list[dict]:
        """One row per file and kind (columns :data:`DEFECT_COLUMNS`), by file, kinds in a fixed order."""
        order = list(DEFECT_ACTIONS)
        return [{"file": f, "kind": k, "action": DEFECT_ACTIONS[k], "count": c[0], "first_line": c[1],
                 "example": c[2]}
                for (f, k), c in sorted(self._counts.items(), key=lambda i: (i[0][0], order.index(i[0][1])))]

    def summary(self) -> str:
        """One line: each kind's total count and in how many files it occurred."""
        if not self._counts:
            return "every line of every file read"
        parts = []
        for kind in DEFECT_ACTIONS:
            files = {f for f, k in self._counts if k == kind}
            if files:
                parts.append(f"{self.count(kind)} {kind} ({len(files)} file{'s' * (len(files) > 1)})")
        return ", ".join(parts)


@dataclass
class Record:
    record_id: int
    times: np.ndarray   # (T,) float64 hours, first row 0
    values: np.ndarray  # (T, 41) float32 raw values, 0 where unobserved
    mask: np.ndarray    # (T, 41) bool
    has_series: bool    # False: nothing but the 00:00 general descriptors


def _is_header(line: str) -> bool:
    return tuple(p.strip() for p in line.split(",")) == HEADER


def parse_record(lines: Iterable[str], quantization: float, where: str = "record",
                 defects: Defects | None = None) -> Record | None:
    """One record's lines (header first) -> :class:`Record`, or None when it has no RecordID line.

    A line that cannot be read is skipped and counted in ``defects`` under ``where`` (the kinds of
    :data:`DEFECT_ACTIONS`; checked in that order: fields, header, time, parameter, value, 48-hour window),
    so one bad line never costs the record. Only a first line that is not the header is a DataError: then
    the file is not a record file at all.
    """
    defects = Defects() if defects is None else defects
    lines = iter(lines)
    header = next(lines, "")
    if not _is_header(header):
        raise DataError(f"{where}: first line is {header.strip()!r}, expected 'Time,Parameter,Value': not a "
                        f"PhysioNet 2012 record file")
    times = [0.0]
    rows, cols, observed = [], [], []  # one entry per observation: (row of its time, variable, value)
    record_id, has_series = None, False
    last_stamp, time, late, admission = None, 0.0, False, True
    for number, line in enumerate(lines, start=2):
        parts = line.split(",")
        if len(parts) != 3:
            defects.add(where, "malformed_line" if line.strip() else "blank_line", number, line)
            continue
        stamp, name, text = parts  # spaces around a field are allowed (stripped only where they matter: fast)
        if stamp != last_stamp:  # consecutive lines mostly share their time stamp
            clock = _clock(stamp.strip())
            if clock is None:
                header = tuple(p.strip() for p in parts) == HEADER
                defects.add(where, "repeated_header" if header else "bad_time", number, line)
                continue
            hours = float(clock[0]) + float(clock[1]) / 60.0
            time, last_stamp = round(hours / quantization) * quantization, stamp
            late, admission = clock[0] * 60 + clock[1] > WINDOW_MINUTES, clock == (0, 0)
        column = VARIABLE_INDEX.get(name)
        if column is None:
            name = name.strip()
            if not name:
                defects.add(where, "empty_parameter", number, line)
                continue
            column = VARIABLE_INDEX.get(name)
            if column is None and name != "RecordID":
                defects.add(where, "unknown_parameter", number, line)
                continue
        try:
            value = float(text)
        except ValueError:
            defects.add(where, "non_numeric_value" if text.strip() else "empty_value", number, line)
            continue
        if not math.isfinite(value):
            defects.add(where, "non_numeric_value", number, line)
            continue
        if column is None:  # the RecordID line
            record_id = int(value)
            continue
        if late:
            defects.add(where, "after_48h", number, line)
            continue
        if not has_series and not (admission and name in DESCRIPTORS):
            has_series = True
        if time != times[-1]:  # the original starts a row whenever the rounded time changes
            times.append(time)
        rows.append(len(times) - 1)
        cols.append(column)
        observed.append(value)
    if record_id is None:
        defects.add(where, "no_record_id")
        return None
    shape = (len(times), len(VARIABLES))
    sums, count = np.zeros(shape), np.zeros(shape, dtype=np.int64)
    np.add.at(sums, (rows, cols), observed)  # several values of one variable in one row: their mean
    np.add.at(count, (rows, cols), 1)
    values = np.where(count > 0, sums / np.maximum(count, 1), 0.0).astype(np.float32)
    return Record(record_id, np.asarray(times, dtype=np.float64), values, count > 0, has_series)


@dataclass
class Outcomes:
    labels: dict[int, int]  # RecordID -> In-hospital_death (0/1), for the RecordIDs with one label
    lines: dict[int, int]   # RecordID -> the line of its first row (every RecordID listed, conflicting too)
    conflicting: set[int]   # RecordIDs listed with both labels


def _read_outcomes(path: Path, defects: Defects) -> Outcomes:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); {_fix(path)}") from None
    header = [c.strip() for c in (lines[0].split(",") if lines else [])]
    if header != list(OUTCOME_COLUMNS):
        raise DataError(f"{path} is not a PhysioNet 2012 outcomes file: header {header}, expected "
                        f"{list(OUTCOME_COLUMNS)}; {_fix(path)}")
    crlf = path.read_bytes().count(b"\r\n")
    if crlf:
        defects.add(path.name, "windows_line_ends", count=crlf)
    out = Outcomes({}, {}, set())
    for number, line in enumerate(lines[1:], start=2):
        cells = [c.strip() for c in line.split(",")]
        if not line.strip():
            defects.add(path.name, "blank_line", number, line)
            continue
        if cells == list(OUTCOME_COLUMNS):
            defects.add(path.name, "repeated_header", number, line)
            continue
        try:
            record_id, label = int(cells[0]), float(cells[-1])
        except ValueError:
            label = None
        if label not in (0, 1) or len(cells) != len(OUTCOME_COLUMNS):
            defects.add(path.name, "bad_outcome_line", number, line)
            continue
        if record_id in out.lines:
            defects.add(path.name, "repeated_outcome", number, line)
            if out.labels.get(record_id, int(label)) != int(label):
                out.conflicting.add(record_id)
                del out.labels[record_id]
            continue
        out.lines[record_id] = number
        out.labels[record_id] = int(label)
    if not out.lines:
        raise DataError(f"{path} has a header but no readable outcome rows; {_fix(path)}")
    return out


def read_outcomes(path: Path, defects: Defects | None = None) -> dict[int, int]:
    """``Outcomes-x.txt`` -> {RecordID: In-hospital_death (0/1)}; unreadable rows are skipped and counted in
    ``defects``, a RecordID listed with both labels is left out."""
    return _read_outcomes(path, Defects() if defects is None else defects).labels


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


def read_set(tar_path: Path, outcomes_path: Path, quantization: float, limit: int | None = None,
             defects: Defects | None = None) -> tuple[list[Record], np.ndarray]:
    """Parse every record of one set (straight from its tar.gz) -> (records sorted by RecordID, labels).

    ``limit``: only the first ``limit`` records by RecordID (tests and tiny profiles; only those are parsed).
    ``defects`` collects what was skipped, per file (``set-x.tar.gz:<member>`` and ``Outcomes-x.txt``) and
    kind; a record is skipped when it has no RecordID or no (or two different) outcomes.
    """
    tar_path = Path(tar_path)
    defects = Defects() if defects is None else defects
    if not tar_path.is_file():
        raise DataError(f"{tar_path} does not exist; get it with `python -m experiments download physionet`, "
                        f"or download it by hand from {SOURCE_PAGE} into {tar_path.parent}/")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of records or None, got {limit}")
    outcomes = _read_outcomes(outcomes_path, defects)
    records, listed = [], set()  # listed: RecordIDs of every record parsed, labelled or not
    for name, raw in _first_by_record_id(list(_members(tar_path)), limit):
        where = f"{tar_path.name}:{name}"
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(f"{tar_path}: member {name} is not UTF-8 text; {_fix(tar_path)}") from None
        if "\r\n" in text:
            defects.add(where, "windows_line_ends", count=text.count("\r\n"))
        try:
            record = parse_record(text.splitlines(), quantization, where=where, defects=defects)
        except DataError as exc:
            raise DataError(f"{exc} (in {tar_path}); {_fix(tar_path)}") from None
        if record is None:
            continue
        stem = Path(name).stem
        if stem.isdigit() and int(stem) != record.record_id:
            raise DataError(f"{tar_path}:{name} holds RecordID {record.record_id}; {_fix(tar_path)}")
        listed.add(record.record_id)
        if record.record_id in outcomes.conflicting:
            defects.add(where, "conflicting_outcome")
        elif record.record_id not in outcomes.labels:
            defects.add(where, "record_without_outcome")
        else:
            records.append(record)
    if not listed:
        raise DataError(f"{tar_path} holds no record files (*.txt) with a RecordID; {_fix(tar_path)}")
    if not records:
        raise DataError(f"{outcomes_path} has no outcome for any of the {len(listed)} records of {tar_path}: "
                        f"the two files are not from the same set; {_fix(outcomes_path)}")
    records.sort(key=lambda r: r.record_id)
    records = records[:limit]
    ids = [r.record_id for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"{tar_path} holds some RecordID twice; {_fix(tar_path)}")
    if limit is None:  # with a limit, most outcomes have no parsed record by design
        for record_id, line in outcomes.lines.items():
            if record_id not in listed:
                defects.add(Path(outcomes_path).name, "outcome_without_record", line, str(record_id))
    return records, np.asarray([outcomes.labels[i] for i in ids], dtype=np.int64)


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


def held_out_split(sets: list[str], test_set: str, seed: int, fraction: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Challenge's external validation: (train, validation, test) indices when ``test_set`` is held out.

    The test part is every record of ``test_set`` (in cache order: by RecordID); the other records are split
    as :func:`split_indices` splits its training part, seeded: ``floor(fraction * m)`` of them train, the
    rest validate, from one permutation of ``numpy.random.default_rng(seed)`` (validation first).
    """
    sets = np.asarray(sets)
    test = np.flatnonzero(sets == test_set).astype(np.int64)
    rest = np.flatnonzero(sets != test_set).astype(np.int64)
    if not 0 < float(fraction) < 1:
        raise ValueError(f"the train fraction must lie strictly between 0 and 1, got {fraction}")
    n_train = math.floor(float(fraction) * len(rest) + 1e-9)
    if len(test) < 1 or n_train < 1 or len(rest) - n_train < 1:
        raise ValueError(f"cannot hold out set {test_set!r} ({len(test)} records) and split the other "
                         f"{len(rest)} records {fraction}: a part would be empty")
    perm = rest[np.random.default_rng(seed).permutation(len(rest))]
    return perm[len(rest) - n_train:], perm[:len(rest) - n_train], test


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
    """Parse the sets in ``files`` ({set name: (tar.gz, outcomes)}) and save them at ``cache_path``
    (atomically) as flat arrays: record i's time steps are rows ``offsets[i]:offsets[i+1]``.

    The training sets (``data.sets``) come first, in their configured order, then the held-out
    ``data.test_set`` if there is one; ``sets`` names each record's set. ``data.limit`` keeps the first N
    records of the training sets, and the first N of the held-out set. What the raw files held that could
    not be read as it stands is counted per file and kind (:class:`Defects`), summarised in one log line
    and written to the CSV beside the cache (``<cache>.defects.csv``, also in the cache as ``defects``).
    ``data_settings`` (the configuration's ``data`` block) and ``extra`` are recorded, so a run made with
    other data settings can tell the cache is stale. Returns the cache's contents.
    """
    import time

    from pb_core.records import atomic_torch_save, write_csv

    from ..download import file_digest

    start = time.perf_counter()
    order = all_sets(data_settings)
    if sorted(order) != sorted(files):
        raise ValueError(f"build_cache needs the files of the sets {order}, got {sorted(files)}")
    test_set = data_settings.get("test_set")
    records, labels, set_of = [], [], []
    sources = {}
    defects = Defects()
    limit = data_settings.get("limit")
    used = {False: 0, True: 0}  # records kept so far: of the training sets, of the held-out set
    for name in order:
        tar_path, outcomes_path = files[name]
        held_out = name == test_set
        if limit is not None and used[held_out] >= limit:
            log.info("physionet: set %s not read: data.limit %d reached", name, limit)
            continue
        recs, labs = read_set(tar_path, outcomes_path, float(data_settings["quantization"]),
                              limit=None if limit is None else limit - used[held_out], defects=defects)
        log.info("physionet: set %s%s: %d records, %d in-hospital deaths, %d without time series", name,
                 " (held out for testing)" if held_out else "", len(recs), int(labs.sum()),
                 sum(not r.has_series for r in recs))
        used[held_out] += len(recs)
        records += recs
        labels.append(labs)
        set_of += [name] * len(recs)
        sources[Path(tar_path).name] = file_digest(tar_path, "sha256")
        sources[Path(outcomes_path).name] = file_digest(outcomes_path, "sha256")
    ids = [r.record_id for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"the sets {order} share RecordIDs; each set must be listed once")
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
        "defects": defects.rows(),
        "sources_sha256": sources, "seconds": time.perf_counter() - start, **(extra or {}),
    }
    report = defects_path(cache_path)
    write_csv(report, cache["defects"], DEFECT_COLUMNS)  # first: a cache without its report is made again
    atomic_torch_save(cache, cache_path)
    skipped = any(row["kind"] not in HARMLESS for row in cache["defects"])
    log.log(logging.WARNING if skipped else logging.INFO, "physionet: read %d records of sets %s: %s "
            "(per file: %s)", len(ids), "+".join(order), defects.summary(), report)
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
