"""PhysioNet 2012 data on the real files (../shared/data/physionet2012, via the real_data_dir fixture).

* set A parses to 4,000 records, 554 deaths; exactly 3 records have no time series (RecordIDs 140501,
  140936, 141264; set B has 7 more, the 10 of sets A and B in the list of 12 usually quoted for A, B and C);
* the prepared tensors of sets A and B have the SHA-256 they had before the parser learned to skip
  defective lines (neither set has one: their defects reports are empty);
* quantisation (the original's rounding, half to even), row merging, averaging and masking on hand-made
  records, and clear errors for bad input;
* the seeded split (80/20, then 80/20), normalisation from the training records only, time scaling;
* the cache records its settings: a run with other data settings gets the stale-cache error;
* the Experiment on the real data: shapes of a real batch at every width, deterministic evaluation, a
  training epoch, the protocol's optimizer and scheduler; a short pb run through pb_core's controller.

Set A is parsed once per session (module fixture); parsing time is printed (about 5 s on an idle core).
"""
import gzip
import hashlib
import io
import tarfile
import time

import numpy as np
import pytest
import torch

import pb_core
from experiments.errors import DataError
from experiments.physionet import data as pdata
from experiments.physionet.benchmark import BENCHMARK, load_prepared, make_splits, split_auc, train_pass
from experiments.physionet.meta import INFO, defects_path
from experiments.physionet.model import build_model
from experiments.registry import EpochContext, StaleCacheError

MODEL = {"latent_dim": 20, "rec_hidden": 256, "gen_hidden": 50, "embed_time": 128, "classifier_hidden": 100,
         "mlp_hidden": 50, "ref_points": 128, "num_heads": 1}
TRAIN = {"split": [0.8, 0.8], "split_seed": None, "batch_size": 50, "shuffle": False, "lr": 1e-4,
         "milestones": [50, 100, 150], "gamma": 0.2, "alpha": 100, "std": 0.01, "k_iwae": 1, "kl_anneal": True,
         "kl_wait": 10, "kl_rate": 0.99, "eval_batch_size": 256, "eval_latent": "sample",
         "auc_score": "class1_logit"}
DATA = {"folder": "physionet2012", "sets": ["a"], "quantization": 0.016, "limit": None}


def settings(seed=0, width=0.125, **train):
    return {"benchmark": "physionet", "package": "physionet", "variant": "pb", "seed": seed,
            "factors": {"width": width}, "data": dict(DATA), "model": dict(MODEL), "train": {**TRAIN, **train},
            "pb": {}}


@pytest.fixture(scope="module")
def prepared(real_data_dir, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("physionet_cache")
    start = time.perf_counter()
    path = BENCHMARK.prepare({"data": dict(DATA)}, real_data_dir, cache_dir, download=False)
    print(f"parsing set A: {time.perf_counter() - start:.1f} s")
    return path


@pytest.fixture(scope="module")
def cache(prepared):
    return load_prepared(prepared, settings())


@pytest.fixture(scope="module")
def small(cache, tmp_path_factory):
    """A prepared file holding the first 200 records of set A (the experiment tests need no more)."""
    keep = 200
    end = int(cache["offsets"][keep])
    subset = {**cache, "offsets": cache["offsets"][:keep + 1], "labels": cache["labels"][:keep],
              "record_ids": cache["record_ids"][:keep], "times": cache["times"][:end],
              "values": cache["values"][:end], "mask": cache["mask"][:end]}
    path = tmp_path_factory.mktemp("physionet_small") / "small.pt"
    torch.save(subset, path)
    return path


# ---------------------------------------------------------------------------------------------- counts
def test_set_a_counts(cache, real_data_dir):
    ids = cache["record_ids"].numpy()
    assert len(ids) == 4000 and (np.diff(ids) > 0).all()
    assert int(cache["labels"].sum()) == 554
    assert cache["without_series"] == [140501, 140936, 141264]
    outcomes = pdata.read_outcomes(real_data_dir / "physionet2012" / "Outcomes-a.txt")
    assert sorted(outcomes) == ids.tolist()
    assert [outcomes[i] for i in ids] == cache["labels"].tolist()
    offsets = cache["offsets"].numpy()
    times, mask = cache["times"].numpy(), cache["mask"].numpy()
    assert offsets[-1] == len(times) == len(mask)
    starts = times[offsets[:-1]]
    assert (starts == 0).all()  # every record's first row is time 0, with its descriptors
    steps = np.diff(times)
    inside = np.ones(len(times) - 1, bool)
    inside[offsets[1:-1] - 1] = False  # differences across record boundaries do not count
    assert (steps[inside] > 0).all()  # strictly increasing quantised times within a record
    assert times.max() == pytest.approx(48.0)
    # A record without time series is a single row holding the descriptors only.
    i = int(np.flatnonzero(ids == 140501)[0])
    assert offsets[i + 1] - offsets[i] == 1
    observed = {pdata.VARIABLES[j] for j in np.flatnonzero(mask[offsets[i]])}
    assert observed == {"Age", "Gender", "Height", "ICUType", "Weight"}


# SHA-256 of the prepared tensors of sets A and B (data.sets [a] and [b], quantization 0.016, no limit), computed
# with the parser as it was before it learned to skip defective lines (commit f0c1fbe): the real sets have
# none, so their prepared data must stay bit for bit what it was.
PREPARED_SHA256 = {"a": "4355d11cbaa610b8231c3df24a71657b38b435517a5ed8eb9d4c8f2e366fadae",
                   "b": "bd4ee9dc5346cdaa3059ee74c29c922c0ef65d40cf3acba3c2fd950b8dc289fa"}
CACHE_TENSORS = ("record_ids", "labels", "offsets", "times", "values", "mask")


def tensor_digest(cache: dict) -> str:
    """SHA-256 over the cache's tensors: each one's name, dtype, shape and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for key in CACHE_TENSORS:
        array = cache[key].numpy()
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def test_set_a_prepared_data_is_unchanged(cache, prepared):
    assert tensor_digest(cache) == PREPARED_SHA256["a"]
    assert cache["defects"] == [] and pdata_defects_csv(prepared) == [",".join(pdata.DEFECT_COLUMNS)]


def pdata_defects_csv(prepared) -> list[str]:
    return defects_path(prepared).read_text().splitlines()


@pytest.mark.slow
def test_set_b_prepared_data_is_unchanged_and_its_records_without_series(real_data_dir, tmp_path):
    start = time.perf_counter()
    path = BENCHMARK.prepare({"data": {**DATA, "sets": ["b"]}}, real_data_dir, tmp_path, download=False)
    print(f"preparing set B: {time.perf_counter() - start:.1f} s")
    cache = torch.load(path, weights_only=True)
    assert tensor_digest(cache) == PREPARED_SHA256["b"] and cache["defects"] == []
    assert len(cache["record_ids"]) == 4000 and int(cache["labels"].sum()) == 568
    assert cache["without_series"] == [142731, 142998, 143656, 145611, 147514, 150309, 150649]


def test_limit_keeps_the_first_records_by_record_id(cache, real_data_dir, tmp_path):
    """data.limit: the first N records by RecordID, parsed exactly as in the whole set, in their own cache."""
    folder = real_data_dir / "physionet2012"
    start = time.perf_counter()
    records, labels = pdata.read_set(folder / "set-a.tar.gz", folder / "Outcomes-a.txt", 0.016, limit=25)
    print(f"25 records of set A: {time.perf_counter() - start:.1f} s")
    assert [r.record_id for r in records] == cache["record_ids"][:25].tolist()
    assert labels.tolist() == cache["labels"][:25].tolist()
    offsets = cache["offsets"].numpy()
    for i, rec in enumerate(records):
        rows = slice(offsets[i], offsets[i + 1])
        assert np.array_equal(rec.times, cache["times"][rows].numpy())
        assert np.array_equal(rec.mask, cache["mask"][rows].numpy())
        assert np.array_equal(rec.values, cache["values"][rows].numpy())
    limited = {**DATA, "limit": 25}
    assert INFO.prepared_path({"data": limited}) == "physionet/prepared-a-q0.016-first25.pt"
    with pytest.raises(ValueError, match="positive"):
        pdata.read_set(folder / "set-a.tar.gz", folder / "Outcomes-a.txt", 0.016, limit=0)
    # The real archive lists its records in order; one that does not still gives the smallest RecordIDs.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rid in (30, 10, 20):
            data = HAND_MADE.replace("RecordID,1", f"RecordID,{rid}").encode()
            info = tarfile.TarInfo(f"set-a/{rid}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "set-a.tar.gz").write_bytes(buf.getvalue())
    (tmp_path / "Outcomes-a.txt").write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
                                             "10,1,1,5,-1,0\n20,1,1,5,-1,1\n30,1,1,5,-1,0\n")
    records, labels = pdata.read_set(tmp_path / "set-a.tar.gz", tmp_path / "Outcomes-a.txt", 0.016, limit=2)
    assert [r.record_id for r in records] == [10, 20] and labels.tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------- parsing
HAND_MADE = """Time,Parameter,Value
00:00,RecordID,1
00:00,Age,54
00:00,Gender,0
00:00,Height,-1
00:00,ICUType,4
00:00,Weight,-1
00:06,HR,70
00:07,HR,80
00:07,Temp,36.5
00:08,HR,90
01:30,GCS,15
"""


def test_quantisation_merging_averaging_and_masking():
    # quantization 0.05 h (3 min): 00:06 -> 2 -> 0.10 and 00:07 -> 2.33 -> 2 -> 0.10 share a row;
    # 00:08 -> 2.67 -> 3 -> 0.15; 01:30 -> 30 -> 1.5.
    rec = pdata.parse_record(HAND_MADE.splitlines(), 0.05, "hand-made")
    assert rec.record_id == 1 and rec.has_series
    assert rec.times.tolist() == pytest.approx([0.0, 0.1, 0.15, 1.5])
    col = pdata.VARIABLE_INDEX
    assert rec.values[1, col["HR"]] == pytest.approx(75.0)  # 70 and 80 in one row: their mean
    assert rec.values[2, col["HR"]] == 90.0 and rec.values[1, col["Temp"]] == 36.5
    assert rec.values[0, col["Height"]] == -1.0 and rec.mask[0, col["Height"]]  # kept, as the original
    assert rec.mask.sum() == 5 + 2 + 1 + 1  # descriptors; HR, Temp; HR; GCS
    assert (rec.values[~rec.mask] == 0).all()
    assert rec.mask.sum(axis=0)[col["HR"]] == 2


def test_time_stamps_round_half_to_even_as_the_original():
    # 01:00 = 1 h = 62.5 x 0.016: Python's round() (the original's) goes to the even 62, so 0.992 h.
    assert 1.0 / 0.016 == 62.5
    assert pdata.quantised_hours("01:00", 0.016) == pytest.approx(0.992)
    assert pdata.quantised_hours("00:07", 0.016) == pytest.approx(0.112)
    assert pdata.quantised_hours("47:59", 0.016) == pytest.approx(round((47 + 59 / 60) / 0.016) * 0.016)


def test_bad_records_are_skipped_or_clear_errors():
    """A record file without its header is an error; a bad line or a missing RecordID is skipped and counted
    (every kind: tests/test_physionet_wild.py)."""
    with pytest.raises(DataError, match="rec.txt: first line is '00:00,RecordID,1', expected 'Time,Parameter,Value'"):
        pdata.parse_record(["00:00,RecordID,1", "00:01,HR,2"], 0.016, "rec.txt")
    defects = pdata.Defects()
    rec = pdata.parse_record(["Time,Parameter,Value", "00:00,RecordID,1", "00:01,Foo,2"], 0.016, "rec.txt", defects)
    assert rec.record_id == 1 and rec.mask.sum() == 0
    assert pdata.parse_record(["Time,Parameter,Value", "00:01,HR,2"], 0.016, "rec.txt", defects) is None
    assert [(r["kind"], r["count"], r["first_line"]) for r in defects.rows()] == [("unknown_parameter", 1, 3),
                                                                                ("no_record_id", 1, None)]


def test_truncated_archive_names_the_file(real_data_dir, tmp_path):
    src = (real_data_dir / "physionet2012" / "set-a.tar.gz").read_bytes()
    bad = tmp_path / "set-a.tar.gz"
    bad.write_bytes(src[:200_000])
    with pytest.raises(DataError, match=r"set-a.tar.gz.*corrupt or truncated"):
        pdata.read_set(bad, real_data_dir / "physionet2012" / "Outcomes-a.txt", 0.016)


def test_outcomes_must_cover_the_records(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = HAND_MADE.encode()
        info = tarfile.TarInfo("set-a/1.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "set-a.tar.gz").write_bytes(buf.getvalue())
    (tmp_path / "Outcomes-a.txt").write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
                                             "2,1,1,5,-1,0\n")
    with pytest.raises(DataError, match="no outcome for any of the 1 records .* not from the same set"):
        pdata.read_set(tmp_path / "set-a.tar.gz", tmp_path / "Outcomes-a.txt", 0.016)
    assert gzip.decompress(buf.getvalue())  # the archive itself is fine


# ---------------------------------------------------------------------------------------------- splits
def test_split_is_seeded_disjoint_and_the_original_sizes():
    train, val, test = pdata.split_indices(4000, 3)
    assert (len(train), len(val), len(test)) == (2560, 640, 800)
    assert len(np.unique(np.concatenate([train, val, test]))) == 4000
    again = pdata.split_indices(4000, 3)
    assert all((a == b).all() for a, b in zip((train, val, test), again))
    assert not (pdata.split_indices(4000, 4)[2] == test).all()


def test_normalisation_comes_from_training_records_only(cache):
    s = settings(seed=1)
    splits, info = make_splits(cache, s)
    offsets, values, mask = cache["offsets"].numpy(), cache["values"].numpy(), cache["mask"].numpy()
    train_idx, _, test_idx = pdata.split_indices(4000, 1)
    # Independent minimum and maximum over the training records, record by record.
    lo = np.full(41, np.inf)
    hi = np.full(41, -np.inf)
    for i in train_idx:
        v, m = values[offsets[i]:offsets[i + 1]], mask[offsets[i]:offsets[i + 1]]
        lo = np.minimum(lo, np.where(m, v, np.inf).min(0))
        hi = np.maximum(hi, np.where(m, v, -np.inf).max(0))
    minimum, maximum = pdata.normalisation(values, mask, offsets, train_idx)
    assert np.array_equal(minimum, lo.astype(np.float32)) and np.array_equal(maximum, hi.astype(np.float32))
    all_lo, all_hi = pdata.normalisation(values, mask, offsets, np.arange(4000))
    assert (all_hi != maximum).any() or (all_lo != minimum).any()  # test records would have changed them
    # A test record normalised with the training statistics: (x - min) / max, unobserved entries 0.
    i = test_idx[0]
    rows = slice(offsets[i], offsets[i + 1])
    n = offsets[i + 1] - offsets[i]
    expected = np.where(mask[rows], (values[rows] - minimum) / np.where(maximum == 0, 1, maximum), 0)
    assert torch.allclose(splits["test"].values[0, :n], torch.from_numpy(expected.astype(np.float32)))
    assert splits["test"].mask[0, :n].numpy().astype(bool).tolist() == mask[rows].tolist()
    assert (splits["test"].values[0, n:] == 0).all() and (splits["test"].mask[0, n:] == 0).all()
    assert info["time_scale_hours"] == pytest.approx(48.0)
    assert splits["test"].times[0, :n].numpy() == pytest.approx(cache["times"].numpy()[rows] / 48.0)
    assert info["records"] == {"train": 2560, "val": 640, "test": 800}


def test_stale_cache_is_detected(prepared, tmp_path):
    other = settings()
    other["data"] = {**DATA, "quantization": 0.1}
    with pytest.raises(StaleCacheError, match="python -m experiments prepare physionet"):
        load_prepared(prepared, other)
    with pytest.raises(StaleCacheError, match="missing"):
        load_prepared(tmp_path / "nothing.pt", settings())
    before = prepared.stat().st_mtime_ns
    assert BENCHMARK.prepare({"data": dict(DATA)}, tmp_path, prepared.parents[1], download=False) == prepared
    assert prepared.stat().st_mtime_ns == before  # up to date: not parsed again (no raw file needed)
    assert INFO.prepared_path({"data": DATA}) == "physionet/prepared-a-q0.016.pt"


# ---------------------------------------------------------------------------------------------- experiment
@pytest.mark.parametrize("width", [0.125, 0.25, 0.5, 1, 2])
def test_model_shapes_on_a_real_batch(small, width):
    exp = BENCHMARK.build(settings(width=width), small, "cpu")
    splits, _ = make_splits(load_prepared(small, settings()), settings())
    values, mask, times, _ = splits["val"].batch(torch.arange(4))
    steps = int(splits["val"].lengths[:4].max())
    assert values.shape == mask.shape == (4, steps, 41) and times.shape == (4, steps)
    with torch.no_grad():
        reconstruction, logits, mean, logvar = exp.model(values, mask, times)
    latent = int(20 * width)
    assert reconstruction.shape == (1, 4, steps, 41) and logits.shape == (4, 2)
    assert mean.shape == logvar.shape == (4, 128, latent)
    assert exp.extra["params_by_part"]["total"] == sum(p.numel() for p in exp.model.parameters())
    assert exp.head in dict(exp.model.named_modules())


def test_experiment_protocol_and_deterministic_evaluation(prepared, small):
    exp = BENCHMARK.build(settings(seed=2), prepared, "cpu")
    assert exp.extra["records"] == {"train": 2560, "val": 640, "test": 800}
    assert sum(exp.extra["deaths"].values()) == 554
    optimizer = exp.optimizer_factory(exp.model.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1e-4
    scheduler = exp.scheduler_factory(optimizer)
    assert dict(scheduler.milestones) == {50: 1, 100: 1, 150: 1} and scheduler.gamma == 0.2
    exp = BENCHMARK.build(settings(seed=2), small, "cpu")
    exp.model.eval()
    with torch.no_grad():
        first = exp.evaluate(exp.model)
        second = exp.evaluate(exp.model)
    assert first == second and all(0 <= s <= 1 for s in first)


def test_training_pass_lowers_the_loss_on_its_batches(small):
    torch.manual_seed(0)
    s = settings(seed=0, batch_size=20)
    splits, _ = make_splits(load_prepared(small, s), s)
    model = build_model(MODEL, 0.125)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [train_pass(model, optimizer, splits["train"], s["train"], 1, 0, max_batches=1) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    model.eval()
    auc = split_auc(model, splits["val"], s["train"], 0, "cpu")
    assert 0 <= auc <= 1


def test_short_pb_run_through_the_controller(small, tmp_path):
    """One neuron cycle, one dendrite cycle and one more neuron cycle on 200 records of set A."""
    s = settings(seed=0, batch_size=64, eval_batch_size=128)
    torch.manual_seed(0)
    exp = BENCHMARK.build(s, small, "cpu")
    assert all(0 < d < n for d, n in zip(exp.extra["deaths"].values(), exp.extra["records"].values()))
    controller = pb_core.CycleController(
        exp.model, "pb", optimizer_factory=exp.optimizer_factory, scheduler_factory=exp.scheduler_factory,
        neuron_switch=pb_core.SwitchPolicy(fixed_epochs=1), dendrite_switch=pb_core.SwitchPolicy(fixed_epochs=1),
        max_dendrites=1, head=exp.head, out_dir=tmp_path / "run")
    state = controller.state
    controller.fit(lambda m, o: exp.train_epoch(m, o, EpochContext(state.phase, state.epoch, state.cycle)),
                   exp.evaluate)
    cycles = [row.split(",") for row in (tmp_path / "run" / "cycles.csv").read_text().splitlines()]
    header = cycles[0]
    rows = [dict(zip(header, row)) for row in cycles[1:]]
    assert [(r["phase"], r["dendrites"]) for r in rows] == [("neuron", "0"), ("dendrite", "0"), ("neuron", "1")]
    assert int(rows[2]["params"]) > 2 * int(rows[0]["params"])  # every layer got a copy of itself
    trained = (tmp_path / "run" / "correlations.csv").read_text()
    assert ",encoder.gru," in trained and ",decoder.gru," in trained  # the bidirectional GRUs' candidates
