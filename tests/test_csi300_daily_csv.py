"""data.source daily_csv: a qlib bundle built from per-stock daily CSVs, read back through qlib's own data
layer and Alpha360 handler, on a real slice of the shared data (four stocks, 2007-01 to 2008-06); every kind
of bad input as a clear error naming the file and line, or a counted, named warning."""
import gzip
import json
import os

import numpy as np
import pandas as pd
import pytest

from csi300_market import SLICE_CODES, SLICE_DATES, write_real_slice
from experiments.csi300 import qlib_data
from experiments.csi300.daily_csv import BuildReport, build_bundle, read_membership, read_stock
from experiments.errors import DataError

HEADER = "date,open,high,low,close,prev_close,volume,amount,float_mv,total_mv"


@pytest.fixture(scope="module")
def bundle(real_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("slice")
    folder, membership = write_real_slice(real_data_dir, root)
    path, report = build_bundle(folder, membership, root / "cache")
    return path, report, folder, membership


def _features(path, codes, fields, start, end):
    from qlib.data import D
    with qlib_data.qlib_session(path, kernels=1):
        frame = D.features(list(codes), fields, start_time=start, end_time=end)
    frame.columns = fields
    return frame


def test_adjusted_close_and_factor_on_a_real_ex_dividend_day(bundle):
    """SH600000 goes ex-dividend on 2007-07-18: close 36.33 on 07-17, reference price 36.18 on 07-18 (a 0.15
    dividend), close 36.58."""
    path = bundle[0]
    fields = ["$close", "$factor", "$close / $factor", "$volume * $factor", "$change", "$vwap / $factor",
              "Ref($close, 1)"]
    frame = _features(path, ["SH600000"], fields, "2007-01-01", "2007-12-31").loc["SH600000"]
    raw = pd.read_csv(bundle[2] / "SH600000.csv.gz", index_col="date", parse_dates=True)
    first = raw.index[0]
    # qlib's normalisation: the adjusted close of the stock's first row is 1, the factor there 1 / raw close
    assert frame.loc[first, "$close"] == pytest.approx(1.0, rel=1e-6)
    assert frame.loc[first, "$factor"] == pytest.approx(1.0 / raw["close"].iloc[0], rel=1e-6)
    # raw prices come back as $close / $factor, raw volume as $volume * $factor (float32 storage)
    np.testing.assert_allclose(frame["$close / $factor"].dropna(), raw["close"].loc[:"2007-12-31"], rtol=1e-6)
    np.testing.assert_allclose(frame["$volume * $factor"].dropna(), raw["volume"].loc[:"2007-12-31"], rtol=1e-6)
    np.testing.assert_allclose(frame["$vwap / $factor"].dropna(),
                               (raw["amount"] / raw["volume"]).loc[:"2007-12-31"], rtol=1e-6)
    before, ex = pd.Timestamp("2007-07-17"), pd.Timestamp("2007-07-18")
    assert (raw.loc[before, "close"], raw.loc[ex, "prev_close"], raw.loc[ex, "close"]) == (36.33, 36.18, 36.58)
    # By hand: the factor steps by 36.33 / 36.18 on the ex-day and is flat on the days around it ...
    assert frame.loc[ex, "$factor"] / frame.loc[before, "$factor"] == pytest.approx(36.33 / 36.18, rel=1e-6)
    assert frame.loc[before, "$factor"] == pytest.approx(frame.loc["2007-07-16", "$factor"], rel=1e-7)
    assert frame.loc["2007-07-19", "$factor"] == pytest.approx(frame.loc[ex, "$factor"], rel=1e-7)
    # ... so the adjusted return of the ex-day is the true one, 36.58 / 36.18 - 1 (not 36.58 / 36.33 - 1)
    assert frame.loc[ex, "$close"] / frame.loc[ex, "Ref($close, 1)"] - 1 == pytest.approx(36.58 / 36.18 - 1, rel=1e-5)
    assert frame.loc[ex, "$change"] == pytest.approx(36.58 / 36.18 - 1, rel=1e-5)
    # and no step before: from the first row to 07-17 the factor is 1 / first raw close (no other ex-day)
    assert frame.loc[before, "$factor"] == pytest.approx(1.0 / raw["close"].iloc[0], rel=1e-6)


def test_calendar_and_suspended_days(bundle):
    """The calendar is the union of the files' dates; a stock's day without a row is NaN (a suspension)."""
    from qlib.data import D
    path, report, folder, _ = bundle
    dates = {code: set(pd.read_csv(folder / f"{code}.csv.gz")["date"]) for code in SLICE_CODES}
    union = sorted(set().union(*dates.values()))
    with qlib_data.qlib_session(path, kernels=1):
        calendar = [str(d.date()) for d in D.calendar(freq="day")]
    assert calendar == union and report["calendar_days"] == len(union)
    frame = _features(path, SLICE_CODES, ["$close"], *SLICE_DATES)
    for code in SLICE_CODES:
        series = frame.loc[code, "$close"]
        traded = {str(d.date()) for d in series.dropna().index}
        assert traded == dates[code]
        # between its first and last row, every calendar day is there: NaN where it had no row
        span = [d for d in union if min(dates[code]) <= d <= max(dates[code])]
        assert len(series) == len(span)
    suspended = [d for d in union if d not in dates["SH600089"] and min(dates["SH600089"]) < d < max(dates["SH600089"])]
    assert suspended, "the slice should hold a suspension"


def test_membership_by_date(bundle):
    """qlib's csi300 universe is the membership file, clipped to the calendar: SH600089 leaves on 2007-07-01
    and returns on 2008-01-02; SH601318 (listed 2007-03-01) joins on 2007-07-02."""
    from qlib.data import D
    path, _, _, membership = bundle
    with qlib_data.qlib_session(path, kernels=1):
        spans = D.list_instruments(D.instruments("csi300"), start_time=SLICE_DATES[0], end_time=SLICE_DATES[1],
                                   as_list=False)
        calendar = pd.DatetimeIndex(D.calendar(freq="day"))
    member = {code: set() for code in SLICE_CODES}
    for code, ranges in spans.items():
        for a, b in ranges:
            member[code] |= set(calendar[(calendar >= a) & (calendar <= b)])
    for code, first, last, _ in read_membership(membership):
        days = set(calendar[(calendar >= pd.Timestamp(first)) & (calendar <= pd.Timestamp(last))])
        assert days <= member[code]
    assert pd.Timestamp("2007-06-29") in member["SH600089"] and pd.Timestamp("2007-07-02") not in member["SH600089"]
    assert pd.Timestamp("2007-12-28") not in member["SH600089"] and pd.Timestamp("2008-01-02") in member["SH600089"]
    assert min(member["SH601318"]) == pd.Timestamp("2007-07-02")


def test_alpha360_first_rows_through_the_handler(bundle):
    """qlib's Alpha360 handler, unchanged, on the bundle: the ex-day row of SH600000 sees the adjusted past
    (yesterday's close relative to today's is 36.18 / 36.58, the reference price, not the raw 36.33), and a
    stock's first row has no past."""
    path = bundle[0]
    frame = qlib_data.alpha360_frames(path, instruments="csi300", segments={"all": SLICE_DATES},
                                      label="Ref($close, -1) / $close - 1", infer_processors=[],
                                      learn_processors=[], kernels=1)["all"]
    features = frame["feature"]
    raw = pd.read_csv(bundle[2] / "SH600000.csv.gz", index_col="date", parse_dates=True)
    row = features.loc[(pd.Timestamp("2007-07-18"), "SH600000")]
    assert row["CLOSE0"] == pytest.approx(1.0)
    assert row["CLOSE1"] == pytest.approx(36.18 / 36.58, rel=1e-5)
    assert row["OPEN0"] == pytest.approx(raw.loc["2007-07-18", "open"] / 36.58, rel=1e-5)
    assert row["VOLUME1"] == pytest.approx(raw.loc["2007-07-17", "volume"] / raw.loc["2007-07-18", "volume"]
                                           * 36.33 / 36.18, rel=1e-5)
    assert row["VWAP0"] == pytest.approx(raw.loc["2007-07-18", "amount"] / raw.loc["2007-07-18", "volume"] / 36.58,
                                         rel=1e-5)
    label = frame["label"].loc[(pd.Timestamp("2007-07-17"), "SH600000")].iloc[0]
    assert label == pytest.approx(36.58 / 36.18 - 1, rel=1e-5)  # the label spans the ex-day correctly too
    # the first rows: the first day of the calendar, every stock that is a member then; no lag before it
    first_day = frame.index.get_level_values("datetime").min()
    first = features.xs(first_day, level="datetime")
    assert set(first.index) == {"SH600000", "SZ000002", "SH600089"}
    assert first["CLOSE0"].eq(1.0).all() and first["CLOSE1"].isna().all() and first["CLOSE59"].isna().all()
    # SH601318 has rows only from the day it joins the index
    assert frame.xs("SH601318", level="instrument").index.min() == pd.Timestamp("2007-07-02")


def test_the_bundle_is_built_once_and_rebuilt_when_an_input_changes(bundle, tmp_path):
    path, report, folder, membership = bundle
    stamp = (path / "build.json").stat().st_mtime_ns
    again, _ = build_bundle(folder, membership, path.parent)
    assert again == path and (path / "build.json").stat().st_mtime_ns == stamp
    changed = tmp_path / "cn_daily"
    changed.mkdir()
    for p in folder.iterdir():
        changed.joinpath(p.name).write_bytes(p.read_bytes())
    with gzip.open(changed / "SH600000.csv.gz", "rt") as f:
        text = f.read()
    with gzip.open(changed / "SH600000.csv.gz", "wt") as f:
        f.write(text.replace(",36.58,", ",36.59,", 1))
    other, _ = build_bundle(changed, membership, path.parent)
    assert other != path and other.parent == path.parent
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]


# ---- bad input: each a clear error naming the file and the line, or a counted warning -------------------

ROWS = ["2020-01-02,10.0,10.5,9.8,10.2,10.0,1000,10100,1e9,2e9",
        "2020-01-03,10.2,10.4,10.0,10.3,10.2,1200,12300,1e9,2e9",
        "2020-01-06,10.3,10.9,10.1,10.8,10.3,900,9500,1e9,2e9"]


def _csv(tmp_path, rows, header=HEADER, code="SH600000"):
    path = tmp_path / f"{code}.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("header, rows, message", [
    (HEADER.replace(",prev_close", ""), [r.split(",", 1)[0] + "," + ",".join(r.split(",")[1:5] + r.split(",")[6:])
                                         for r in ROWS], r"SH600000.csv:1: the header lacks the columns \['prev_close'\]"),
    (HEADER, [ROWS[0], ROWS[1].replace("10.3,10.2", "n/a,10.2"), ROWS[2]], r"SH600000.csv:3: close 'n/a' is not a number"),
    (HEADER, [ROWS[0], ROWS[1].replace("10.3,10.2", "-1,10.2"), ROWS[2]], r"SH600000.csv:3: close is -1.0 .*must be positive"),
    (HEADER, [ROWS[0], ROWS[1].replace("10.4,10.0,", "10.4,0,"), ROWS[2]], r"SH600000.csv:3: low is 0.0"),
    (HEADER, [ROWS[0], ROWS[2], ROWS[1]], r"SH600000.csv:4: date 2020-01-03 comes after 2020-01-06 \(line 3\)"),
    (HEADER, [ROWS[0], ROWS[1], ROWS[1].replace("1200", "1300")], r"SH600000.csv:4: date 2020-01-03 appears twice with different"),
    (HEADER, [ROWS[0], "2020-13-01" + ROWS[1][10:]], r"SH600000.csv:3: date '2020-13-01' is not YYYY-MM-DD"),
])
def test_bad_rows_are_errors_naming_file_and_line(tmp_path, header, rows, message):
    with pytest.raises(DataError, match=message):
        read_stock(_csv(tmp_path, rows, header), "total_mv", BuildReport())


def test_droppable_rows_are_dropped_and_counted(tmp_path):
    """An identical repeated row and a zero-volume day (no trading: a suspension, as qlib's collector makes
    it) are dropped and counted; the factor chain runs through the dropped day from prev_close."""
    rows = [ROWS[0], ROWS[0], "2020-01-03,10.2,10.2,10.2,10.2,10.2,0,0,1e9,2e9", ROWS[2]]
    report = BuildReport()
    stock = read_stock(_csv(tmp_path, rows), "total_mv", report)
    assert report.repeated_rows == {"SH600000": 1} and report.zero_volume_rows == {"SH600000": 1}
    assert [str(d) for d in stock.dates] == ["2020-01-02", "2020-01-06"]
    # 01-06's prev_close (10.3) differs from the last kept close (10.2): the factor steps by 10.2 / 10.3
    assert stock.fields["factor"][1] / stock.fields["factor"][0] == pytest.approx(10.2 / 10.3)
    assert stock.fields["close"][0] == pytest.approx(1.0)
    assert "1 zero-volume rows in 1 files" in report.warnings()[0]


def test_members_without_a_file_and_files_of_non_members_are_counted(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    _csv(folder, ROWS, code="SH600000")
    _csv(folder, ROWS, code="SZ000001")
    membership = tmp_path / "members.txt"
    membership.write_text("SH600000\t2019-06-01\t2020-01-03\nSH600001\t2020-01-02\t2020-12-31\n"
                          "SH600002\t2010-01-01\t2011-01-01\n")
    path, report = build_bundle(folder, membership, tmp_path / "cache")
    assert report["members_without_file"] == ["SH600001"] and report["never_members"] == ["SZ000001"]
    assert report["membership_lines_outside"] == 1
    assert (path / "instruments" / "csi300.txt").read_text() == "SH600000\t2020-01-02\t2020-01-03\n"
    assert len((path / "instruments" / "all.txt").read_text().splitlines()) == 2
    assert json.loads((path / "build.json").read_text())["stocks"] == 2


def test_a_bad_file_leaves_no_bundle_behind(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    _csv(folder, ROWS)
    _csv(folder, [ROWS[0], ROWS[1].replace("10.3,10.2", "x,10.2")], code="SZ000001")
    membership = tmp_path / "members.txt"
    membership.write_text("SH600000\t2020-01-02\t2020-01-06\n")
    with pytest.raises(DataError, match=r"SZ000001.csv:3: close 'x'"):
        build_bundle(folder, membership, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_malformed_membership_lines_name_the_line(tmp_path):
    path = tmp_path / "members.txt"
    path.write_text("SH600000\t2020-01-02\t2020-01-06\nSH600001 2020-01-02 2020-01-06\n")
    with pytest.raises(DataError, match=r"members.txt:2: .* is not CODE<TAB>"):
        read_membership(path)
    path.write_text("SH600000\t2020-01-06\t2020-01-02\n")
    with pytest.raises(DataError, match=r"members.txt:1: .*before first day"):
        read_membership(path)
