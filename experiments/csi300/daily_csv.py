"""A qlib bundle from per-stock daily CSVs and an index-membership file (``data.source: daily_csv``).

Users rarely have qlib's own CN bundle; they have per-stock daily exports from a broker or a data vendor.
:func:`build_bundle` turns such a folder into qlib's on-disk format, with the conventions of qlib's own CN
bundle, so that qlib's ``Alpha360`` handler reads it unchanged:

* ``calendars/day.txt``: the trading days, the sorted union of every file's dates (qlib's
  ``scripts/dump_bin.py`` builds its calendar the same way);
* ``instruments/all.txt``: ``CODE<TAB>first day<TAB>last day`` of every file; ``instruments/<universe>.txt``:
  the membership file's lines for the stocks that have a file, clipped to the calendar;
* ``features/<code>/<field>.day.bin``: little-endian float32, the calendar index of the stock's first day,
  then one value per calendar day up to its last day; a day without a row (a suspension) is NaN (dump_bin's
  layout and alignment).

Prices as qlib's CN bundle defines them (``scripts/data_collector/yahoo/collector.py``, ``YahooNormalize1d``:
``adjusted_price`` sets ``factor = adjclose / close``, multiplies the prices by it and divides the volume by
it; ``_manual_adj_data`` then divides every price and the factor by the first day's adjusted close and
multiplies the volume by it). So for every day ``t`` of a stock:

* ``$close = adjusted close / adjusted close of the stock's first row`` (1.0 on that row),
* ``$factor = $close / raw close`` (so ``$close / $factor`` is the raw price, as qlib documents),
* ``$open``, ``$high``, ``$low``, ``$vwap`` = raw x ``$factor``; ``$volume`` = raw volume / ``$factor``,
* ``$vwap`` = ``amount / volume`` (raw yuan per share) x ``$factor``,
* ``$change`` = ``close / prev_close - 1``, the day's return as the exchange states it (NaN on a file's
  first row), and the market-value column (``total_mv``, yuan, unadjusted: a market value needs no
  adjustment) as ``$total_mv``.

The adjustment comes from ``prev_close``, the exchange's reference price: on an ex-dividend or split day
it is the previous close after the dividend or split, so ``close_t / prev_close_t`` is the day's true
return and the adjusted close is the product of those returns. ``$factor`` is therefore constant between
corporate actions and steps by ``close_{t-1} / prev_close_t`` on an ex-day (``t-1`` the stock's previous
row, also across a suspension).

Bad input: a problem that leaves a value unknown is a :class:`DataError` naming the file, the line and the
fix (a missing column, a non-numeric or non-positive price, a negative volume, unsorted dates, two
different rows for one date, a malformed membership line). A row that can be dropped without changing what
the bundle says is dropped and counted in the build report: a repeated identical row, and a row with zero
volume (a day without trading: qlib's collector turns those into NaN, a suspension, too). A member without
a file is left out of the universe file (qlib would have no price for it), and a file of a stock that is
never a member within the calendar goes into ``all.txt`` only; both are counted and named.

The bundle is built once: in a temporary sibling folder, renamed into place when complete; its name holds
the checksum of every input file, so changed inputs build a new bundle and an unchanged one is reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

BUILD_VERSION = 1                       # bump when the bundle's content for the same inputs changes
PRICE_COLUMNS = ("open", "high", "low", "close", "prev_close")
REQUIRED_COLUMNS = ("date", *PRICE_COLUMNS, "volume", "amount")
FIELDS = ("open", "high", "low", "close", "vwap", "volume", "factor", "change")
REPORT_FILE = "build.json"
SUFFIXES = (".csv", ".csv.gz")


@dataclass
class StockSeries:
    """One stock's cleaned rows: dates (datetime64[D]) and the bundle's fields, all of one length."""
    code: str
    dates: np.ndarray
    fields: dict


@dataclass
class BuildReport:
    """What was dropped or left out, by reason (written beside the bundle as ``build.json``)."""
    stocks: int = 0
    rows: int = 0
    calendar_days: int = 0
    zero_volume_rows: dict = field(default_factory=dict)      # code -> rows dropped (no trading that day)
    repeated_rows: dict = field(default_factory=dict)         # code -> identical repeats dropped
    missing_market_value: dict = field(default_factory=dict)  # code -> rows whose market value is unknown
    members_without_file: list = field(default_factory=list)  # codes in the membership file, no CSV
    never_members: list = field(default_factory=list)         # CSVs of stocks never in the universe
    membership_lines_outside: int = 0                         # lines entirely outside the calendar

    def warnings(self) -> list[str]:
        out = []
        for name, counts, why in (
                ("zero-volume rows", self.zero_volume_rows, "no trading that day: a suspension (NaN), as qlib's collector"),
                ("repeated identical rows", self.repeated_rows, "the same date twice with the same values"),
                ("rows without a market value", self.missing_market_value, "left NaN; HIST fills them with the training mean")):
            if counts:
                out.append(f"{sum(counts.values())} {name} in {len(counts)} files dropped or left NaN ({why}): "
                           + ", ".join(f"{c} ({n})" for c, n in sorted(counts.items())[:8]))
        if self.members_without_file:
            out.append(f"{len(self.members_without_file)} members within the calendar have no CSV and are left out "
                       f"of the universe file: {', '.join(self.members_without_file[:12])}")
        if self.never_members:
            out.append(f"{len(self.never_members)} CSVs are of stocks never in the universe within the calendar "
                       f"(written to all.txt only): {', '.join(self.never_members[:12])}")
        return out


def input_files(csv_dir: Path) -> list[Path]:
    """The per-stock files of ``csv_dir`` (``<CODE>.csv`` or ``<CODE>.csv.gz``), sorted by code."""
    csv_dir = Path(csv_dir)
    if not csv_dir.is_dir():
        raise DataError(f"{csv_dir} does not exist or is not a folder; put one <CODE>.csv(.gz) per stock there "
                        f"(columns {', '.join(REQUIRED_COLUMNS)}) or point data.daily_csv.dir at such a folder")
    files = sorted(p for p in csv_dir.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
    if not files:
        raise DataError(f"{csv_dir} holds no <CODE>.csv or <CODE>.csv.gz file")
    return files


def code_of(path: Path) -> str:
    name = Path(path).name
    return name[:-len(next(s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)))].upper()


def inputs_digest(files: list[Path], membership: Path, market_value_column: str | None) -> str:
    """sha256 over the builder version, the options and every input file's name and content."""
    h = hashlib.sha256(json.dumps({"version": BUILD_VERSION, "market_value_column": market_value_column}).encode())
    for path in [*files, Path(membership)]:
        h.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_stock(path: Path, market_value_column: str | None, report: BuildReport) -> StockSeries:
    """One CSV, checked and converted to the bundle's fields (see the module docstring)."""
    import pandas as pd

    path = Path(path)
    code = code_of(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # gzip, encoding and CSV parser errors alike
        raise DataError(f"{path}: cannot read it as a CSV file ({type(exc).__name__}: {exc})") from None
    wanted = [*REQUIRED_COLUMNS, *([market_value_column] if market_value_column else [])]
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise DataError(f"{path}:1: the header lacks the columns {missing} (it has {list(raw.columns)}); every "
                        f"file needs {', '.join(wanted)}")
    lines = np.arange(len(raw)) + 2  # line numbers in the file: the header is line 1
    dates = pd.to_datetime(raw["date"].str.strip(), format="%Y-%m-%d", errors="coerce")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        raise DataError(f"{path}:{lines[bad[0]]}: date {raw['date'].iloc[bad[0]]!r} is not YYYY-MM-DD")
    dates = dates.to_numpy().astype("datetime64[D]")
    values = {}
    for column in (*PRICE_COLUMNS, "volume", "amount"):
        numbers = pd.to_numeric(raw[column].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(numbers))
        if len(bad):
            raise DataError(f"{path}:{lines[bad[0]]}: {column} {raw[column].iloc[bad[0]]!r} is not a number "
                            f"({len(bad)} such rows); fix the value, or delete the row if the stock did not trade "
                            f"that day (a missing row is a suspended day)")
        values[column] = numbers
    if market_value_column:
        mv = pd.to_numeric(raw[market_value_column].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        values["market_value"] = np.where(mv > 0, mv, np.nan)

    steps = np.diff(dates).astype(np.int64)
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0]) + 1
        raise DataError(f"{path}:{lines[i]}: date {dates[i]} comes after {dates[i - 1]} (line {lines[i - 1]}): "
                        f"the rows must be sorted by date (oldest first); sort the file")
    repeat = np.flatnonzero(steps == 0) + 1
    if len(repeat):
        columns = [c for c in raw.columns]
        same = (raw.iloc[repeat][columns].to_numpy() == raw.iloc[repeat - 1][columns].to_numpy()).all(axis=1)
        if not same.all():
            i = int(repeat[~same][0])
            raise DataError(f"{path}:{lines[i]}: date {dates[i]} appears twice with different values (lines "
                            f"{lines[i - 1]} and {lines[i]}); keep the right row and delete the other")
        report.repeated_rows[code] = len(repeat)
    keep = np.ones(len(raw), dtype=bool)
    keep[repeat] = False

    if (values["volume"] < 0).any() or (values["amount"] < 0).any():
        i = int(np.flatnonzero((values["volume"] < 0) | (values["amount"] < 0))[0])
        raise DataError(f"{path}:{lines[i]}: negative volume or amount ({values['volume'][i]}, {values['amount'][i]})")
    idle = keep & (values["volume"] == 0)
    if idle.any():  # qlib's collector: volume <= 0 -> every field NaN (no trading that day)
        report.zero_volume_rows[code] = int(idle.sum())
        keep &= ~idle
    prices = np.column_stack([values[c] for c in PRICE_COLUMNS])
    bad = np.flatnonzero(keep & (prices <= 0).any(axis=1))
    if len(bad):
        i = int(bad[0])
        column = PRICE_COLUMNS[int(np.flatnonzero(prices[i] <= 0)[0])]
        raise DataError(f"{path}:{lines[i]}: {column} is {values[column][i]} on a day with volume "
                        f"{values['volume'][i]:g}: prices must be positive ({len(bad)} such rows); fix the row")
    if not keep.any():
        raise DataError(f"{path}: no row with trading (every row has zero volume)")

    dates = dates[keep]
    v = {k: a[keep] for k, a in values.items()}
    # factor: adjusted close / raw close, stepping by close_{t-1} / prev_close_t on an ex-day; anchored so that
    # the adjusted close of the first row is 1 (qlib's _manual_adj_data).
    steps = np.ones(len(dates))
    steps[1:] = v["close"][:-1] / v["prev_close"][1:]
    factor = np.cumprod(steps) / v["close"][0]
    change = np.full(len(dates), np.nan)
    change[1:] = v["close"][1:] / v["prev_close"][1:] - 1.0
    fields = {"open": v["open"] * factor, "high": v["high"] * factor, "low": v["low"] * factor,
              "close": v["close"] * factor, "vwap": v["amount"] / v["volume"] * factor,
              "volume": v["volume"] / factor, "factor": factor, "change": change}
    if market_value_column:
        fields[market_value_column] = v["market_value"]
        unknown = int(np.isnan(v["market_value"]).sum())
        if unknown:
            report.missing_market_value[code] = unknown
    return StockSeries(code=code, dates=dates, fields=fields)


def read_membership(path: Path) -> list[tuple[str, np.datetime64, np.datetime64, int]]:
    """The membership file's lines: (code, first day, last day, line number); qlib's instrument format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; give the index membership as CODE<TAB>first day<TAB>last day "
                        f"lines (qlib's instruments format) in data.daily_csv.membership")
    spans = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            try:
                if len(parts) != 3:
                    raise ValueError(f"{len(parts)} tab-separated fields, not 3")
                first, last = np.datetime64(parts[1].strip(), "D"), np.datetime64(parts[2].strip(), "D")
                if last < first:
                    raise ValueError(f"last day {last} before first day {first}")
            except ValueError as exc:
                raise DataError(f"{path}:{number}: {line.strip()!r} is not CODE<TAB>YYYY-MM-DD<TAB>YYYY-MM-DD "
                                f"({exc})") from None
            spans.append((parts[0].strip().upper(), first, last, number))
    if not spans:
        raise DataError(f"{path} has no membership line")
    return spans


def _bin(first: int, values: np.ndarray) -> bytes:
    return np.concatenate([[first], values]).astype("<f4").tobytes()


def write_bundle(root: Path, stocks: list[StockSeries], spans: list, universe: str, report: BuildReport) -> None:
    """qlib's folders and files under ``root`` (which must be empty) from the cleaned stocks."""
    calendar = np.unique(np.concatenate([s.dates for s in stocks]))
    report.calendar_days = len(calendar)
    (root / "calendars").mkdir(parents=True)
    (root / "calendars" / "day.txt").write_text("".join(f"{d}\n" for d in calendar))
    (root / "instruments").mkdir()
    (root / "instruments" / "all.txt").write_text(
        "".join(f"{s.code}\t{s.dates[0]}\t{s.dates[-1]}\n" for s in stocks))
    have = {s.code for s in stocks}
    lines, members, without = [], set(), set()
    for code, first, last, _ in spans:
        first, last = max(first, calendar[0]), min(last, calendar[-1])
        if first > last:
            report.membership_lines_outside += 1
            continue
        if code not in have:
            without.add(code)
            continue
        members.add(code)
        lines.append(f"{code}\t{first}\t{last}\n")
    (root / "instruments" / f"{universe.lower()}.txt").write_text("".join(lines))
    report.members_without_file = sorted(without)
    report.never_members = sorted(have - members)
    for s in stocks:
        position = np.searchsorted(calendar, s.dates)
        folder = root / "features" / s.code.lower()
        folder.mkdir(parents=True)
        for name, values in s.fields.items():
            aligned = np.full(position[-1] - position[0] + 1, np.nan)
            aligned[position - position[0]] = values
            (folder / f"{name.lower()}.day.bin").write_bytes(_bin(int(position[0]), aligned))


def build_bundle(csv_dir: Path, membership: Path, target_parent: Path, *, universe: str = "csi300",
                 market_value_column: str | None = "total_mv") -> tuple[Path, dict]:
    """The bundle for these inputs under ``target_parent`` (built once, then reused) and its build report.

    Its folder is ``target_parent/bundle-<first 16 hex digits of the inputs' sha256>``."""
    files = input_files(csv_dir)
    spans = read_membership(membership)
    digest = inputs_digest(files, membership, market_value_column)
    target = Path(target_parent) / f"bundle-{digest[:16]}"
    if (target / REPORT_FILE).is_file():
        return target, json.loads((target / REPORT_FILE).read_text())
    codes = [code_of(p) for p in files]
    twice = sorted({c for c in codes if codes.count(c) > 1})
    if twice:
        raise DataError(f"{csv_dir}: more than one file for {twice} (e.g. both .csv and .csv.gz); keep one")
    report = BuildReport()
    stocks = [read_stock(p, market_value_column, report) for p in files]
    report.stocks, report.rows = len(stocks), int(sum(len(s.dates) for s in stocks))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        write_bundle(staging / "bundle", stocks, spans, universe, report)
        content = {**report.__dict__, "inputs_sha256": digest, "csv_dir": str(csv_dir),
                   "membership": str(membership), "version": BUILD_VERSION}
        # written last: a folder with build.json is complete
        (staging / "bundle" / REPORT_FILE).write_text(json.dumps(content, indent=1, default=str))
        try:
            os.replace(staging / "bundle", target)
        except OSError:  # another process finished the same bundle first: keep theirs
            if not (target / REPORT_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for line in report.warnings():
        log.warning("%s: %s", csv_dir, line)
    log.info("%s: qlib bundle of %d stocks, %d rows, %d trading days in %s", csv_dir, report.stocks, report.rows,
             report.calendar_days, target)
    return target, json.loads((target / REPORT_FILE).read_text())


def no_download(raw, data_dir: Path):
    """Fetcher of the CSV folder and the membership file: nothing to download, they are the user's own."""
    raise DataError(f"{Path(data_dir) / raw.name} is missing: data.source daily_csv reads your own data, a folder of "
                    f"per-stock daily CSVs (one <CODE>.csv(.gz) each, columns {', '.join(REQUIRED_COLUMNS)}) and an "
                    f"index-membership file (CODE<TAB>first day<TAB>last day lines); put them there or point "
                    f"data.daily_csv.dir and data.daily_csv.membership at them (paths below data_dir)")
