"""benchmarks/gpu_check.py on the CPU (its dry run): every step end to end at tiny sizes, the CSV and markdown it
writes, the GPU-hours recomputed from the epochs it measured, and a time limit that stops it early with what it
had measured written. The same script runs on a lent GPU (docs/gpu.md); this is how it is known to work first."""
from __future__ import annotations

import csv
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


def _check(tmp_path: Path, real_data_dir: Path, *args: str, timeout: int = 900) -> tuple[list[dict], str]:
    out = tmp_path / "gpu"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                          "--data-dir", str(real_data_dir), "--out", str(out), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(out / "gpu_check.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == gpu_check.COLUMNS
        rows = list(reader)
    return rows, (out / "gpu_check.md").read_text()


def _num(value: str):
    return float(value) if value != "" else None


@pytest.mark.slow
def test_the_dry_run_measures_every_step_and_recomputes_the_budget_from_its_epochs(tmp_path, real_data_dir):
    for name in ("tox21/tox21.csv.gz", "physionet2012/set-a.tar.gz"):
        if not (real_data_dir / name).is_file():
            pytest.skip(f"{real_data_dir / name} not found")
    rows, md = _check(tmp_path, real_data_dir, "--packing", "1")
    steps = {r["configuration"]: r for r in rows if r["section"] == "steps"}
    assert list(steps) == [*gpu_check.STEPS, "budget"]
    not_done = {name: f"{r['status']}: {r['note']}" for name, r in steps.items() if r["status"] != "done"}
    assert not not_done, not_done
    assert all(r["device"] == "cpu" and r["torch"] and "dry run" in r["gpu"] for r in rows)

    timing = [r for r in rows if r["section"] == "timing"]
    from experiments import config as cfgmod
    from experiments.grid import Run

    cfg = cfgmod.load_config()
    for benchmark in ("tox21", "emnist", "csi300"):
        mine = {r["configuration"]: r for r in timing if r["benchmark"] == benchmark}
        assert list(mine) == [name for name, _, _ in gpu_check.TIMED_CONFIGS]
        assert all(_num(r["seconds_per_epoch"]) > _num(r["seconds_per_batch"]) > 0 for r in mine.values())
        configured = cfgmod.run_settings(cfg, Run(benchmark, "pb", 0))["pb"]["candidates"]
        assert int(mine["dendrite K=0"]["candidates"]) == configured  # the run's candidates, not the tools' 1
        assert int(mine["neuron K=1"]["params"]) > int(mine["neuron K=0"]["params"])  # a dendrite per neuron
        synthetic = benchmark != "tox21"
        assert ("synthetic" in mine["neuron K=0"]["data"]) == synthetic  # said where the data is not real
        assert synthetic or mine["neuron K=0"]["data"].startswith("real Tox21")
    physionet = {(r["width"], r["configuration"]): r for r in timing if r["benchmark"] == "physionet"}
    assert _num(physionet[("0.125", "neuron K=0")]["paper_seconds_per_epoch"]) == 5.15  # Table 2, beside ours
    assert _num(physionet[("0.125", "dendrite K=0")]["paper_seconds_per_epoch"]) == 9.43
    inference = [r for r in rows if r["section"] == "inference"]
    for benchmark in ("tox21", "emnist"):
        assert {r["batch"] for r in inference if r["benchmark"] == benchmark} == {"1", "100"}
    assert all(_num(r["inputs_per_second"]) > 0 for r in inference)
    packing = [r for r in rows if r["section"] == "packing"]
    assert [r["parallel_runs"] for r in packing] == ["1"] and _num(packing[0]["runs_per_hour"]) > 0

    # The budget by hand: experiments.budget's runs and epochs times the seconds measured above.
    budget = {(r["benchmark"], r["configuration"], r["width"]): r for r in rows if r["section"] == "budget"}
    tox = [r for r in timing if r["benchmark"] == "tox21"]
    s_n = statistics.mean(_num(r["seconds_per_epoch"]) for r in tox if r["phase"] == "neuron" and r["dendrites"] == "1")
    s_d = statistics.mean(_num(r["seconds_per_epoch"]) for r in tox if r["phase"] == "dendrite")
    pb = budget[("tox21", "pb", "")]
    expected = _num(pb["runs"]) * (_num(pb["neuron_epochs"]) * s_n + _num(pb["dendrite_epochs"]) * s_d) / 3600
    assert _num(pb["gpu_hours"]) == pytest.approx(expected, rel=1e-9) and _num(pb["runs"]) == 50
    first = budget[("tox21", "first_cycle", "")]
    s0 = next(_num(r["seconds_per_epoch"]) for r in tox if r["configuration"] == "neuron K=0")
    assert _num(first["gpu_hours"]) == pytest.approx(_num(first["runs"]) * _num(first["neuron_epochs"]) * s0 / 3600)
    total = sum(_num(r["gpu_hours"]) or 0 for k, r in budget.items() if k[0] != "all")
    assert _num(budget[("all", "total", "")]["gpu_hours"]) == pytest.approx(total)

    for title in gpu_check.TITLES.values():
        assert f"## {title}" in md
    assert "| tox21 | " in md and "used; finished)." in md  # every step done


@pytest.mark.slow
def test_a_time_limit_stops_the_check_early_and_leaves_what_it_wrote(tmp_path, real_data_dir):
    """9 s with nothing kept back: the first step begins with about 7 s left (the check's own start takes about
    2 s, and a step needs 5) and is stopped at the limit (packing's dry run takes 13.5 s on an idle 2 vCPU AMD
    EPYC, more under load), the next is not begun, and the CSV and markdown still say so, with the budget rows."""
    import time

    LIMIT = 9
    start = time.monotonic()
    rows, md = _check(tmp_path, real_data_dir, "--time-limit", str(LIMIT), "--reserve", "0",
                      "--steps", "packing", "timing_emnist")
    elapsed = time.monotonic() - start
    steps = {r["configuration"]: r["status"] for r in rows if r["section"] == "steps"}
    assert steps["packing"] == "stopped: deadline", steps
    assert steps["timing_emnist"] == "skipped: deadline"
    assert "tests" not in steps and steps["budget"] == "done"
    assert any(r["section"] == "budget" and r["configuration"] == "total" for r in rows)
    assert "finished with steps not done" in md and "stopped: deadline" in md
    assert elapsed < LIMIT + 60  # the limit, plus the budget and the interpreter's start on a loaded machine
