"""The benchmarks the suite knows, and the contract each one follows.

A benchmark is a package ``experiments/<package>/`` with two modules:

* ``meta.py`` (light: no torch, RDKit, PyG or qlib import) defines ``INFO``, a :class:`BenchmarkInfo`:
  its metric, chance level, grid factors, raw files, prepared-data path, and the figures and tables it
  declares. The Snakefile reads only this, so it parses fast and builds its targets from it.
* ``benchmark.py`` (heavy) defines ``BENCHMARK`` with ``prepare(block, data_dir, cache_dir, download, benchmark)``,
  which downloads nothing itself but reads the raw files and writes the prepared data once, and
  ``build(settings, prepared, device) -> Experiment``, which only loads prepared data (a cache made with
  other settings is a :class:`StaleCacheError` naming the prepare command) and returns the model and its
  training loop.

A configured benchmark is a block under ``benchmarks:`` in the configuration; its ``package`` key (default:
the block's own name) says which package serves it, so one package can serve several data sets (e.g. any
MoleculeNet-style classification CSV through the ``tox21`` package). Packages are discovered: every
``experiments/<package>/meta.py`` is one. See docs/adding_a_benchmark.md, with Tox21 as the worked example.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from .errors import ConfigError, UserError

PACKAGE_ROOT = Path(__file__).resolve().parent
# What a declared output may depend on, besides the configuration (see Output.needs).
NEEDS = ("aggregate", "runs", "prepared")
# Tables the aggregate step writes for every benchmark: declared outputs must not take these names.
AGGREGATE_TABLES = ("summary", "stats", "dendrite_counts", "improvement", "by_dendrites")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class RawFile:
    """One file (or folder, ``is_dir``) of a data set as its canonical source publishes it.

    ``name`` is its path below data_dir, e.g. ``"tox21/tox21.csv.gz"`` or ``"qlib/cn_data"``. A folder, or
    a file whose source is not one plain URL, names a ``fetcher`` (``"module:function"``, called as
    ``fetcher(raw_file, data_dir)``) instead of relying on the generic verified download.
    """
    name: str
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    is_dir: bool = False
    fetcher: str | None = None


@dataclass(frozen=True)
class Output:
    """A figure or table a benchmark declares; the Snakefile makes a target of each.

    * figure ``name``: ``<figures_dir>/<benchmark>_<name>.pdf`` (and ``.png``)
    * table ``name``: ``<results_dir>/<benchmark>/<name>.csv``

    ``draw`` is ``"module:function"``, called as ``function(ctx: OutputContext)``; it writes the declared
    file(s) atomically. ``needs`` says what must exist first: ``"aggregate"`` (the benchmark's summary,
    stats and other aggregate tables), ``"runs"`` (every run folder of the grid, e.g. for per-epoch
    curves), ``"prepared"`` (only the prepared data, e.g. a timing table measured by its own job).
    ``after`` names other declared outputs that must exist first (e.g. a rendered table after its CSV).
    ``local``: cheap enough to run on the submitting host of a cluster (a timing job is not).
    """
    name: str
    kind: str
    draw: str
    caption: str
    needs: tuple[str, ...] = ("aggregate",)
    after: tuple[str, ...] = ()
    local: bool = True

    def __post_init__(self):
        if self.kind not in ("figure", "table"):
            raise ValueError(f"output {self.name!r}: kind must be 'figure' or 'table', not {self.kind!r}")
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"output name {self.name!r} must match {_NAME.pattern}")
        bad = [n for n in self.needs if n not in NEEDS]
        if bad:
            raise ValueError(f"output {self.name!r}: unknown needs {bad}; choose from {NEEDS}")
        if self.kind == "table" and self.name in AGGREGATE_TABLES:
            raise ValueError(f"table name {self.name!r} is taken by the aggregate step {AGGREGATE_TABLES}")


@dataclass(frozen=True)
class Factor:
    """A named axis of the experiment grid (e.g. PhysioNet's ``width``): runs multiply over its values.

    ``kind`` is "number", "integer" or "string"; ``minimum``/``exclusive_minimum`` bound numbers;
    ``choices`` lists the accepted values of a string factor.
    """
    name: str
    kind: str = "number"
    minimum: float | None = None
    exclusive_minimum: float | None = None
    choices: tuple = ()
    description: str = ""

    def check(self, value: Any, where: str) -> Any:
        """The value in canonical form (1.0 -> 1 for numbers), or ConfigError saying what is accepted."""
        if self.kind in ("number", "integer"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: factor {self.name!r} takes numbers, got {value!r}")
            if self.kind == "integer" and float(value) != int(value):
                raise ConfigError(f"{where}: factor {self.name!r} takes integers, got {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"{where}: factor {self.name!r} must be >= {self.minimum}, got {value!r}")
            if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
                raise ConfigError(f"{where}: factor {self.name!r} must be > {self.exclusive_minimum}, "
                                  f"got {value!r}")
            return int(value) if float(value).is_integer() else float(value)
        if not isinstance(value, str) or (self.choices and value not in self.choices):
            raise ConfigError(f"{where}: factor {self.name!r} takes one of {list(self.choices)}, got {value!r}")
        return value


@dataclass(frozen=True)
class BenchmarkInfo:
    """The light description of a benchmark package (its ``meta.py`` defines ``INFO``).

    ``raw_files(block)`` and ``prepared_path(block)`` see the benchmark's configuration block, so one
    package can serve several data sets. ``prepare_keys`` are the block keys the prepare step depends on
    (its cache records them; a change makes the pipeline prepare again). ``chance`` is the metric's
    chance level: a run whose validation scores never leave it is flagged in its summary.
    """
    package: str
    metric: str
    chance: float
    raw_files: Callable[[dict], list[RawFile]]
    prepared_path: Callable[[dict], str]
    prepare_keys: tuple[str, ...]
    outputs: tuple[Output, ...]
    factors: tuple[Factor, ...] = ()
    mode: str = "max"
    metric_label: str = ""
    description: str = ""

    def output(self, name: str, kind: str | None = None) -> Output:
        for out in self.outputs:
            if out.name == name and (kind is None or out.kind == kind):
                return out
        declared = [o.name for o in self.outputs if kind is None or o.kind == kind]
        raise ConfigError(f"benchmark package {self.package!r} declares no {kind or 'output'} {name!r}; "
                          f"it declares {declared}")

    def factor(self, name: str) -> Factor:
        for f in self.factors:
            if f.name == name:
                return f
        raise ConfigError(f"benchmark package {self.package!r} has no factor {name!r}; "
                          f"its factors are {[f.name for f in self.factors] or 'none'}")


@dataclass
class EpochContext:
    """What the runner tells a benchmark's ``train_epoch`` besides the model and the optimizer.

    ``phase`` is "neuron" or "dendrite" (skip augmentation, or clip only the network's gradients, where
    the benchmark must); ``scheduler`` is the current learning-rate scheduler (step it per batch when
    ``Experiment.scheduler_per_batch``); ``network_parameters`` are the network's own parameters, dendrite
    output weights included, candidates excluded.
    """
    phase: str
    epoch: int
    cycle: int
    scheduler: Any = None
    network_parameters: list = field(default_factory=list)


@dataclass
class Experiment:
    """What the runner needs to train one run of the grid.

    ``train_epoch(model, optimizer, ctx: EpochContext) -> mean loss`` (one pass over the training data);
    ``evaluate(model) -> (train, val, test)`` scores of the benchmark's metric. ``optimizer_factory`` and
    ``scheduler_factory`` are called at every switch; ``candidate_optimizer_factory`` (optional) builds the
    dendrite phase's optimizer. ``scheduler_per_batch``: the benchmark steps the scheduler itself in
    ``train_epoch`` (the runner then never steps it per epoch). ``head`` names the output layer.
    ``extra`` is merged into the run's summary (e.g. parameter counts by part).
    """
    model: Any
    train_epoch: Callable
    evaluate: Callable
    optimizer_factory: Callable
    scheduler_factory: Callable | None = None
    candidate_optimizer_factory: Callable | None = None
    scheduler_per_batch: bool = False
    head: str | None = None
    extra: dict = field(default_factory=dict)


class Benchmark(Protocol):
    info: BenchmarkInfo

    def prepare(self, block: dict, data_dir: Path, cache_dir: Path, download: bool, benchmark: str) -> Path:
        """Read the raw files (downloading them first when allowed and missing) and write the prepared
        data to ``cache_dir / info.prepared_path(block)``, recording ``prepare_keys``; return its path.
        ``benchmark`` is the configured name (for messages: one package may serve several blocks)."""

    def build(self, settings: dict, prepared: Path, device: str) -> Experiment:
        """Load the prepared data (never write it) and return the run's model and loops."""


class StaleCacheError(UserError):
    """Prepared data that is missing or was made from other settings than the run's."""


def stale_cache_error(path: Path, benchmark: str, why: str) -> StaleCacheError:
    return StaleCacheError(f"{path}: {why}. Make it with `python -m experiments prepare {benchmark}` "
                           f"(same --configfile/--set as the run), or let Snakemake do it; "
                           f"a training job never writes its own inputs")


def load_prepared_cache(path: Path, benchmark: str, cache_format: int, expected, *, settings_key: str = "settings",
                        canonical=None, weights_only: bool = True) -> dict:
    """The prepared cache at ``path`` (a dict saved with ``torch.save``) if it has ``cache_format`` and was
    made from the prepare settings ``expected`` (compared through ``canonical`` when given); else a
    :class:`StaleCacheError` naming the prepare command. Reads only: training jobs call it."""
    import torch  # not at module level: the Snakefile reads this module

    path = Path(path)
    if not path.is_file():
        raise stale_cache_error(path, benchmark, "the prepared data is missing: the file does not exist")
    try:
        cache = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # a truncated or foreign file: derived data, made again by prepare
        raise stale_cache_error(path, benchmark, f"cannot read it ({type(exc).__name__}: {exc})") from None
    if not isinstance(cache, dict) or cache.get("format") != cache_format:
        raise stale_cache_error(path, benchmark, f"it is not a {benchmark} cache of format {cache_format} "
                                                 f"(written by another version of the suite)")
    recorded = cache.get(settings_key)
    same = canonical(recorded) == canonical(expected) if canonical else recorded == expected
    if not same:
        raise stale_cache_error(path, benchmark, f"it was made from other data settings ({recorded} != {expected})")
    return cache


def packages() -> list[str]:
    """Every benchmark package: the folders of ``experiments/`` that hold a ``meta.py``."""
    return sorted(p.parent.name for p in PACKAGE_ROOT.glob("*/meta.py"))


def package_info(package: str) -> BenchmarkInfo:
    if package not in packages():
        raise ConfigError(f"unknown benchmark package {package!r}; the suite has {packages()} "
                          f"(a package is a folder experiments/<name>/ with a meta.py)")
    return importlib.import_module(f"experiments.{package}.meta").INFO


def package_of(cfg: dict, benchmark: str) -> str:
    block = cfg.get("benchmarks", {}).get(benchmark)
    if block is None:
        raise ConfigError(f"unknown benchmark {benchmark!r}; configured benchmarks: "
                          f"{sorted(cfg.get('benchmarks', {}))}")
    return block.get("package") or benchmark


def get_info(cfg: dict, benchmark: str) -> BenchmarkInfo:
    """The light description of a configured benchmark (no heavy import)."""
    return package_info(package_of(cfg, benchmark))


def get_benchmark(cfg: dict, benchmark: str) -> Benchmark:
    """The heavy implementation of a configured benchmark (imports torch and the benchmark's stack)."""
    return importlib.import_module(f"experiments.{package_of(cfg, benchmark)}.benchmark").BENCHMARK


def resolve(dotted: str) -> Callable:
    """``"module:function"`` -> the function."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)
