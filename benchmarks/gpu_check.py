#!/usr/bin/env python
"""The GPU check: one command, within a hard time limit, that measures what the suite's GPU numbers rest on.

Steps, in this order (the most wanted first; each one a subprocess that a deadline can stop):

* ``tests``: the CUDA tests (``pytest -m cuda tests/test_cuda.py``: device selection, a short deterministic run,
  checkpoints moved between GPU and CPU, dendritic layers on GPU vs CPU, a run killed mid-cycle and resumed);
* ``timing_physionet``: Table 2's rows (every width, every neuron and dendrite cycle, GPU inference at batch 100,
  CPU inference at batch 1) by the suite's own timing code (``experiments.physionet.timing``) on a few batches,
  beside the paper's values;
* ``packing``: N runs at once on the GPU (``benchmarks/packing.py``, Tox21), runs per hour at each N;
* ``timing_tox21``, ``timing_emnist``, ``timing_csi300``: neuron epochs with K = 0 and 1 dendrites, dendrite
  epochs with K = 0 and 1 in place and the configured candidates per neuron, on a few batches timed with CUDA
  events after a warm-up pass, scaled to the full epoch; inference at batch 1 and 100. Each network is built by
  the runner's own code path (the benchmark's build, the run's pb settings, ``CycleController.stage``). Tox21 on
  the real data (first ``--tox21-molecules`` molecules); EMNIST and CSI300 on synthetic inputs of the real shapes
  (their timing scripts' synthetic caches: no complete copy of either data set exists here);
* ``budget``: the GPU-hours of ``results/compute_budget.csv`` (``experiments.budget``: its runs and paper-protocol
  epochs) at the seconds per epoch measured above.

After every step ``gpu_check.csv`` and ``gpu_check.md`` in ``--out`` are rewritten atomically, so a check
stopped anywhere leaves everything measured so far. The check stops itself ``--time-limit`` seconds after its
start: a step still running then is stopped and marked so; steps not begun are marked skipped.

    python benchmarks/gpu_check.py --device cuda --data-dir DIR --time-limit 480 --out reference/gpu
    python benchmarks/gpu_check.py --device cpu                   # the dry run: tiny sizes, every step
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from pb_core.records import atomic_write_text, write_csv, write_json  # noqa: E402

COLUMNS = ["section", "benchmark", "configuration", "width", "phase", "dendrites", "candidates", "batch",
           "batches_timed", "params", "seconds_per_batch", "seconds_per_epoch", "paper_seconds_per_epoch",
           "inputs_per_second", "parallel_runs", "runs_per_hour", "epochs_per_hour", "runs", "neuron_epochs",
           "dendrite_epochs", "gpu_hours", "status", "seconds", "data", "note",
           "device", "gpu", "driver", "cuda", "torch", "date"]
STEPS = ["tests", "timing_physionet", "packing", "timing_tox21", "timing_emnist", "timing_csi300"]
# Seconds each step may take at most on a GPU (the deadline cuts them further); the dry run has its own.
STEP_CAPS = {"tests": 150, "timing_physionet": 120, "packing": 120, "timing_tox21": 60, "timing_emnist": 45,
             "timing_csi300": 45}
MIN_STEP_SECONDS = 5  # a step is not begun with less than this left
# Kept back from the steps for the budget and the last write (loading the configuration and pandas).
BUDGET_RESERVE = {"cuda": 15, "cpu": 25}
TIMED_CONFIGS = (("neuron K=0", 0, "neuron"), ("neuron K=1", 1, "neuron"), ("dendrite K=0", 0, "dendrite"),
                 ("dendrite K=1", 1, "dendrite"))


# ---------------------------------------------------------------------------------------------- sizes
def sizes(device: str) -> dict:
    """What each step measures: a few batches at the real widths on a GPU; tiny on the CPU (the dry run)."""
    if device == "cuda":
        return {"repeats": 3, "physionet_limit": None, "physionet_widths": None, "physionet_train_batches": 5,
                "physionet_eval_batches": 2, "tox21_molecules": 1280, "emnist_train": 640, "emnist_test": 200,
                "csi300_days": 5, "csi300_stocks": 300, "csi300_concepts": 400, "infer_iterations": 20,
                "packing_epochs": 3, "packing_limit": None, "physionet_cpu_inputs": 200,
                "physionet_max_dendrites": None}
    return {"repeats": 1, "physionet_limit": 60, "physionet_widths": [0.125], "physionet_train_batches": 1,
            "physionet_eval_batches": 1, "tox21_molecules": 100, "emnist_train": 64, "emnist_test": 20,
            "csi300_days": 2, "csi300_stocks": 30, "csi300_concepts": 20, "infer_iterations": 2,
            "packing_epochs": 1, "packing_limit": 100, "physionet_cpu_inputs": 5, "physionet_max_dendrites": 1}


# ---------------------------------------------------------------------------------------------- environment
def environment(device: str) -> dict:
    """GPU name, driver, CUDA and torch versions (the columns every row carries)."""
    import torch

    env = {"device": device, "gpu": "", "driver": "", "cuda": torch.version.cuda or "", "torch": torch.__version__,
           "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
        except (OSError, subprocess.TimeoutExpired):
            pass
    else:
        env["gpu"] = f"none (CPU: {platform.processor() or platform.machine()}, dry run)"
    return env


# ---------------------------------------------------------------------------------------------- timing helpers
def pass_seconds(fn, device: str) -> float:
    """Seconds of ``fn()``: CUDA events around it on a GPU (the work queued between them), wall clock on a CPU."""
    import torch

    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def build(cfg: dict, benchmark: str, make_exp, device: str, k: int, phase: str, variant: str = "pb"):
    """(experiment, controller) of a ``variant`` run put into ``phase`` with ``k`` dendrites, as the runner
    builds it: the benchmark's experiment, the run's pb settings (``runner.method_settings``: candidates,
    their optimizer and settings, the output layer) and pb_core's own staging."""
    import torch

    import pb_core
    from experiments import config as cfgmod
    from experiments import runner
    from experiments.grid import make_run

    settings = cfgmod.run_settings(cfg, make_run(cfg, benchmark, variant, 0))
    torch.manual_seed(0)
    exp = make_exp(settings, device)
    method = runner.method_settings(settings, exp)
    ctl = pb_core.CycleController(exp.model, variant, optimizer_factory=exp.optimizer_factory,
                                  scheduler_factory=exp.scheduler_factory, **method.keywords())
    ctl.stage(k, phase)
    return exp, ctl


def epoch_parts(exp, ctl, phase: str, device: str) -> tuple[float, float]:
    """(training pass seconds, scoring seconds) of one epoch as the controller runs it: a covariance dendrite
    epoch ends with the correlation summary and scores nothing; a neuron epoch scores train, val and test."""
    import pb_core
    from experiments.registry import EpochContext

    candidates = {id(p) for _, layer in pb_core.dendritic_layers(ctl.model) for p in layer.candidate_parameters()}
    ctx = EpochContext(phase=phase, epoch=1, cycle=1, scheduler=ctl.scheduler,
                       network_parameters=[p for p in ctl.model.parameters() if id(p) not in candidates])
    ctl.model.train()
    train = pass_seconds(lambda: exp.train_epoch(ctl.model, ctl.optimizer, ctx), device)
    if phase == "dendrite":
        score = pass_seconds(lambda: [layer.end_candidate_epoch() for layer in ctl.layers.values()], device)
    else:
        ctl.model.eval()
        score = pass_seconds(lambda: exp.evaluate(ctl.model), device)
    return train, score


def inference_rate(forward, batch: int, iterations: int, device: str) -> float:
    """Inputs per second of ``forward()`` on ``batch`` inputs (no_grad, eval), after one warm-up call."""
    import torch

    with torch.no_grad():
        forward()
        seconds = pass_seconds(lambda: [forward() for _ in range(iterations)], device)
    return batch * iterations / seconds


# ---------------------------------------------------------------------------------------------- the data
def tox21_data(cfg, args, size, tmp: Path):
    """The real Tox21 molecules (the first N), prepared as a run prepares them."""
    from experiments.tox21.benchmark import BENCHMARK, prepare_settings, split_loaders
    from experiments.tox21.data import check_cache

    n = size["tox21_molecules"]
    cfg["benchmarks"]["tox21"]["data"]["limit"] = n
    prepared = BENCHMARK.prepare(cfg["benchmarks"]["tox21"], Path(args.data_dir), tmp, download=False)
    from experiments import config as cfgmod
    from experiments.grid import make_run

    settings = cfgmod.run_settings(cfg, make_run(cfg, "tox21", "pb", 0))
    graphs = check_cache(prepared, prepare_settings(settings), "tox21")["graphs"]
    train_idx, train_loader, _ = split_loaders(graphs, settings)
    full, timed = 7_831, len(graphs)
    full_train = round(full * len(train_idx) / timed)
    batch = settings["train"]["batch_size"]

    def make_exp(settings, device):
        return BENCHMARK.build(settings, prepared, device)

    def forward_for(exp, b, device):
        from torch_geometric.data import Batch

        data = Batch.from_data_list([graphs[i % len(graphs)] for i in range(b)]).to(device)
        return lambda: exp.model(data)

    return {"make_exp": make_exp, "forward_for": forward_for, "train_batches": len(train_loader),
            "full_train_batches": math.ceil(full_train / batch), "train_scale": full_train / len(train_idx),
            "score_scale": full / timed, "data": f"real Tox21, first {timed} of {full} molecules; scaled to all"}


def emnist_data(cfg, args, size, tmp: Path):
    """Synthetic 28x28 images of EMNIST Balanced's shape (emnist_epoch_times' synthetic cache)."""
    import torch

    from emnist_epoch_times import FULL_TEST, FULL_TRAIN, synthetic_cache
    from experiments import config as cfgmod
    from experiments.emnist.benchmark import BENCHMARK
    from experiments.grid import Run

    n_train, n_test = size["emnist_train"], size["emnist_test"]
    settings = cfgmod.run_settings(cfg, Run("emnist", "pb", 0))
    cache = synthetic_cache(tmp / "emnist.pt", settings, n_train, n_test)
    batch = settings["train"]["batch_size"]

    def forward_for(exp, b, device):
        x = torch.randn(b, 1, 28, 28, device=device)
        return lambda: exp.model(x)

    return {"make_exp": lambda settings, device: BENCHMARK.build(settings, cache, device), "forward_for": forward_for,
            "train_batches": math.ceil(n_train / batch), "full_train_batches": math.ceil(FULL_TRAIN / batch),
            "train_scale": FULL_TRAIN / n_train, "score_scale": (FULL_TRAIN + FULL_TEST) / (n_train + n_test),
            "data": f"synthetic images of the real shape ({n_train} train, {n_test} test timed; scaled to "
                    f"{FULL_TRAIN} + {FULL_TEST})"}


def csi300_data(cfg, args, size, tmp: Path):
    """Synthetic trading days of CSI300's shape (csi300_epoch_times' synthetic cache)."""
    from csi300_epoch_times import PAPER_SCORED_DAYS, PAPER_TRAIN_DAYS, synthetic_cache
    from experiments.csi300.benchmark import make_experiment

    days, stocks = size["csi300_days"], size["csi300_stocks"]
    cache = synthetic_cache(days, stocks, size["csi300_concepts"])
    return {"make_exp": lambda settings, device: make_experiment(settings, cache, device), "forward_for": None,
            "train_batches": days, "full_train_batches": PAPER_TRAIN_DAYS, "train_scale": PAPER_TRAIN_DAYS / days,
            "score_scale": PAPER_SCORED_DAYS / (3 * days), "stocks": stocks,
            "data": f"synthetic days of the real shape ({stocks} stocks x 360 features, {days} days a segment timed; "
                    f"scaled to {PAPER_TRAIN_DAYS} training and {PAPER_SCORED_DAYS} scored days)"}


DATA = {"tox21": tox21_data, "emnist": emnist_data, "csi300": csi300_data}


# ---------------------------------------------------------------------------------------------- the steps
def step_timing(benchmark: str, args, emit) -> None:
    import torch

    import pb_core
    from experiments import config as cfgmod

    size = sizes(args.device)
    torch.set_num_threads(args.threads)
    cfg = cfgmod.load_config(overrides=[f"data_dir={args.data_dir}", "download=false", f"device={args.device}"])
    with tempfile.TemporaryDirectory() as tmp:
        data = DATA[benchmark](cfg, args, size, Path(tmp))
        for name, k, phase in TIMED_CONFIGS:
            exp, ctl = build(cfg, benchmark, data["make_exp"], args.device, k, phase)
            epoch_parts(exp, ctl, phase, args.device)  # warm-up: allocation, kernel choice, optimizer state
            parts = [epoch_parts(exp, ctl, phase, args.device) for _ in range(size["repeats"])]
            train = statistics.median(p[0] for p in parts)
            score = statistics.median(p[1] for p in parts)
            full = train * data["train_scale"] + (score if phase == "dendrite" else score * data["score_scale"])
            candidates = max((layer.num_candidates for layer in ctl.layers.values()), default=0)
            emit({"section": "timing", "benchmark": benchmark, "configuration": name, "phase": phase, "dendrites": k,
                  "candidates": candidates if phase == "dendrite" else None, "batches_timed": data["train_batches"],
                  "params": pb_core.count_parameters(ctl.model), "seconds_per_batch": train / data["train_batches"],
                  "seconds_per_epoch": full, "data": data["data"],
                  "note": f"median of {size['repeats']} passes after a warm-up pass; training pass {train:.4f} s, "
                          f"{'correlation summary' if phase == 'dendrite' else 'scoring'} {score:.4f} s; epoch = "
                          f"{data['full_train_batches']} training batches"
                          + ("" if phase == "dendrite" else " + scoring of train, validation and test")})
            if phase == "neuron":
                if data["forward_for"] is None:  # HIST scores a whole day's cross-section at once
                    emit({"section": "inference", "benchmark": benchmark, "configuration": f"inference K={k}",
                          "dendrites": k, "batch": data["stocks"],
                          "inputs_per_second": 3 * size["csi300_days"] * data["stocks"] / score,
                          "data": data["data"], "note": "from the scoring pass: one day (all its stocks) per forward"})
                    continue
                ctl.model.eval()
                for batch in (1, 100):
                    rate = inference_rate(data["forward_for"](exp, batch, args.device), batch,
                                          size["infer_iterations"], args.device)
                    emit({"section": "inference", "benchmark": benchmark, "configuration": f"inference K={k}",
                          "dendrites": k, "batch": batch, "inputs_per_second": rate, "data": data["data"],
                          "note": f"{size['infer_iterations']} forwards after a warm-up, no_grad, eval mode"})
            del exp, ctl
            if args.device == "cuda":
                torch.cuda.empty_cache()


def step_timing_physionet(args, emit) -> None:
    """Table 2 by the suite's own timing code, a few batches per pass, beside the paper's values."""
    from physionet_epoch_times import paper_table

    from experiments import config as cfgmod
    from experiments.physionet.benchmark import BENCHMARK
    from experiments.physionet.timing import measure, schedule

    size = sizes(args.device)
    cfg = cfgmod.load_config(overrides=[f"data_dir={args.data_dir}", "download=false", f"device={args.device}"])
    cfg["benchmarks"]["physionet"]["data"]["limit"] = size["physionet_limit"]
    block = cfg["benchmarks"]["physionet"]
    paper = paper_table(cfg)
    options = {"train_batches": size["physionet_train_batches"], "eval_batches": size["physionet_eval_batches"],
               "warmup_batches": 2, "repeats": size["repeats"], "cpu_inference_inputs": size["physionet_cpu_inputs"]}
    if size["physionet_max_dendrites"] is not None:  # the dry run: fewer cycles per width
        for override in block.get("factor_overrides", {}).get("width", {}).values():
            if "max_dendrites" in override.get("pb", {}):
                override["pb"]["max_dendrites"] = min(override["pb"]["max_dendrites"], size["physionet_max_dendrites"])
    limit = size["physionet_limit"]
    data = f"real PhysioNet 2012 set A{'' if limit is None else f', first {limit} records'}"
    with tempfile.TemporaryDirectory() as tmp:
        prepared = BENCHMARK.prepare(block, Path(args.data_dir), Path(tmp), download=False)
        from experiments.grid import factor_values

        for width in size["physionet_widths"] or factor_values(cfg, "physionet")["width"]:
            candidates = cfgmod.run_settings(cfg, schedule(cfg, "physionet", width)[0])["pb"].get("candidates")
            for r in measure(cfg, "physionet", prepared, threads=args.threads, options=options, widths=[width]):
                emit({"section": "timing", "benchmark": "physionet", "width": r["width"],
                      "configuration": f"{r['phase']} K={r['dendrites']}", "phase": r["phase"],
                      "dendrites": r["dendrites"], "batches_timed": r["train_batches_timed"], "params": r["params"],
                      "candidates": candidates if r["phase"] == "dendrite" else None,
                      "seconds_per_batch": r["train_seconds_per_epoch"] / r["train_batches"],
                      "seconds_per_epoch": r["seconds_per_epoch"],
                      "paper_seconds_per_epoch": paper.get((float(r["width"]), r["phase"], int(r["dendrites"]))),
                      "data": data, "note": "experiments.physionet.timing (synchronised wall clock); " + r["note"]})
                for key, batch, where in (("gpu_inputs_per_second", r["gpu_batch"], "GPU"),
                                          ("cpu_inputs_per_second", 1, "CPU")):
                    if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key])):
                        emit({"section": "inference", "benchmark": "physionet", "width": r["width"],
                              "configuration": f"inference K={r['dendrites']} on the {where}",
                              "dendrites": r["dendrites"], "batch": batch, "inputs_per_second": r[key], "data": data,
                              "note": "the paper's Table 2 column: GPU at batch 100, CPU at batch 1"})


class _LineTap(io.TextIOBase):
    """A stdout that hands every complete line to ``on_line`` (packing.py prints one line per level)."""

    def __init__(self, on_line):
        self.on_line, self.buf = on_line, ""

    def write(self, text):
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.on_line(line)
        return len(text)


PACKING_LINE = re.compile(r"(\d+) run\(s\) at once: ([\d.]+) s wall, ([\d.]+) runs/h, ([\d.]+) epochs/h")


def step_packing(args, emit) -> None:
    """N Tox21 runs at once (benchmarks/packing.py), one row per level as soon as it is measured."""
    import packing

    size = sizes(args.device)
    extra = [] if size["packing_limit"] is None else ["--set", f"benchmarks.tox21.data.limit={size['packing_limit']}"]
    data = "real Tox21" + ("" if size["packing_limit"] is None else f", first {size['packing_limit']} molecules")

    def on_line(line):
        print(line, file=sys.__stdout__, flush=True)
        m = PACKING_LINE.search(line)
        if m:
            emit({"section": "packing", "benchmark": "tox21", "configuration": "baseline, first neuron cycle",
                  "parallel_runs": int(m[1]), "seconds": float(m[2]), "runs_per_hour": float(m[3]),
                  "epochs_per_hour": float(m[4]), "data": data,
                  "note": f"{size['packing_epochs']} epochs per run, {args.threads} CPU thread(s) per run; "
                          "wall time includes each process's start"})

    old, sys.stdout = sys.stdout, _LineTap(on_line)
    try:
        code = packing.main(["--benchmark", "tox21", "--parallel", *map(str, args.packing), "--device", args.device,
                             "--threads", str(args.threads), "--epochs", str(size["packing_epochs"]),
                             "--data-dir", str(args.data_dir), *extra])
    finally:
        sys.stdout = old
    if code:
        raise RuntimeError(f"benchmarks/packing.py exited with {code}")


def step_tests(args, emit) -> None:
    """The CUDA tests, one row per test (junit XML), with the data the kill-and-resume test needs."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = {**os.environ, "PB_SHARED_DATA": str(Path(args.data_dir).resolve()), "PYTHONWARNINGS": "ignore"}
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                              "tests/test_cuda.py", f"--junitxml={xml}"], cwd=REPO, env=env, capture_output=True,
                             text=True)
        print(out.stdout[-6000:], out.stderr[-3000:], file=sys.__stdout__, flush=True)
        if not xml.is_file():
            raise RuntimeError(f"pytest wrote no report (exit {out.returncode}): {out.stdout[-1500:]}")
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                found = case.find(tag)
                if found is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (found.get("message") or found.text or "").strip().replace("\n", " ")[:300]
            emit({"section": "tests", "configuration": case.get("name"), "status": outcome,
                  "seconds": float(case.get("time") or 0), "note": message})


STEP_FUNCTIONS = {"tests": step_tests, "timing_physionet": step_timing_physionet, "packing": step_packing,
                  **{f"timing_{b}": (lambda b: lambda args, emit: step_timing(b, args, emit))(b) for b in DATA}}


def run_step(args) -> int:
    """In the step's own process: run it, writing its rows to ``--step-out`` after each one."""
    sys.path.insert(0, str(HERE))  # the timing scripts whose code the steps reuse
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        write_json(Path(args.step_out), rows)
        print(f"  {row.get('section')}: {row.get('benchmark') or ''} {row.get('configuration') or ''} "
              f"{row.get('status') or ''}", file=sys.__stdout__, flush=True)

    STEP_FUNCTIONS[args.step](args, emit)
    return 0


# ---------------------------------------------------------------------------------------------- the budget
def budget_rows(rows: list[dict]) -> list[dict]:
    """GPU-hours of the paper protocol (experiments.budget: its groups of runs and paper-protocol epochs) at the
    seconds per epoch measured in this check. A variant with dendrites: its neuron epochs at the mean of the
    measured K >= 1 neuron epochs, its dendrite epochs at the mean of the measured dendrite epochs; the first
    cycle, the baselines and baseline_matched: the K = 0 neuron epoch."""
    import pb_core
    from experiments import config as cfgmod
    from experiments.budget import compute_budget

    timing = [r for r in rows if r.get("section") == "timing" and r.get("seconds_per_epoch") is not None]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfgmod.load_config(overrides=[f"results_dir={tmp}"])
        plan = compute_budget(cfg)
    out, total = [], 0.0
    for r in plan[plan["kind"] == "runs"].to_dict("records"):
        width = None
        if isinstance(r["factors"], str) and r["factors"].startswith("width="):
            width = float(r["factors"].split("=", 1)[1])
        mine = [t for t in timing if t["benchmark"] == r["benchmark"]
                and (width is None or t.get("width") is None or float(t["width"]) == width)]
        dendritic = r["variant"] not in ("first_cycle", "baseline", "baseline_matched") and \
            pb_core.get_variant(r["variant"]).has_dendrites

        def mean(phase, ks):
            vals = [t["seconds_per_epoch"] for t in mine if t["phase"] == phase and int(t["dendrites"]) in ks]
            return statistics.mean(vals) if vals else None
        s_n = mean("neuron", range(1, 99)) if dendritic else mean("neuron", [0])
        s_n = s_n if s_n is not None else mean("neuron", [0])
        s_d = mean("dendrite", range(0, 99)) if r["dendrite_epochs"] else 0.0
        hours, note = None, ""
        if s_n is not None and s_d is not None:
            hours = r["runs"] * (r["neuron_epochs"] * s_n + r["dendrite_epochs"] * s_d) / 3600
            total += hours
        else:
            note = "no epoch of this benchmark measured in this check"
        out.append({"section": "budget", "benchmark": r["benchmark"], "configuration": r["variant"], "width": width,
                    "runs": r["runs"], "neuron_epochs": r["neuron_epochs"], "dendrite_epochs": r["dendrite_epochs"],
                    "seconds_per_epoch": s_n, "gpu_hours": hours, "note": note or
                    f"neuron s/epoch {s_n:.3f}, dendrite s/epoch {s_d:.3f}; one run at a time on one GPU"})
    out.append({"section": "budget", "benchmark": "all", "configuration": "total", "gpu_hours": total,
                "runs": int(sum(r["runs"] or 0 for r in out if r["configuration"] != "first_cycle")),
                "note": "GPU-hours, one run at a time, measured benchmarks only"})
    packing = [r for r in rows if r.get("section") == "packing" and r.get("runs_per_hour")]
    single = [r for r in packing if r["parallel_runs"] == 1]
    if packing and single:
        best = max(packing, key=lambda r: r["runs_per_hour"])
        gain = best["runs_per_hour"] / single[0]["runs_per_hour"]
        out.append({"section": "budget", "benchmark": "all", "configuration": "total, packed",
                    "parallel_runs": best["parallel_runs"], "gpu_hours": total / gain,
                    "note": f"wall hours of one GPU with {best['parallel_runs']} runs at once "
                            f"({gain:.2f}x the runs per hour of one run, Tox21 packing above)"})
    return out


# ---------------------------------------------------------------------------------------------- the report
def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{int(value):,d}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


TABLES = {
    "steps": ["configuration", "status", "seconds", "note"],
    "tests": ["configuration", "status", "seconds", "note"],
    "timing": ["benchmark", "width", "configuration", "candidates", "params", "batches_timed", "seconds_per_batch",
               "seconds_per_epoch", "paper_seconds_per_epoch", "data"],
    "inference": ["benchmark", "width", "configuration", "batch", "inputs_per_second", "note"],
    "packing": ["benchmark", "parallel_runs", "seconds", "runs_per_hour", "epochs_per_hour", "note"],
    "budget": ["benchmark", "configuration", "width", "runs", "neuron_epochs", "dendrite_epochs", "gpu_hours", "note"],
}
TITLES = {"steps": "Steps", "tests": "CUDA tests (tests/test_cuda.py)",
          "timing": "Seconds per epoch (a few batches timed, scaled to the full epoch; paper: Table 2, one RTX 2080)",
          "inference": "Inference", "packing": "Packing: N runs at once on one GPU",
          "budget": "GPU-hours of the paper protocol at these seconds per epoch"}


def markdown(rows: list[dict], env: dict, meta: dict) -> str:
    lines = [f"# GPU check: {env['gpu']}", "",
             f"GPU {env['gpu']}; driver {env['driver'] or '?'}; CUDA {env['cuda'] or '-'}; torch {env['torch']}; "
             f"{env['date']}.", "",
             f"Command: `{meta['command']}` (time limit {meta['time_limit']} s; {meta['elapsed']:.0f} s used; "
             f"{meta['state']}). Regenerate with the same command; docs/gpu.md says how on a lent device.", ""]
    for section, cols in TABLES.items():
        part = [r for r in rows if r.get("section") == section]
        if not part:
            continue
        lines += [f"## {TITLES[section]}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in part:
            lines.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "/") for c in cols) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], env: dict, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    full = [{**{k: env.get(k) for k in ("device", "gpu", "driver", "cuda", "torch", "date")}, **r} for r in rows]
    write_csv(out / "gpu_check.csv", full, COLUMNS)
    atomic_write_text(out / "gpu_check.md", markdown(rows, env, meta))


# ---------------------------------------------------------------------------------------------- main
def _run_subprocess(cmd: list[str], timeout: float) -> tuple[str, str]:
    """(status, note) of a step's process, stopped (its whole process group) at ``timeout`` seconds."""
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=sys.stdout, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "stopped: deadline", f"stopped after {timeout:.0f} s (time limit); rows measured before are kept"
    if proc.returncode:
        last = [line for line in err.strip().splitlines() if line.strip()]
        return "failed", " ".join(last[-3:])[-500:]
    return "done", ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the dry run (tiny sizes)")
    p.add_argument("--time-limit", type=float, default=480.0,
                   help="seconds after which the check stops itself (steps not done are marked)")
    p.add_argument("--out", type=Path, default=REPO / "reference" / "gpu")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                   help="the real data (tox21/, physionet2012/)")
    p.add_argument("--steps", nargs="+", default=STEPS, choices=STEPS)
    p.add_argument("--packing", type=int, nargs="+", default=None, help="runs at once (default: cuda 1 2 4 8)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reserve", type=float, default=None,
                   help="seconds of the time limit kept for the budget and the last write (default: cuda 15, cpu 25)")
    p.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    p.add_argument("--step-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.packing = args.packing or ([1, 2, 4, 8] if args.device == "cuda" else [1, 2])
    if args.step:
        return run_step(args)
    start = time.monotonic()
    deadline = start + args.time_limit
    reserve = BUDGET_RESERVE[args.device] if args.reserve is None else args.reserve
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: torch sees no CUDA device (use --device cpu for the dry run)")
    env = environment(args.device)
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict] = []
    steps: list[dict] = []

    def save(state: str) -> None:
        meta = {"command": command.strip(), "time_limit": args.time_limit, "elapsed": time.monotonic() - start,
                "state": state}
        write_outputs(args.out, steps + rows, env, meta)

    save("running")
    print(f"GPU check on {env['gpu']} (torch {env['torch']}, CUDA {env['cuda']}); time limit {args.time_limit:g} s",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in STEPS:
            if name not in args.steps:
                continue
            left = deadline - time.monotonic() - reserve
            step_row = {"section": "steps", "configuration": name}
            if left < MIN_STEP_SECONDS:
                steps.append({**step_row, "status": "skipped: deadline", "seconds": 0.0,
                              "note": f"{max(left, 0):.0f} s left of the time limit"})
                save("running")
                continue
            out_json = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--step-out", str(out_json),
                   "--device", args.device, "--data-dir", str(args.data_dir), "--threads", str(args.threads),
                   "--packing", *map(str, args.packing)]
            began = time.monotonic()
            print(f"step {name} ({left:.0f} s left)", flush=True)
            cap = STEP_CAPS[name] if args.device == "cuda" else left
            status, note = _run_subprocess(cmd, min(cap, left))
            if status == "stopped: deadline" and min(cap, left) == cap and cap < left:
                status = "stopped: step cap"
            found = json.loads(out_json.read_text()) if out_json.is_file() else []
            rows += found
            failed_tests = [r for r in found if r.get("section") == "tests" and r.get("status") in ("failed", "error")]
            if status == "done" and failed_tests:
                status, note = "failed", f"{len(failed_tests)} test(s) failed: " + ", ".join(
                    r["configuration"] for r in failed_tests)
            steps.append({**step_row, "status": status, "seconds": round(time.monotonic() - began, 1),
                          "note": note or f"{len(found)} row(s)"})
            print(f"step {name}: {status} {note}", flush=True)
            save("running")
    try:
        rows += budget_rows(rows)
        steps.append({"section": "steps", "configuration": "budget", "status": "done", "seconds": 0.0,
                      "note": "experiments.budget's runs and epochs at the measured seconds"})
    except Exception as exc:  # the measurements above stay written either way
        steps.append({"section": "steps", "configuration": "budget", "status": "failed", "seconds": 0.0,
                      "note": f"{type(exc).__name__}: {exc}"[:500]})
    state = "finished" if all(s["status"] == "done" for s in steps) else "finished with steps not done"
    save(state)
    print(f"wrote {args.out / 'gpu_check.csv'} and {args.out / 'gpu_check.md'} ({state}, "
          f"{time.monotonic() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
