"""The Snakemake workflow end to end on real Tox21 molecules: download -> prepare -> train -> aggregate -> figure.

A tiny profile (the first 160 molecules of the real file, 2 seeds, a two-value factor, a few epochs) runs
through the real Snakefile in a scratch working directory. Then: a second run does nothing; a forced rerun
of one finished run trains it again from scratch (executed, not dry-run); a pb-only key reruns pb runs (and
the control matched to them) but no baseline; one seed's override reruns that seed alone; the user's data is
untouched; parsing the workflow imports no torch.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workflow import REPO, link_user_data, snakemake, write_profile

VARIANTS = ["baseline", "pb", "baseline_matched"]
WIDTHS = [0.5, 1]
TARGET = "figures/tox21_auc.pdf"

TINY = {
    "download": False,
    "benchmarks": {"tox21": {
        "seeds": 2, "variants": VARIANTS, "factors": {"width": WIDTHS},
        "data": {"limit": 160},
        "train": {"batch_size": 32},
        "pb": {"neuron_patience": 1, "dendrite_patience": 1, "max_dendrites": 1, "max_total_epochs": 4},
    }},
}


def planned_jobs(workdir: Path, *args: str) -> tuple[dict[str, int], str]:
    """({rule: number of jobs}, dry-run text) that a dry run plans (Snakemake's "Job stats" table)."""
    out = snakemake(workdir, "-n", *args, "--", TARGET)
    assert out.returncode == 0, out.stderr[-4000:]
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}, text
    jobs = {}
    for line in text[text.index("Job stats:"):].splitlines()[3:]:
        rule, count = line.split()
        if rule == "total":
            return jobs, text
        jobs[rule] = int(count)
    raise AssertionError(f"no job table in:\n{text}")


def planned_runs(text: str) -> set[str]:
    """The run folders of the train jobs a dry run lists."""
    return {line.split("output: ")[1].rsplit("/summary.json", 1)[0].split("results/tox21/")[1]
            for line in text.splitlines() if "output: results/tox21/" in line and line.endswith("summary.json")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, real_data_dir):
    real = real_data_dir / "tox21" / "tox21.csv.gz"
    work = tmp_path_factory.mktemp("pipeline")
    profile = {**TINY, "data_dir": str(link_user_data(work, real_data_dir, ["tox21/tox21.csv.gz"]))}
    write_profile(work, profile)
    before = sha256(real)
    run = snakemake(work, "--cores", "2", "--", TARGET)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return {"work": work, "real": real, "sha": before, "log": run.stdout + run.stderr, "profile": profile}


def test_pipeline_writes_figure_tables_and_run_records(pipeline):
    work = pipeline["work"]
    for name in ("tox21_auc.pdf", "tox21_auc.png"):
        assert (work / "figures" / name).stat().st_size > 5000
    summary = pd.read_csv(work / "results/tox21/summary.csv")
    assert sorted(zip(summary["variant"], summary["width"], summary["seed"])) == sorted(
        (v, w, s) for v in VARIANTS for w in WIDTHS for s in (0, 1))
    # The factor reaches the model: width 0.5 halves TrimNet's hidden size.
    params = summary.groupby("width")["params_original"].unique()
    assert list(params[1]) == [109_304] and params[0.5][0] < 109_304 / 2
    for row in summary.itertuples():
        run = work / "results/tox21" / row.variant / f"width{row.width:g}-seed{row.seed}"
        record = json.loads((run / "summary.json").read_text())
        assert record["factors"] == {"width": row.width} and json.loads((run / "config.json").read_text())[
            "factors"] == {"width": row.width}
        epochs = pd.read_csv(run / "epochs.csv")
        assert record["epochs"] == len(epochs) == row.epochs
        # SPEC section 2: max = test score at the best validation epoch; original = within the first cycle
        best = epochs[epochs["phase"] == "neuron"]["val"].idxmax()
        assert row.max_test == pytest.approx(epochs.loc[best, "test"])
        first = epochs[epochs["cycle"] == epochs["cycle"].min()]
        assert row.original_test == pytest.approx(first.loc[first["val"].idxmax(), "test"])
        assert (run / "model.pt").is_file() and (run / "run.log").is_file()
        assert not (run / "checkpoint.pt").exists()  # a finished run is not a resume point
        provenance = json.loads((run / "provenance.json").read_text())["sessions"]
        assert len(provenance) == 1 and provenance[0]["device"]["type"] == "cpu"
    assert summary["prov_cpu_capability"].notna().all()
    # The compute-matched control trained exactly as many epochs as pb did, width by width, seed by seed.
    epochs = summary.set_index(["variant", "width", "seed"])["epochs"]
    for width in WIDTHS:
        for seed in (0, 1):
            assert epochs[("baseline_matched", width, seed)] == epochs[("pb", width, seed)]
    counts = pd.read_csv(work / "results/tox21/dendrite_counts.csv")
    assert counts.groupby("variant")["runs"].sum().to_dict() == {v: 4 for v in VARIANTS}
    stats = pd.read_csv(work / "results/tox21/stats.csv")
    assert set(stats[stats.comparison == "pb max - baseline max"]["factors"]) == {"width=0.5", "width=1"}
    assert (stats["n"] == 2).all()
    assert {"variant", "width", "mean_improvement"} <= set(pd.read_csv(work / "results/tox21/improvement.csv"))
    # One shared first cycle per (width, seed), which every variant there starts from; baseline is that cycle.
    for width in WIDTHS:
        for seed in (0, 1):
            (cycle,) = (work / f"results/tox21/first_cycle/width{width:g}-seed{seed}").iterdir()
            first = pd.read_csv(cycle / "epochs.csv").drop(columns=["seconds"])
            for variant in VARIANTS:
                run = work / f"results/tox21/{variant}/width{width:g}-seed{seed}"
                assert json.loads((run / "summary.json").read_text())["first_cycle"] == str(
                    cycle.relative_to(work / "results"))
                own = pd.read_csv(run / "epochs.csv").drop(columns=["seconds"])
                pd.testing.assert_frame_equal(own.head(len(first)), first)
                assert len(own) == len(first) if variant == "baseline" else len(own) > len(first)
    # Every rule leaves a log and a benchmark record.
    for rule in ("prepare", "first_cycle", "train", "aggregate", "figure"):
        assert list((work / "logs" / rule).rglob("*.benchmark.tsv")), rule


def test_user_data_is_never_touched_and_never_downloaded(pipeline):
    work = pipeline["work"]
    link = work / "userdata" / "tox21" / "tox21.csv.gz"
    assert link.is_symlink() and sha256(pipeline["real"]) == pipeline["sha"]
    assert not (work / "logs" / "download").exists()
    # Even a forced rerun of everything cannot plan to download (and so delete) the user's copy.
    out = snakemake(work, "-n", "--forceall", "--", TARGET)
    assert out.returncode == 0 and "rule download" not in out.stdout + out.stderr


def test_second_run_does_nothing_and_a_forced_rerun_trains_again(pipeline):
    work = pipeline["work"]
    assert planned_jobs(work)[0] == {}
    run = work / "results/tox21/pb/width1-seed0"
    before = {name: _records(run / name) for name in ("epochs.csv", "cycles.csv", "correlations.csv")}
    stamp = (run / "summary.json").stat().st_mtime_ns
    out = snakemake(work, "--cores", "1", "--forcerun", "train", "--", str(run.relative_to(work) / "summary.json"))
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Nothing to be done" not in out.stdout + out.stderr
    assert (run / "summary.json").stat().st_mtime_ns > stamp and (run / "model.pt").is_file()
    assert not (run / "checkpoint.pt").exists()
    log = (work / "logs/train/tox21/pb/width1-seed0.log").read_text()
    assert "resumed" not in log and "nothing to do" not in log
    # From the shared first cycle, which the forced run did not train again.
    (cycle,) = (work / "results/tox21/first_cycle/width1-seed0").iterdir()
    assert f"starts from the shared first cycle {cycle.relative_to(work)}" in log and "was missing" not in log
    assert (cycle / "first_cycle.pt").stat().st_mtime_ns < stamp
    # Trained again from scratch, to the same records (the run is deterministic on one machine).
    for name, records in before.items():
        pd.testing.assert_frame_equal(_records(run / name), records)
    assert len(json.loads((run / "provenance.json").read_text())["sessions"]) == 1
    # The control matched to that run is now older than it, so it (and only it) trains again.
    jobs, text = planned_jobs(work)
    assert planned_runs(text) == {"baseline_matched/width1-seed0"}
    out = snakemake(work, "--cores", "1", "--", TARGET)
    assert out.returncode == 0, out.stderr[-4000:]


def test_a_retrained_first_cycle_retrains_exactly_the_runs_of_its_point(pipeline):
    work = pipeline["work"]
    (cycle,) = (work / "results/tox21/first_cycle/width0.5-seed1").iterdir()
    jobs, text = planned_jobs(work, "--forcerun", str((cycle / "first_cycle.pt").relative_to(work)))
    assert planned_runs(text) == {f"{v}/width0.5-seed1" for v in VARIANTS}
    assert jobs == {"first_cycle": 1, "train": 3, "aggregate": 1, "figure": 1}


@pytest.mark.slow
def test_every_forked_run_equals_the_run_that_trains_its_own_first_cycle(pipeline):
    """The tiny workflow again with share_first_cycle: false (every run trains its first cycle itself): each
    run's records and scores equal those of the run that started from the shared cycle."""
    work = pipeline["work"]
    (work / "unforked.yaml").write_text(json.dumps({"share_first_cycle": False, "results_dir": "results_unforked",
                                                   "logs_dir": "logs_unforked"}))
    targets = [f"results_unforked/tox21/{v}/width{w:g}-seed{s}/summary.json" for v in VARIANTS for w in WIDTHS
               for s in (0, 1)]
    out = snakemake(work, "--configfile", str(work / "tiny.yaml"), str(work / "unforked.yaml"), "--cores", "2",
                    "--", *targets)
    assert out.returncode == 0, out.stderr[-4000:]
    assert not (work / "results_unforked/tox21/first_cycle").exists()
    for target in targets:
        unforked = work / Path(target).parent
        forked = work / "results" / unforked.relative_to(work / "results_unforked")
        for name in ("epochs.csv", "cycles.csv", "correlations.csv"):
            pd.testing.assert_frame_equal(_records(forked / name), _records(unforked / name), check_exact=True)
        a, b = (json.loads((f / "summary.json").read_text()) for f in (forked, unforked))
        assert b["first_cycle"] is None and a["first_cycle"]
        for key in ("original", "max", "final_dendrites", "params_final", "epochs", "cycles", "stopped_because"):
            assert a[key] == b[key], (target, key)


def _records(path: Path) -> pd.DataFrame:
    """A run's records without the wall-clock column (which differs between two trainings)."""
    return pd.read_csv(path).drop(columns=["seconds"], errors="ignore")


def test_pb_only_key_and_one_seed_override_rerun_exactly_their_runs(pipeline):
    work = pipeline["work"]
    before = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("summary.json")}
    changed = json.loads(json.dumps(pipeline["profile"]))
    changed["benchmarks"]["tox21"]["pb"]["candidates"] = 2
    write_profile(work, changed)
    try:
        jobs, text = planned_jobs(work)
        # pb runs read pb.candidates; baseline_matched trains as long as pb, so it follows; baselines do not.
        assert planned_runs(text) == {f"{v}/width{w:g}-seed{s}" for v in ("pb", "baseline_matched")
                                      for w in WIDTHS for s in (0, 1)}
        assert jobs == {"train": 8, "aggregate": 1, "figure": 1}
        seed_only = json.loads(json.dumps(pipeline["profile"]))
        seed_only["benchmarks"]["tox21"]["seed_overrides"] = {1: {"pb": {"neuron_patience": 2}}}
        write_profile(work, seed_only)
        jobs, text = planned_jobs(work)
        # neuron_patience is read by every variant with a neuron phase of its own; only seed 1's runs rerun.
        assert planned_runs(text) == {f"{v}/width{w:g}-seed1" for v in VARIANTS for w in WIDTHS}
    finally:
        write_profile(work, pipeline["profile"])
    assert {p: p.stat().st_mtime_ns for p in (work / "results").rglob("summary.json")} == before


def test_parsing_the_workflow_imports_no_ml_stack(pipeline):
    work = pipeline["work"]
    code = f"""
import sys
from snakemake.cli import main
sys.argv = ["snakemake", "-s", {str(REPO / 'Snakefile')!r}, "-d", {str(work)!r}, "--configfile",
            {str(work / 'tiny.yaml')!r}, "-n", "--quiet", "--", {TARGET!r}]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("HEAVY", sorted(m for m in ("torch", "torch_geometric", "rdkit", "qlib", "torchvision") if m in sys.modules))
sys.exit(code)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout


def test_a_failing_step_shows_its_own_error_once(pipeline, tmp_path):
    """A failing job prints its own error on the console (not only in its log), and no job receives the
    configuration on its command line (Snakemake would print it with the failing command)."""
    work = pipeline["work"]
    broken = json.loads(json.dumps(pipeline["profile"]))
    broken.update(data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"),
                  results_dir=str(tmp_path / "results"), figures_dir=str(tmp_path / "figures"))
    write_profile(work, broken)
    try:
        out = snakemake(work, "--cores", "1", "--", str(tmp_path / "figures/tox21_auc.pdf"))
    finally:
        write_profile(work, pipeline["profile"])
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "downloading is switched off" in text and str(tmp_path / "empty" / "tox21" / "tox21.csv.gz") in text
    assert '"benchmarks"' not in text and "--resolved-config" in text
    assert not (tmp_path / "results").exists()


def test_a_run_left_out_by_snakemake_is_an_error_and_the_same_command_makes_it(pipeline, tmp_path):
    """Snakemake 9 plans no job for a missing run whose first cycle starts from a prepared cache that the same
    command prepares again (here forced; a raw file newer than the cache does it too), and then reports
    success. The workflow must turn that into an error that says to run the command again, and the command
    run again makes the run."""
    work = pipeline["work"]
    moved = json.loads(json.dumps(pipeline["profile"]))
    moved.update(results_dir=str(tmp_path / "results"), logs_dir=str(tmp_path / "logs"))
    write_profile(work, moved)
    target = tmp_path / "results/tox21/baseline/width1-seed0/summary.json"
    try:
        first = snakemake(work, "--cores", "1", "--forcerun", "prepare", "--", str(target))
        text = first.stdout + first.stderr
        # A Snakemake that plans the run makes it; one that does not must fail, never succeed without it.
        assert target.is_file() or (first.returncode != 0 and "run the same command again" in text), text[-3000:]
        if not target.is_file():
            assert str(target) in text
        again = snakemake(work, "--cores", "1", "--", str(target))
        assert again.returncode == 0, again.stderr[-4000:]
        assert target.is_file()
    finally:
        write_profile(work, pipeline["profile"])


def test_a_new_part_whose_runs_snakemake_left_out_is_an_error_though_its_figure_exists(pipeline, tmp_path):
    """A later part (another seed) asks for a figure that the first part made. Snakemake 9, preparing again in
    the same command, plans none of the new part's runs and reports success with the first part's figure in
    place (as the evidence profile's EMNIST seed 2 did). That must be an error too, and the command run again
    makes the runs and the figure."""
    work = pipeline["work"]
    part = json.loads(json.dumps(pipeline["profile"]))
    part.update(results_dir=str(tmp_path / "results"), figures_dir=str(tmp_path / "figures"),
                logs_dir=str(tmp_path / "logs"))
    part["benchmarks"]["tox21"].update(seeds=[0], variants=["baseline", "pb"], factors={"width": [1]})
    write_profile(work, part)
    figure = tmp_path / "figures/tox21_auc.pdf"
    try:
        assert snakemake(work, "--cores", "1", "--", str(figure)).returncode == 0
        made_by_first_part = figure.stat().st_mtime_ns
        part["benchmarks"]["tox21"]["seeds"] = [2]
        write_profile(work, part)
        new_run = tmp_path / "results/tox21/pb/width1-seed2/summary.json"
        first = snakemake(work, "--cores", "1", "--forcerun", "prepare", "--", str(figure))
        text = first.stdout + first.stderr
        if not new_run.is_file():
            assert first.returncode != 0 and "run the same command again" in text, text[-3000:]
            assert str(new_run) in text
            again = snakemake(work, "--cores", "1", "--", str(figure))
            assert again.returncode == 0, again.stderr[-4000:]
        assert new_run.is_file() and figure.stat().st_mtime_ns > made_by_first_part
    finally:
        write_profile(work, pipeline["profile"])


def test_unmade_targets_are_a_target_jobs_outputs_or_for_a_rule_like_all_its_inputs(tmp_path):
    from types import SimpleNamespace

    from experiments.pipeline import unmade_targets

    made = tmp_path / "made.csv"
    made.write_text("x\n")
    jobs = [SimpleNamespace(output=[str(made), str(tmp_path / "lost.csv")], input=[str(tmp_path / "in.pt")]),
            SimpleNamespace(output=[], input=[str(made), str(tmp_path / "figure.pdf")])]
    assert unmade_targets(jobs) == sorted([str(tmp_path / "lost.csv"), str(tmp_path / "figure.pdf")])
    # a job of the DAG that Snakemake left out: its output is missing though the target exists
    upstream = [SimpleNamespace(output=[str(tmp_path / "run/summary.json")], input=[str(made)])]
    assert unmade_targets(jobs[1:2], upstream) == sorted([str(tmp_path / "figure.pdf"),
                                                          str(tmp_path / "run/summary.json")])
