"""The Snakemake pipeline end to end on real Tox21 molecules: download -> prepare -> train -> aggregate -> figure.

A tiny profile (the first 160 molecules of the real file, 2 seeds, a few epochs) runs through the real
Snakefile in a scratch working directory. Then: a second run does nothing; changing one seed's settings
reruns that seed (and its compute-matched control) and nothing else; the user's data file is untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
VARIANTS = ["baseline", "pb", "baseline_matched"]

TINY = {
    "download": False,
    "benchmarks": {"tox21": {
        "seeds": 2, "limit": 160, "variants": VARIANTS,
        "train": {"batch_size": 32},
        "pb": {"neuron_patience": 1, "dendrite_patience": 1, "max_dendrites": 1, "max_total_epochs": 5},
    }},
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*SNAKEMAKE, "-d", str(workdir), "--configfile", str(workdir / "tiny.yaml"), *args],
                          capture_output=True, text=True, env=env, timeout=900)


def planned_jobs(workdir: Path) -> dict[str, int]:
    """{rule: number of jobs} that a dry run plans (Snakemake's "Job stats" table)."""
    out = snakemake(workdir, "-n", "--quiet", "rules", "--", "figures/tox21_auc.pdf")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    jobs = {}
    for line in text[text.index("Job stats:"):].splitlines()[3:]:
        rule, count = line.split()
        if rule == "total":
            return jobs
        jobs[rule] = int(count)
    raise AssertionError(f"no job table in:\n{text}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, real_data_dir):
    real = real_data_dir / "tox21" / "tox21.csv.gz"
    if not real.is_file():
        pytest.skip(f"{real} not found")
    work = tmp_path_factory.mktemp("pipeline")
    # The user's data folder is a link to the real file: if the pipeline ever deleted or rewrote its
    # input, only the link would go, and the test below would see it.
    (work / "userdata" / "tox21").mkdir(parents=True)
    (work / "userdata" / "tox21" / "tox21.csv.gz").symlink_to(real)
    (work / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "data_dir": str(work / "userdata")}))
    before = sha256(real)
    run = snakemake(work, "--cores", "2", "--", "figures/tox21_auc.pdf")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return {"work": work, "real": real, "sha": before, "log": run.stdout + run.stderr}


def test_pipeline_writes_figure_tables_and_run_records(pipeline):
    work = pipeline["work"]
    for name in ("tox21_auc.pdf", "tox21_auc.png"):
        assert (work / "figures" / name).stat().st_size > 5000
    summary = pd.read_csv(work / "results/tox21/summary.csv")
    assert sorted(zip(summary["variant"], summary["seed"])) == sorted((v, s) for v in VARIANTS for s in (0, 1))
    assert (summary["params_original"] == 109_304).all()
    for row in summary.itertuples():
        run = work / "results/tox21" / row.variant / f"seed{row.seed}"
        record = json.loads((run / "summary.json").read_text())
        epochs = pd.read_csv(run / "epochs.csv")
        assert record["epochs"] == len(epochs) == row.epochs
        # SPEC section 2: max = test score at the best validation epoch; original = within the first cycle
        best = epochs[epochs["phase"] == "neuron"]["val"].idxmax()
        assert row.max_test == pytest.approx(epochs.loc[best, "test"])
        first = epochs[epochs["cycle"] == epochs["cycle"].min()]
        assert row.original_test == pytest.approx(first.loc[first["val"].idxmax(), "test"])
        assert (run / "model.pt").is_file() and (run / "run.log").is_file()
    # The compute-matched control trained exactly as many epochs as pb did, seed by seed.
    epochs = summary.set_index(["variant", "seed"])["epochs"]
    for seed in (0, 1):
        assert epochs[("baseline_matched", seed)] == epochs[("pb", seed)]
    counts = pd.read_csv(work / "results/tox21/dendrite_counts.csv")
    assert counts.groupby("variant")["runs"].sum().to_dict() == {v: 2 for v in VARIANTS}
    stats = pd.read_csv(work / "results/tox21/stats.csv")
    assert "pb max - baseline max" in set(stats["comparison"]) and (stats["n"] == 2).all()
    # Every rule leaves a log and a benchmark record.
    for rule in ("prepare", "train", "aggregate", "figure"):
        assert list((work / "logs" / rule).rglob("*.benchmark.tsv")), rule


def test_user_data_is_never_touched_and_never_downloaded(pipeline):
    work = pipeline["work"]
    link = work / "userdata" / "tox21" / "tox21.csv.gz"
    assert link.is_symlink() and sha256(pipeline["real"]) == pipeline["sha"]
    assert not (work / "logs" / "download").exists()
    # Even a forced rerun of everything cannot plan to download (and so delete) the user's copy.
    out = snakemake(work, "-n", "--forceall", "--", "figures/tox21_auc.pdf")
    assert out.returncode == 0 and "rule download" not in out.stdout + out.stderr


def test_second_run_does_nothing_and_one_changed_seed_reruns_alone(pipeline):
    work = pipeline["work"]
    assert planned_jobs(work) == {}
    before = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("summary.json")}
    # Change seed 1's settings only: its pb run and the control that depends on it rerun, nothing else.
    changed = yaml.safe_load((work / "tiny.yaml").read_text())
    changed["benchmarks"]["tox21"]["seed_overrides"] = {1: {"pb": {"neuron_patience": 2}}}
    (work / "tiny.yaml").write_text(yaml.safe_dump(changed))
    assert planned_jobs(work) == {"train": 3, "aggregate": 1, "figure": 1}  # baseline, pb, matched of seed 1
    out = snakemake(work, "-n", "--", "figures/tox21_auc.pdf")
    text = out.stdout + out.stderr
    assert "seed=1" in text and "seed=0" not in text
    assert {p: p.stat().st_mtime_ns for p in (work / "results").rglob("summary.json")} == before
