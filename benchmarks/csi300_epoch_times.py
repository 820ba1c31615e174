#!/usr/bin/env python
"""Seconds per epoch of HIST on CSI300-shaped days: baseline, and the first dendrite's two phases.

Each configuration is built as a run of the suite builds it (``experiments.csi300.benchmark.make_experiment``:
the same HIST, training loop with its daily batches and gradient clipping, and daily Precision@1 scoring)
over a synthetic prepared cache of the real shape: ``--stocks`` stocks a day (CSI300: about 300) with
Alpha360's 360 features, market values, and rows of a stock-to-concept matrix (``--concepts`` columns, each
stock in 1-4 concepts; the real matrix's width is not known here, and the concept module's cost is small
next to the GRU's). Its values do not change the cost. pb_core puts each configuration in its phase:
``CycleController(model, variant)`` wraps the variant's layers (the GRU and the eight Linear layers), a
dendrite is added on every wrapped layer with ``add_candidates`` + ``commit_candidates`` with non-zero
output weights, a dendrite phase gets the configured candidates per neuron (``pb.candidates`` of the
configuration, pb_defaults: 4; ``--candidates`` overrides it), and ``_configure_phase()`` sets perforation,
trainable flags and the optimizer (in a dendrite phase the candidate optimizer, with the configuration's
candidate settings, as the runner passes them).

Timed, per configuration: one training pass over ``--days`` days (a year of trading days: 242) and, except
in a dendrite phase (which scores nothing), the scoring pass over the same number of days. A real epoch of
the paper protocol trains on 2007-2014 (about 1,940 days) and scores 2007-2020 (about 3,400 days): the
cost is linear in days, and the estimate for one such epoch is printed too. Repeats are interleaved and
the median is printed, of wall-clock seconds and of this process's CPU seconds (steadier on a shared
machine).

    python benchmarks/csi300_epoch_times.py [--device cpu|cuda] [--threads 1] [--days 242] [--stocks 300]
                                            [--concepts 400] [--repeats 1] [--candidates C]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import pb_core  # noqa: E402
from experiments import config as cfgmod  # noqa: E402
from experiments.csi300.benchmark import make_experiment  # noqa: E402
from experiments.csi300.model import parameter_count  # noqa: E402
from experiments.grid import Run  # noqa: E402
from experiments.registry import EpochContext  # noqa: E402
from experiments.runner import method_settings  # noqa: E402

PAPER_TRAIN_DAYS, PAPER_SCORED_DAYS = 1_940, 3_400  # 2007-2014 trained; 2007-2020 scored every epoch
CONFIGURATIONS = (("baseline", "baseline", 0, "neuron"), ("pb dendrite K=0", "pb", 0, "dendrite"),
                  ("pb neuron K=1", "pb", 1, "neuron"))


def synthetic_cache(days: int, stocks: int, concepts: int, seed: int = 0) -> dict:
    """A prepared cache of the real format and shape (three segments of ``days`` days each)."""
    rng = np.random.default_rng(seed)
    matrix = np.zeros((736, concepts), dtype=np.float32)  # HIST's 735 stocks + the "no concept" row
    for row in range(735):
        matrix[row, rng.choice(concepts, size=rng.integers(1, 5), replace=False)] = 1.0
    splits = {}
    for name in ("train", "valid", "test"):
        rows = days * stocks
        splits[name] = {
            "features": torch.from_numpy(np.clip(rng.normal(size=(rows, 360)), -3, 3).astype(np.float32)),
            "labels": torch.from_numpy(rng.uniform(-1.73, 1.73, rows).astype(np.float32)),
            "market_value": torch.from_numpy(rng.lognormal(3.0, 1.0, rows).astype(np.float32)),
            "stock_rows": torch.from_numpy(np.concatenate([rng.choice(735, stocks, replace=False)
                                                           for _ in range(days)]).astype(np.int64)),
            "day_offsets": torch.arange(0, rows + 1, stocks, dtype=torch.int64),
            "dates": [f"day{d}" for d in range(days)],
        }
    return {"format": 1, "concept_matrix": torch.from_numpy(matrix), "splits": splits,
            "stats": {"days": {n: days for n in splits}, "stocks_per_day": {n: [stocks] * 3 for n in splits}}}


def build(cfg: dict, cache: dict, device: str, variant: str, k: int, phase: str, candidates: int | None):
    settings = cfgmod.run_settings(cfg, Run("csi300", variant, 0))
    torch.manual_seed(0)
    exp = make_experiment(settings, cache, device)
    method = method_settings(settings, exp)  # the run's pb settings, as the runner builds them
    if candidates:
        method = replace(method, candidate_training=replace(method.candidate_training, count=candidates))
    ctl = pb_core.CycleController(exp.model, variant, optimizer_factory=exp.optimizer_factory, **method.keywords())
    ctl.stage(k, phase)  # K dendrites, the phase's candidates, flags, perforation and optimizer, as in a run
    return exp, ctl


def timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def one_epoch(exp, ctl, phase: str, device: str, epoch: int) -> dict:
    candidates = {id(p) for _, layer in pb_core.dendritic_layers(ctl.model) for p in layer.candidate_parameters()}
    network = [p for p in ctl.model.parameters() if id(p) not in candidates]
    ctl.model.train()
    train = timed(lambda: exp.train_epoch(ctl.model, ctl.optimizer, EpochContext(phase, epoch, 1,
                                                                                network_parameters=network)), device)
    if phase == "dendrite":
        score = timed(lambda: [layer.end_candidate_epoch() for layer in ctl.layers.values()], device)
    else:
        ctl.model.eval()
        # evaluate() scores train, valid and test; the synthetic segments have `days` days each: a third
        # of it is one scoring pass over `days` days
        wall, cpu = timed(lambda: exp.evaluate(ctl.model), device)
        score = (wall / 3, cpu / 3)
    return {"train": train, "score": score}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--days", type=int, default=242, help="trading days per timed pass (a year: 242)")
    p.add_argument("--stocks", type=int, default=300, help="stocks per day (CSI300: about 300)")
    p.add_argument("--concepts", type=int, default=400, help="columns of the stock-to-concept matrix")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--candidates", type=int, default=None,
                   help="candidates per neuron in the dendrite phase (default: the configuration's pb.candidates)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    cfg = cfgmod.load_config()
    cache = synthetic_cache(args.days, args.stocks, args.concepts)
    built = {name: build(cfg, cache, args.device, variant, k, phase, args.candidates)
             for name, variant, k, phase in CONFIGURATIONS}
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"HIST on {args.stocks} stocks x 360 features a day, {args.days} days per pass, {args.concepts} "
          f"concepts; {device_name}; torch {torch.__version__}; "
          f"{built['pb dendrite K=0'][1].candidates} candidates per neuron in the dendrite phase")
    print(f"  HIST alone: {parameter_count(built['baseline'][0].model):,d} parameters")
    for name, (exp, ctl) in built.items():
        print(f"  {name:16s} {pb_core.count_parameters(ctl.model):>8,d} parameters (candidates not counted)")
    times = {name: [] for name in built}
    for repeat in range(args.repeats):
        for name, _, _, phase in CONFIGURATIONS:
            exp, ctl = built[name]
            times[name].append(one_epoch(exp, ctl, phase, args.device, repeat))
            t = times[name][-1]
            print(f"  repeat {repeat} {name:16s} train {t['train'][0]:8.1f} s  score {t['score'][0]:8.1f} s",
                  flush=True)
    print(f"\nMedian over {args.repeats} repeat(s), seconds (wall / CPU of this process):")
    print(f"{'configuration':18s} {'train pass':>16s} {'scoring pass':>16s} {'per train day':>14s} "
          f"{'paper epoch (est., wall / CPU)':>31s}")
    for name, _, _, phase in CONFIGURATIONS:
        med = {part: (statistics.median(t[part][0] for t in times[name]),
                      statistics.median(t[part][1] for t in times[name])) for part in ("train", "score")}
        per_day = med["train"][0] / args.days
        epoch = [med["train"][i] / args.days * PAPER_TRAIN_DAYS
                 + (0.0 if phase == "dendrite" else med["score"][i] / args.days * PAPER_SCORED_DAYS) for i in (0, 1)]
        score_text = "-" if phase == "dendrite" else f"{med['score'][0]:.1f} / {med['score'][1]:.1f}"
        print(f"{name:18s} {med['train'][0]:7.1f} / {med['train'][1]:6.1f} {score_text:>16s} {per_day:13.3f}s "
              f"{epoch[0]:20.0f}s / {epoch[1]:.0f}s")
    print(f"(paper epoch: {PAPER_TRAIN_DAYS:,} training days + {PAPER_SCORED_DAYS:,} scored days, from the per-day "
          f"times above; a dendrite epoch scores nothing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
