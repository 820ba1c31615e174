"""CSI300 data: a market in qlib's format read by qlib's own data layer, Alpha360 features without
look-ahead, HIST's processors, the prepared cache, HIST's side files, and qlib kept local and quiet."""
import ast
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from csi300_market import FIXTURE, SEGMENTS, prepared_market
from experiments.csi300 import meta, qlib_data
from experiments.csi300.no_tracking import NoTracking
from experiments.csi300.data import load_concept_matrix, load_market_value, load_stock_index
from experiments.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SERIES = (("CLOSE", "close"), ("OPEN", "open"), ("HIGH", "high"), ("LOW", "low"), ("VWAP", "vwap"),
          ("VOLUME", "volume"))
HIST_LABEL = "Ref($close, -1) / $close - 1"


@pytest.fixture(scope="module")
def market(real_data_dir):
    return prepared_market(str(real_data_dir))


def _positions(truth, frame):
    """Calendar position and stock column of every row of a qlib frame."""
    day = {d: i for i, d in enumerate(truth.calendar.astype("datetime64[ns]"))}
    col = {c: j for j, c in enumerate(truth.codes)}
    dates = frame.index.get_level_values("datetime").to_numpy()
    return (np.array([day[d] for d in dates]),
            np.array([col[c] for c in frame.index.get_level_values("instrument")]))


def test_qlib_reads_the_calendar_and_the_index_membership(market):
    from qlib.data import D

    truth = market.truth
    with qlib_data.qlib_session(market.market_root, kernels=1):
        calendar = np.array(D.calendar(freq="day"), dtype="datetime64[D]")
        spans = D.list_instruments(D.instruments("csi300"), as_list=False)
    np.testing.assert_array_equal(calendar, truth.calendar)
    member = np.zeros_like(truth.members)
    position = {d: i for i, d in enumerate(truth.calendar)}
    for code, spells in spans.items():
        for first, last in spells:
            a, b = position[np.datetime64(first.date())], position[np.datetime64(last.date())]
            member[a:b + 1, truth.codes.index(code)] = True
    np.testing.assert_array_equal(member, truth.members)
    # The market is realistic where it matters: stocks leave and join the index, suspensions, late listings.
    assert 0 < (np.diff(truth.members.astype(int), axis=0) != 0).sum()
    assert (~truth.listed & truth.members).any()


def test_raw_alpha360_features_and_label_come_from_the_right_days(market):
    truth = market.truth
    frame = qlib_data.alpha360_frames(market.market_root, instruments="csi300",
                                      segments={"all": (FIXTURE["start"], FIXTURE["end"])}, label=HIST_LABEL,
                                      infer_processors=[], learn_processors=[], kernels=1)["all"]
    assert frame["feature"].shape[1] == 360
    assert list(frame["feature"].columns) == [f"{name}{lag}" for name, _ in SERIES for lag in range(59, -1, -1)]
    t, j = _positions(truth, frame)
    # one row per (day, stock) in the index that day
    rows = np.zeros_like(truth.members)
    rows[t, j] = True
    np.testing.assert_array_equal(rows, truth.members)

    prices = {k: v.astype(np.float32).astype(np.float64) for k, v in truth.prices.items()}  # as stored
    features = frame["feature"].to_numpy(dtype=np.float64)
    for g, (_, field) in enumerate(SERIES):
        denominator = prices["volume"][t, j] + 1e-12 if field == "volume" else prices["close"][t, j]
        for lag in range(60):
            past = np.full(len(t), np.nan)
            ok = t - lag >= 0
            past[ok] = prices[field][t[ok] - lag, j[ok]]
            # column g*60 + (59 - lag): a price `lag` days before the row's day, never after it
            np.testing.assert_allclose(features[:, g * 60 + 59 - lag], past / denominator, rtol=2e-5,
                                       equal_nan=True, err_msg=f"{field} lag {lag}")
    following = np.full(len(t), np.nan)
    ok = t + 1 < len(truth.calendar)
    following[ok] = prices["close"][t[ok] + 1, j[ok]]
    np.testing.assert_allclose(frame["label"].to_numpy()[:, 0], following / prices["close"][t, j] - 1,
                               rtol=2e-5, atol=1e-7, equal_nan=True)


def _rewrite_after(folder: Path, cut: int, rng) -> None:
    """Change every price and volume of every stock on the days after calendar position ``cut``."""
    for stock in (folder / "features").iterdir():
        for field in ("open", "high", "low", "close", "vwap", "volume"):
            path = stock / f"{field}.day.bin"
            data = np.fromfile(path, dtype="<f4")
            days = int(data[0]) + np.arange(len(data) - 1)
            data[1:][days > cut] *= rng.uniform(0.8, 1.25, int((days > cut).sum())).astype(np.float32)
            data.tofile(path)


def test_nothing_after_a_day_changes_its_features_or_the_processed_past(market, tmp_path):
    """Prices after the first test day are changed: every training and validation row (processors fitted
    on the training days) and the first test day's features stay identical; its labels change."""
    truth = market.truth
    first_test = np.datetime64(SEGMENTS["test"][0])
    cut = int(np.searchsorted(truth.calendar, first_test))
    changed = tmp_path / "market"
    shutil.copytree(market.market_root, changed)
    _rewrite_after(changed, cut, np.random.default_rng(0))
    data = market.block["data"]
    frames = qlib_data.alpha360_frames(changed, instruments="csi300", segments=data["segments"],
                                       label=data["label"], infer_processors=data["infer_processors"],
                                       learn_processors=data["learn_processors"], kernels=1)
    cache = torch.load(market.prepared, weights_only=True)
    for name in ("train", "valid"):
        frame = frames[name].sort_index()
        np.testing.assert_array_equal(frame["feature"].to_numpy(np.float32), cache["splits"][name]["features"].numpy())
        np.testing.assert_array_equal(frame["label"].to_numpy(np.float32)[:, 0], cache["splits"][name]["labels"].numpy())
    test = frames["test"].sort_index()
    first_day = test.index.get_level_values("datetime") == pd.Timestamp(truth.calendar[cut])
    n = int(first_day.sum())
    assert n > 0
    original = cache["splits"]["test"]
    np.testing.assert_array_equal(test["feature"].to_numpy(np.float32)[:n], original["features"][:n].numpy())
    assert not np.array_equal(test["label"].to_numpy(np.float32)[:n, 0], original["labels"][:n].numpy())
    assert not np.array_equal(test["feature"].to_numpy(np.float32)[n:], original["features"][n:].numpy())


def test_prepared_cache_holds_hist_processed_days(market, real_data_dir):
    truth = market.truth
    cache = torch.load(market.prepared, weights_only=True)
    stock_index = load_stock_index(real_data_dir / market.block["data"]["stock_index"])
    values = load_market_value(truth.market_value)
    position = {d: i for i, d in enumerate(truth.calendar)}
    close = truth.prices["close"].astype(np.float32).astype(np.float64)
    next_return = np.full_like(close, np.nan)
    next_return[:-1] = close[1:] / close[:-1] - 1
    concepts = cache["concept_matrix"].numpy()
    fixture_concepts = np.load(truth.concept_matrix)
    train_mean = cache["stats"]["market_value_train_mean"]
    for name in ("train", "valid", "test"):
        split = cache["splits"][name]
        offsets = split["day_offsets"].numpy()
        features, labels = split["features"].numpy(), split["labels"].numpy()
        assert features.flags["C_CONTIGUOUS"] and np.isfinite(features).all() and np.abs(features).max() <= 3
        lo, hi = (np.datetime64(d) for d in SEGMENTS[name])
        days = np.array(split["dates"], dtype="datetime64[D]")
        assert (days >= lo).all() and (days <= hi).all() and (np.diff(days) > np.timedelta64(0)).all()
        assert offsets[0] == 0 and offsets[-1] == len(labels) and (np.diff(offsets) > 0).all()
        codes = np.array(split["codes"])[split["code_ids"].numpy()]
        mv = split["market_value"].numpy()
        for d, day in enumerate(days):
            rows = slice(offsets[d], offsets[d + 1])
            t = position[day]
            # the day's rows: index members with a next-day return (DropnaLabel), in code order
            expected = [c for j, c in enumerate(truth.codes) if truth.members[t, j] and np.isfinite(next_return[t, j])]
            assert list(codes[rows]) == expected
            assert split["stock_rows"][rows].tolist() == [stock_index[c] for c in expected]
            cols = [truth.codes.index(c) for c in expected]
            ranks = pd.Series(next_return[t, cols]).rank(pct=True).to_numpy()
            np.testing.assert_allclose(labels[rows], 3.46 * (ranks - 0.5), rtol=1e-6)  # CSRankNorm
            np.testing.assert_array_equal(concepts[split["stock_rows"][rows].numpy()],
                                          fixture_concepts[split["stock_rows"][rows].numpy()])
            known = values.reindex(pd.MultiIndex.from_arrays([[pd.Timestamp(day)] * len(expected), expected]))
            known = known.to_numpy() / 1e9
            np.testing.assert_allclose(mv[rows], np.where(np.isnan(known), train_mean, known), rtol=1e-6)
    assert cache["stats"]["unknown_stocks"] == []
    assert sum(cache["stats"]["market_values_filled"].values()) > 0  # the fixture leaves gaps, HIST fills them


def test_qlib_writes_no_tracking_folder_and_needs_no_network(market):
    from qlib.workflow import R

    assert market.stray_files == []
    assert market.blocked_connections == []
    assert not (REPO / "mlruns").exists()
    assert isinstance(R.exp_manager, NoTracking)
    with pytest.raises(RuntimeError, match="without experiment tracking"):
        R.exp_manager.start_exp(experiment_name="x")
    assert sys.excepthook.__module__ != "qlib.workflow.utils"


def test_side_files_are_checked(tmp_path, real_data_dir):
    index = load_stock_index(real_data_dir / "csi300" / "csi300_stock_index.npy")
    assert len(index) == 735 and index["SH600000"] == 0 and sorted(index.values()) == list(range(735))

    class Payload:  # what a hostile pickle would do: call a function while loading
        def __reduce__(self):
            return (print, ("this must never run",))
    hostile = tmp_path / "hostile.npy"
    np.save(hostile, np.array(Payload(), dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=f"{hostile}.*refusing to load builtins.print"):
        load_stock_index(hostile)
    numeric = tmp_path / "numeric.npy"
    np.save(numeric, np.arange(3))
    with pytest.raises(DataError, match=f"{numeric}.*pickled dict"):
        load_stock_index(numeric)

    small = tmp_path / "concepts.npy"
    np.save(small, np.ones((10, 4)))
    with pytest.raises(DataError, match=f"{small} has 10 rows but the stock index points at row 734"):
        load_concept_matrix(small, rows_needed=735)
    negative = tmp_path / "negative.npy"
    np.save(negative, -np.ones((735, 4)))
    with pytest.raises(DataError, match="negative or non-finite"):
        load_concept_matrix(negative, rows_needed=735)

    not_series = tmp_path / "mv.pkl"
    not_series.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=f"{not_series}.*Series indexed by"):
        load_market_value(not_series)
    # the other index order (instrument, datetime) and a one-column frame are HIST-compatible too
    index_ = pd.MultiIndex.from_tuples([("SH600000", pd.Timestamp("2015-01-05"))], names=["instrument", "datetime"])
    swapped = tmp_path / "swapped.pkl"
    pd.DataFrame({"mv": [2.0e9]}, index=index_).to_pickle(swapped)
    value = load_market_value(swapped)
    assert list(value.index.names) == ["datetime", "instrument"]
    assert value[(pd.Timestamp("2015-01-05"), "SH600000")] == 2.0e9

    with pytest.raises(DataError, match="python -m qlib.cli.data qlib_data"):
        qlib_data.check_bundle(tmp_path, "csi300")


def _fake_bundle(folder: Path) -> None:
    (folder / "calendars").mkdir(parents=True)
    (folder / "calendars" / "day.txt").write_text("2020-01-02\n")
    (folder / "instruments").mkdir()
    (folder / "instruments" / "csi300.txt").write_text("SH600000\t2020-01-02\t2020-01-02\n")
    (folder / "features" / "sh600000").mkdir(parents=True)


def test_bundle_fetcher_uses_qlibs_get_data_and_never_leaves_half_a_folder(tmp_path, monkeypatch):
    from qlib.tests.data import GetData

    raw = meta.raw_files({"data": {"source": "qlib", "qlib_dir": "csi300/qlib_cn_data", "stock_index": "i.npy",
                                   "concept_matrix": "c.npy", "market_value": "m.pkl", "concepts": "hist",
                                   "market_value_source": "file"}})[0]
    calls = []

    def fake_download(self, target_dir, region, interval, delete_old, **kwargs):
        calls.append((region, interval, delete_old))
        _fake_bundle(Path(target_dir))
    monkeypatch.setattr(GetData, "qlib_data", fake_download)
    target = qlib_data.fetch_bundle(raw, tmp_path)
    assert target == tmp_path / "csi300" / "qlib_cn_data" and (target / "calendars" / "day.txt").is_file()
    assert calls == [("cn", "1d", False)]
    assert sorted(p.name for p in target.parent.iterdir()) == ["qlib_cn_data"]  # no staging folder left

    def offline(self, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(GetData, "qlib_data", offline)
    with pytest.raises(DataError, match="python -m qlib.cli.data qlib_data --target_dir"):
        qlib_data.fetch_bundle(raw, tmp_path / "other")
    assert list((tmp_path / "other" / "csi300").iterdir()) == []


def test_meta_names_the_raw_files_and_nothing_heavy_is_imported_before_it_is_needed():
    block = {"data": {"source": "qlib", "qlib_dir": "csi300/qlib_cn_data", "stock_index": "csi300/i.npy",
                      "concept_matrix": "csi300/c.npy", "market_value": "csi300/m.pkl", "concepts": "hist",
                      "market_value_source": "file"}}
    files = {raw.name: raw for raw in meta.raw_files(block)}
    assert files["csi300/qlib_cn_data"].is_dir and files["csi300/qlib_cn_data"].fetcher == meta.QLIB_BUNDLE_FETCHER
    assert files["csi300/i.npy"].sha256 == meta.STOCK_INDEX_SHA256
    assert all(raw.url.startswith(meta.HIST_DATA_URL) for raw in files.values() if not raw.is_dir)
    assert [raw.name for raw in meta.raw_files({"data": dict(block["data"], source="fixture")})] == ["csi300/i.npy"]
    # The Snakefile reads meta.py: no torch, pandas, numpy or qlib behind it.
    code = ("import sys, experiments.csi300.meta; "
            "print(sorted(m for m in ('torch', 'pandas', 'qlib', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # A training job imports the package but never qlib: only no_tracking.py (loaded by qlib itself)
    # imports it at module level.
    for module in sorted((REPO / "experiments" / "csi300").glob("*.py")):
        top_level = [node for node in ast.parse(module.read_text()).body
                     if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = [alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
        imports_qlib = any(name.split(".")[0] == "qlib" for name in names)
        assert imports_qlib == (module.name == "no_tracking.py"), module.name


def test_prepare_reuses_a_cache_made_with_the_same_settings(market, real_data_dir):
    from experiments.csi300.benchmark import prepare

    stamp = market.prepared.stat().st_mtime_ns
    assert prepare(market.block, real_data_dir, market.cache_dir, False) == market.prepared
    assert market.prepared.stat().st_mtime_ns == stamp
