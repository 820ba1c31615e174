"""Table 2 measurements: seconds per epoch and per cycle of every neuron and dendrite cycle, and inference speed.

For each configured width, the network of the width's schedule (pb: 0..max_dendrites dendrites; a
baseline-only width: none) is built from the prepared data exactly as a run builds it, given k committed
dendrites on every layer the variant wraps, and timed in both phases:

* neuron epoch = one training pass (dendrites' output weights and the network train, perforated) plus the
  evaluation of train, validation and test that the runner does after every neuron epoch;
* dendrite epoch = one training pass with the network frozen and the run's ``pb.candidates`` candidates per
  neuron learning by covariance, with the run's candidate settings and optimizer (the runner does not
  evaluate in a covariance phase);
* inference: records scored per second by the encoder and classifier (no decoder), on the GPU in batches
  of ``gpu_batch`` (when CUDA is available) and on the CPU one record at a time.

``train_batches``/``eval_batches`` time only the first batches of a pass and scale to the whole pass (the
table says how many were timed); a cycle is ``epochs_per_cycle`` epochs (the schedule's fixed or maximal
cycle length); a width's total is its whole schedule: K+1 neuron cycles and K dendrite cycles. These are
measured by a job of their own, never read from training logs, where other jobs share the machine.
"""
from __future__ import annotations

import copy
import logging
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

import pb_core

from .. import config as cfgmod
from ..grid import Run, factor_values, variants_at
from . import benchmark as bm

log = logging.getLogger(__name__)

COLUMNS = ["width", "phase", "dendrites", "params", "device", "threads", "train_batches_timed", "train_batches",
           "train_seconds_per_epoch", "eval_seconds_per_epoch", "seconds_per_epoch", "epochs_per_cycle",
           "seconds_per_cycle", "width_total_seconds", "gpu_inputs_per_second", "gpu_batch",
           "cpu_inputs_per_second", "cpu_batch", "cpu_share", "machine", "note"]
DEFAULTS = {"train_batches": None, "eval_batches": None, "warmup_batches": 2, "repeats": 1,
            "cpu_inference_inputs": 200, "gpu_batch": 100, "gpu_inference_batches": 20}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Clock:
    """Wall seconds of what it times, and the process's CPU seconds over the same stretches: on a CPU, their
    ratio per thread (``cpu_share``) below 1 means other processes took the cores meanwhile."""

    def __init__(self):
        self.wall = self.cpu = 0.0


CLOCK = _Clock()


def _timed(fn, device: str) -> float:
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    wall = time.perf_counter() - start
    CLOCK.wall += wall
    CLOCK.cpu += time.process_time() - cpu
    return wall


def schedule(cfg: dict, benchmark: str, width) -> tuple[Run, int, int | None]:
    """(the run whose network is timed, its number of dendrites K, epochs per cycle) at ``width``."""
    factors = (("width", width),)
    variants = variants_at(cfg, benchmark, factors)
    variant = next((v for v in variants if _has_dendrites(v)), variants[0])
    run = Run(benchmark, variant, 0, factors)
    pb = cfgmod.run_settings(cfg, run)["pb"]  # factor overrides applied
    dendrites = int(pb.get("max_dendrites") or 0) if _has_dendrites(variant) else 0
    epochs = pb.get("fixed_cycle_epochs") or pb.get("max_cycle_epochs")
    return run, dendrites, epochs


def _has_dendrites(variant: str) -> bool:
    return variant != "baseline_matched" and pb_core.get_variant(variant).has_dendrites


def _neuron_phase(model, layers) -> list:
    """Trainable: the network and every dendrite's output weight u (V and the cascade frozen)."""
    for p in model.parameters():
        p.requires_grad_(True)
    for layer in layers:
        layer.perforated = True
        layer.set_dendrites_trainable(weights=False, output=True)
    return [p for p in model.parameters() if p.requires_grad]


def _dendrite_phase(model, layers, candidates: int) -> list:
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for layer in layers:
        layer.set_dendrites_trainable(weights=False, output=False)
        layer.add_candidates(candidates)
        params += layer.candidate_parameters()
    for p in params:
        p.requires_grad_(True)
    return params


def _pass_seconds(run_pass, total_batches: int, timed: int | None, warmup: int, repeats: int, device: str):
    """Median seconds of one whole pass (scaled from ``timed`` batches when given)."""
    if warmup:
        run_pass(warmup)
    n = total_batches if timed is None else min(timed, total_batches)
    times = [_timed(lambda: run_pass(n), device) * total_batches / n for _ in range(repeats)]
    return statistics.median(times), n


def measure(cfg: dict, benchmark: str, prepared: Path, threads: int | None = None, options: dict | None = None,
            widths: list | None = None) -> list[dict]:
    """The timing table's rows (see the module docstring)."""
    opts = {**DEFAULTS, **(options or {})}
    threads = threads or cfg["torch_threads"]
    torch.set_num_threads(threads)
    device = "cuda" if cfg["device"] in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    machine = (torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine())
    rows = []
    for width in widths or factor_values(cfg, benchmark)["width"]:
        # One function call per width: its networks and data are freed before the next width is built.
        rows += _measure_width(cfg, benchmark, prepared, width, device, threads, machine, opts)
    return rows


def _candidate_setup(layers, pb: dict, exp) -> tuple[int, object]:
    """What a run's controller does with the run's pb settings: each layer's candidate settings, the number
    of candidates per neuron and the candidate optimizer's factory (so a dendrite epoch here costs what it
    costs in a run: e.g. ``candidate_snapshot: measured`` adds a forward of the probe copy)."""
    from pb_core import controller

    for layer in layers:
        for key in ("init", "init_std", "objective", "snapshot", "selection"):
            if f"candidate_{key}" in pb:
                setattr(layer, f"candidate_{key}", pb[f"candidate_{key}"])
    spec = pb.get("candidate_optimizer", controller.DEFAULT_CANDIDATE_OPTIMIZER)
    factory = exp.candidate_optimizer_factory or (
        controller.optimizer_from_spec(spec, exp.optimizer_factory) if spec is not None else exp.optimizer_factory)
    return int(pb.get("candidates") or controller.DEFAULT_CANDIDATES), factory


def _measure_width(cfg: dict, benchmark: str, prepared: Path, width, device: str, threads: int, machine: str,
                   opts: dict) -> list[dict]:
    """The rows of one width: every neuron and dendrite cycle of its schedule."""
    run, max_k, epochs = schedule(cfg, benchmark, width)
    settings = cfgmod.run_settings(cfg, run)
    torch.manual_seed(0)
    exp = bm.BENCHMARK.build(settings, prepared, device)
    splits, _ = bm.make_splits(bm.load_prepared(prepared, settings), settings)
    splits = {k: v.to(device) for k, v in splits.items()}
    train_cfg = settings["train"]
    model = exp.model
    variant = pb_core.get_variant("baseline" if run.variant == "baseline_matched" else run.variant)
    names = pb_core.wrap(model, settings["pb"].get("layers") or variant.layers, head=exp.head,
                         activation=settings["pb"].get("activation", "sigmoid")) if max_k else []
    layers = [model.get_submodule(n) for n in names]
    candidates, candidate_factory = _candidate_setup(layers, settings["pb"], exp)
    n_train = -(-len(splits["train"]) // train_cfg["batch_size"])
    n_eval = {k: -(-len(s) // train_cfg["eval_batch_size"]) for k, s in splits.items()}

    def train_pass(optimizer, n):
        bm.train_pass(model, optimizer, splits["train"], train_cfg, 100, 0, max_batches=n)

    def eval_pass(split, n):
        bm.split_auc(model, splits[split], train_cfg, 0, device, max_batches=n)

    def dendrite_pass(optimizer, n):
        train_pass(optimizer, n)
        for layer in layers:
            layer.end_candidate_epoch()

    rows = []
    for k in range(max_k + 1):
        CLOCK.wall = CLOCK.cpu = 0.0
        first_row = len(rows)
        if k:
            for layer in layers:  # one more dendrite on every wrapped layer (u = 0: the function is unchanged)
                layer.add_candidates(1)
                layer.commit_candidates()
        params = pb_core.count_parameters(model)
        # Neuron phase: train pass, then the evaluation of the three splits.
        model.train()
        optimizer = exp.optimizer_factory(_neuron_phase(model, layers))
        train_s, timed = _pass_seconds(partial(train_pass, optimizer), n_train, opts["train_batches"],
                                       opts["warmup_batches"], opts["repeats"], device)
        model.eval()
        eval_s = sum(_pass_seconds(partial(eval_pass, s), n_eval[s], opts["eval_batches"],
                                   min(opts["warmup_batches"], 1), opts["repeats"], device)[0] for s in bm.SPLITS)
        gpu = _gpu_inference(model, splits["test"], opts) if device == "cuda" else None
        cpu = _cpu_inference(model, splits["test"], opts)
        rows.append(_row(width, "neuron", k, params, device, threads, timed, n_train, train_s, eval_s,
                         epochs, machine, gpu, opts, cpu, CLOCK.cpu / max(CLOCK.wall, 1e-9) / threads))
        CLOCK.wall = CLOCK.cpu = 0.0
        if k < max_k:  # the dendrite phase that trains dendrite k + 1
            model.train()
            optimizer = candidate_factory(_dendrite_phase(model, layers, candidates))
            train_s, timed = _pass_seconds(partial(dendrite_pass, optimizer), n_train, opts["train_batches"],
                                           opts["warmup_batches"], opts["repeats"], device)
            for layer in layers:
                layer.discard_candidates()
            rows.append(_row(width, "dendrite", k, params, device, threads, timed, n_train, train_s,
                             0.0, epochs, machine, None, opts, None,
                             CLOCK.cpu / max(CLOCK.wall, 1e-9) / threads))
        log.info("physionet timing: width %s, %d dendrites: %s", width, k,
                 ", ".join(f"{r['phase']} {r['seconds_per_epoch']:.3f} s/epoch" for r in rows[first_row:]))
    total = sum(r["seconds_per_cycle"] for r in rows) if epochs else None
    for r in rows:
        r["width_total_seconds"] = total
    return rows


def _row(width, phase, k, params, device, threads, timed, n_train, train_s, eval_s, epochs, machine, gpu, opts, cpu,
         share):
    per_epoch = train_s + eval_s
    note = "" if timed == n_train else f"train pass scaled from {timed} of {n_train} batches"
    if phase == "neuron" and gpu is None:
        note = "; ".join(filter(None, [note, "no CUDA device: GPU inference not measured"]))
    return {"width": width, "phase": phase, "dendrites": k, "params": params, "device": device, "threads": threads,
            "train_batches_timed": timed, "train_batches": n_train, "train_seconds_per_epoch": train_s,
            "eval_seconds_per_epoch": eval_s, "seconds_per_epoch": per_epoch, "epochs_per_cycle": epochs,
            "seconds_per_cycle": per_epoch * epochs if epochs else None, "width_total_seconds": None,
            "gpu_inputs_per_second": gpu, "gpu_batch": opts["gpu_batch"] if gpu is not None else None,
            "cpu_inputs_per_second": cpu, "cpu_batch": 1 if cpu is not None else None,
            "cpu_share": share if device == "cpu" else None, "machine": machine, "note": note}


@torch.no_grad()
def _gpu_inference(model, split, opts) -> float:
    """Test records scored per second on the GPU, ``gpu_batch`` at a time (sampled latent, as evaluated)."""
    batch, count = opts["gpu_batch"], opts["gpu_inference_batches"]
    batches = [split.batch(torch.arange(i * batch, (i + 1) * batch) % len(split), "cuda") for i in range(count)]
    model.classify(*batches[0][:3])  # warm-up
    seconds = _timed(lambda: [model.classify(*b[:3]) for b in batches], "cuda")
    return sum(len(b[3]) for b in batches) / seconds


@torch.no_grad()
def _cpu_inference(model, split, opts) -> float:
    """Test records scored per second on the CPU, one at a time."""
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    n = min(opts["cpu_inference_inputs"], len(split))
    records = [split.batch(torch.tensor([i]), "cpu") for i in range(n)]
    cpu_model.classify(*records[0][:3])  # warm-up
    seconds = _timed(lambda: [cpu_model.classify(*r[:3]) for r in records], "cpu")
    return n / seconds
