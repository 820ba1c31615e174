"""PhysioNet 2012 with mTAN (SPEC section 3): prepared data, protocol and training loop for the runner.

Protocol (the mTAN authors' classification command as the Perforated Backpropagation authors ran it):
Adam (lr 1e-4), batch 50 in a fixed order (the original does not shuffle), MultiStepLR at epochs 50, 100,
150 (gamma 0.2), rebuilt at every switch; loss = reconstruction (+ annealed KL) + 100 x cross-entropy
(loss.py); metric = ROC-AUC of in-hospital death on the class-1 logit of one sampled latent, as the
original's ``evaluate_classifier`` (its noise comes from a generator seeded per evaluation, so scoring
the same network twice gives the same number).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..download import ensure_file
from ..registry import EpochContext, Experiment, load_prepared_cache
from . import data as pdata
from .loss import kl_coefficient, mtan_loss, roc_auc
from .meta import INFO, all_sets, defects_path, set_files
from .model import OUTPUT_LAYER_NAME, build_model, describe, parameter_counts

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def prepare_settings(block: dict) -> dict:
    """What the prepared data depends on (recorded in the cache, checked by every run)."""
    return {"package": INFO.package, **{k: block[k] for k in INFO.prepare_keys}}


class PhysioNetBenchmark:
    info = INFO

    def prepare(self, block: dict, data_dir: Path, cache_dir: Path, download: bool,
                benchmark: str = "physionet") -> Path:
        path = Path(cache_dir) / INFO.prepared_path(block)
        cache = pdata.load_cache(path)
        # A cache without the defects report beside it (made before there was one) is made again.
        if (cache is not None and cache.get("prepare_settings") == prepare_settings(block)
                and defects_path(path).is_file()):
            log.info("%s: %s is up to date", benchmark, path)
            return path
        raw = {f.name: ensure_file(Path(data_dir), f.name, f.url, sha256=f.sha256, download=download)
               for f in INFO.raw_files(block)}
        folder = block["data"]["folder"]
        files = {s: tuple(raw[f"{folder}/{name}"] for name in set_files(s)) for s in all_sets(block["data"])}
        pdata.build_cache(block["data"], files, path, extra={"prepare_settings": prepare_settings(block)})
        return path

    def build(self, settings: dict, prepared: Path, device: str) -> Experiment:
        cache = load_prepared(prepared, settings)
        width = settings.get("factors", {}).get("width", 1)
        train_cfg = settings["train"]
        splits, info = make_splits(cache, settings)
        splits = {k: v.to(device) for k, v in splits.items()}
        model = build_model(settings["model"], width).to(device)
        counts = parameter_counts(model)
        log.info("physionet: width %s: %d parameters (encoder %d, decoder %d, classifier %d); records "
                 "train/val/test %d/%d/%d", width, counts["total"], counts["encoder"], counts["decoder"],
                 counts["classifier"], *(len(splits[k]) for k in SPLITS))
        train_epoch = make_train_epoch(splits["train"], train_cfg, settings["seed"])
        evaluate = make_evaluate(splits, train_cfg, settings["seed"], device)
        return Experiment(
            model=model, train_epoch=train_epoch, evaluate=evaluate,
            optimizer_factory=lambda params: torch.optim.Adam(params, lr=train_cfg["lr"]),
            scheduler_factory=lambda opt: torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=list(train_cfg["milestones"]), gamma=train_cfg["gamma"]),
            head=OUTPUT_LAYER_NAME,
            extra={"width": width, "params_by_part": counts, "sizes": describe(model.sizes), **info})


def load_prepared(prepared: Path, settings: dict) -> dict:
    """The prepared cache, or the stale-cache error naming the prepare command."""
    return load_prepared_cache(prepared, settings["benchmark"], pdata.CACHE_FORMAT, prepare_settings(settings),
                               settings_key="prepare_settings")


def make_splits(cache: dict, settings: dict) -> tuple[dict, dict]:
    """The run's seeded train/val/test splits, normalised with statistics of its training records only.

    Without ``data.test_set``: one seeded split of all records (``train.split``). With it: the held-out
    set's records are the test split of every run, and the training sets are split into train and
    validation per seed (``train.split[1]``; ``train.split[0]`` is not used).
    """
    train_cfg = settings["train"]
    split_seed = settings["seed"] if train_cfg.get("split_seed") is None else train_cfg["split_seed"]
    offsets = cache["offsets"].numpy()
    times, values, mask = cache["times"].numpy(), cache["values"].numpy(), cache["mask"].numpy()
    labels = cache["labels"].numpy()
    test_set = settings["data"].get("test_set")
    if test_set is None:
        parts = pdata.split_indices(len(labels), split_seed, tuple(train_cfg["split"]))
    else:
        parts = pdata.held_out_split(cache["sets"], test_set, split_seed, train_cfg["split"][1])
    idx = dict(zip(SPLITS, parts))
    minimum, maximum = pdata.normalisation(values, mask, offsets, idx["train"])
    time_scale = float(times[pdata.record_rows(offsets, idx["train"])].max()) or 1.0
    splits = {k: pdata.pad_split(times, values, mask, offsets, labels, i, minimum, maximum, time_scale)
              for k, i in idx.items()}
    info = {"split_seed": int(split_seed), "time_scale_hours": time_scale, "test_set": test_set,
            "records": {k: len(i) for k, i in idx.items()},
            "deaths": {k: int(labels[i].sum()) for k, i in idx.items()}}
    return splits, info


def train_pass(model, optimizer, split: pdata.Split, train_cfg: dict, epoch: int, seed: int,
               max_batches: int | None = None) -> float:
    """One pass over ``split`` (its first ``max_batches`` batches, if given) with the original's loss, in
    epoch ``epoch`` (counted from 1 over the run: the KL annealing reads it); the mean batch loss."""
    kl_coef = kl_coefficient(epoch, train_cfg["kl_anneal"], train_cfg["kl_wait"], train_cfg["kl_rate"])
    # A generator per epoch (seeded from the run's seed and the epoch): a resumed run shuffles alike.
    order = torch.Generator().manual_seed(seed * 100_003 + epoch)
    total, batches = 0.0, 0
    for values, mask, times, labels in split.batches(train_cfg["batch_size"], train_cfg["shuffle"], order):
        reconstruction, logits, mean, logvar = model(values, mask, times, samples=train_cfg["k_iwae"])
        loss, _, _ = mtan_loss(reconstruction, logits, mean, logvar, values, mask, labels,
                               std=train_cfg["std"], alpha=train_cfg["alpha"], kl_coef=kl_coef)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
    return total / max(batches, 1)


def make_train_epoch(train: pdata.Split, train_cfg: dict, seed: int):
    epochs_seen = [0]  # fallback epoch count for callers that pass no EpochContext

    def train_epoch(model, optimizer, ctx: EpochContext | None = None) -> float:
        epoch = (ctx.epoch if ctx is not None else epochs_seen[0]) + 1
        epochs_seen[0] += 1
        return train_pass(model, optimizer, train, train_cfg, epoch, seed)

    return train_epoch


@torch.no_grad()
def split_auc(model, split: pdata.Split, train_cfg: dict, generator_seed: int, device: str,
              max_batches: int | None = None) -> float:
    """ROC-AUC on ``split``; the latent noise comes from a generator seeded with ``generator_seed``."""
    generator = torch.Generator(device=device).manual_seed(generator_seed)
    sample = train_cfg["eval_latent"] == "sample"
    logits, labels = [], []
    for values, mask, times, y in split.batches(train_cfg["eval_batch_size"]):
        logits.append(model.classify(values, mask, times, generator=generator, sample=sample).float().cpu())
        labels.append(y.cpu())
        if max_batches is not None and len(logits) >= max_batches:
            break
    logits = torch.cat(logits)
    scores = logits[:, 1] if train_cfg["auc_score"] == "class1_logit" else torch.softmax(logits, -1)[:, 1]
    return roc_auc(torch.cat(labels).numpy(), scores.numpy())


def make_evaluate(splits: dict, train_cfg: dict, seed: int, device: str):
    """(train, val, test) ROC-AUC, each split's latent noise from its own seeded generator."""

    def evaluate(model):
        return tuple(split_auc(model, splits[name], train_cfg, seed * 10 + k, device)
                     for k, name in enumerate(SPLITS))

    return evaluate


BENCHMARK = PhysioNetBenchmark()
