"""The pipeline's steps as plain functions of the configuration (the Snakefile's rules and the command line
both call these): download -> prepare -> (train: runner.py) -> aggregate -> outputs (outputs.py)."""
from __future__ import annotations

import logging
from pathlib import Path

from . import config as cfgmod, kept_prepared
from .aggregate import by_dendrites, dendrite_counts, improvement_summary, load_summaries, write_csv_atomic
from .download import ensure_file
from .errors import UserError
from .grid import grid, run_dir
from .registry import AGGREGATE_TABLES, get_benchmark, get_info, resolve
from .stats import comparison_table, configured_comparisons

log = logging.getLogger("experiments")


def download(cfg: dict, benchmark: str, only: str | None = None) -> list[Path]:
    """Make sure every raw file (or folder) of ``benchmark`` is in data_dir, fetching it when allowed."""
    files = get_info(cfg, benchmark).raw_files(cfgmod.benchmark_block(cfg, benchmark))
    if only is not None:
        files = [f for f in files if f.name == only or Path(f.name).name == only]
        if not files:
            raise UserError(f"{benchmark} has no raw file named {only!r}")
    data_dir = Path(cfg["data_dir"])
    paths = []
    for raw in files:
        if raw.fetcher:
            path = data_dir / raw.name
            if not path.exists():
                if not cfg["download"]:
                    raise UserError(f"{path} is missing and downloading is switched off (download: false); "
                                    f"fetch it as docs/{benchmark}.md says, or set download: true")
                resolve(raw.fetcher)(raw, data_dir)
            paths.append(path)
        else:
            paths.append(ensure_file(data_dir, raw.name, raw.url, sha256=raw.sha256, md5=raw.md5,
                                     download=cfg["download"]))
    return paths


def prepare(cfg: dict, benchmark: str) -> Path:
    """Read the raw data once into the prepared cache (a cache made from the same settings is reused, and so is
    the kept copy of a deleted one whose raw files are unchanged: see kept_prepared.py)."""
    block = cfgmod.benchmark_block(cfg, benchmark)
    data_dir = Path(cfg["data_dir"])
    raw_names = [raw.name for raw in get_info(cfg, benchmark).raw_files(block)]
    checksum = kept_prepared.inputs_checksum(data_dir, raw_names)
    kept_prepared.restore(cfgmod.prepared_path(cfg, benchmark), checksum)
    path = get_benchmark(cfg, benchmark).prepare(block, data_dir, Path(cfg["cache_dir"]), cfg["download"],
                                                 benchmark=benchmark)
    if checksum is None:  # a raw file was downloaded just now
        checksum = kept_prepared.inputs_checksum(data_dir, raw_names)
    kept_prepared.keep(path, checksum)
    return path


def aggregate_paths(cfg: dict, benchmark: str) -> dict[str, Path]:
    results = Path(cfg["results_dir"]) / benchmark
    return {name: results / f"{name}.csv" for name in AGGREGATE_TABLES}


def aggregate_tables(cfg: dict, benchmark: str) -> dict:
    """The benchmark's aggregate tables (DataFrames by name) from the finished runs of its grid in results_dir
    (what :func:`aggregate` writes; experiments/reference.py recomputes committed results with it)."""
    block = cfgmod.benchmark_block(cfg, benchmark)
    run_dirs = [run_dir(cfg["results_dir"], r) for r in grid(cfg, benchmark)]
    df = load_summaries(run_dirs, benchmark=benchmark)
    cycles = by_dendrites(run_dirs)
    factors = [f.name for f in get_info(cfg, benchmark).factors if f.name in df.columns]
    try:
        table = comparison_table(configured_comparisons(block, df, factors), df, cycles, seed=0)
    except ValueError as exc:  # e.g. a seed finished for one variant only
        raise UserError(f"{benchmark} statistics: {exc}") from None
    return {"summary": df, "dendrite_counts": dendrite_counts(df), "by_dendrites": cycles,
            "improvement": improvement_summary(df), "stats": table}


def aggregate(cfg: dict, benchmark: str) -> dict[str, Path]:
    """The benchmark's tables from its finished runs: summary.csv (one row per run), dendrite_counts.csv
    (the paper's Table 1), by_dendrites.csv (each neuron cycle's scores), improvement.csv (per variant and
    factor values) and stats.csv (the configured comparisons, paired by factor values and seed)."""
    tables = aggregate_tables(cfg, benchmark)
    df = tables["summary"]
    out = aggregate_paths(cfg, benchmark)
    for name in ("summary", "dendrite_counts", "by_dendrites", "improvement", "stats"):
        write_csv_atomic(tables[name], out[name])
    flagged = df[df["chance_level"]]
    if len(flagged):
        log.warning("%s: %d run(s) never left chance level (column chance_level): %s", benchmark, len(flagged),
                    ", ".join(f"{r.variant}/seed{r.seed}" for r in flagged.itertuples()))
    log.info("%s: aggregated %d runs into %s", benchmark, len(df), out["summary"].parent)
    return out


def unmade_targets(target_jobs, dag_jobs=()) -> list[str]:
    """The files that do not exist after Snakemake reported success: each target job's outputs, or its inputs
    when it has none (a rule such as ``all``), and every input and output of every job in the DAG. Snakemake 9
    can plan no job for a missing file: a job whose only input from an upstream job is an ``ancient()`` file
    that this run remakes (here: a run's first cycle, when the prepared cache is prepared again) is left out
    of the plan, and the run ends with exit status 0 without it (snakemake/snakemake#4166 is the same
    masking). The requested file may even exist, made by an earlier command from other runs (an earlier part's
    figure), while the runs it now needs were never trained: hence the whole DAG. The Snakefile's
    ``onsuccess`` turns that silent success into an error that says what to do."""
    requested = {str(f) for job in target_jobs for f in (job.output or job.input)}
    requested |= {str(f) for job in dag_jobs for f in (*job.output, *job.input)}
    return sorted(f for f in requested if not Path(f).exists())


def unmade_targets_message(unmade: list[str]) -> str:
    shown = ", ".join(unmade[:3]) + (f" and {len(unmade) - 3} more" if len(unmade) > 3 else "")
    return (f"Snakemake ended without making {len(unmade)} requested file(s): {shown}. It planned no job for "
            "them (a Snakemake scheduling bug: jobs that start from a cache this same run prepared again are "
            "left out). Nothing is lost: run the same command again, and they are made.")
