"""The benchmarks the suite knows, and what each must provide.

Adding a benchmark means adding a package ``experiments/<name>/`` whose ``BENCHMARK`` object follows
:class:`Benchmark`, one line in :data:`BENCHMARKS`, and a block under ``benchmarks:`` in
``config/config.yaml`` (with its schema in ``config/schema.yaml``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from torch import nn

from .errors import ConfigError

BENCHMARKS = {"tox21": "experiments.tox21.benchmark"}


@dataclass
class RawFile:
    """One file of a data set as its canonical source publishes it."""
    name: str                 # path below data_dir, e.g. "tox21/tox21.csv.gz"
    url: str
    sha256: str | None = None
    md5: str | None = None


@dataclass
class Experiment:
    """What the runner needs to train one (benchmark, variant, seed)."""
    model: nn.Module
    train_epoch: Callable      # (model, optimizer) -> mean loss
    evaluate: Callable         # (model) -> (train, val, test) scores
    optimizer_factory: Callable
    scheduler_factory: Callable | None = None
    head: str | None = None    # name of the output layer (for pb_head / pb_backbone)


class Benchmark(Protocol):
    name: str
    metric: str                # "accuracy", "auc", "precision_at_1"
    mode: str                  # "max": higher is better

    def raw_files(self) -> list[RawFile]: ...

    def prepare(self, run_cfg: dict, data_dir: Path, cache_dir: Path, download: bool) -> Path:
        """Download (if allowed and missing) and preprocess once; return the prepared data's path."""

    def build(self, run_cfg: dict, prepared: Path, device: str) -> Experiment: ...


def get_benchmark(name: str) -> Benchmark:
    try:
        module = BENCHMARKS[name]
    except KeyError:
        raise ConfigError(f"unknown benchmark {name!r}; the suite knows {sorted(BENCHMARKS)}") from None
    return importlib.import_module(module).BENCHMARK
