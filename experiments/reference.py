"""Committed reference results: the small outputs of a finished profile, copied into the repository and checked.

``python -m experiments reference tox21 --configfile config/evidence.yaml`` copies one benchmark's finished
profile into ``reference/<profile>/<benchmark>/`` (``--to`` another folder), laid out as the profile's own
``results/<benchmark>/`` is, so that the suite's aggregation reads it as it reads a results folder:

* ``<variant>/<point>/``: every run of the grid's ``config.json``, ``provenance.json``, ``epochs.csv``,
  ``cycles.csv``, ``correlations.csv`` and ``summary.json`` (never ``model.pt``, checkpoints or caches);
* the benchmark's tables (``summary.csv``, ``stats.csv``, ``dendrite_counts.csv``, ``by_dendrites.csv``,
  ``improvement.csv`` and its declared tables) and its rows of ``paper_comparison.csv``;
* ``jobs.csv``: every Snakemake job of the benchmark with its benchmark record (wall ``s``, ``cpu_time``,
  memory), from the ``.benchmark.tsv`` files under ``logs_dir``;
* ``figures/``: the benchmark's figures as PNG;
* ``profile.json``: the resolved configuration the runs were made with;
* ``PROVENANCE.json``: the code (commit, dirty files) and machines (CPU, device, threads) of the runs, the
  command that made them, the date of the export, and the jobs' wall and CPU time.

The folder is written beside its destination and renamed into place: a failed export leaves the old one as it
was. ``--merge`` adds a later part of the same profile (other seeds, e.g. from another session) to a folder and
recomputes everything from the pooled run records (:func:`merge`). :func:`verify` recomputes the tables from
the copied run records with the suite's own aggregation and lists every cell that differs (``tests/test_reference_results.py`` runs it on every committed folder).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import shlex
import shutil
import sys
from pathlib import Path

from . import config as cfgmod
from .errors import UserError
from .grid import grid, run_dir

REFERENCE_DIR = cfgmod.REPO_ROOT / "reference"
RUN_RECORDS = ("config.json", "provenance.json", "epochs.csv", "cycles.csv", "correlations.csv", "summary.json")
TABLE_SUFFIXES = (".csv", ".md")
PROFILE_FILE = "profile.json"
PROVENANCE_FILE = "PROVENANCE.json"
JOBS_FILE = "jobs.csv"
PAPER_FILE = "paper_comparison.csv"
#: The aggregate step's tables that verify recomputes (the declared tables need the data or a timing job).
CHECKED_TABLES = ("summary", "stats", "dendrite_counts", "by_dendrites", "improvement")
RTOL = 1e-9


def default_destination(cfg: dict, benchmark: str) -> Path:
    return REFERENCE_DIR / cfg["profile"] / benchmark


def export(cfg: dict, benchmark: str, destination: Path | None = None, run_command: str | None = None,
           argv: list[str] | None = None) -> Path:
    """Copy the finished profile's small outputs of ``benchmark`` into ``destination`` (atomically); its path.

    Every run of the grid must be finished and the aggregate tables made; otherwise a UserError lists what is
    missing (nothing is written)."""
    cfgmod.benchmark_block(cfg, benchmark)  # an unknown benchmark is a ConfigError naming the configured ones
    destination = Path(destination) if destination is not None else default_destination(cfg, benchmark)
    if destination.name != benchmark:  # the folder is read as <results>/<benchmark>/ (run folders check it)
        raise UserError(f"--to {destination}: the folder must be named after the benchmark ({benchmark})")
    results = Path(cfg["results_dir"]) / benchmark
    runs = grid(cfg, benchmark)
    unfinished = [r for r in runs if not (run_dir(cfg["results_dir"], r) / "summary.json").is_file()]
    if unfinished:
        shown = ", ".join(r.label for r in unfinished[:5]) + (" ..." if len(unfinished) > 5 else "")
        raise UserError(f"{benchmark}: {len(unfinished)} of {len(runs)} runs of the profile {cfg['profile']!r} are "
                        f"not finished ({shown}); finish the profile first (its snakemake command resumes it)")
    missing = [f"{name}.csv" for name in CHECKED_TABLES if not (results / f"{name}.csv").is_file()]
    if missing:
        raise UserError(f"{results} lacks {missing}; make them first: python -m experiments aggregate {benchmark} "
                        f"(same --configfile/--set)")
    scratch = destination.parent / f".{destination.name}.tmp-{os.getpid()}"
    staging = scratch / benchmark
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for run in runs:
            source, target = run_dir(cfg["results_dir"], run), staging / run.variant / run.point
            target.mkdir(parents=True)
            for name in RUN_RECORDS:
                if (source / name).is_file():
                    shutil.copy2(source / name, target / name)
        for path in sorted(results.iterdir()):
            if path.is_file() and path.suffix in TABLE_SUFFIXES:
                shutil.copy2(path, staging / path.name)
        _write_paper_rows(cfg, benchmark, staging / PAPER_FILE)
        jobs = job_records(cfg, benchmark)
        _write_jobs(jobs, staging / JOBS_FILE)
        figures = sorted(Path(cfg["figures_dir"]).glob(f"{benchmark}_*.png"))
        if figures:
            (staging / "figures").mkdir()
            for path in figures:
                shutil.copy2(path, staging / "figures" / path.name)
        provenance = export_provenance(cfg, benchmark, runs, jobs, run_command, argv)
        _check_and_place(staging, destination, cfg, provenance,
                         f"{results}: its tables do not follow from its run records (aggregate again first)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return destination


def merge(cfg: dict, benchmark: str, destination: Path | None = None, run_command: str | None = None,
          argv: list[str] | None = None) -> Path:
    """Add this profile part's finished runs (its seeds) to the reference folder of the same profile and
    benchmark that an earlier export wrote (perhaps in another session or on another machine); its path.

    The two configurations must agree in everything but the benchmark's seeds, where files are
    (``LOCATION_KEYS``) and the other benchmarks' blocks, and no seed may be in both.
    Every table is then recomputed from all the run records in the folder with the suite's own aggregation,
    the figures are drawn again from them, ``jobs.csv`` holds both parts' jobs, ``profile.json`` the pooled
    seeds, and ``PROVENANCE.json`` the pooled runs' code and machines with one entry per part under ``parts``.
    A declared table with a ``seed`` column keeps both parts' rows; one without (a measurement such as a
    timing table) is the newer part's. Written atomically, as :func:`export`."""
    import copy

    from .aggregate import write_csv_atomic
    from .grid import seeds

    destination = Path(destination) if destination is not None else default_destination(cfg, benchmark)
    if not (destination / PROFILE_FILE).is_file():
        raise UserError(f"--merge: {destination} holds no exported reference folder; export the first part "
                        f"without --merge")
    earlier = json.loads((destination / PROFILE_FILE).read_text())
    old_seeds, new_seeds = seeds(earlier, benchmark), seeds(cfg, benchmark)
    if set(old_seeds) & set(new_seeds):
        raise UserError(f"--merge: seeds {sorted(set(old_seeds) & set(new_seeds))} are already in {destination}; "
                        f"configure only the new seeds (benchmarks.{benchmark}.seeds: a list)")
    differences = _differences(_without_seeds(earlier, benchmark), _without_seeds(cfg, benchmark))
    if differences:
        raise UserError(f"--merge: this configuration differs from the one {destination} was made with in more "
                        f"than {benchmark}'s seeds, so their runs cannot be pooled:\n  " + "\n  ".join(differences[:20]))
    pooled = copy.deepcopy(cfg)
    pooled["benchmarks"][benchmark]["seeds"] = sorted([*old_seeds, *new_seeds])
    scratch = destination.parent / f".{destination.name}.merge-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        part = export(cfg, benchmark, scratch / "part" / benchmark, run_command, argv)  # checks the new part
        staging = scratch / "pooled" / benchmark
        shutil.copytree(destination, staging)
        for run in grid(cfg, benchmark):
            shutil.copytree(part / run.variant / run.point, staging / run.variant / run.point)
        at_staging = {**pooled, "results_dir": str(staging.parent), "figures_dir": str(scratch / "figures")}
        for name, table in _pooled_tables(at_staging, benchmark, destination, part).items():
            write_csv_atomic(table, staging / f"{name}.csv")
        _write_paper_rows(at_staging, benchmark, staging / PAPER_FILE)
        _redraw_figures(at_staging, benchmark, staging / "figures")
        earlier_jobs = _read_jobs(destination / JOBS_FILE)
        # a job both parts list with the same end time ran once (the prepare step a later part found made)
        seen = {(j["rule"], j["job"], j["ended"]) for j in earlier_jobs}
        part_jobs = [j for j in _read_jobs(part / JOBS_FILE) if (j["rule"], j["job"], j["ended"]) not in seen]
        jobs = [*earlier_jobs, *part_jobs]
        _write_jobs(jobs, staging / JOBS_FILE)
        earlier_provenance = json.loads((destination / PROVENANCE_FILE).read_text())
        part_provenance = {**json.loads((part / PROVENANCE_FILE).read_text()), **job_totals(part_jobs)}
        provenance = export_provenance(at_staging, benchmark, grid(pooled, benchmark), jobs,
                                       run_command, argv)
        provenance["run_command"] = "see parts"
        provenance["parts"] = [*earlier_provenance.get("parts", [_part_entry(earlier_provenance, old_seeds)]),
                               _part_entry(part_provenance, new_seeds)]
        _check_and_place(staging, destination, pooled, provenance,
                         f"{destination}: the pooled tables do not follow from the run records")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return destination


#: Where things are, not what is computed: parts may differ in these (another session, another machine).
LOCATION_KEYS = ("data_dir", "cache_dir", "results_dir", "figures_dir", "logs_dir")


def _without_seeds(cfg: dict, benchmark: str) -> dict:
    """What a part's runs were computed from: the suite's keys and this benchmark's block, less its seeds
    (the other benchmarks' blocks do not touch its runs, so they may change between parts)."""
    block = {k: v for k, v in cfg["benchmarks"][benchmark].items() if k != "seeds"}
    what = {k: v for k, v in cfg.items() if k not in LOCATION_KEYS}
    return json.loads(cfgmod.canonical_json({**what, "benchmarks": {benchmark: block}}))


def _differences(a, b, path: str = "") -> list[str]:
    """The key paths where two JSON-like values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}" if path else str(k))]
    return [] if a == b else [f"{path}: {a!r} (the folder) != {b!r} (now)"]


def _pooled_tables(cfg: dict, benchmark: str, earlier: Path, part: Path) -> dict:
    import pandas as pd

    from .pipeline import aggregate_tables
    from .registry import get_info

    tables = dict(aggregate_tables(cfg, benchmark))
    for output in get_info(cfg, benchmark).outputs:
        if output.kind != "table":
            continue
        frames = [pd.read_csv(folder / f"{output.name}.csv") for folder in (earlier, part)
                  if (folder / f"{output.name}.csv").is_file()]
        if frames and all("seed" in f.columns for f in frames):
            tables[output.name] = pd.concat(frames, ignore_index=True).sort_values("seed", kind="stable")
        elif frames:
            tables[output.name] = frames[-1]
    return tables


def _redraw_figures(cfg: dict, benchmark: str, folder: Path) -> None:
    from .outputs import make_output
    from .registry import get_info

    shutil.rmtree(folder, ignore_errors=True)
    for output in get_info(cfg, benchmark).outputs:
        if output.kind == "figure":
            png = make_output(cfg, benchmark, output.name).with_suffix(".png")
            folder.mkdir(exist_ok=True)
            shutil.copy2(png, folder / png.name)


def _read_jobs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _part_entry(provenance: dict, part_seeds: list) -> dict:
    keys = ("exported", "export_command", "run_command", "run_code", "machines", "jobs", "cpu_seconds",
            "first_job_started", "last_job_ended", "elapsed_seconds")
    return {"seeds": list(part_seeds), **{k: provenance.get(k) for k in keys}}


def _check_and_place(staging: Path, destination: Path, cfg: dict, provenance: dict, failure: str) -> None:
    """Write the folder's profile and provenance, verify its tables against its run records, and only then
    rename it into place (``failure`` starts the error when they disagree)."""
    (staging / PROFILE_FILE).write_text(cfgmod.canonical_json(cfg) + "\n")
    (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    problems = verify(staging)
    if problems:
        raise UserError(f"{failure}:\n  " + "\n  ".join(problems[:20]))
    _swap_into_place(staging, destination)


def _swap_into_place(staging: Path, destination: Path) -> None:
    old = destination.parent / f".{destination.name}.old-{os.getpid()}"
    if destination.exists():
        os.replace(destination, old)
    os.replace(staging, destination)
    shutil.rmtree(old, ignore_errors=True)


def _write_paper_rows(cfg: dict, benchmark: str, path: Path) -> None:
    from .aggregate import write_csv_atomic
    from .paper import paper_comparison

    only = {**cfg, "benchmarks": {benchmark: cfg["benchmarks"][benchmark]}}
    write_csv_atomic(paper_comparison(only), path)


# ---------------------------------------------------------------------------------------------- jobs
def _belongs(cfg: dict, benchmark: str, rule: str, job: str, points: set[str]) -> bool:
    if rule == "prepare":
        prepared = cfgmod.prepared_path(cfg, benchmark).relative_to(cfg["cache_dir"])
        return job == str(prepared)
    if rule == "train":  # <benchmark>/<variant>/<point>: only the runs of this profile's grid
        return job.startswith(f"{benchmark}/") and job.split("/")[-1] in points
    if rule == "first_cycle":  # <benchmark>/<point>/<key>
        return job.startswith(f"{benchmark}/") and len(job.split("/")) == 3 and job.split("/")[1] in points
    return job == benchmark or job.startswith((f"{benchmark}/", f"{benchmark}_"))


def job_records(cfg: dict, benchmark: str) -> list[dict]:
    """Every Snakemake benchmark record (``logs/<rule>/<job>.benchmark.tsv``) of this benchmark's jobs (of its
    training jobs, those of the configured grid's points only), with
    the file's time (when the job ended) as ``ended``. Only the last line of a record counts (a retried job's
    file holds its last attempt)."""
    logs = Path(cfg["logs_dir"])
    points = {run.point for run in grid(cfg, benchmark)}
    rows = []
    for path in sorted(logs.rglob("*.benchmark.tsv")):
        rel = path.relative_to(logs)
        rule, job = rel.parts[0], str(Path(*rel.parts[1:]))[:-len(".benchmark.tsv")]
        if not _belongs(cfg, benchmark, rule, job, points):
            continue
        with open(path, newline="") as f:
            lines = list(csv.DictReader(f, delimiter="\t"))
        if not lines:
            continue
        ended = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
        rows.append({"rule": rule, "job": job, **lines[-1], "ended": ended.isoformat(timespec="seconds")})
    return rows


def _write_jobs(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["rule", "job", "s", "cpu_time", "ended"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------------------------------------- provenance
def export_provenance(cfg: dict, benchmark: str, runs, jobs: list[dict], run_command: str | None,
                      argv: list[str] | None) -> dict:
    """What made the copied results: code, machines, command, date, wall and CPU time (see the module doc)."""
    from .provenance import code_version

    sessions = []
    for run in runs:
        path = run_dir(cfg["results_dir"], run) / "provenance.json"
        if path.is_file():
            sessions += json.loads(path.read_text()).get("sessions", [])
    commits = sorted({(s["code"].get("commit") or "unknown", bool(s["code"].get("dirty"))) for s in sessions})
    machines = sorted({json.dumps({"cpu": s["cpu"].get("model"), "logical_cpus": s["cpu"].get("logical_cpus"),
                                   "platform": s.get("platform", {}), "device": s.get("device", {}).get("name")
                                   or s.get("device", {}).get("type"), "threads": s.get("threads", {}).get("torch")},
                                  sort_keys=True) for s in sessions})
    return {
        "profile": cfg["profile"],
        "benchmark": benchmark,
        "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "export_command": shlex.join(["python", "-m", "experiments", *(argv if argv is not None else sys.argv[1:])]),
        "run_command": run_command or "not given (python -m experiments reference ... --run-command '...')",
        "export_code": code_version(),
        "runs": len(runs),
        "run_code": [{"commit": c, "dirty": d} for c, d in commits],
        "machines": [json.loads(m) for m in machines],
        **job_totals(jobs),
    }


def job_totals(jobs: list[dict]) -> dict:
    """Counts, CPU and wall seconds and the time span of Snakemake job records (rows of ``jobs.csv``)."""
    wall = [_number(j.get("s")) for j in jobs]
    cpu = [_number(j.get("cpu_time")) for j in jobs]
    starts = [dt.datetime.fromisoformat(j["ended"]) - dt.timedelta(seconds=w) for j, w in zip(jobs, wall)
              if math.isfinite(w)]
    ends = [dt.datetime.fromisoformat(j["ended"]) for j in jobs]
    return {
        "jobs": len(jobs),
        "jobs_by_rule": {rule: sum(1 for j in jobs if j["rule"] == rule) for rule in sorted({j["rule"] for j in jobs})},
        "cpu_seconds": round(sum(c for c in cpu if math.isfinite(c)), 2),
        "wall_seconds_summed_over_jobs": round(sum(w for w in wall if math.isfinite(w)), 2),
        # from the first job's start to the last job's end, by the records' file times: the elapsed time of the
        # profile for this benchmark when it ran in one go (a pause between sessions counts too)
        "first_job_started": min(starts).isoformat(timespec="seconds") if starts else None,
        "last_job_ended": max(ends).isoformat(timespec="seconds") if ends else None,
        "elapsed_seconds": round((max(ends) - min(starts)).total_seconds(), 1) if starts else None,
    }


# ---------------------------------------------------------------------------------------------- verify
def recomputed_tables(folder: Path) -> dict:
    """The aggregate tables recomputed from the run records of a reference folder (or a results folder that
    holds ``profile.json``), with the suite's own aggregation."""
    from .pipeline import aggregate_tables

    folder = Path(folder)
    cfg = json.loads((folder / PROFILE_FILE).read_text())
    benchmark = folder.name
    cfg = {**cfg, "results_dir": str(folder.parent)}
    return aggregate_tables(cfg, benchmark)


def verify(folder: Path) -> list[str]:
    """Every difference between a reference folder's committed tables and the tables recomputed from its
    run records (an empty list: they agree)."""
    from .errors import UserError as _UserError

    folder = Path(folder)
    for name in (PROFILE_FILE, PROVENANCE_FILE):
        if not (folder / name).is_file():
            return [f"{folder / name} is missing: not a reference folder (python -m experiments reference ...)"]
    try:
        tables = recomputed_tables(folder)
    except (_UserError, ValueError) as exc:
        return [f"{folder}: the run records cannot be aggregated: {exc}"]
    problems = []
    for name in CHECKED_TABLES:
        problems += compare_table(folder / f"{name}.csv", tables[name])
    return problems


def compare_table(path: Path, recomputed) -> list[str]:
    """Differences between the CSV at ``path`` and the DataFrame ``recomputed`` (both read as CSV: numbers to a
    relative tolerance of ``RTOL``, everything else exactly, NaN equal to NaN)."""
    import numpy as np
    import pandas as pd

    if not path.is_file():
        return [f"{path} is missing"]
    committed = pd.read_csv(path)
    fresh = pd.read_csv(io.StringIO(recomputed.to_csv(index=False)))
    if list(committed.columns) != list(fresh.columns):
        return [f"{path}: columns {list(committed.columns)} != recomputed {list(fresh.columns)}"]
    if len(committed) != len(fresh):
        return [f"{path}: {len(committed)} rows != recomputed {len(fresh)}"]
    problems = []
    for column in committed.columns:
        a, b = committed[column], fresh[column]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
            same = np.isclose(x, y, rtol=RTOL, atol=0.0) | (np.isnan(x) & np.isnan(y))
        else:
            same = (a.astype(str) == b.astype(str)).to_numpy() | (a.isna() & b.isna()).to_numpy()
        for row in np.flatnonzero(~same)[:5]:
            problems.append(f"{path.name} row {row + 2} column {column!r}: committed {a.iloc[row]!r}, "
                            f"recomputed from the run records {b.iloc[row]!r}")
    return problems


def reference_folders(root: Path = REFERENCE_DIR, profile: str = "evidence") -> list[Path]:
    """The benchmark folders of a profile under ``reference/`` (each holds a PROVENANCE.json)."""
    return sorted(p.parent for p in (Path(root) / profile).glob(f"*/{PROVENANCE_FILE}"))
