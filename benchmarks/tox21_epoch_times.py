#!/usr/bin/env python
"""Seconds per epoch of TrimNet on the real Tox21 data: baseline, dendrite phases, neuron phases with K dendrites.

The configurations are built exactly as a `pb` run of the suite builds them (same data, split, model,
optimizer and training loop: ``experiments.tox21.benchmark``), with K dendrites added by the library's
own ``add_candidates(1)`` + ``commit_candidates()`` on every wrapped layer (their values do not change
the cost). One epoch = one pass over the training split plus scoring train, validation and test (the
scoring is what a neuron epoch adds to the training pass; a covariance dendrite epoch skips it, as the
controller does). Epochs of all configurations alternate (interleaved repeats), and the median is printed.

    python benchmarks/tox21_epoch_times.py --data-dir ../shared/data [--device cpu|cuda] [--threads 1]
                                           [--repeats 3] [--max-k 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import pb_core  # noqa: E402
from experiments import config as cfgmod  # noqa: E402
from experiments.grid import make_run  # noqa: E402
from experiments.registry import EpochContext  # noqa: E402
from experiments.tox21.benchmark import BENCHMARK, prepare_settings, split_loaders  # noqa: E402
from experiments.tox21.data import check_cache  # noqa: E402


def build(settings: dict, prepared: Path, device: str, dendrites: int, phase: str, candidates: int = 1,
          snapshot: str = "epoch_end"):
    exp = BENCHMARK.build(settings, prepared, device)
    variant = "baseline" if phase == "baseline" else "pb"
    ctl = pb_core.CycleController(exp.model, variant, optimizer_factory=exp.optimizer_factory, head=exp.head,
                                  candidates=candidates)
    # K dendrites (u = 0, as committed), the phase's candidates, trainable flags, perforation, a fresh optimizer
    ctl.stage(dendrites, "dendrite" if phase == "dendrite" else "neuron", output_weights=None, snapshot=snapshot)
    return exp, ctl


def _context(ctl, phase: str) -> EpochContext:
    return EpochContext(phase="dendrite" if phase == "dendrite" else "neuron", epoch=0, cycle=0,
                        scheduler=ctl.scheduler)


def one_epoch(exp, ctl, phase: str, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    ctl.model.train()
    exp.train_epoch(ctl.model, ctl.optimizer, _context(ctl, phase))
    if phase == "dendrite":
        for layer in ctl.layers.values():
            layer.end_candidate_epoch()
    else:
        with torch.no_grad():
            exp.evaluate(ctl.model)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ops_per_batch(exp, ctl, batches: int) -> int:
    """Operator calls (leaf ATen ops: those that launch work) per training batch, from one profiled
    training pass. On a GPU a model this small is bound by launching them, not by arithmetic."""
    from torch.profiler import ProfilerActivity, profile
    ctl.model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        exp.train_epoch(ctl.model, ctl.optimizer, _context(ctl, "neuron"))
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    leaves = [e for e in aten if not any(c.name.startswith("aten::") for c in e.cpu_children)]
    return round(len(leaves) / batches)


def loading_epoch(loaders: list):
    """An epoch's data movement alone: the run's own loaders (one training pass, three scoring passes),
    each batch collated and moved to the device, no model. No device can run an epoch faster than this
    unless the loading is moved off the main process (the runs use num_workers=0)."""
    def run(device: str) -> None:
        for loader in loaders:
            for batch in loader:
                batch.to(device)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="folder holding tox21/tox21.csv.gz")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-k", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="first N molecules only (a quick check)")
    parser.add_argument("--candidates", type=int, default=1, help="candidates per neuron in dendrite phases")
    parser.add_argument("--snapshot", default="epoch_end", choices=["epoch_end", "measured"],
                        help="measured: pb_core's default (a frozen probe of the candidates is evaluated too)")
    parser.add_argument("--count-ops", action="store_true",
                        help="also profile one training pass per configuration and print ATen ops per batch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = cfgmod.load_config(overrides=[f"data_dir={args.data_dir}", "download=false",
                                        f"benchmarks.tox21.data.limit={args.limit or 'null'}"])
    settings = cfgmod.run_settings(cfg, make_run(cfg, "tox21", "pb", 0))
    with tempfile.TemporaryDirectory() as cache:
        prepared = BENCHMARK.prepare(cfg["benchmarks"]["tox21"], Path(args.data_dir), Path(cache), download=False)
        configs = [("baseline", 0, "baseline")]
        for k in range(args.max_k + 1):
            configs.append((f"dendrite phase K={k}", k, "dendrite"))
            if k:
                configs.append((f"neuron phase K={k}", k, "neuron"))
        built = {}
        for name, k, phase in configs:
            torch.manual_seed(0)
            built[name] = (*build(settings, prepared, args.device, k, phase, args.candidates, args.snapshot), phase)
        times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
        graphs = check_cache(prepared, prepare_settings(settings), "tox21")["graphs"]
        _, train_loader, eval_loaders = split_loaders(graphs, settings)
        loading = loading_epoch([train_loader, *eval_loaders.values()])
        times["data loading only"] = []
        for name, (exp, ctl, phase) in built.items():  # warm-up: first epochs allocate and compile
            one_epoch(exp, ctl, phase, args.device)
        for repeat in range(args.repeats):
            for name, (exp, ctl, phase) in built.items():
                times[name].append(one_epoch(exp, ctl, phase, args.device))
            start = time.perf_counter()
            loading(args.device)
            times["data loading only"].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

        ops = {}
        if args.count_ops:
            ops = {name: ops_per_batch(exp, ctl, len(train_loader)) for name, (exp, ctl, _) in built.items()}

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {args.threads} thread(s)"
    print(f"TrimNet on Tox21 ({args.limit or 'all'} molecules), {device}, torch {torch.__version__}, "
          f"median of {args.repeats} epochs after one warm-up epoch")
    base = statistics.median(times["baseline"])
    print(f"{'configuration':24s} {'params':>9s} {'s/epoch':>8s} {'x baseline':>10s}"
          + (f" {'ops/batch':>9s}" if ops else ""))
    for name, (exp, ctl, phase) in built.items():
        med = statistics.median(times[name])
        print(f"{name:24s} {pb_core.count_parameters(ctl.model):9,d} {med:8.2f} {med / base:10.2f}"
              + (f" {ops[name]:9,d}" if ops else ""))
    med = statistics.median(times["data loading only"])
    print(f"{'data loading only':24s} {'-':>9s} {med:8.2f} {med / base:10.2f}   "
          "(collate + move the batches of a neuron epoch; a floor for any device)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
