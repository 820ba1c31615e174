"""The pipeline's steps as plain functions of the configuration (the Snakefile's scripts and the
command line both call these): download -> prepare -> (train: runner.py) -> aggregate -> figure."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from . import config as cfgmod
from .aggregate import dendrite_counts, load_summaries, write_csv_atomic
from .download import ensure_file
from .errors import UserError
from .plotting import candlestick_figure
from .registry import get_benchmark
from .stats import default_comparisons, stats_table

log = logging.getLogger("experiments")

METRIC_LABELS = {"auc": "test ROC-AUC", "accuracy": "test accuracy", "precision_at_1": "test Precision@1"}
CONTROLS = ("baseline", "baseline_matched")


def download(cfg: dict, benchmark: str, only: str | None = None) -> list[Path]:
    """Make sure every raw file of ``benchmark`` is in data_dir (fetching it if allowed), verified."""
    files = get_benchmark(benchmark).raw_files()
    if only is not None:
        files = [f for f in files if Path(f.name).name == only]
        if not files:
            raise UserError(f"{benchmark} has no raw file named {only!r}")
    return [ensure_file(Path(cfg["data_dir"]), f.name, f.url, sha256=f.sha256, md5=f.md5,
                        download=cfg["download"]) for f in files]


def prepare(cfg: dict, benchmark: str) -> Path:
    """Featurise once into cache_dir (a cached result with the same source is reused)."""
    bench = get_benchmark(benchmark)
    settings = cfgmod.benchmark_block(cfg, benchmark)
    return bench.prepare(settings, Path(cfg["data_dir"]), Path(cfg["cache_dir"]), cfg["download"])


def comparisons(variants: list[str], treatment: str = "pb") -> list[tuple[str, str, str, str]]:
    """pb against every configured control, plus pb's within-run gain (each once)."""
    out: list[tuple[str, str, str, str]] = []
    controls = [c for c in CONTROLS if c in variants] or [None]
    for control in controls:
        for row in default_comparisons(treatment, control):
            if row not in out:
                out.append(row)
    return out


def aggregate(cfg: dict, benchmark: str, run_summaries: list[str] | None = None) -> dict[str, Path]:
    """results/<benchmark>/summary.csv, dendrite_counts.csv and stats.csv from the finished runs."""
    block = cfgmod.benchmark_block(cfg, benchmark)
    results = Path(cfg["results_dir"]) / benchmark
    if run_summaries is None:
        run_summaries = [results / v / f"seed{s}" / "summary.json"
                         for v in block["variants"] for s in cfgmod.seeds(cfg, benchmark)]
    df = load_summaries([Path(p).parent for p in run_summaries], benchmark=benchmark)
    out = {"summary": results / "summary.csv", "counts": results / "dendrite_counts.csv",
           "stats": results / "stats.csv"}
    write_csv_atomic(df, out["summary"])
    write_csv_atomic(dendrite_counts(df), out["counts"])
    treatment = "pb" if "pb" in block["variants"] else None
    if treatment:
        try:
            table = stats_table(df, comparisons(block["variants"], treatment), seed=0)
        except ValueError as exc:  # e.g. a seed finished for one variant only
            raise UserError(f"{benchmark} statistics: {exc}") from None
    else:
        table = pd.DataFrame()
    write_csv_atomic(table, out["stats"])
    log.info("%s: aggregated %d runs into %s", benchmark, len(df), results)
    return out


def figure(cfg: dict, benchmark: str, metric: str | None = None) -> Path:
    """figures/<benchmark>_<metric>.pdf/.png: original vs max test score per variant, paper means marked."""
    bench = get_benchmark(benchmark)
    if metric is not None and metric != bench.metric:
        raise UserError(f"{benchmark} is scored by {bench.metric!r}: ask for "
                        f"{cfg['figures_dir']}/{benchmark}_{bench.metric}.pdf, not ..._{metric}.pdf")
    block = cfgmod.benchmark_block(cfg, benchmark)
    summary = Path(cfg["results_dir"]) / benchmark / "summary.csv"
    if not summary.is_file():
        raise UserError(f"{summary} does not exist; make it with "
                        f"`snakemake --cores 1 {summary}` (it aggregates the finished runs)")
    df = pd.read_csv(summary)
    paper = {f"{name} (paper)": value for name, value in block["figure"]["paper_means"].items()}
    out = Path(cfg["figures_dir"]) / f"{benchmark}_{bench.metric}.pdf"
    candlestick_figure(df, out, METRIC_LABELS.get(bench.metric, bench.metric), paper_means=paper,
                       variants_order=list(block["variants"]),
                       title=f"{benchmark}: first neuron cycle (original) vs best validation epoch (max)")
    log.info("wrote %s and %s", out, out.with_suffix(".png"))
    return out
