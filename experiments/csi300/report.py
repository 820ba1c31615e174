"""Every ranking metric HIST reports, for the final network of every finished run.

The runner records one score per epoch (Precision@1, the metric that selects). HIST also reports IC,
rank IC and Precision@k for several k; those are computed here, after training, from each run's
``model.pt`` (the network of the run's best validation epoch, dendrites included), on the validation and
test days. The declared table ``ranking_metrics`` (``results/<benchmark>/ranking_metrics.csv``) has one
row per run and split; its ``concepts`` column says which predefined concepts the run used (``data.concepts``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

import pb_core
from pb_core.records import write_csv

from .. import widen
from ..errors import UserError
from .benchmark import make_experiment, predict_days, prepare_settings
from .data import DaySplit, load_prepared
from .metric import day_metrics, mean_over_days

log = logging.getLogger(__name__)
REPORTED_SPLITS = ("valid", "test")


def split_metrics(model, split: DaySplit, ks) -> dict:
    """Mean over the days of ``split`` of Precision@k (each k), IC and rank IC of ``model``'s scores."""
    model.eval()
    return mean_over_days(day_metrics(scores, labels, ks) for scores, labels in predict_days(model, split))


def load_run_network(settings: dict, run_folder: Path, cache: dict, device: str = "cpu"):
    """The run's final network (its ``model.pt``) rebuilt on a fresh HIST of the run's settings."""
    model_file = Path(run_folder) / "model.pt"
    if not model_file.is_file():
        raise UserError(f"{model_file} does not exist: the run has not finished; train it first")
    exp = make_experiment(widen.built_settings(settings), cache, device)
    pb = settings.get("pb", {})
    pb_core.load_model_state(exp.model, model_file, widen.core_variant(settings["variant"]), layers=pb.get("layers"),
                             head=exp.head, activation=pb.get("activation", "sigmoid"))
    return exp.model.to(device)


def run_rows(settings: dict, run_folder: Path, cache: dict, device: str = "cpu") -> list[dict]:
    model = load_run_network(settings, run_folder, cache, device)
    ks = settings["train"]["report_ks"]
    rows = []
    for name in REPORTED_SPLITS:
        split = DaySplit.from_cache(cache, name, device)
        rows.append({"variant": settings["variant"], **settings.get("factors", {}), "seed": settings["seed"],
                     "concepts": settings["data"]["concepts"], "split": name, "days": len(split), "params": pb_core.count_parameters(model),
                     **split_metrics(model, split, ks)})
    return rows


def ranking_metrics_table(ctx) -> Path:
    """Declared output ``ranking_metrics`` (meta.py): one row per finished run and split."""
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    cache = None
    rows = []
    for variant, factors, seed, folder in ctx.runs():
        saved = Path(folder) / "config.json"
        if not saved.is_file():
            raise UserError(f"{saved} does not exist: the run {variant}/seed{seed} has not been trained; "
                            f"train every run of the grid first (snakemake does)")
        settings = json.loads(saved.read_text())
        if cache is None:
            cache = load_prepared(ctx.prepared(), prepare_settings(settings), ctx.benchmark)
        rows += run_rows(settings, folder, cache)
        log.info("csi300: ranking metrics of %s", folder)
    factor_names = [f.name for f in ctx.info.factors]
    ks = ctx.block["train"]["report_ks"]
    columns = ["variant", *factor_names, "seed", "concepts", "split", "days", "params",
               *(f"precision_at_{k}" for k in ks), "ic", "rank_ic"]
    write_csv(ctx.path, rows, columns)
    return ctx.path

