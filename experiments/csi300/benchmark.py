"""CSI300 with HIST (SPEC section 3, the paper's Figure 9): prepare the data once, build each run.

Protocol (config/benchmarks/csi300.yaml): qlib's Alpha360 features of the CSI300 universe, segments train
2007-2014, validation 2015-2016, test 2017-2020; one trading day of stocks per batch, the days shuffled
every epoch; MSE on the rank-normalised next-day return; Adam (lr 2e-4); gradient values clipped to
+-3 on the network's own parameters in neuron phases (HIST's ``clip_grad_value_``; a dendrite phase
trains only candidates and leaves their gradients alone); every epoch scores Precision@1 on the
training, validation and test days; validation Precision@1 selects. ``train.train_score: running`` takes the
training pass's own Precision@1 (each day scored by the network as it was just before that day's update)
instead of scoring the training days again: the selected scores do not change, and an epoch costs about a
fifth less on the paper's segments.

Not taken from HIST's ``learn.py``, because the suite's protocol replaces it: its selection by validation
IC with patience 30, and its evaluation of the mean of the last 5 epochs' weights.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pb_core.records import atomic_torch_save

from ..config import digest
from ..download import ensure_file
from ..errors import ConfigError, DataError
from ..registry import Experiment, RawFile, resolve
from . import daily_csv, fixture, qlib_data
from .concepts import cluster_matrix
from .data import (DaySplit, assemble, cache_is_current, load_concept_matrix, load_market_value, load_prepared,
                   load_stock_index)
from .meta import DAILY_CSV_FETCHER, INFO, QLIB_BUNDLE_FETCHER, raw_files
from .metric import precision_at_k
from .model import HIST, OUTPUT_LAYER_NAME, parameter_count

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def ensure_raw(raw: RawFile, data_dir: Path, download: bool) -> Path:
    """The raw file or folder, fetched first when it is missing and downloading is allowed (a user's own
    data, which has nothing to download, says where to put it)."""
    path = Path(data_dir) / raw.name
    if raw.fetcher:
        if path.exists():
            return path
        if not download and raw.fetcher == QLIB_BUNDLE_FETCHER:
            raise DataError(f"{path} is missing and downloading is switched off (download: false); get it "
                            f"with `{qlib_data.get_data_command(path)}`, or allow downloading")
        return resolve(raw.fetcher)(raw, Path(data_dir))
    return ensure_file(data_dir, raw.name, raw.url, sha256=raw.sha256, md5=raw.md5, download=download)


def prepare(block: dict, data_dir: Path, cache_dir: Path, download: bool, benchmark: str = "csi300",
            kernels: int | None = None) -> Path:
    """Read the raw data through qlib once and write the prepared cache (``kernels``: qlib's workers).

    A cache already made from the same settings (and, for ``daily_csv``, the same input files) is reused."""
    cache_path = Path(cache_dir) / INFO.prepared_path(block)
    data = block["data"]
    settings = prepare_settings(block)
    inputs = None
    if data["source"] == "daily_csv":
        # the bundle is derived data, cached by the inputs' checksums; a changed CSV makes a new bundle and a
        # new prepared cache even though the settings are the same
        csv_dir = ensure_raw(RawFile(data["daily_csv"]["dir"], is_dir=True, fetcher=DAILY_CSV_FETCHER), data_dir, download)
        membership = ensure_raw(RawFile(data["daily_csv"]["membership"], fetcher=DAILY_CSV_FETCHER), data_dir, download)
        qlib_dir, report = daily_csv.build_bundle(
            csv_dir, membership, Path(cache_dir) / "csi300", universe=data["instruments"],
            market_value_column=data["daily_csv"]["market_value_column"])
        inputs = report["inputs_sha256"]
    if cache_is_current(cache_path, settings, inputs):
        log.info("%s: %s is up to date", benchmark, cache_path)
        return cache_path
    paths = {raw.name: ensure_raw(raw, data_dir, download) for raw in raw_files(block)}
    concept_path = value_path = None
    if data["source"] == "fixture":
        # A synthetic market in qlib's format, written beside the cache (derived data, never raw data).
        market = fixture.write_market(Path(cache_dir) / "csi300" / f"fixture-{digest(data)}",
                                      load_stock_index(paths[data["stock_index"]]), **data["fixture"])
        qlib_dir, concept_path, value_path = market.root, market.concept_matrix, market.market_value
    elif data["source"] == "qlib":
        qlib_dir = paths[data["qlib_dir"]]
    if data["concepts"] == "hist" and concept_path is None:
        concept_path = paths[data["concept_matrix"]]
    if data["market_value_source"] == "file" and value_path is None:
        value_path = paths[data["market_value"]]
    segments = {name: data["segments"][name] for name in SPLITS}
    common = dict(instruments=data["instruments"], region=data["region"], kernels=kernels)
    frames = qlib_data.alpha360_frames(qlib_dir, segments=segments, label=data["label"],
                                       infer_processors=data["infer_processors"],
                                       learn_processors=data["learn_processors"], **common)
    stock_index, concepts, concept_stats = predefined_concepts(data, paths, concept_path, qlib_dir, common)
    if data["market_value_source"] == "file":
        market_value = load_market_value(value_path)
    else:
        field = data["daily_csv"]["market_value_column"]
        if data["source"] != "daily_csv" or not field:
            raise ConfigError("data.market_value_source: bundle reads the market value the daily_csv bundle carries "
                              "(data.daily_csv.market_value_column); use it with data.source: daily_csv, or use file")
        first, last = min(s[0] for s in segments.values()), max(s[1] for s in segments.values())
        market_value = qlib_data.universe_features(qlib_dir, expression=f"${field}", start=first, end=last,
                                                   members_only=True, **common)
    cache = assemble(frames, stock_index, concepts, market_value, data["market_value_unit"])
    cache["settings"] = settings
    cache["inputs_sha256"] = inputs
    cache["stats"]["concepts_source"] = data["concepts"]
    cache["stats"]["concept_stats"] = concept_stats
    atomic_torch_save(cache, cache_path)
    log.info("%s: prepared %s (%s days, %s stocks per day min/median/max; concepts: %s)",
             benchmark, cache_path, cache["stats"]["days"], cache["stats"]["stocks_per_day"], data["concepts"])
    return cache_path


def predefined_concepts(data: dict, paths: dict, concept_path, qlib_dir: Path, common: dict):
    """(stock index, stock-to-concept matrix, stats) for ``data.concepts`` (see concepts.py)."""
    if data["concepts"] == "hist":
        stock_index = load_stock_index(paths[data["stock_index"]])
        return stock_index, load_concept_matrix(concept_path, rows_needed=max(stock_index.values()) + 1), {}
    if data["concepts"] == "none":
        return {}, np.zeros((0, 0), dtype=np.float32), {}
    options = data["return_clusters"]
    first, last = data["segments"]["train"]
    returns = qlib_data.universe_features(qlib_dir, expression="$close / Ref($close, 1) - 1", start=first, end=last,
                                          members_only=False, **common)
    returns = returns.unstack("instrument")
    last_day = np.datetime64(last)
    if len(returns) and returns.index.max().to_datetime64() > last_day:  # no look-ahead, however qlib clips
        raise DataError(f"return_clusters read returns after the training segment ({returns.index.max()})")
    index, matrix, stats = cluster_matrix(returns, options["clusters"], options["min_days"])
    log.info("csi300: %d return clusters of %d stocks (sizes %s); %d stocks without a concept",
             stats["clusters"], stats["stocks_clustered"], stats["cluster_sizes"][:10], stats["stocks_without_concept"])
    return index, matrix, stats


def prepare_settings(block: dict) -> dict:
    """What the cache records (and a run checks): the package and the block keys prepare depends on."""
    return {"package": INFO.package, **{key: block[key] for key in INFO.prepare_keys}}


def mse_loss(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """HIST's loss: mean squared error over the stocks that have a label."""
    known = ~torch.isnan(label)
    return ((pred[known] - label[known]) ** 2).mean()


@torch.no_grad()
def predict_days(model, split: DaySplit):
    """Yield (scores, labels) of every day of ``split``, in date order."""
    for i in range(len(split)):
        x, concepts, market_value, labels = split.day(i)
        yield model(x, concepts, market_value), labels


def precision_at_1(model, split: DaySplit) -> float:
    values = [precision_at_k(scores, labels, 1) for scores, labels in predict_days(model, split)]
    return float(np.mean(values))


def make_experiment(settings: dict, cache: dict, device: str) -> Experiment:
    """The run's model and loops over an already loaded prepared cache (see :func:`build`)."""
    splits = {name: DaySplit.from_cache(cache, name, device) for name in SPLITS}
    train_cfg, model_cfg, seed = settings["train"], settings["model"], int(settings["seed"])
    width = settings.get("factors", {}).get("width", 1)
    model_cfg = dict(model_cfg, hidden_size=max(1, round(model_cfg["hidden_size"] * width)))
    concepts_source = settings["data"]["concepts"]
    model = HIST(**model_cfg, predefined_concepts=concepts_source != "none").to(device)
    clip = train_cfg["clip_grad_value"]
    running = train_cfg.get("train_score", "eval") == "running"
    running_hits: list[float] = []  # the last training pass's Precision@1 per day

    def train_epoch(model, optimizer, ctx) -> float:
        train = splits["train"]
        # HIST shuffles the days every epoch; a generator of its own per (seed, cycle, epoch) gives the
        # same order on resume and the same order across the variants of a seed.
        order = np.random.default_rng([seed, ctx.cycle, ctx.epoch]).permutation(len(train))
        clipped = ctx.network_parameters or [p for p in model.parameters() if p.requires_grad]
        total = 0.0
        running_hits.clear()
        for i in order:
            x, concepts, market_value, labels = train.day(int(i))
            pred = model(x, concepts, market_value)
            if running:
                running_hits.append(precision_at_k(pred.detach(), labels, 1))
            loss = mse_loss(pred, labels)
            optimizer.zero_grad()
            loss.backward()
            if clip is not None and ctx.phase == "neuron":
                torch.nn.utils.clip_grad_value_(clipped, clip)
            optimizer.step()
            total += loss.item()
        return total / max(len(order), 1)

    def evaluate(model):
        if not running:
            return tuple(precision_at_1(model, splits[name]) for name in SPLITS)
        if not running_hits:
            raise RuntimeError("train_score: running needs a training pass before the first evaluation")
        return (float(np.mean(running_hits)), precision_at_1(model, splits["valid"]),
                precision_at_1(model, splits["test"]))

    stats = cache["stats"]
    return Experiment(
        model=model, train_epoch=train_epoch, evaluate=evaluate,
        optimizer_factory=lambda params: torch.optim.Adam(params, lr=train_cfg["lr"]),
        head=OUTPUT_LAYER_NAME,
        extra={"hist_parameters": parameter_count(model), "hidden_size": model_cfg["hidden_size"],
               "concepts": concepts_source, "train_score": train_cfg.get("train_score", "eval"),
               "days": stats["days"], "stocks_per_day": stats["stocks_per_day"]})


class CSI300Benchmark:
    info = INFO

    def prepare(self, block: dict, data_dir: Path, cache_dir: Path, download: bool, benchmark: str = "csi300") -> Path:
        return prepare(block, data_dir, cache_dir, download, benchmark)

    def build(self, settings: dict, prepared: Path, device: str) -> Experiment:
        return make_experiment(settings, load_prepared(prepared, prepare_settings(settings), settings["benchmark"]), device)


BENCHMARK = CSI300Benchmark()
