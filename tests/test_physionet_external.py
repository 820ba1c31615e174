"""The Challenge's own setting: train and validate on some sets, test every run on another (external validation).

* config/physionetext.yaml is physionet's protocol key for key, on other data (sets A and B, set C held out);
  a held-out set that is also trained on is an error; its cache and raw files are its own;
* on small hand-made sets A, B and C: every seed and width tests on exactly set C's records, the training
  sets are split 80/20 into train/validation per seed, and the normalisation comes from the training
  records only (set C's values are ten times larger and change nothing); ``data.limit`` cuts both parts;
* set C's download entry is PhysioNet's URL with the pinned checksum, checked against a local HTTP server;
* on the real data, set A for training and set B held out (set C is not on this machine): the held-out
  cache holds exactly set A's and set B's prepared tensors, and a seed tests on all 4,000 records of B;
* the real Snakefile on a tiny profile of that setting writes to results/physionetext/ only.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from experiments import config as cfgmod
from experiments import pipeline
from experiments.errors import ConfigError, DataError
from experiments.physionet import data as pdata
from experiments.physionet import meta
from experiments.physionet.benchmark import BENCHMARK, load_prepared, make_splits
from physionet_archives import random_set
from test_download import server  # noqa: F401  (the local HTTP server fixture)
from test_physionet_data import DATA, MODEL, PREPARED_SHA256, TRAIN, tensor_digest
from workflow import link_user_data, run_tiny_profile

REPO = Path(__file__).resolve().parents[1]
EXTERNAL = REPO / "config" / "physionetext.yaml"
HELD_OUT = {**DATA, "sets": ["a", "b"], "test_set": "c"}


def settings(data: dict, seed: int = 0, width: float = 0.125) -> dict:
    return {"benchmark": "physionetext", "package": "physionet", "variant": "pb", "seed": seed,
            "factors": {"width": width}, "data": dict(data), "model": dict(MODEL), "train": dict(TRAIN), "pb": {}}


# ---------------------------------------------------------------------------------------------- configuration
def test_the_block_is_physionets_protocol_on_other_data():
    split = yaml.safe_load((REPO / "config/benchmarks/physionet.yaml").read_text())["benchmarks"]["physionet"]
    external = yaml.safe_load(EXTERNAL.read_text())["benchmarks"]["physionetext"]
    assert {k: v for k, v in external.items() if k != "data"} == {k: v for k, v in split.items() if k != "data"}
    assert external["data"] == {**split["data"], "sets": ["a", "b"], "test_set": "c"}
    assert "test_set" not in split["data"]  # the split-per-seed runs' settings (and caches) stay as they were


def test_config_cache_and_raw_files_of_the_held_out_setting():
    cfg = cfgmod.load_config([EXTERNAL])
    assert cfgmod.prepared_path(cfg, "physionetext") == Path("data/cache/physionet/prepared-a+b-testc-q0.016.pt")
    assert cfgmod.prepared_path(cfg, "physionet") == Path("data/cache/physionet/prepared-a-q0.016.pt")
    files = {raw.name: raw for raw in meta.raw_files(cfg["benchmarks"]["physionetext"])}
    assert list(files) == [f"physionet2012/{n}" for s in "abc" for n in meta.set_files(s)]
    assert files["physionet2012/set-c.tar.gz"].url == "https://physionet.org/files/challenge-2012/1.0.0/set-c.tar.gz"
    assert files["physionet2012/Outcomes-c.txt"].url == "https://physionet.org/files/challenge-2012/1.0.0/Outcomes-c.txt"
    assert files["physionet2012/set-c.tar.gz"].sha256.startswith("a4a56b95")
    assert files["physionet2012/Outcomes-c.txt"].sha256.startswith("0b32dcb7")
    assert "physionetext" not in cfgmod.load_config()["benchmarks"]  # opt-in: `all` does not need set C
    cfg = cfgmod.load_config([EXTERNAL], overrides=["benchmarks.physionetext.data.sets=[a, c]"])
    with pytest.raises(ConfigError, match=r"data.test_set 'c' is also in data.sets \['a', 'c'\]"):
        cfgmod.prepared_path(cfg, "physionetext")
    with pytest.raises(ConfigError, match=r"physionetext.data.test_set: 'd' is not one of"):
        cfgmod.load_config([EXTERNAL], overrides=["benchmarks.physionetext.data.test_set=d"])


# ---------------------------------------------------------------------------------------------- hand-made sets
@pytest.fixture(scope="module")
def three_sets(tmp_path_factory):
    """Sets A (30 records), B (30) and C (25, every value x10) and their cache with C held out."""
    root = tmp_path_factory.mktemp("three_sets")
    folder = root / "physionet2012"
    random_set(folder, "a", 1000, 30, seed=1)
    random_set(folder, "b", 2000, 30, seed=2)
    random_set(folder, "c", 3000, 25, seed=3, scale=10.0)
    path = BENCHMARK.prepare({"data": dict(HELD_OUT)}, root, root / "cache", download=False)
    return root, path


def test_every_seed_and_width_tests_on_the_held_out_set(three_sets):
    root, path = three_sets
    assert path == root / "cache" / "physionet/prepared-a+b-testc-q0.016.pt"
    cache = load_prepared(path, settings(HELD_OUT))
    ids = cache["record_ids"].numpy()
    assert cache["sets"] == ["a"] * 30 + ["b"] * 30 + ["c"] * 25
    assert ids.tolist() == [*range(1000, 1030), *range(2000, 2030), *range(3000, 3025)]
    labels = cache["labels"].numpy()
    test_ids = ids[60:]
    trains = []
    for seed in (0, 1, 2):
        splits, info = make_splits(cache, settings(HELD_OUT, seed=seed))
        assert info["records"] == {"train": 48, "val": 12, "test": 25} and info["test_set"] == "c"
        train, val, test = pdata.held_out_split(cache["sets"], "c", seed, 0.8)
        assert ids[test].tolist() == test_ids.tolist()  # the same 25 records, in the same order, every seed
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(60))  # A and B, each record once
        assert splits["test"].labels.tolist() == labels[60:].tolist()
        trains.append(sorted(train.tolist()))
        for width in (0.125, 0.25):
            exp = BENCHMARK.build(settings(HELD_OUT, seed=seed, width=width), path, "cpu")
            assert exp.extra["records"] == {"train": 48, "val": 12, "test": 25} and exp.extra["test_set"] == "c"
    assert trains[0] != trains[1] != trains[2]  # the train/validation split is seeded per seed


def test_normalisation_comes_from_the_training_records_only(three_sets):
    _, path = three_sets
    cache = load_prepared(path, settings(HELD_OUT))
    offsets, values, mask = cache["offsets"].numpy(), cache["values"].numpy(), cache["mask"].numpy()
    train, _, test = pdata.held_out_split(cache["sets"], "c", 1, 0.8)
    lo, hi = np.full(41, np.inf), np.full(41, -np.inf)
    for i in train:  # record by record, independently of pdata.normalisation
        v, m = values[offsets[i]:offsets[i + 1]], mask[offsets[i]:offsets[i + 1]]
        lo, hi = np.minimum(lo, np.where(m, v, np.inf).min(0)), np.maximum(hi, np.where(m, v, -np.inf).max(0))
    observed = np.isfinite(hi)
    minimum, maximum = pdata.normalisation(values, mask, offsets, train)
    assert np.array_equal(maximum[observed], hi[observed].astype(np.float32))
    assert np.array_equal(minimum[observed], lo[observed].astype(np.float32))
    hr = pdata.VARIABLE_INDEX["HR"]
    test_rows = pdata.record_rows(offsets, test)
    assert values[test_rows][mask[test_rows][:, hr], hr].max() > 5 * maximum[hr]  # set C's x10 values did not count
    splits, _ = make_splits(cache, settings(HELD_OUT, seed=1))
    i = test[0]
    rows = slice(offsets[i], offsets[i + 1])
    n = offsets[i + 1] - offsets[i]
    expected = np.where(mask[rows], (values[rows] - minimum) / np.where(maximum == 0, 1, maximum), 0)
    assert torch.allclose(splits["test"].values[0, :n], torch.from_numpy(expected.astype(np.float32)))


def test_limit_cuts_the_training_sets_and_the_held_out_set_alike(three_sets):
    root, _ = three_sets
    limited = {**HELD_OUT, "limit": 20}
    path = BENCHMARK.prepare({"data": limited}, root, root / "cache", download=False)
    assert path.name == "prepared-a+b-testc-q0.016-first20.pt"
    cache = load_prepared(path, settings(limited))
    assert cache["record_ids"].tolist() == [*range(1000, 1020), *range(3000, 3020)]  # A's first 20; B not read
    _, info = make_splits(cache, settings(limited))
    assert info["records"] == {"train": 16, "val": 4, "test": 20}


def test_held_out_split_refuses_empty_parts():
    with pytest.raises(ValueError, match="hold out set 'c' \\(0 records\\)"):
        pdata.held_out_split(["a"] * 10, "c", 0, 0.8)
    with pytest.raises(ValueError, match="a part would be empty"):
        pdata.held_out_split(["a", "c"], "c", 0, 0.8)


# ---------------------------------------------------------------------------------------------- set C's download
def test_set_c_is_downloaded_from_its_entry_and_checked(server, tmp_path, monkeypatch):  # noqa: F811
    """Sets A and B are present; set C is fetched from the configured URL (here a local server standing in for
    PhysioNet) and checked against the pinned SHA-256, which the stand-in fails until it is pinned too."""
    data_dir = tmp_path / "data"
    random_set(data_dir / "physionet2012", "a", 1000, 10, seed=1)
    random_set(data_dir / "physionet2012", "b", 2000, 10, seed=2)
    random_set(server["root"], "c", 3000, 10, seed=3)
    monkeypatch.setattr(meta, "BASE_URL", server["base"] + "/")
    cfg = cfgmod.load_config([EXTERNAL], overrides=[f"data_dir={data_dir}", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(DataError, match=f"checksum mismatch for {data_dir}/physionet2012/set-c.tar.gz: expected "
                                        f"sha256 {meta.SHA256['set-c.tar.gz']}"):
        pipeline.download(cfg, "physionetext")
    assert not (data_dir / "physionet2012" / "set-c.tar.gz").exists()
    for name in meta.set_files("c"):
        monkeypatch.setitem(meta.SHA256, name, hashlib.sha256((server["root"] / name).read_bytes()).hexdigest())
    server["requests"].clear()
    pipeline.download(cfg, "physionetext")
    assert server["requests"] == ["/set-c.tar.gz", "/Outcomes-c.txt"]  # A and B were there: not requested
    for name in meta.set_files("c"):
        assert (data_dir / "physionet2012" / name).read_bytes() == (server["root"] / name).read_bytes()
    cache = torch.load(pipeline.prepare(cfg, "physionetext"), weights_only=True)
    assert cache["sets"] == ["a"] * 10 + ["b"] * 10 + ["c"] * 10 and cache["defects"] == []


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_real_set_a_for_training_and_set_b_held_out(real_data_dir, tmp_path):
    """Set C is not on this machine: the same code on set A (train/validation) with set B held out."""
    data = {**DATA, "sets": ["a"], "test_set": "b"}
    start = time.perf_counter()
    path = BENCHMARK.prepare({"data": data}, real_data_dir, tmp_path, download=False)
    print(f"preparing sets A and B: {time.perf_counter() - start:.1f} s")
    cache = load_prepared(path, settings(data))
    assert path.name == "prepared-a-testb-q0.016.pt" and cache["defects"] == []
    offsets = cache["offsets"]
    for name, part in (("a", slice(0, 4000)), ("b", slice(4000, 8000))):  # each set's rows, as prepared alone
        rows = slice(int(offsets[part.start]), int(offsets[part.stop]))
        alone = {"record_ids": cache["record_ids"][part], "labels": cache["labels"][part],
                 "offsets": offsets[part.start:part.stop + 1] - offsets[part.start],
                 **{k: cache[k][rows] for k in ("times", "values", "mask")}}
        assert tensor_digest(alone) == PREPARED_SHA256[name]
    splits, info = make_splits(cache, settings(data, seed=0))
    assert info["records"] == {"train": 3200, "val": 800, "test": 4000}
    assert info["deaths"]["test"] == 568 and info["deaths"]["train"] + info["deaths"]["val"] == 554
    assert info["time_scale_hours"] == pytest.approx(48.0)


@pytest.mark.slow
def test_snakefile_writes_the_held_out_runs_to_their_own_folder(tmp_path, real_data_dir):
    names = [f"physionet2012/{n}" for s in "ab" for n in meta.set_files(s)]
    user = link_user_data(tmp_path, real_data_dir, names)
    block = yaml.safe_load(EXTERNAL.read_text())["benchmarks"]["physionetext"]
    tiny = cfgmod.deep_merge(block, {
        "seeds": 1, "factors": {"width": [0.125]}, "factor_overrides": {"width": {0.125: {"variants": ["baseline"]}}},
        "comparisons": {"treatments": [], "controls": [], "extra": []},
        "data": {"sets": ["a"], "test_set": "b", "limit": 80}, "pb": {"fixed_cycle_epochs": 1}})
    profile = {"download": False, "data_dir": str(user), "benchmarks": {"physionetext": tiny}}
    run_tiny_profile(tmp_path, copy.deepcopy(profile), ["results/physionetext/summary.csv"])
    record = json.loads((tmp_path / "results/physionetext/baseline/width0.125-seed0/summary.json").read_text())
    # The first 80 records of A: 64 train, 16 validate (2 deaths: 40 records would leave validation without
    # one, and its AUC undefined); the first 80 of B test.
    assert record["records"] == {"train": 64, "val": 16, "test": 80} and record["test_set"] == "b"
    assert record["deaths"]["val"] == 2
    assert not (tmp_path / "results/physionet").exists()
    cache_path = tmp_path / "data/cache/physionet/prepared-a-testb-q0.016-first80.pt"
    cache = torch.load(cache_path, weights_only=True)
    assert cache["sets"] == ["a"] * 80 + ["b"] * 80
    assert meta.defects_path(cache_path).read_text().splitlines() == [",".join(pdata.DEFECT_COLUMNS)]
