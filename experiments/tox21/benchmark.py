"""TrimNet on a MoleculeNet-style classification CSV (SPEC section 3, Tox21): prepare and build.

Protocol: a seeded random 80/10/10 split per run; Adam (lr 1e-3, weight decay 1e-5) with
ReduceLROnPlateau on validation AUC (mode max, patience 10, factor 0.7); batch 128; the class-weighted
masked cross-entropy with weights from the training split; metric = mean ROC-AUC over the tasks,
missing labels masked. Every epoch scores train, validation and test in eval mode.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from ..download import ensure_file
from ..registry import EpochContext, Experiment
from .data import MoleculeTable, check_cache, class_weights, featurise, split_indices
from .meta import INFO, raw_files
from .metric import masked_class_weighted_loss, masked_mean_roc_auc
from .model import OUTPUT_LAYER_NAME, TrimNet

EVAL_BATCH = 512


def prepare_settings(block: dict) -> dict:
    """What the cache records (and a run checks): the package and the block keys prepare depends on."""
    return {"package": INFO.package, **{k: block[k] for k in INFO.prepare_keys}}


class MoleculeBenchmark:
    info = INFO

    def prepare(self, block: dict, data_dir: Path, cache_dir: Path, download: bool, benchmark: str = "tox21") -> Path:
        (raw,) = raw_files(block)
        csv_path = ensure_file(data_dir, raw.name, raw.url, sha256=raw.sha256, md5=raw.md5, download=download)
        cache = Path(cache_dir) / INFO.prepared_path(block)
        data = block["data"]
        featurise(csv_path, cache, limit=data["limit"], table=MoleculeTable.from_config(data, benchmark),
                  settings=prepare_settings(block))  # computed once; later calls reuse the cache
        return cache

    def build(self, settings: dict, prepared: Path, device: str) -> Experiment:
        graphs = check_cache(prepared, prepare_settings(settings), settings["benchmark"])["graphs"]
        train_idx, train_loader, eval_loaders = split_loaders(graphs, settings)
        weights = class_weights(graphs, train_idx).to(device)
        train_cfg = settings["train"]
        width = settings["factors"].get("width", 1)
        model_cfg = dict(settings["model"], hidden_dim=max(1, round(settings["model"]["hidden_dim"] * width)))
        model = TrimNet(**model_cfg, out_dim=2 * len(settings["data"]["tasks"])).to(device)

        def train_epoch(model, optimizer, ctx: EpochContext) -> float:
            total, batches = 0.0, 0
            for batch in train_loader:
                batch = batch.to(device)
                optimizer.zero_grad()
                loss = masked_class_weighted_loss(model(batch), batch.y, batch.y_mask, weights)
                loss.backward()
                optimizer.step()
                total += loss.item()
                batches += 1
            return total / max(batches, 1)

        @torch.no_grad()
        def score(model, loader) -> float:
            ys, probs, masks = [], [], []
            for batch in loader:
                batch = batch.to(device)
                probs.append(torch.softmax(model(batch), dim=-1)[..., 1].cpu())
                ys.append(batch.y.cpu())
                masks.append(batch.y_mask.cpu())
            return masked_mean_roc_auc(torch.cat(ys), torch.cat(probs), torch.cat(masks))

        def evaluate(model):
            model.eval()
            return tuple(score(model, eval_loaders[name]) for name in ("train", "val", "test"))

        return Experiment(
            model=model, train_epoch=train_epoch, evaluate=evaluate,
            optimizer_factory=lambda params: torch.optim.Adam(params, lr=train_cfg["lr"],
                                                              weight_decay=train_cfg["weight_decay"]),
            scheduler_factory=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", patience=train_cfg["plateau_patience"], factor=train_cfg["plateau_factor"]),
            head=OUTPUT_LAYER_NAME, extra={"hidden_dim": model_cfg["hidden_dim"]})


def split_loaders(graphs: list, settings: dict):
    """The run's seeded train/val/test split of ``graphs`` and its loaders:
    (training indices, shuffled training loader, {"train"|"val"|"test": scoring loader})."""
    train = settings["train"]
    parts = split_indices(len(graphs), settings["seed"], tuple(train["split"]))
    subsets = {name: [graphs[i] for i in idx] for name, idx in zip(("train", "val", "test"), parts)}
    train_loader = DataLoader(subsets["train"], batch_size=train["batch_size"], shuffle=True)
    eval_loaders = {name: DataLoader(data, batch_size=EVAL_BATCH) for name, data in subsets.items()}
    return parts[0], train_loader, eval_loaders


BENCHMARK = MoleculeBenchmark()
