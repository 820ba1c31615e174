"""The workflow on a real SLURM cluster: Snakemake's SLURM executor, profiles/slurm, sacct, retries and resume.

A one-node cluster (slurmctld, slurmd, slurmdbd with MariaDB, munged: tests/slurm/start_cluster.sh) runs on
127.0.0.1 for the length of this module. The tiny Tox21 workflow (the first 160 real molecules) is submitted
with `snakemake --profile <profiles/slurm with the cluster's account and partitions>` to its figure: every
job that is not a local rule becomes a SLURM job, seen in sacct as COMPLETED. Then one training run that
outlives its 1-minute walltime is killed by SLURM (TIMEOUT), comes back through the rule's `retries` and
resumes from its checkpoint, ending with the same records as the same run trained without interruption.

It takes minutes, so it runs only when selected: `pytest -m slurm tests/test_slurm.py` (as root, with
`apt-get install slurm-wlm slurmdbd munge mariadb-server` and `pip install snakemake-executor-plugin-slurm`).
The dry runs at the end check the two profiles without a cluster and run in the default test run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow import REPO, SNAKEMAKE, link_user_data

SCRIPTS = REPO / "tests" / "slurm"
CLUSTER = {"account": "pbtest", "partition": "pbtest"}  # what start_cluster.sh creates
FIGURE = "figures/tox21_auc.pdf"
LONG_RUN = "results/tox21/pb/seed1"  # the run that outlives its walltime
# The tiny profile of tests/test_pipeline.py, without a factor and baseline_matched (fewer SLURM jobs).
TINY = {
    "download": False,
    "benchmarks": {"tox21": {
        "seeds": [0], "variants": ["baseline", "pb"],
        "comparisons": {"treatments": ["pb"], "controls": ["baseline"], "extra": []},
        "data": {"limit": 160},
        "train": {"batch_size": 32},
        "pb": {"neuron_patience": 1, "dendrite_patience": 1, "max_dendrites": 1, "max_total_epochs": 4},
        "resources": {"runtime_min": 10, "mem_mb": 1000},
    }},
}
# The long run trains for about this many seconds (at the speed the workflow's own training jobs just had):
# far past a 1-minute walltime, since SLURM kills a job 60 to 90 s after it starts (it checks every 30 s).
LONG_SECONDS = 150
# Its walltime: 1 minute for the first attempt, 10 minutes for the retry. With the same walltime for every
# attempt, the last attempt can finish training and be killed while Snakemake wraps up (SLURM checks limits only
# every 30 s); Snakemake then deletes summary.json and the retry trains the whole run again (see docs/cluster.md).
RETRY_RUNTIME = "1 if attempt == 1 else 10"


def timeout_profile(epochs: int) -> dict:
    """Seed 1 added; its pb run trains `epochs` epochs in fixed-length cycles (neuron, dendrite, neuron,
    dendrite, then neuron until max_total_epochs), so a kill can land in either phase."""
    cycle = max(1, epochs // 4)
    return {"benchmarks": {"tox21": {"seeds": [0, 1], "seed_overrides": {1: {"pb": {
        "fixed_cycle_epochs": cycle, "max_dendrites": 2, "max_total_epochs": epochs, "stop_on_no_improvement": False}}},
    }}}


SACCT_FIELDS = ["JobID", "JobName", "Comment", "Partition", "Account", "AllocCPUS", "ReqMem", "Timelimit",
                "Elapsed", "State", "ExitCode"]


def _merge(base: dict, extra: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _missing_requirements() -> str | None:
    binaries = ["munged", "slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "mariadbd"]
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        return (f"SLURM test cluster needs {', '.join(missing)}: "
                "apt-get install slurm-wlm slurmdbd munge mariadb-server")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "Snakemake's SLURM executor is not installed: pip install snakemake-executor-plugin-slurm"
    if os.geteuid() != 0:
        return "the one-node SLURM cluster must be started as root (slurmd starts each job as its user)"
    return None


def _snakemake(work: Path, *args: str, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([*SNAKEMAKE, "-d", str(work), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def cluster_profile(folder: Path, train_runtime: str | None = None) -> Path:
    """profiles/slurm as a user edits it for the test cluster: its account, and its one (CPU) partition for
    every rule; optionally a walltime expression for training. Test-only speed-ups: first status check after
    5 s instead of 40 s, 5 s latency wait."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    edits = {("default-resources", "slurm_account"): CLUSTER["account"],
             ("default-resources", "slurm_partition"): CLUSTER["partition"],
             ("set-resources", "train", "slurm_partition"): CLUSTER["partition"],
             ("set-resources", "measure", "slurm_partition"): CLUSTER["partition"]}
    for path, value in edits.items():
        node = profile
        for key in path[:-1]:
            node = node[key]
        assert str(node[path[-1]]).startswith("EDIT_ME"), f"profiles/slurm: {'.'.join(path)} is not a placeholder"
        node[path[-1]] = value
    profile["config"]["device"] = "cpu"  # this cluster has no GPU
    if train_runtime:
        profile["set-resources"]["train"]["runtime"] = train_runtime
    profile.update({"slurm-init-seconds-before-status-checks": 5, "latency-wait": 5})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def sacct(env: dict, since: str) -> pd.DataFrame:
    """The cluster's jobs since `since` (allocations only, no steps), one row per job."""
    out = subprocess.run(["sacct", "-X", "--parsable2", "--noheader", "--allusers", "--starttime", since,
                          f"--format={','.join(SACCT_FIELDS)}"], capture_output=True, text=True, env=env,
                         check=True, timeout=60)
    rows = [line.split("|") for line in out.stdout.splitlines() if line]
    return pd.DataFrame(rows, columns=SACCT_FIELDS)


def _records(path: Path) -> pd.DataFrame:
    """A run's records without the wall-clock column (which differs between two trainings)."""
    return pd.read_csv(path).drop(columns=["seconds"], errors="ignore")


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    if "slurm" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("starts a SLURM cluster and runs for minutes: select it with `pytest -m slurm`")
    reason = _missing_requirements()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    start = time.monotonic()
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run([str(SCRIPTS / "start_cluster.sh"), str(folder)], capture_output=True, text=True,
                         env=env, timeout=600)
    if out.returncode != 0:
        logs = "".join(f"\n--- {p}:\n" + "\n".join(p.read_text().splitlines()[-15:])
                       for p in sorted((folder / "log").glob("*.log")))
        pytest.fail(f"start_cluster.sh failed:\n{out.stdout}\n{out.stderr}{logs}")
    env = {"SLURM_CONF": str(folder / "etc/slurm.conf"), "PATH": f"{folder / 'bin'}:{os.environ['PATH']}"}
    try:
        yield {"env": env, "folder": folder, "start_s": time.monotonic() - start}
    finally:
        subprocess.run([str(SCRIPTS / "stop_cluster.sh"), str(folder)], timeout=300)


@pytest.fixture(scope="module")
def slurm_runs(cluster, tmp_path_factory, real_data_dir):
    """The tiny workflow to its figure on SLURM; then the long run with a 1-minute walltime on SLURM, while the
    same run trains without interruption on the local executor beside it (the reference)."""
    work = tmp_path_factory.mktemp("slurm_work")
    tiny = {**TINY, "data_dir": str(link_user_data(work, real_data_dir, ["tox21/tox21.csv.gz"]))}
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    profile = cluster_profile(work / "profile")
    env = cluster["env"]
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    timings = {"cluster start": cluster["start_s"]}

    start = time.monotonic()
    workflow = _snakemake(work, "--profile", str(profile), "--configfile", str(work / "tiny.yaml"), "--", FIGURE,
                          env=env)
    timings["workflow to the figure"] = time.monotonic() - start
    assert workflow.returncode == 0, workflow.stdout[-3000:] + workflow.stderr[-6000:]

    # As many epochs as take LONG_SECONDS at the speed the pb run (neuron and dendrite epochs) just had here.
    seconds = pd.read_csv(work / "results/tox21/pb/seed0/epochs.csv")["seconds"].mean()
    epochs = max(20, round(LONG_SECONDS / seconds))
    (work / "timeout.yaml").write_text(yaml.safe_dump(_merge(tiny, timeout_profile(epochs))))
    retry_profile = cluster_profile(work / "profile-retry", train_runtime=RETRY_RUNTIME)
    start = time.monotonic()
    reference = subprocess.Popen(
        [*SNAKEMAKE, "-d", str(work), "--cores", "1", "--configfile", str(work / "timeout.yaml"), "--config",
         "device=cpu", "results_dir=reference", "logs_dir=reference_logs", "--",
         f"{LONG_RUN.replace('results/', 'reference/')}/summary.json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        retried = _snakemake(work, "--profile", str(retry_profile), "--configfile", str(work / "timeout.yaml"), "--",
                             f"{LONG_RUN}/summary.json", env=env)
        timings["time-limited run"] = time.monotonic() - start
        reference_log, _ = reference.communicate(timeout=1500)
    finally:
        reference.kill()
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-6000:]
    assert reference.returncode == 0, reference_log[-6000:]

    jobs = sacct(env, since)
    print(f"\nsacct lines of this run:\n{jobs.to_string(index=False)}\ntimings (s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"; long run: {epochs} epochs")
    return {"work": work, "jobs": jobs, "epochs": epochs, "workflow_log": workflow.stdout + workflow.stderr,
            "retry_log": retried.stdout + retried.stderr, "timings": timings}


@pytest.mark.slurm
def test_workflow_runs_as_slurm_jobs_to_its_figure(slurm_runs):
    work, jobs = slurm_runs["work"], slurm_runs["jobs"]
    for name in ("figures/tox21_auc.pdf", "figures/tox21_auc.png"):
        assert (work / name).stat().st_size > 5000
    summary = pd.read_csv(work / "results/tox21/summary.csv")
    assert sorted(zip(summary["variant"], summary["seed"])) == [("baseline", 0), ("pb", 0)]
    assert (work / "results/tox21/stats.csv").is_file()
    # Each SLURM job carries Snakemake's rule and wildcards in its comment; the workflow's jobs are exactly
    # prepare, seed 0's shared first cycle and its two training runs, each COMPLETED, with the profile's account
    # and the cluster's partition, the rule's walltime (runtime_min 10) and memory. Local rules never reach SLURM.
    first = jobs[~jobs["Comment"].str.contains("_seed1")]
    comments = [re.sub(r"_seed0_[0-9a-f]{10}$", "_seed0_KEY", c) for c in sorted(first["Comment"])]
    assert comments == ["rule_first_cycle_wildcards_tox21_seed0_KEY",
                        "rule_prepare_wildcards_" + _prepared_name(work),
                        "rule_train_wildcards_tox21_baseline_seed0",
                        "rule_train_wildcards_tox21_pb_seed0"], first.to_string()
    assert (first["State"] == "COMPLETED").all() and (first["ExitCode"] == "0:0").all(), first.to_string()
    assert set(first["Account"]) == {CLUSTER["account"]} and set(first["Partition"]) == {CLUSTER["partition"]}
    train = first[first["Comment"].str.startswith("rule_train")]
    assert set(train["Timelimit"]) == {"00:10:00"} and set(train["ReqMem"]) == {"1000M"}
    assert set(train["AllocCPUS"]) == {"1"}
    assert first["JobName"].nunique() == 1  # Snakemake names every job of one run by the run's id
    assert not any(rule in comment for comment in jobs["Comment"] for rule in ("aggregate", "figure", "table"))
    assert "localrule aggregate" in slurm_runs["workflow_log"]


def _prepared_name(work: Path) -> str:
    (prepared,) = (p for p in (work / "data/cache").rglob("*.pt") if "kept" not in p.parts)
    return "_".join(prepared.relative_to(work / "data/cache").parts)


@pytest.mark.slurm
def test_a_run_killed_at_its_walltime_is_retried_and_resumes(slurm_runs):
    work, jobs = slurm_runs["work"], slurm_runs["jobs"]
    attempts = jobs[jobs["Comment"] == "rule_train_wildcards_tox21_pb_seed1"]
    # SLURM killed the first attempt at its 1-minute limit; Snakemake submitted it again (the rule's retries:
    # train_retries, 1 by default) with the retry's walltime, and that attempt completed.
    assert list(zip(attempts["State"], attempts["Timelimit"])) == [("TIMEOUT", "00:01:00"),
                                                                  ("COMPLETED", "00:10:00")], attempts.to_string()
    assert slurm_runs["retry_log"].count("Trying to restart job") == 1
    run = work / LONG_RUN
    sessions = json.loads((run / "provenance.json").read_text())["sessions"]
    assert len(sessions) == 2  # one training session per SLURM job
    log = (run / "run.log").read_text()
    resumed = re.findall(r"resumed \S+checkpoint\.pt at epoch (\d+)", log)
    assert len(resumed) == 1 and 0 < int(resumed[0]) < slurm_runs["epochs"], log[-2000:]
    assert not (run / "checkpoint.pt").exists()
    # Resumed runs end with the records of the same run trained in one go (except the wall-clock column).
    reference = work / LONG_RUN.replace("results/", "reference/")
    for name in ("epochs.csv", "cycles.csv", "correlations.csv"):
        pd.testing.assert_frame_equal(_records(run / name), _records(reference / name))
    epochs = pd.read_csv(run / "epochs.csv")
    assert len(epochs) == slurm_runs["epochs"] and set(epochs["phase"]) == {"neuron", "dendrite"}
    assert len(pd.read_csv(run / "cycles.csv")) >= 4  # dendrites were added: the phases' state was resumed too
    done, ref = (json.loads((p / "summary.json").read_text()) for p in (run, reference))
    for key in ("max", "original", "epochs", "final_dendrites", "dendrites_added"):
        assert done[key] == ref[key], key


# --- the profiles without a cluster (dry runs: a few seconds; in the default test run) ---------------------------


def _dry_run_jobs(tmp_path: Path, *args: str) -> dict[str, str]:
    """{rule: its resources line} of a dry run of the tiny workflow to its figure (data: an empty stand-in)."""
    (tmp_path / "data" / "tox21").mkdir(parents=True)
    (tmp_path / "data" / "tox21" / "tox21.csv.gz").touch()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "data_dir": str(tmp_path / "data")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = _snakemake(tmp_path, *args, "--configfile", str(tmp_path / "tiny.yaml"), "-n", "--", FIGURE, env=env,
                     timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs, rule = {}, None
    for line in (out.stdout + out.stderr).splitlines():
        if match := re.fullmatch(r"(?:local)?rule (\w+):", line.strip()):
            rule = match[1]
        elif line.strip().startswith("resources:") and rule:
            jobs[rule] = line.strip()
    return jobs


def _resources(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.removeprefix("resources: ").split(", "))


def test_slurm_profile_sends_training_to_the_gpu_partition(tmp_path):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("the profile's slurm-* settings need it: pip install snakemake-executor-plugin-slurm")
    jobs = _dry_run_jobs(tmp_path, "--profile", str(REPO / "profiles/slurm"))
    tox21 = yaml.safe_load((REPO / "config/benchmarks/tox21.yaml").read_text())["benchmarks"]["tox21"]
    train = _resources(jobs["train"])
    # device=cuda from the profile: one GPU (the plugin's --gpus=1) on the GPU partition, with the walltime and
    # memory of the benchmark's resources block (here TINY's, which differ from config/benchmarks/tox21.yaml).
    assert train["gpu"] == "1" and train["slurm_partition"] == "EDIT_ME_GPU_PARTITION"
    assert train["slurm_account"] == "EDIT_ME_ACCOUNT"
    assert (train["runtime"], train["mem_mb"]) == (str(TINY["benchmarks"]["tox21"]["resources"]["runtime_min"]),
                                                   str(TINY["benchmarks"]["tox21"]["resources"]["mem_mb"]))
    assert tox21["resources"]["runtime_min"] != TINY["benchmarks"]["tox21"]["resources"]["runtime_min"]
    prepare = _resources(jobs["prepare"])
    assert prepare["slurm_partition"] == "EDIT_ME_CPU_PARTITION" and "gpu" not in prepare


def test_local_gpu_profile_gives_each_run_one_gpu_slot(tmp_path):
    train = _resources(_dry_run_jobs(tmp_path, "--profile", str(REPO / "profiles/local-gpu"))["train"])
    assert train["gpu"] == "1" and train["gpu_slots"] == "1"
    profile = yaml.safe_load((REPO / "profiles/local-gpu/config.yaml").read_text())
    assert profile["resources"]["gpu_slots"] > 1 and profile["config"]["device"] == "cuda"
