"""EMNIST data: NIST's own file format read back through the real loader (upright, right labels), the
partial copy, the download/offline rules, and the package's configuration schema.

The real images come from the shared partial copy (already upright). They are written the way NIST
publishes them: big-endian IDX files, each image transposed, gzip-compressed inside ``gzip.zip`` under
``gzip/``; or gunzipped in torchvision's raw folder, as torchvision's own download leaves them.
"""
import gzip
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import config as cfgmod
from experiments.emnist import meta
from experiments.emnist.benchmark import BENCHMARK
from experiments.errors import ConfigError, DataError

TRAIN_SUBSET = 600  # of the 9,120 real training images: enough to check, fast to write


@pytest.fixture(scope="module")
def partial(real_data_dir):
    path = real_data_dir / meta.PARTIAL_NPZ
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return {"train_images": arrays["x_train_103680_to_112799"][:TRAIN_SUBSET],
            "train_labels": arrays["y_train_103680_to_112799"][:TRAIN_SUBSET],
            "test_images": arrays["x_test_18496_to_18799"], "test_labels": arrays["y_test_18496_to_18799"],
            "mapping": arrays["mapping"], "y_test": arrays["y_test"]}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX (the MNIST/NIST format): 0x00 0x00, type 0x08 (ubyte), ndim, big-endian sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def nist_files(partial) -> dict:
    """name -> raw IDX bytes, images transposed as NIST stores them."""
    out = {}
    for part in ("train", "test"):
        out[f"emnist-balanced-{part}-images-idx3-ubyte"] = idx_bytes(partial[f"{part}_images"].transpose(0, 2, 1))
        out[f"emnist-balanced-{part}-labels-idx1-ubyte"] = idx_bytes(partial[f"{part}_labels"])
    return out


def write_archive(data_dir: Path, partial) -> Path:
    archive = data_dir / meta.ARCHIVE
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for name, raw in nist_files(partial).items():
            zf.writestr(f"gzip/{name}.gz", gzip.compress(raw, compresslevel=1))
        zf.writestr("gzip/emnist-digits-test-labels-idx1-ubyte.gz", gzip.compress(b"another split"))
    return archive


def prepare(data_dir: Path, cache_dir: Path, source: str = "nist", download: bool = False) -> dict:
    block = {"data": {"source": source, "val_fraction": 0.5, "split_seed": None}}
    path = BENCHMARK.prepare(block, data_dir, cache_dir, download)
    return torch.load(path, weights_only=True)


def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used although the files are there")
    monkeypatch.setattr("experiments.download.fetch", refuse)


def assert_upright_and_labelled(blob, partial):
    for part in ("train", "test"):
        upright = torch.from_numpy(partial[f"{part}_images"])
        assert torch.equal(blob[f"{part}_images"], upright)
        # The test is only meaningful because the characters are not symmetric about the diagonal.
        assert not torch.equal(upright.transpose(1, 2), upright)
        assert torch.equal(blob[f"{part}_labels"], torch.from_numpy(partial[f"{part}_labels"].astype(np.int64)))


def test_archive_url_and_checksum_are_torchvisions(tmp_path):
    from torchvision.datasets import EMNIST
    assert (meta.ARCHIVE_URL, meta.ARCHIVE_MD5) == (EMNIST.url, EMNIST.md5)
    raw = meta.raw_files({"data": {"source": "nist"}})
    assert [(r.name, r.url, r.md5) for r in raw] == [(meta.ARCHIVE, EMNIST.url, EMNIST.md5)]
    # The archive sits in the raw folder torchvision itself uses (and downloads into) for root data_dir/emnist.
    dataset = EMNIST.__new__(EMNIST)
    dataset.root = str(tmp_path / meta.TORCHVISION_ROOT)
    assert Path(dataset.raw_folder) == tmp_path / meta.RAW_FOLDER


def test_nist_archive_reads_back_upright_with_its_labels(tmp_path, partial, monkeypatch):
    no_network(monkeypatch)
    write_archive(tmp_path / "data", partial)
    blob = prepare(tmp_path / "data", tmp_path / "cache", download=True)
    assert_upright_and_labelled(blob, partial)
    assert not list((tmp_path / "cache").rglob("*ubyte*")), "the extracted files must not be left behind"
    assert sorted(p.name for p in (tmp_path / "data" / meta.RAW_FOLDER).iterdir()) == ["gzip.zip"]


def test_torchvision_extracted_files_are_used_without_the_archive(tmp_path, partial, monkeypatch):
    no_network(monkeypatch)
    raw = tmp_path / "data" / meta.RAW_FOLDER
    raw.mkdir(parents=True)
    for name, content in nist_files(partial).items():
        (raw / name).write_bytes(content)
    blob = prepare(tmp_path / "data", tmp_path / "cache", download=True)
    assert_upright_and_labelled(blob, partial)


def test_label_mapping_is_torchvisions_and_the_characters_agree(tmp_path, partial):
    from torchvision.datasets import EMNIST
    from experiments.emnist.data import balanced_classes
    assert balanced_classes() == list(EMNIST.classes_split_dict["balanced"])
    write_archive(tmp_path / "data", partial)
    blob = prepare(tmp_path / "data", tmp_path / "cache")
    classes = blob["classes"]
    assert len(classes) == 47 and classes == [chr(c) for c in partial["mapping"]]
    assert classes[:10] == list("0123456789") and classes[36:] == list("abdefghnqrt")
    # The labels sit at the official test indices 18,496..18,799 of the full label list.
    assert torch.equal(blob["test_labels"], torch.from_numpy(partial["y_test"][18_496:].astype(np.int64)))


def test_offline_without_files_names_the_file_and_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "data", tmp_path / "cache", download=False)
    text = str(err.value)
    assert str(tmp_path / "data" / meta.ARCHIVE) in text and meta.ARCHIVE_URL in text and "download" in text


@pytest.mark.parametrize("damage", ["not a zip", "missing member", "truncated image file"])
def test_damaged_files_are_a_data_error_naming_the_file(tmp_path, partial, damage):
    archive = tmp_path / "data" / meta.ARCHIVE
    archive.parent.mkdir(parents=True)
    files = nist_files(partial)
    if damage == "not a zip":
        archive.write_bytes(b"<html>proxy login page</html>")
    else:
        if damage == "missing member":
            files.pop("emnist-balanced-test-labels-idx1-ubyte")
        else:
            name = "emnist-balanced-test-images-idx3-ubyte"
            files[name] = files[name][:-1000]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, raw in files.items():
                zf.writestr(f"gzip/{name}.gz", gzip.compress(raw, compresslevel=1))
        archive.write_bytes(buf.getvalue())
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "data", tmp_path / "cache")
    assert str(archive) in str(err.value)
    assert not (tmp_path / "cache" / meta.prepared_path({"data": {"source": "nist", "val_fraction": 0.5,
                                                                   "split_seed": None}})).exists()


def test_partial_copy_is_read_as_it_is(tmp_path, real_data_dir, partial):
    blob = prepare(real_data_dir, tmp_path / "cache", source="partial_npz")
    assert blob["train_images"].shape == (9120, 28, 28) and blob["test_images"].shape == (304, 28, 28)
    assert torch.equal(blob["test_images"], torch.from_numpy(partial["test_images"]))
    assert torch.equal(blob["train_images"][:TRAIN_SUBSET], torch.from_numpy(partial["train_images"]))
    assert torch.equal(blob["test_index"], torch.arange(18_496, 18_800))
    with pytest.raises(DataError, match="no public URL"):
        prepare(tmp_path / "elsewhere", tmp_path / "cache2", source="partial_npz")
    with pytest.raises(DataError, match="no public URL"):
        meta.partial_copy_missing(meta.raw_files({"data": {"source": "partial_npz"}})[0], tmp_path)


def test_prepare_keeps_a_matching_cache_and_names_caches_by_data_settings(tmp_path, real_data_dir):
    block = {"data": {"source": "partial_npz", "val_fraction": 0.5, "split_seed": None}}
    path = BENCHMARK.prepare(block, real_data_dir, tmp_path, False)
    stamp = path.stat().st_mtime_ns
    assert BENCHMARK.prepare(block, real_data_dir, tmp_path, False) == path and path.stat().st_mtime_ns == stamp
    other = {"data": {**block["data"], "split_seed": 5}}
    assert meta.prepared_path(other) != meta.prepared_path(block)


def test_a_limit_keeps_the_first_images_in_a_cache_of_its_own(tmp_path, real_data_dir, partial):
    block = {"data": {"source": "partial_npz", "val_fraction": 0.5, "split_seed": None,
                      "limit": {"train": 50, "test": 20}}}
    path = BENCHMARK.prepare(block, real_data_dir, tmp_path, False)
    blob = torch.load(path, weights_only=True)
    assert torch.equal(blob["train_images"], torch.from_numpy(partial["train_images"][:50]))
    assert torch.equal(blob["train_labels"], torch.from_numpy(partial["train_labels"][:50].astype(np.int64)))
    assert torch.equal(blob["test_images"], torch.from_numpy(partial["test_images"][:20]))
    assert torch.equal(blob["test_index"], torch.arange(18_496, 18_516))
    assert blob["settings"]["data"]["limit"] == {"train": 50, "test": 20}
    unlimited = {"data": {**block["data"], "limit": None}}
    assert meta.prepared_path(unlimited) != meta.prepared_path(block)


def test_configuration_schema_accepts_the_block_and_rejects_bad_keys():
    cfg = cfgmod.load_config(overrides=["benchmarks.emnist.data.source=partial_npz",
                                        "benchmarks.emnist.data.limit={train: 100, test: 10}"])
    assert cfg["benchmarks"]["emnist"]["data"]["source"] == "partial_npz"
    assert cfg["benchmarks"]["emnist"]["data"]["limit"] == {"train": 100, "test": 10}
    for bad in ("benchmarks.emnist.data.source=kaggle", "benchmarks.emnist.train.augment.rotation=10",
                "benchmarks.emnist.data.val_fraction=1.0", "benchmarks.emnist.outputs.curve.variant=pbb",
                "benchmarks.emnist.data.limit={train: 100, test: 1}", "benchmarks.emnist.data.limit={train: 100}",
                "benchmarks.emnist.data.limit=100"):
        with pytest.raises(ConfigError):
            cfgmod.load_config(overrides=[bad])
