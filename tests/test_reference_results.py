"""Committed reference results (reference/evidence/<benchmark>/) agree with the code, and the export is sound.

* Every committed benchmark folder: its summary, stats and other aggregate tables are recomputed from its
  committed run records with the suite's own aggregation (experiments/pipeline.aggregate_tables) and must
  agree cell for cell, so the committed results cannot drift from the code unnoticed.
* The export itself, on the tiny Tox21 workflow run by the real Snakefile: the round trip agrees, no weights
  or checkpoints are copied, the job times add up, a tampered run record or table is detected, and an export
  of an unfinished profile writes nothing.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from experiments import config as cfgmod
from experiments import reference
from experiments.errors import UserError
from workflow import link_user_data, run_tiny_profile

COMMITTED = reference.reference_folders()


@pytest.mark.parametrize("folder", COMMITTED or [None], ids=[p.name for p in COMMITTED] or ["none"])
def test_committed_reference_tables_follow_from_their_run_records(folder):
    if folder is None:
        pytest.skip("no reference results committed yet under reference/evidence/")
    assert reference.verify(folder) == []
    provenance = json.loads((folder / reference.PROVENANCE_FILE).read_text())
    assert provenance["benchmark"] == folder.name and provenance["runs"] > 0
    assert not list(folder.rglob("*.pt")), "weights, checkpoints or caches were committed"


# ---------------------------------------------------------------------------------------------- the export
TINY = {
    "download": False,
    "profile": "tiny",
    "benchmarks": {"tox21": {
        "seeds": 2, "variants": ["baseline", "pb", "baseline_matched", "wider"],
        "data": {"limit": 160},
        "train": {"batch_size": 32},
        "pb": {"neuron_patience": 1, "dendrite_patience": 1, "max_dendrites": 1, "max_total_epochs": 4},
    }},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, real_data_dir):
    work = tmp_path_factory.mktemp("reference")
    profile = {**TINY, "data_dir": str(link_user_data(work, real_data_dir, ["tox21/tox21.csv.gz"]))}
    run_tiny_profile(work, profile, ["figures/tox21_auc.pdf"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        cfg = cfgmod.load_config([work / "tiny.yaml"])
        dest = reference.export(cfg, "tox21", work / "reference" / "tiny" / "tox21", run_command="snakemake tiny",
                                argv=["reference", "tox21", "--configfile", "tiny.yaml"])
    return {"work": work, "dest": dest, "cfg": cfg}


@pytest.mark.slow
def test_the_export_round_trips_and_copies_only_small_records(exported):
    dest = exported["dest"]
    assert reference.verify(dest) == []
    runs = sorted(str(p.parent.relative_to(dest)) for p in dest.glob("*/*/summary.json"))
    assert runs == [f"{v}/seed{s}" for v in ("baseline", "baseline_matched", "pb", "wider") for s in (0, 1)]
    for run in runs:
        assert sorted(p.name for p in (dest / run).iterdir()) == sorted(reference.RUN_RECORDS)
    assert not [p for p in dest.rglob("*") if p.suffix in (".pt", ".log")]
    assert (dest / "figures" / "tox21_auc.png").is_file() and not list(dest.rglob("*.pdf"))
    for name in ("summary", "stats", "dendrite_counts", "by_dendrites", "improvement", "paper_comparison"):
        assert (dest / f"{name}.csv").is_file(), name
    with open(dest / reference.JOBS_FILE, newline="") as f:
        jobs = list(csv.DictReader(f))
    trained = {j["job"] for j in jobs if j["rule"] == "train"}
    assert trained == {f"tox21/{run}" for run in runs}
    assert {"prepare", "aggregate", "figure"} <= {j["rule"] for j in jobs}
    provenance = json.loads((dest / reference.PROVENANCE_FILE).read_text())
    assert provenance["cpu_seconds"] == pytest.approx(sum(float(j["cpu_time"]) for j in jobs), abs=0.05)
    assert provenance["jobs"] == len(jobs) and provenance["runs"] == 8
    assert provenance["run_command"] == "snakemake tiny"
    assert provenance["export_command"] == "python -m experiments reference tox21 --configfile tiny.yaml"
    assert provenance["machines"] and provenance["machines"][0]["cpu"]
    assert provenance["elapsed_seconds"] > 0 and provenance["run_code"]
    # The copied records are the results' own, byte for byte.
    results = exported["work"] / "results" / "tox21"
    assert (dest / "pb/seed1/epochs.csv").read_bytes() == (results / "pb/seed1/epochs.csv").read_bytes()
    assert (dest / "summary.csv").read_bytes() == (results / "summary.csv").read_bytes()


@pytest.mark.slow
def test_the_wider_runs_match_their_pb_runs_in_the_workflow(exported):
    """Through the real Snakefile: each wider run waited for its seed's pb run and has its final network's size
    (a tiny TrimNet whose pb run kept no dendrite is the original network, from the shared first cycle)."""
    summary = pd.read_csv(exported["dest"] / "summary.csv").set_index(["variant", "seed"])
    for seed in (0, 1):
        record = json.loads((exported["dest"] / f"wider/seed{seed}/summary.json").read_text())["wider"]
        assert record["target_parameters"] == summary.loc[("pb", seed), "params"]
        assert record["parameters"] == summary.loc[("wider", seed), "params"]
        assert abs(record["relative_error"]) < 0.02
        if record["multiplier"] == 1:
            assert summary.loc[("wider", seed), "max_test"] == summary.loc[("baseline", seed), "max_test"]


@pytest.mark.slow
def test_a_tampered_run_record_is_detected(exported, tmp_path):
    copy = tmp_path / "tox21"
    shutil.copytree(exported["dest"], copy)
    path = copy / "pb" / "seed0" / "summary.json"
    record = json.loads(path.read_text())
    record["max"]["test"] = round(record["max"]["test"] + 0.01, 6)
    path.write_text(json.dumps(record))
    problems = reference.verify(copy)
    assert any(p.startswith("summary.csv") and "'max_test'" in p for p in problems), problems
    assert any(p.startswith("stats.csv") for p in problems), problems


@pytest.mark.slow
def test_a_tampered_table_is_detected(exported, tmp_path):
    copy = tmp_path / "tox21"
    shutil.copytree(exported["dest"], copy)
    lines = (copy / "stats.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    column = header.index("mean_diff")
    cells[column] = repr(float(cells[column]) + 1e-6)
    (copy / "stats.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    problems = reference.verify(copy)
    assert problems and all(p.startswith("stats.csv row 2 column 'mean_diff'") for p in problems), problems


@pytest.mark.slow
def test_an_unfinished_profile_is_not_exported_and_the_old_folder_stays(exported):
    dest = exported["dest"]
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    cfg = {**exported["cfg"], "benchmarks": {"tox21": {**exported["cfg"]["benchmarks"]["tox21"], "seeds": 3}}}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(exported["work"])
        with pytest.raises(UserError, match=r"4 of 12 runs .* not finished \(tox21/baseline/seed2"):
            reference.export(cfg, "tox21", dest)
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tox21"]  # no staging folder left behind


def test_a_folder_without_its_profile_is_not_a_reference_folder(tmp_path):
    (tmp_path / "tox21").mkdir()
    assert "not a reference folder" in reference.verify(tmp_path / "tox21")[0]


def _with_seeds(cfg: dict, seeds, **train) -> dict:
    block = {**cfg["benchmarks"]["tox21"], "seeds": seeds}
    if train:
        block["train"] = {**block["train"], **train}
    return {**cfg, "benchmarks": {**cfg["benchmarks"], "tox21": block}}


@pytest.mark.slow
def test_parts_exported_one_seed_at_a_time_and_merged_equal_the_whole(exported, tmp_path):
    """Seeds run in different sessions pool into the folder one export of all of them gives."""
    from experiments.pipeline import aggregate

    work, whole = exported["work"], exported["dest"]
    session = tmp_path / "session"  # a session's results hold only its own seeds' tables
    for name in ("results", "logs", "figures"):
        shutil.copytree(work / name, session / name)
    cfg = {**exported["cfg"], "results_dir": str(session / "results"), "logs_dir": str(session / "logs"),
           "figures_dir": str(session / "figures")}
    dest = tmp_path / "tiny" / "tox21"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        with pytest.raises(UserError, match="export the first part without --merge"):
            reference.merge(_with_seeds(cfg, [1]), "tox21", dest)
        aggregate(_with_seeds(cfg, [0]), "tox21")
        reference.export(_with_seeds(cfg, [0]), "tox21", dest, run_command="part one")
        assert sorted(p.parent.name for p in dest.glob("*/*/summary.json")) == ["seed0"] * 4
        with pytest.raises(UserError, match=r"seeds \[0\] are already in"):
            reference.merge(_with_seeds(cfg, [0, 1]), "tox21", dest)
        with pytest.raises(UserError, match=r"benchmarks\.tox21\.train\.lr: 0\.001 \(the folder\) != 0\.01"):
            reference.merge(_with_seeds(cfg, [1], lr=0.01), "tox21", dest)
        aggregate(_with_seeds(cfg, [1]), "tox21")
        part_two = _with_seeds(cfg, [1])  # another benchmark's settings changed between the parts: no matter
        part_two["benchmarks"]["emnist"] = {**part_two["benchmarks"]["emnist"], "seeds": 99}
        reference.merge(part_two, "tox21", dest, run_command="part two")
    assert reference.verify(dest) == []
    for name in (*reference.CHECKED_TABLES, "paper_comparison"):
        assert (dest / f"{name}.csv").read_bytes() == (whole / f"{name}.csv").read_bytes(), name
    for record in whole.glob("*/*/*"):
        assert (dest / record.relative_to(whole)).read_bytes() == record.read_bytes()
    assert (dest / "figures" / "tox21_auc.png").is_file()
    assert json.loads((dest / reference.PROFILE_FILE).read_text())["benchmarks"]["tox21"]["seeds"] == [0, 1]
    provenance = json.loads((dest / reference.PROVENANCE_FILE).read_text())
    assert [(p["seeds"], p["run_command"]) for p in provenance["parts"]] == [([0], "part one"), ([1], "part two")]
    assert provenance["runs"] == 8
    with open(dest / reference.JOBS_FILE, newline="") as f:
        jobs = list(csv.DictReader(f))
    with open(whole / reference.JOBS_FILE, newline="") as f:
        trained = sorted(j["job"] for j in csv.DictReader(f) if j["rule"] in ("train", "first_cycle"))
    assert sorted(j["job"] for j in jobs if j["rule"] in ("train", "first_cycle")) == trained  # each run's once
    assert [j["rule"] for j in jobs].count("prepare") == 1  # one prepare, which both parts' logs hold
    assert sum(p["cpu_seconds"] for p in provenance["parts"]) == pytest.approx(provenance["cpu_seconds"], abs=0.05)
