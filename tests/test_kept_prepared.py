"""Preparing again from raw data with new modification times and the same bytes (a data folder copied afresh)
reuses the kept copy of the cache; changed bytes make a new one."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml

from experiments import config as cfgmod
from experiments import kept_prepared
from experiments.pipeline import prepare
from experiments.tox21 import features as F


@pytest.fixture
def molecules(tmp_path, real_data_dir):
    """A 30-molecule Tox21 CSV as benchmark ``mine`` (fast to prepare), and its configuration."""
    from experiments.tox21.data import load_csv

    csv = tmp_path / "data" / "mine" / "mine.csv"
    csv.parent.mkdir(parents=True)
    load_csv(real_data_dir / "tox21" / "tox21.csv.gz").head(30).to_csv(csv, index=False)
    block = json.loads(json.dumps(cfgmod.load_config()["benchmarks"]["tox21"]))
    block["data"].update({"file": "mine/mine.csv", "url": None, "md5": None, "sha256": None, "limit": None})
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"benchmarks": {"mine": block}}))
    cfg = cfgmod.load_config([tmp_path / "mine.yaml"], [f"data_dir={tmp_path / 'data'}",
                                                        f"cache_dir={tmp_path / 'cache'}", "download=false"])
    return cfg, csv


def _copy_afresh(csv):
    """The same bytes in a new file, dated now (what a new copy of a data folder looks like)."""
    fresh = csv.with_name("fresh.tmp")
    shutil.copyfile(csv, fresh)
    os.replace(fresh, csv)


def test_a_deleted_cache_of_unchanged_raw_data_is_linked_back_and_changed_data_prepares_again(molecules,
                                                                                              monkeypatch):
    cfg, csv = molecules
    path = prepare(cfg, "mine")
    kept, recorded = kept_prepared.kept_paths(path)
    assert os.path.samefile(kept, path)
    first_inode, first_bytes = path.stat().st_ino, path.read_bytes()

    # what Snakemake does when the raw file is newer: delete the cache and run prepare
    _copy_afresh(csv)
    assert csv.stat().st_mtime_ns > path.stat().st_mtime_ns
    path.unlink()
    original = F.smiles_to_data
    calls = []
    monkeypatch.setattr(F, "smiles_to_data", lambda *a, **k: calls.append(a) or original(*a, **k))
    assert prepare(cfg, "mine") == path
    assert calls == []  # nothing featurised again
    assert path.stat().st_ino == first_inode and path.read_bytes() == first_bytes
    assert path.stat().st_mtime_ns > csv.stat().st_mtime_ns  # made, as Snakemake sees it

    # one molecule fewer: the kept copy is not used, and the new cache becomes the kept one
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[:-1]))
    old_checksum = recorded.read_text()
    path.unlink()
    prepare(cfg, "mine")
    assert len(calls) == 29
    assert len(torch.load(path, weights_only=False)["graphs"]) == 29
    assert path.stat().st_ino != first_inode and os.path.samefile(kept, path)
    assert recorded.read_text() != old_checksum


def test_without_hard_links_prepare_still_works_and_keeps_nothing(molecules, monkeypatch, caplog):
    cfg, csv = molecules

    def no_links(*args):
        raise OSError("hard links are not supported here")

    monkeypatch.setattr(os, "link", no_links)
    with caplog.at_level("WARNING", logger="experiments"):
        path = prepare(cfg, "mine")
    kept, recorded = kept_prepared.kept_paths(path)
    assert path.is_file() and not kept.exists() and not recorded.exists()
    assert "no kept copy" in caplog.text and str(path) in caplog.text


def test_the_checksum_covers_every_file_of_a_raw_folder_by_path_and_content(tmp_path):
    folder = tmp_path / "prices"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.csv").write_text("1\n")
    (folder / "y.csv").write_text("2\n")
    before = kept_prepared.inputs_checksum(tmp_path, ["prices"])
    assert kept_prepared.inputs_checksum(tmp_path, ["prices"]) == before
    (folder / "y.csv").write_text("3\n")
    assert kept_prepared.inputs_checksum(tmp_path, ["prices"]) != before
    (folder / "y.csv").write_text("2\n")
    (folder / "y.csv").rename(folder / "z.csv")
    assert kept_prepared.inputs_checksum(tmp_path, ["prices"]) != before
    assert kept_prepared.inputs_checksum(tmp_path, ["prices", "missing.csv"]) is None
