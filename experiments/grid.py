"""The experiment grid: which runs a benchmark's configuration asks for, and where each one lives.

A run is one point of the grid: (benchmark, variant, factor values, seed). Its folder is
``<results_dir>/<benchmark>/<variant>/<point>/`` where the point names the factor values and the seed,
e.g. ``seed3`` for a benchmark without factors and ``width0.125-seed3`` with a ``width`` factor. This module
is the only place that builds or reads those names. It imports nothing heavy (the Snakefile uses it).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import get_info


def format_value(value: Any) -> str:
    """A factor value as it appears in folder names and CSV cells: 1.0 -> "1", 0.125 -> "0.125"."""
    if isinstance(value, bool):
        raise ConfigError(f"factor values cannot be booleans, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Run:
    """One point of a benchmark's grid. ``factors`` are (name, value) pairs in the benchmark's order."""
    benchmark: str
    variant: str
    seed: int
    factors: tuple[tuple[str, Any], ...] = ()

    @property
    def point(self) -> str:
        return "-".join([*(f"{name}{format_value(v)}" for name, v in self.factors), f"seed{self.seed}"])

    @property
    def factor_dict(self) -> dict[str, Any]:
        return dict(self.factors)

    @property
    def label(self) -> str:
        return f"{self.benchmark}/{self.variant}/{self.point}"

    def with_variant(self, variant: str) -> "Run":
        return Run(self.benchmark, variant, self.seed, self.factors)

    def command(self) -> str:
        """The command that trains (or resumes) this run by hand."""
        factors = "".join(f" --factor {n}={format_value(v)}" for n, v in self.factors)
        return f"python -m experiments run {self.benchmark} --variant {self.variant} --seed {self.seed}{factors}"


def run_dir(results_dir: str | Path, run: Run) -> Path:
    return Path(results_dir) / run.benchmark / run.variant / run.point


# Shared first neuron cycles live beside the variants' folders: <results_dir>/<benchmark>/first_cycle/<point>/<key>/,
# the key naming the settings the cycle read (config.first_cycle_key); never a variant's name.
FIRST_CYCLE = "first_cycle"


def first_cycle_dir(results_dir: str | Path, run: Run, key: str) -> Path:
    return Path(results_dir) / run.benchmark / FIRST_CYCLE / run.point / key


def parse_point(cfg: dict, benchmark: str, point: str) -> tuple[tuple[tuple[str, Any], ...], int]:
    """The inverse of :attr:`Run.point` for a configured benchmark: (factors, seed)."""
    names = [f.name for f in get_info(cfg, benchmark).factors if f.name in factor_values(cfg, benchmark)]
    pattern = "".join(f"{re.escape(n)}(?P<f{i}>[^-/]+)-" for i, n in enumerate(names)) + r"seed(?P<seed>\d+)"
    match = re.fullmatch(pattern, point)
    if not match:
        example = Run(benchmark, "pb", 0, tuple((n, "<value>") for n in names)).point
        raise ConfigError(f"{point!r} is not a run of {benchmark}: its runs are named like {example!r}")
    factors = tuple((n, _parse_value(match.group(f"f{i}"))) for i, n in enumerate(names))
    return factors, int(match.group("seed"))


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def factor_values(cfg: dict, benchmark: str) -> dict[str, list]:
    """{factor: [canonical values]} as configured, in the benchmark package's declared order."""
    block = cfg["benchmarks"][benchmark]
    info = get_info(cfg, benchmark)
    out = {}
    for factor in info.factors:
        if factor.name in block.get("factors", {}):
            where = f"benchmarks.{benchmark}.factors.{factor.name}"
            out[factor.name] = [factor.check(v, where) for v in block["factors"][factor.name]]
    unknown = sorted(set(block.get("factors", {})) - set(out))
    if unknown:
        raise ConfigError(f"benchmarks.{benchmark}.factors: {unknown} are not factors of package "
                          f"{info.package!r}; it accepts {[f.name for f in info.factors] or 'no factors'}")
    return out


def seeds(cfg: dict, benchmark: str) -> list[int]:
    value = cfg["benchmarks"][benchmark]["seeds"]
    return list(range(value)) if isinstance(value, int) else list(value)


def variants_at(cfg: dict, benchmark: str, factors: tuple[tuple[str, Any], ...]) -> list[str]:
    """The variants trained at these factor values (a factor value may restrict them, e.g. baselines only)."""
    block = cfg["benchmarks"][benchmark]
    variants = list(block["variants"])
    for name, value in factors:
        override = block.get("factor_overrides", {}).get(name, {}).get(format_value(value), {})
        if "variants" in override:
            variants = [v for v in variants if v in override["variants"]]
    return variants


def grid(cfg: dict, benchmark: str) -> list[Run]:
    """Every run of the benchmark: factor values x variants (as each factor value allows) x seeds."""
    values = factor_values(cfg, benchmark)
    runs = []
    for combo in itertools.product(*values.values()):
        factors = tuple(zip(values, combo))
        for variant in variants_at(cfg, benchmark, factors):
            runs += [Run(benchmark, variant, seed, factors) for seed in seeds(cfg, benchmark)]
    return runs


def make_run(cfg: dict, benchmark: str, variant: str, seed: Any, factors: dict[str, Any] | None = None) -> Run:
    """A run of the grid from user input, checked before anything is written (ConfigError otherwise)."""
    if benchmark not in cfg.get("benchmarks", {}):
        raise ConfigError(f"unknown benchmark {benchmark!r}; configured benchmarks: {sorted(cfg['benchmarks'])}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    declared = factor_values(cfg, benchmark)
    factors = dict(factors or {})
    info = get_info(cfg, benchmark)
    unknown = sorted(set(factors) - set(declared))
    if unknown:
        raise ConfigError(f"{benchmark} has no configured factor {unknown}; its factors: {sorted(declared) or 'none'}"
                          f" (configure them under benchmarks.{benchmark}.factors)")
    missing = sorted(set(declared) - set(factors))
    if missing:
        raise ConfigError(f"{benchmark} runs need a value for the factors {missing} (e.g. --factor "
                          f"{missing[0]}={format_value(declared[missing[0]][0])})")
    canonical = []
    for name in declared:
        value = info.factor(name).check(factors[name], f"factor {name}")
        if value not in declared[name]:
            raise ConfigError(f"{benchmark}: {name}={format_value(value)} is not in the configured values "
                              f"{[format_value(v) for v in declared[name]]} (benchmarks.{benchmark}.factors.{name})")
        canonical.append((name, value))
    run = Run(benchmark, variant, seed, tuple(canonical))
    allowed = variants_at(cfg, benchmark, run.factors)
    if variant not in allowed:
        raise ConfigError(f"variant {variant!r} is not configured for {benchmark}"
                          f"{' at ' + run.point.rsplit('-seed', 1)[0] if run.factors else ''}; "
                          f"configured: {allowed} (benchmarks.{benchmark}.variants)")
    return run
