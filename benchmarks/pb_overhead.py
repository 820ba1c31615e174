#!/usr/bin/env python
"""What dendrites cost: pb_core on the PyTorch MNIST-example CNN (47 classes), beside arithmetic floors.

Model: conv1 1->32 3x3, ReLU, conv2 32->64 3x3, ReLU, max-pool 2, dropout 0.25, flatten,
fc1 9216->128, ReLU, dropout 0.5, fc2 128->47; all four layers wrapped (``pb_core.wrap(model, "all")``,
via the CycleController). Synthetic 28x28 inputs and labels. For K = 0..--max-k dendrites per neuron
(each added with ``add_candidates(1)`` + ``commit_candidates()``, output weights u set non-zero):

* neuron-phase training step (batch 64: forward, cross-entropy, backward, Adadelta step), configured
  by the controller's own ``_configure_phase`` (perforated, V and c frozen, u and the network train),
  relative to K = 0.                                               floor (3 + K) / 3
* dendrite-phase step (C candidates per neuron, network frozen, covariance tap active), relative to
  the K = 0 neuron step.                                           floor (2 + 2C + K) / 3
  (``--snapshot measured``, the library's default, also evaluates the frozen probe copy of the
  candidates: one more forward per candidate,                       floor (2 + 3C + K) / 3)
* inference inputs/s at batch 1 and 100 (eval, no_grad), time per input relative to the plain
  (unwrapped) model.                                               floor 1 + K
* peak memory of each configuration, measured in a fresh subprocess (CPU: ru_maxrss growth over
  the steps; CUDA: torch.cuda.max_memory_allocated above the memory held before the steps).
* parameters (pb_core.count_parameters).
* optional, when the ``perforatedai`` package is installed (``--perforatedai``): the openly published
  package on the same CNN with the same K dendrites (added through its own tracker; its dendrites train
  jointly with the network), side by side in the same run: training steps/s (Adadelta over everything
  it trains) and inference inputs/s at batch 1 and 100, beside pb_core's neuron-phase step and inference.

The floors count multiply-adds of the wrapped layers only: a plain step is one forward (1) and one
backward (2: input and weight gradients); each perforated dendrite adds one forward and no backward;
a candidate adds a forward and a weight-gradient backward; a frozen network needs only the input
gradients (1 instead of 2). Elementwise work (activations, the covariance statistics) is not in the
floor, which is why a layer with a cheap map and a large output (conv1: 9 MACs per output value)
can never reach it. "ok" means measured <= 1.15 x floor.

Timing: every configuration has its own model; in each repeat every configuration runs --batches
iterations in turn (interleaved, so load from other processes hits all of them alike), after
--warmup untimed iterations. Reported: median over repeats of seconds per iteration, and the median
over repeats of the per-repeat ratio to the reference (both timed in the same repeat).

    python benchmarks/pb_overhead.py [--device cpu|cuda] [--repeats 7] [--batches 10] [--threads 2]
                                     [--candidates 1] [--snapshot measured|epoch_end] [--perforatedai]
                                     [--out results.csv] [--no-memory]
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import pb_core  # noqa: E402
from experiments.emnist.model import MnistNet  # noqa: E402  (the PyTorch MNIST example CNN, 47 classes)

NUM_CLASSES = 47
CLOCK = time.perf_counter  # --clock cpu: time.process_time
TRAIN_BATCH = 64
TARGET = 1.15


def adadelta(params):
    return torch.optim.Adadelta(params, lr=1.0)


# ---------------------------------------------------------------------------------------------- builders
def build_perforatedai(k: int, device: str, seed: int = 0):
    """The same CNN converted by the ``perforatedai`` package, with k dendrites per neuron, in its neuron
    training mode (dendrites train jointly with the network), and an Adadelta over what it trains.

    The package keeps one global tracker and writes its configuration into the working directory, so this
    runs in a scratch directory with its printing silenced. A dendrite is added the package's way: a
    neuron-mode backward records what it needs, ``set_dendrite_training`` adds a candidate, one
    dendrite-mode backward sizes it, ``set_neuron_training`` makes it a dendrite.
    """
    import contextlib
    import io
    import os
    import tempfile

    from perforatedai import globals_perforatedai as GPA
    from perforatedai import utils_perforatedai as UPA

    here = os.getcwd()
    scratch = tempfile.mkdtemp(prefix="pai_")
    try:
        os.chdir(scratch)
        with contextlib.redirect_stdout(io.StringIO()):
            GPA.pc.set_testing_dendrite_capacity(False)
            GPA.pc.set_unwrapped_modules_confirmed(True)
            GPA.pc.set_configuration_confirmed(True)
            GPA.pc.set_weight_decay_accepted(True)
            torch.manual_seed(seed)
            model = UPA.perforate_model(MnistNet(), doing_pai=True, save_name="bench", making_graphs=False,
                                        maximizing_score=True)
            model.fc1.set_this_output_dimensions([-1, 0])
            model.fc2.set_this_output_dimensions([-1, 0])
            GPA.pai_tracker.set_optimizer_instance(adadelta(model.parameters()))
            xs, ys = make_data(TRAIN_BATCH, "cpu", count=1)
            for _ in range(k):
                F.cross_entropy(model(xs[0]), ys[0]).backward()
                GPA.pai_tracker.set_dendrite_training()
                F.cross_entropy(model(xs[0]), ys[0]).backward()
                GPA.pai_tracker.set_neuron_training()
            model.zero_grad(set_to_none=True)
    finally:
        os.chdir(here)
    model = model.to(device)
    return model, adadelta([p for p in model.parameters() if p.requires_grad])


def build(kind: str, k: int, candidates: int, device: str, seed: int = 0, snapshot: str = "measured"):
    """(model, optimizer or None) for one configuration.

    kind: "plain" (unwrapped), "neuron" or "dendrite" (wrapped, K dendrites, phase configured by the
    CycleController), "infer" (wrapped, K dendrites, no optimizer).
    """
    torch.manual_seed(seed)
    model = MnistNet().to(device)
    if kind == "plain":
        return model, adadelta(model.parameters())
    if kind.startswith("pai"):
        return build_perforatedai(k, device, seed)
    ctl = pb_core.CycleController(model, "pb", optimizer_factory=adadelta, candidates=max(candidates, 1))
    # K dendrites with non-zero u; the controller's own flags: perforation, frozen V/c, trainable u or candidates
    ctl.stage(k, "dendrite" if kind == "dendrite" else "neuron", snapshot=snapshot)
    layers = list(ctl.layers.values())
    assert all(layer.perforated and layer.num_dendrites == k for layer in layers)
    assert all(not p.requires_grad for layer in layers for p in layer.dendrite_weights.values())
    assert all(not layer.dendrite_cascade.requires_grad for layer in layers)
    if kind == "dendrite":  # network and u frozen, candidates train on the covariance signal
        assert all(not p.requires_grad for p in ctl._network_params)
        assert all(not layer.dendrite_out.requires_grad for layer in layers)
        assert all(layer.num_candidates == candidates and layer.stats is not None
                   and all(p.requires_grad for p in layer.candidate_parameters()) for layer in layers)
    else:  # neuron phase: the network and u train
        assert all(p.requires_grad for p in ctl._network_params)
        assert all(layer.dendrite_out.requires_grad and layer.num_candidates == 0 for layer in layers)
    return model, (None if kind == "infer" else ctl.optimizer)


def make_data(batch: int, device: str, count: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, 1, 28, 28, generator=gen).to(device) for _ in range(count)]
    ys = [torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device) for _ in range(count)]
    return xs, ys


class Config:
    """One timed configuration: a model, its data and one iteration (a training step or a forward)."""

    def __init__(self, section: str, kind: str, k: int, candidates: int, batch: int, device: str,
                 snapshot: str = "measured"):
        self.section, self.kind, self.k, self.c, self.batch, self.device = section, kind, k, candidates, batch, device
        build_kind = kind if section == "train" or kind in ("plain", "pai") else "infer"
        self.model, self.optimizer = build(build_kind, k, candidates, device, snapshot=snapshot)
        if section != "train":
            self.optimizer = None
        self.xs, self.ys = make_data(batch, device)
        self.i = 0
        if section == "train":
            self.model.train()
        else:
            self.model.eval()

    @property
    def label(self) -> str:
        if self.kind == "plain":
            return "plain"
        if self.kind == "pai":
            return f"perforatedai K={self.k}"
        return f"{self.kind} K={self.k}" + (f" C={self.c}" if self.kind == "dendrite" else "")

    def iteration(self):
        x, y = self.xs[self.i % len(self.xs)], self.ys[self.i % len(self.ys)]
        self.i += 1
        if self.section == "train":
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
        else:
            with torch.no_grad():
                self.model(x)

    def run(self, n: int) -> float:
        """Seconds per iteration over n iterations (wall clock, or this process's CPU time with --clock cpu)."""
        sync = torch.cuda.synchronize if self.device.startswith("cuda") else (lambda: None)
        sync()
        start = CLOCK()
        for _ in range(n):
            self.iteration()
        sync()
        return (CLOCK() - start) / n


# ---------------------------------------------------------------------------------------------- memory
def _proc_status_mib(*keys: str) -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0]) / 1024  # kB
    return out


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_child(spec: dict) -> dict:
    """Runs in a fresh interpreter: peak memory of a few iterations of one configuration.

    CPU: the growth of the peak resident set (the number ``getrusage`` reports as ru_maxrss) over the
    steps, above the resident set just before them. ru_maxrss itself cannot be used in a child: Linux
    carries the parent's peak across fork + exec, so a child of a big parent starts with the parent's
    peak. The child therefore resets its peak mark (/proc/self/clear_refs) and reads VmHWM; where that
    is not allowed it falls back to ru_maxrss and says whether the peak fell inside the steps.
    """
    torch.set_num_threads(spec["threads"])
    cfg = Config(spec["section"], spec["kind"], spec["k"], spec["c"], spec["batch"], spec["device"],
                 spec.get("snapshot", "measured"))
    gc.collect()
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        cfg.run(spec["steps"])
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mib": (peak - before) / 2**20, "held_before_mib": before / 2**20, "exact": True}
    if _reset_peak_rss():
        rss_before = _proc_status_mib("VmRSS")["VmRSS"]
        cfg.run(spec["steps"])
        hwm = _proc_status_mib("VmHWM")["VmHWM"]
        return {"peak_mib": hwm - rss_before, "held_before_mib": rss_before, "exact": True}
    rss_before = _proc_status_mib("VmRSS")["VmRSS"]
    max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    cfg.run(spec["steps"])
    max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # exact False: the process peaked before the steps, so the number is only an upper bound.
    return {"peak_mib": max_after - rss_before, "held_before_mib": rss_before, "exact": max_after > max_before}


def measure_memory(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report
def floor_for(section: str, kind: str, k: int, c: int, snapshot: str = "measured") -> float:
    if section == "train":
        if kind == "plain":
            return 1.0
        if kind == "neuron":
            return (3 + k) / 3
        if kind == "pai":  # its dendrites train jointly: each one a forward and a full backward
            return 1.0 + k
        return (2 + 2 * c + k + (c if snapshot == "measured" else 0)) / 3
    return 1.0 if kind == "plain" else 1.0 + k


def fmt_ok(ratio: float, floor: float) -> str:
    return "ok" if ratio <= TARGET * floor else "NO"


def machine_line(args) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical CPUs visible)" if names else cpu
    except OSError:
        pass
    dev = args.device
    if dev.startswith("cuda"):
        dev = f"{dev} ({torch.cuda.get_device_name()})"
    return (f"machine: {cpu}; device {dev}; torch {torch.__version__}; threads {torch.get_num_threads()}; clock {args.clock}; "
            f"repeats {args.repeats}; iterations/repeat: train {args.batches}, infer b100 {args.batches}, "
            f"infer b1 {args.batches * 10}; warm-up {args.warmup}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batches", type=int, default=10, help="timed iterations per repeat (batch-1 inference: 10x)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-k", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=1, help="C, candidates per neuron in the dendrite phase")
    ap.add_argument("--snapshot", default="measured", choices=["measured", "epoch_end"],
                    help="candidate_snapshot of the dendrite phase (measured: one more candidate forward)")
    ap.add_argument("--perforatedai", action="store_true",
                    help="also time the perforatedai package at the same K (needs it installed)")
    ap.add_argument("--out", type=Path, default=None, help="CSV with every measurement")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time, which a machine shared with other jobs inflates far less "
                         "than wall time (use with --threads 1: idle OpenMP threads spin)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.memory_child is not None:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    ks = list(range(args.max_k + 1))
    c = args.candidates
    device = args.device if args.device == "cpu" else "cuda"

    if args.perforatedai:
        try:
            import perforatedai  # noqa: F401
        except ImportError as exc:
            ap.error(f"--perforatedai: the package cannot be imported ({exc}); pip install perforatedai")
    configs = [Config("train", "plain", 0, 0, TRAIN_BATCH, device)]
    configs += [Config("train", "neuron", k, 0, TRAIN_BATCH, device) for k in ks]
    configs += [Config("train", "dendrite", k, c, TRAIN_BATCH, device, args.snapshot) for k in ks]
    if args.perforatedai:
        configs += [Config("train", "pai", k, 0, TRAIN_BATCH, device) for k in ks]
    for batch in (1, 100):
        configs.append(Config(f"infer{batch}", "plain", 0, 0, batch, device))
        configs += [Config(f"infer{batch}", "pb", k, 0, batch, device) for k in ks]
        if args.perforatedai:
            configs += [Config(f"infer{batch}", "pai", k, 0, batch, device) for k in ks]
    iters = {cfg: args.batches * (10 if cfg.section == "infer1" else 1) for cfg in configs}

    print(machine_line(args), flush=True)
    for cfg in configs:  # warm-up (allocator, oneDNN primitive caches, optimizer state)
        cfg.run(args.warmup)
    samples = {cfg: [] for cfg in configs}
    t0 = time.perf_counter()
    for r in range(args.repeats):
        for cfg in configs:
            samples[cfg].append(cfg.run(iters[cfg]))
        print(f"  repeat {r + 1}/{args.repeats} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    def ref_of(cfg):
        if cfg.section == "train":
            return next(x for x in configs if x.section == "train" and x.kind == "neuron" and x.k == 0)
        return next(x for x in configs if x.section == cfg.section and x.kind == "plain")

    def ratio(cfg):
        ref = ref_of(cfg)
        per_repeat = [a / b for a, b in zip(samples[cfg], samples[ref])]
        return statistics.median(per_repeat), min(per_repeat), max(per_repeat)

    params = {"plain": pb_core.count_parameters(configs[0].model)}
    for cfg in configs:
        if cfg.section == "train" and cfg.kind == "neuron":
            params[cfg.k] = pb_core.count_parameters(cfg.model)
        if cfg.section == "train" and cfg.kind == "pai":  # everything it holds (its own count may differ)
            params[("pai", cfg.k)] = sum(p.numel() for p in cfg.model.parameters())

    memory = {}
    if not args.no_memory:
        for cfg in configs:
            if cfg.section == "infer1" or cfg.kind == "pai":
                continue
            spec = {"section": cfg.section, "kind": cfg.kind, "k": cfg.k, "c": cfg.c, "batch": cfg.batch,
                    "device": device, "threads": args.threads, "steps": max(3, args.warmup),
                    "snapshot": args.snapshot}
            memory[cfg] = measure_memory(spec)

    rows = []
    print()
    print(f"Training step, batch {TRAIN_BATCH} (s/step: median over repeats; ratio: median of per-repeat ratios "
          "to 'neuron K=0' [min-max]; target: ratio <= 1.15 x floor)")
    head = f"{'configuration':<20} {'params':>10} {'s/step':>8} {'ratio':>6} {'[min-max]':>13} {'floor':>6} {'r/floor':>7} {'target':>6} {'peak MiB':>9}"
    print(head)
    print("-" * len(head))
    for cfg in configs:
        if cfg.section != "train":
            continue
        med = statistics.median(samples[cfg])
        rat, lo, hi = ratio(cfg)
        fl = floor_for(cfg.section, cfg.kind, cfg.k, cfg.c, args.snapshot)
        p = {"plain": params["plain"], "pai": params.get(("pai", cfg.k))}.get(cfg.kind, params.get(cfg.k))
        mem = memory.get(cfg)
        mem_s = "-" if mem is None else f"{'' if mem['exact'] else '<='}{mem['peak_mib']:.0f}"
        print(f"{cfg.label:<20} {p:>10,} {med:>8.4f} {rat:>6.2f} {f'[{lo:.2f}-{hi:.2f}]':>13} {fl:>6.2f} "
              f"{rat / fl:>7.2f} {fmt_ok(rat, fl) if cfg.kind != 'plain' else '':>6} {mem_s:>9}")
        rows.append({"section": "train_step", "config": cfg.label, "kind": cfg.kind, "K": cfg.k, "C": cfg.c,
                     "batch": cfg.batch, "params": p, "seconds_median": med, "inputs_per_s": cfg.batch / med,
                     "ratio": rat, "ratio_min": lo, "ratio_max": hi, "reference": ref_of(cfg).label,
                     "floor": fl, "within_target": rat <= TARGET * fl,
                     "peak_mib": None if mem is None else mem["peak_mib"]})
    for batch in (1, 100):
        sec = f"infer{batch}"
        print()
        print(f"Inference, batch {batch} (eval, no_grad; ratio = time per input / plain model's; floor 1 + K)")
        head = f"{'configuration':<20} {'inputs/s':>10} {'ratio':>6} {'[min-max]':>13} {'floor':>6} {'r/floor':>7} {'target':>6} {'peak MiB':>9}"
        print(head)
        print("-" * len(head))
        for cfg in configs:
            if cfg.section != sec:
                continue
            med = statistics.median(samples[cfg])
            rat, lo, hi = ratio(cfg)
            fl = floor_for(cfg.section, cfg.kind, cfg.k, cfg.c)
            mem = memory.get(cfg)
            mem_s = "-" if mem is None else f"{'' if mem['exact'] else '<='}{mem['peak_mib']:.0f}"
            label = {"plain": "plain (unwrapped)", "pai": f"perforatedai K={cfg.k}"}.get(cfg.kind, f"pb K={cfg.k}")
            print(f"{label:<20} {batch / med:>10,.0f} {rat:>6.2f} {f'[{lo:.2f}-{hi:.2f}]':>13} {fl:>6.2f} "
                  f"{rat / fl:>7.2f} {fmt_ok(rat, fl) if cfg.kind != 'plain' else '':>6} {mem_s:>9}")
            rows.append({"section": f"inference_b{batch}", "config": label, "kind": cfg.kind, "K": cfg.k, "C": 0,
                         "batch": batch, "params": {"plain": params["plain"], "pai": params.get(("pai", cfg.k))}.get(
                             cfg.kind, params.get(cfg.k)),
                         "seconds_median": med, "inputs_per_s": batch / med, "ratio": rat, "ratio_min": lo,
                         "ratio_max": hi, "reference": "plain (unwrapped)", "floor": fl,
                         "within_target": rat <= TARGET * fl, "peak_mib": None if mem is None else mem["peak_mib"]})
    if args.perforatedai:
        print()
        print("pb_core vs perforatedai at equal K, same run (train: pb_core's neuron-phase step vs perforatedai's "
              "joint step, steps/s; inference: inputs/s)")
        head = f"{'K':>2} {'train pb':>9} {'train pai':>9} {'x':>5} {'b1 pb':>8} {'b1 pai':>8} {'x':>5} {'b100 pb':>8} {'b100 pai':>8} {'x':>5}"
        print(head)
        print("-" * len(head))
        rate = {(cfg.section, cfg.kind, cfg.k): cfg.batch / statistics.median(samples[cfg]) for cfg in configs}
        steps = {key: value / TRAIN_BATCH for key, value in rate.items() if key[0] == "train"}
        for k in ks:
            t_pb, t_pai = steps[("train", "neuron", k)], steps[("train", "pai", k)]
            b1 = rate[("infer1", "pb", k)], rate[("infer1", "pai", k)]
            b100 = rate[("infer100", "pb", k)], rate[("infer100", "pai", k)]
            print(f"{k:>2} {t_pb:>9.1f} {t_pai:>9.1f} {t_pb / t_pai:>5.2f} {b1[0]:>8.0f} {b1[1]:>8.0f} "
                  f"{b1[0] / b1[1]:>5.2f} {b100[0]:>8.0f} {b100[1]:>8.0f} {b100[0] / b100[1]:>5.2f}")
    print()
    print("Parameters (pb_core.count_parameters; candidates never counted): " +
          ", ".join([f"plain {params['plain']:,}"] +
                    [f"K={k} {params[k]:,} ({params[k] / params['plain']:.2f}x)" for k in ks]))
    if memory:
        what = ("growth of the peak RSS (VmHWM, reset before the steps) above the RSS just before them"
                if device == "cpu" else "torch.cuda.max_memory_allocated above the memory held before the steps")
        print(f"peak MiB: {what}, over the first {max(3, args.warmup)} iterations (optimizer state and gradients "
              "included) in a fresh process per configuration; '<=' marks an upper bound (ru_maxrss fallback).")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": args.device, "threads": args.threads, "repeats": args.repeats, "batches": args.batches,
                "torch": torch.__version__}
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) + list(meta))
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, **meta})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
