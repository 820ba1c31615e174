"""EMNIST Balanced with the PyTorch MNIST example CNN (SPEC section 3): prepare, build, training loop.

Protocol (config/benchmarks/emnist.yaml): the official training set trains; the official test set is split
half validation, half test by a seeded split (:func:`data.split_official_test`), seeded by the run's seed
unless ``data.split_seed`` fixes one for all runs; Adadelta (lr 1.0), StepLR (step 1, gamma 0.7) stepped once
per epoch and rebuilt at every switch by pb_core; batch 64; cross-entropy. Training-time augmentation (the
paper's rotation and zoom, see :mod:`.data`) in neuron phases only: a dendrite phase trains candidates to
track the errors of a frozen network on the images it is scored on, and is not augmented unless
``train.augment_dendrite_phase`` says so. Evaluation never augments. Every epoch scores train, validation and
test in eval mode (``train.train_score: running`` takes the training pass's own accuracy instead, as the
authors' script reports it; it is free, but measured with augmentation and dropout on a moving network).

The images stay uint8 on the run's device; a batch is indexed, converted and augmented there, so the loop
needs no DataLoader workers and no host-device copies after build.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from pb_core.records import atomic_torch_save

from ..errors import DataError
from ..registry import Experiment, load_prepared_cache
from . import data
from .meta import INFO, source_of
from .model import HEAD, MnistNet

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


class EmnistBenchmark:
    info = INFO

    def prepare(self, block: dict, data_dir: Path, cache_dir: Path, download: bool, benchmark: str = "emnist") -> Path:
        """Read the raw files once into ``cache_dir / info.prepared_path(block)`` (uint8 tensors); a cache made
        from the same settings is kept as it is."""
        path = Path(cache_dir) / INFO.prepared_path(block)
        recorded = prepare_settings(block)
        if _recorded_settings(path) == recorded:
            log.info("emnist: %s is up to date", path)
            return path
        if source_of(block) == "partial_npz":
            parts = data.read_partial(Path(data_dir))
        else:
            parts = data.read_nist(Path(data_dir), path.parent, download)
        parts = data.limit_images(parts, block["data"].get("limit"))
        atomic_torch_save({"format": CACHE_FORMAT, "settings": recorded, **parts}, path)
        log.info("emnist: prepared %d training and %d test images from %s into %s", len(parts["train_images"]),
                 len(parts["test_images"]), source_of(block), path)
        return path

    def build(self, settings: dict, prepared: Path, device: str) -> Experiment:
        blob = load_prepared(prepared, settings)
        train_cfg, data_cfg = settings["train"], settings["data"]
        seed = split_seed(settings)
        val_pos, test_pos = data.split_official_test(len(blob["test_images"]), seed, data_cfg["val_fraction"])
        images = {"train": blob["train_images"], "val": blob["test_images"][val_pos],
                  "test": blob["test_images"][test_pos]}
        labels = {"train": blob["train_labels"], "val": blob["test_labels"][val_pos],
                  "test": blob["test_labels"][test_pos]}
        images = {k: v.to(device) for k, v in images.items()}
        labels = {k: v.to(device) for k, v in labels.items()}
        width = settings.get("factors", {}).get("width", 1)  # the grid factor; 1 is the example's network
        model = MnistNet(len(blob["classes"]), **settings["model"], width=width).to(device)
        mean, std = train_cfg["normalize"]
        inputs = data.InputPipeline(mean, std, train_cfg["augment"])
        train_epoch, running_accuracy = make_train_epoch(images["train"], labels["train"], inputs,
                                                         train_cfg["batch_size"], device,
                                                         train_cfg["augment_dendrite_phase"])

        def evaluate(model) -> tuple[float, float, float]:
            model.eval()
            scores = {name: accuracy(model, images[name], labels[name], inputs, train_cfg["eval_batch_size"])
                      for name in (("val", "test") if train_cfg["train_score"] == "running"
                                   else ("train", "val", "test"))}
            train = running_accuracy() if train_cfg["train_score"] == "running" else scores["train"]
            return train, scores["val"], scores["test"]

        return Experiment(
            model=model, train_epoch=train_epoch, evaluate=evaluate,
            optimizer_factory=lambda params: torch.optim.Adadelta(params, lr=train_cfg["lr"]),
            scheduler_factory=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1,
                                                                          gamma=train_cfg["gamma"]),
            head=HEAD,
            extra={"data_source": data_cfg["source"], "split_seed": int(seed), "width": width,
                   "split_digest": split_digest(blob["test_index"][val_pos]),
                   "train_images": len(images["train"]), "val_images": len(images["val"]),
                   "test_images": len(images["test"])})


def prepare_settings(block: dict) -> dict:
    """What the cache records (and a run checks): the package and the block keys prepare depends on."""
    return {"package": INFO.package, **{k: block[k] for k in INFO.prepare_keys}}


def split_seed(settings: dict) -> int:
    """The seed of the validation/test split: ``data.split_seed`` when set, else the run's seed. Every variant
    of a seed gets the same split; with the run's seed each seed also draws its own split, so the spread over
    seeds includes the split's (the paper drew an unseeded split per run)."""
    fixed = settings["data"]["split_seed"]
    return int(settings["seed"] if fixed is None else fixed)


def split_digest(val_index: torch.Tensor) -> str:
    """A short hash of the official test indices that validate (recorded in the run summary)."""
    return hashlib.sha256(val_index.to(torch.int64).numpy().tobytes()).hexdigest()[:12]


def make_train_epoch(images: torch.Tensor, labels: torch.Tensor, inputs: data.InputPipeline, batch_size: int,
                     device: str, augment_dendrite_phase: bool = False):
    """(train_epoch(model, optimizer, ctx) -> mean loss, running_accuracy() -> the last epoch's accuracy).

    One shuffled pass (torch's global generator, seeded per run) in batches of ``batch_size``, the last one
    partial. Augmented in neuron phases (and in dendrite phases only with ``augment_dendrite_phase``).
    Losses and hits are summed on the device and read once per epoch (no per-batch host sync on a GPU).
    """
    n = len(images)
    last = {"accuracy": float("nan")}

    def train_epoch(model, optimizer, ctx) -> float:
        augment = ctx.phase == "neuron" or augment_dendrite_phase
        order = torch.randperm(n).to(device)
        loss_sum = torch.zeros((), device=device)
        hits = torch.zeros((), device=device, dtype=torch.int64)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x, y = inputs(images[idx], augment), labels[idx]
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            hits += (logits.detach().argmax(1) == y).sum()
        last["accuracy"] = hits.item() / n
        return loss_sum.item() / n

    return train_epoch, lambda: last["accuracy"]


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, inputs: data.InputPipeline,
             batch_size: int = 1000) -> float:
    """Fraction of ``images`` classified correctly (no augmentation; the caller sets eval mode)."""
    hits = torch.zeros((), device=images.device, dtype=torch.int64)
    for start in range(0, len(images), batch_size):
        x = inputs(images[start:start + batch_size], augment=False)
        hits += (model(x).argmax(1) == labels[start:start + batch_size]).sum()
    return hits.item() / len(images)


def _recorded_settings(path: Path):
    """The prepare settings a cache was made with, or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: derived data, so it is simply made again
        return None
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT:
        return None
    return blob.get("settings")


def load_prepared(path: Path, settings: dict) -> dict:
    """The prepared tensors, or a StaleCacheError when the cache is missing or was made from other settings."""
    blob = load_prepared_cache(path, settings["benchmark"], CACHE_FORMAT, prepare_settings(settings))
    if len(blob["classes"]) != 47:
        raise DataError(f"{path}: {len(blob['classes'])} classes, EMNIST Balanced has 47; prepare it again")
    return blob


BENCHMARK = EmnistBenchmark()
