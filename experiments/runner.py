"""Train one (benchmark, variant, seed) and write its records to ``results/<benchmark>/<variant>/seed<seed>/``.

The folder holds ``config.json`` (the run's settings), ``epochs.csv``, ``cycles.csv``,
``correlations.csv``, ``summary.json``, ``run.log``, ``model.pt`` and, while it trains,
``checkpoint.pt``. A run interrupted at any point resumes from its last finished epoch when started
again with the same settings; a run whose settings changed starts afresh; a finished run is not redone.
"""
from __future__ import annotations

import csv
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
import torch

import pb_core

from . import config as cfgmod
from .config import rerun_command
from .errors import ConfigError, UserError
from .registry import get_benchmark

log = logging.getLogger("experiments")

RUN_FILES = ("epochs.csv", "cycles.csv", "correlations.csv", "summary.json", "model.pt", "checkpoint.pt")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}); delete it and rerun the run it belongs to") from None


def run_dir(results_dir: Path, benchmark: str, variant: str, seed: int) -> Path:
    return Path(results_dir) / benchmark / variant / f"seed{seed}"


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but torch sees no CUDA device; set device: cpu (or auto)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def matched_cycles(results_dir: Path, benchmark: str, seed: int, reference: str = "pb") -> list[int]:
    """Epochs of each cycle of the reference run of the same seed, for the compute-matched baseline.

    Read from its ``epochs.csv``, so a last cycle cut short (max_total_epochs) counts too: the control
    trains exactly as many epochs as the reference, restarting its schedule wherever the reference switched.
    """
    ref = run_dir(results_dir, benchmark, reference, seed)
    if not (ref / "summary.json").is_file():
        raise UserError(f"baseline_matched for seed {seed} needs the finished {reference} run in {ref}; "
                        f"run it first: {rerun_command(benchmark, reference, seed)}")
    with open(ref / "epochs.csv", newline="") as f:
        cycles = [int(row["cycle"]) for row in csv.DictReader(f)]
    return [cycles.count(c) for c in sorted(set(cycles))]


def _prepare_folder(out: Path, settings: dict) -> bool:
    """Make ``out`` hold this run: True when it is already finished with these settings."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    if saved.is_file():
        if read_json(saved) == settings:
            return (out / "summary.json").is_file()
        log.info("settings of %s changed: starting this run afresh", out)
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    pb_core.records.write_json(saved, settings)
    return False


def _progress(label: str):
    """One line per epoch on stderr and in run.log; a live bar when stderr is a terminal."""
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(desc=label, unit="epoch", dynamic_ncols=True)

    def report(row: dict) -> None:
        corr = "" if row["correlation"] is None else f" corr={row['correlation']:.4f}"
        text = (f"epoch {row['epoch']:4d} cycle {row['cycle']:2d} {row['phase']:8s} dendrites={row['dendrites']} "
                f"train={row['train']:.4f} val={row['val']:.4f} test={row['test']:.4f} loss={row['loss']:.4f}"
                f"{corr} ({row['seconds']:.1f}s)")
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(text[11:])
        log.info("%s %s", label, text)
    return report


def _attach_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("experiments", "pb_core"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    return handler


def train_run(settings: dict, *, data_dir: Path, cache_dir: Path, results_dir: Path, device: str = "auto",
              download: bool = True, threads: int = 1) -> dict:
    """Train the run described by ``settings`` (from :func:`experiments.config.run_config`)."""
    benchmark, variant, seed = settings["benchmark"], settings["variant"], int(settings["seed"])
    bench = get_benchmark(benchmark)
    if variant == "baseline_matched":
        settings = {**settings, "matched_cycles": matched_cycles(results_dir, benchmark, seed)}
    out = run_dir(results_dir, benchmark, variant, seed)
    if _prepare_folder(out, settings):
        log.info("%s is finished with these settings; nothing to do", out)
        return read_json(out / "summary.json")
    handler = _attach_log(out)
    try:
        torch.set_num_threads(threads)
        device = resolve_device(device)
        prepared = bench.prepare(settings, Path(data_dir), Path(cache_dir), download)
        seed_everything(seed)
        exp = bench.build(settings, prepared, device)
        pb = settings["pb"]
        switch = lambda patience: pb_core.SwitchPolicy(  # noqa: E731
            patience=patience, fixed_epochs=pb.get("fixed_cycle_epochs"), max_epochs=pb.get("max_cycle_epochs"),
            rel_threshold=pb["rel_threshold"], abs_threshold=pb["abs_threshold"])
        core_variant = "baseline" if variant == "baseline_matched" else variant
        label = f"{benchmark}/{variant}/seed{seed}"
        controller = pb_core.CycleController(
            exp.model, core_variant, optimizer_factory=exp.optimizer_factory,
            scheduler_factory=exp.scheduler_factory, neuron_switch=switch(pb["neuron_patience"]),
            dendrite_switch=switch(pb["dendrite_patience"]), candidates=pb["candidates"],
            max_dendrites=pb["max_dendrites"], cap_dendrite_phase=pb["cap_dendrite_phase"],
            dendrite_improvement=pb["dendrite_improvement"], mode=bench.mode,
            layers=pb["layers"], head=exp.head, activation=pb["activation"],
            baseline_cycles=settings.get("matched_cycles"),
            max_total_epochs=None if variant == "baseline_matched" else pb["max_total_epochs"],
            out_dir=out, on_epoch_end=[_progress(label)],
            summary_extra={"benchmark": benchmark, "seed": seed, "metric": bench.metric,
                           "variant": variant, "device": device})
        log.info("%s: %s on %s, %d parameters, dendrite layers: %s", label, variant, device,
                 controller.params_original, controller.layer_names or "none")
        summary = controller.fit(exp.train_epoch, exp.evaluate)
        log.info("%s finished: original test %.4f, max test %.4f with %d dendrites (%s)", label,
                 summary["original"]["test"], summary["max"]["test"], summary["final_dendrites"],
                 summary["stopped_because"])
        return summary
    finally:
        for name in ("experiments", "pb_core"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def train_from_config(cfg: dict, benchmark: str, variant: str, seed: int, threads: int | None = None) -> dict:
    return train_run(cfgmod.run_config(cfg, benchmark, variant, seed), data_dir=Path(cfg["data_dir"]),
                     cache_dir=Path(cfg["cache_dir"]), results_dir=Path(cfg["results_dir"]),
                     device=cfg["device"], download=cfg["download"], threads=threads or cfg["torch_threads"])
