"""Tox21 with TrimNet (SPEC section 3): data source, protocol and training loop for the runner.

Protocol: a seeded random 80/10/10 split per run; Adam (lr 1e-3, weight decay 1e-5) with
ReduceLROnPlateau on validation AUC (mode max, patience 10, factor 0.7); batch 128; the class-weighted
masked cross-entropy with weights from the training split; metric = mean ROC-AUC over the 12 tasks,
missing labels masked. Every epoch scores train, validation and test in eval mode.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from ..download import ensure_file
from ..registry import Experiment, RawFile
from .data import SOURCE_URL, class_weights, featurise, split_indices
from .metric import masked_class_weighted_loss, masked_mean_roc_auc
from .model import OUTPUT_LAYER_NAME, TrimNet

# MoleculeNet's canonical file; its md5 as recorded by other loaders (checked on download only: local
# copies may be recompressed, see ../shared/data/README.md).
RAW = RawFile("tox21/tox21.csv.gz", SOURCE_URL, md5="2882d69e70bba0fec14995f26787cc25")
EVAL_BATCH = 512


class Tox21Benchmark:
    name = "tox21"
    metric = "auc"
    mode = "max"

    def raw_files(self) -> list[RawFile]:
        return [RAW]

    def prepare(self, settings: dict, data_dir: Path, cache_dir: Path, download: bool) -> Path:
        csv_path = ensure_file(data_dir, RAW.name, RAW.url, md5=RAW.md5, download=download)
        cache = Path(cache_dir) / "tox21" / "prepared.pt"
        featurise(csv_path, cache)  # computed once; later calls load the cache
        return cache

    def build(self, settings: dict, prepared: Path, device: str) -> Experiment:
        graphs = load_prepared(prepared, settings.get("limit"))
        train_idx, train_loader, eval_loaders = split_loaders(graphs, settings)
        weights = class_weights(graphs, train_idx).to(device)
        train_cfg = settings["train"]
        model = TrimNet(**settings["model"], out_dim=24).to(device)

        def train_epoch(model, optimizer) -> float:
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
            head=OUTPUT_LAYER_NAME)


def split_loaders(graphs: list, settings: dict):
    """The run's seeded train/val/test split of ``graphs`` and its loaders:
    (training indices, shuffled training loader, {"train"|"val"|"test": scoring loader})."""
    parts = split_indices(len(graphs), settings["seed"], tuple(settings["split"]))
    subsets = {name: [graphs[i] for i in idx] for name, idx in zip(("train", "val", "test"), parts)}
    train_loader = DataLoader(subsets["train"], batch_size=settings["train"]["batch_size"], shuffle=True)
    eval_loaders = {name: DataLoader(data, batch_size=EVAL_BATCH) for name, data in subsets.items()}
    return parts[0], train_loader, eval_loaders


def load_prepared(prepared: Path, limit: int | None = None) -> list:
    graphs = torch.load(prepared, weights_only=False)["graphs"]
    return graphs[:limit] if limit else graphs


BENCHMARK = Tox21Benchmark()
