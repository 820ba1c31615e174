"""The figures and tables benchmarks declare (``Output`` in their ``meta.py``), and how one is made.

``python -m experiments output <benchmark> <name>`` (what the Snakefile's ``figure`` and ``table`` rules run)
builds an :class:`OutputContext` and calls the output's ``draw`` function with it. The context gives the
draw function everything it may read (the configuration, the aggregated tables, the run folders, the
prepared data) and the path it must write. Generic draw functions any benchmark can declare live here too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as cfgmod
from .errors import UserError
from .grid import Run, format_value, grid, run_dir, seeds
from .registry import BenchmarkInfo, Output, get_info, resolve

log = logging.getLogger("experiments")


def output_path(cfg: dict, benchmark: str, output: Output) -> Path:
    """figures/<benchmark>_<name>.pdf for a figure (its .png beside it), results/<benchmark>/<name>.csv for a table."""
    if output.kind == "figure":
        return Path(cfg["figures_dir"]) / f"{benchmark}_{output.name}.pdf"
    return Path(cfg["results_dir"]) / benchmark / f"{output.name}.csv"


@dataclass
class OutputContext:
    """What a declared output's draw function gets."""
    cfg: dict
    benchmark: str
    info: BenchmarkInfo
    output: Output
    threads: int | None = None  # CPU threads for an output that computes (e.g. a timing table)

    @property
    def block(self) -> dict:
        return self.cfg["benchmarks"][self.benchmark]

    @property
    def settings(self) -> dict:
        """The output's own settings: ``benchmarks.<name>.outputs.<output>`` (paper values, chosen run...)."""
        return self.block.get("outputs", {}).get(self.output.name, {})

    @property
    def path(self) -> Path:
        return output_path(self.cfg, self.benchmark, self.output)

    @property
    def profile(self) -> str:
        return self.cfg["profile"]

    @property
    def results(self) -> Path:
        return Path(self.cfg["results_dir"]) / self.benchmark

    def table(self, name: str):
        import pandas as pd

        path = self.results / f"{name}.csv"
        if not path.is_file():
            raise UserError(f"{path} does not exist; make it with `python -m experiments aggregate {self.benchmark}` "
                            f"(or let Snakemake do it)")
        return pd.read_csv(path)

    def summary(self):
        return self.table("summary")

    def stats(self):
        return self.table("stats")

    def runs(self) -> list[tuple[str, dict[str, Any], int, Path]]:
        """Every run of the grid: (variant, factors, seed, folder)."""
        return [(r.variant, r.factor_dict, r.seed, run_dir(self.cfg["results_dir"], r))
                for r in grid(self.cfg, self.benchmark)]

    def run_dir(self, variant: str, seed: int, **factors) -> Path:
        order = [f.name for f in self.info.factors if f.name in factors]
        return run_dir(self.cfg["results_dir"], Run(self.benchmark, variant, seed,
                                                    tuple((n, factors[n]) for n in order)))

    def prepared(self) -> Path:
        return cfgmod.prepared_path(self.cfg, self.benchmark)

    def note(self) -> str:
        """The line every figure carries: which profile, how many seeds."""
        n = len(seeds(self.cfg, self.benchmark))
        return f"profile: {self.profile}; {n} seed{'s' if n != 1 else ''} configured per variant"


def make_output(cfg: dict, benchmark: str, name: str, threads: int | None = None) -> Path:
    """Draw one declared output of ``benchmark``; the path written."""
    info = get_info(cfg, benchmark)
    output = info.output(name)
    ctx = OutputContext(cfg, benchmark, info, output, threads or cfg["torch_threads"])
    resolve(output.draw)(ctx)
    log.info("wrote %s", ctx.path)
    return ctx.path


# ---------------------------------------------------------------------------------------------- generic draws
def group_label(row, factors: list[str]) -> str:
    """A variant and its factor values as one x-axis group, e.g. "pb width=2"."""
    parts = [row["variant"], *(f"{f}={format_value(row[f])}" for f in factors)]
    return " ".join(parts)


def original_vs_max(ctx: OutputContext) -> None:
    """Candles of the test score: the first neuron cycle (original) and the best validation epoch (max)
    of every variant (and factor value), over seeds, the paper's means marked (``outputs.<name>.paper_means``)."""
    from .plotting import candlestick_figure

    df = ctx.summary()
    factors = [f.name for f in ctx.info.factors if f.name in df.columns]
    df = df.assign(group=df.apply(group_label, axis=1, factors=factors)) if len(df) else df.assign(group=[])
    first_seed = seeds(ctx.cfg, ctx.benchmark)[0]
    order = [group_label({"variant": r.variant, **r.factor_dict}, factors)
             for r in grid(ctx.cfg, ctx.benchmark) if r.seed == first_seed]
    paper = {f"{name} (paper)": value for name, value in ctx.settings.get("paper_means", {}).items()}
    candlestick_figure(df, ctx.path, ctx.info.metric_label or ctx.info.metric, paper_means=paper,
                       variants_order=list(dict.fromkeys(order)), group_column="group", note=ctx.note(),
                       title=f"{ctx.benchmark} ({ctx.profile} profile): first neuron cycle vs best validation epoch")

