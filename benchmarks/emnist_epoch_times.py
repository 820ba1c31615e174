#!/usr/bin/env python
"""Seconds per epoch of the EMNIST benchmark's variants at full size (112,800 training, 18,800 test images).

Every configuration is built as a run of the suite builds it (``experiments.emnist.benchmark``: the same
model, input pipeline with its augmentation, training loop and evaluation, on a synthetic prepared set of
random 28x28 images, whose content does not change the cost), and put into its phase with pb_core itself:
``CycleController(model, variant)`` wraps the variant's layers, K dendrites are added on every wrapped layer
with ``add_candidates`` + ``commit_candidates`` (``add_random_dendrite`` for gd_joint), output weights u set
non-zero, a dendrite phase gets the configured candidates (``pb.candidates`` per neuron, 4 by default; one for
gd_dendrites), and the controller, built with the run's pb settings as the runner builds it, sets perforation,
trainable flags and the candidates' optimizer with its own ``_configure_phase()``.

One epoch, as the controller runs it: one training pass (batch 64; augmented in neuron phases only) plus, in
a neuron epoch and a gradient (gd_dendrites) dendrite epoch, scoring train, validation and test in eval mode;
a covariance dendrite epoch ends with ``end_candidate_epoch()`` and scores nothing.

On the CPU a fraction of the data is timed (``--train-images``, ``--test-images``) and scaled to the full
sizes: the cost of a pass is linear in its images (fixed batch size; the per-epoch constant, one
permutation and one correlation summary, is negligible). Every configuration has its own model; repeats are
interleaved (load from other processes hits all alike) and the median is printed, of wall-clock seconds and,
on the CPU, of this process's CPU seconds (less sensitive to a shared machine). ``--count-ops`` profiles one
training pass per configuration and prints the operator calls (leaf ATen ops, each one a kernel launch on a
GPU) per training batch, which is what a launch-bound GPU step costs; ``--gpu-us-per-op`` turns them into
the GPU estimate printed at the end together with the paper profile's total (an estimate, not a measurement;
its assumptions are printed with it and are options).

    python benchmarks/emnist_epoch_times.py [--device cpu|cuda] [--threads 1] [--repeats 3] [--max-k 2]
                                            [--train-images N] [--test-images N] [--count-ops]
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
from experiments.emnist import data  # noqa: E402
from experiments.emnist.benchmark import BENCHMARK, CACHE_FORMAT, prepare_settings  # noqa: E402
from experiments.grid import Run  # noqa: E402
from experiments.registry import EpochContext  # noqa: E402
from experiments.runner import method_settings  # noqa: E402
from pb_core.records import atomic_torch_save  # noqa: E402

FULL_TRAIN, FULL_TEST = data.OFFICIAL_SIZES["train"], data.OFFICIAL_SIZES["test"]
QUICK_TRAIN, QUICK_TEST = 9_120, 304  # the partial copy the quick profile trains on


def configurations(max_k: int) -> list[tuple[str, str, int, str]]:
    """(name, variant, dendrites in place, phase)."""
    out = [("baseline neuron", "baseline", 0, "neuron")]
    for k in range(max_k + 1):
        out.append((f"pb dendrite K={k}", "pb", k, "dendrite"))
        if k:
            out.append((f"pb neuron K={k}", "pb", k, "neuron"))
    out += [("pb_head dendrite K=0", "pb_head", 0, "dendrite"), ("pb_head neuron K=1", "pb_head", 1, "neuron"),
            ("pb_backbone dendrite K=0", "pb_backbone", 0, "dendrite"),
            ("pb_backbone neuron K=1", "pb_backbone", 1, "neuron"),
            ("cc_no_perforation neuron K=1", "cc_no_perforation", 1, "neuron")]
    out += [(f"gd_dendrites dendrite K={k}", "gd_dendrites", k, "dendrite") for k in range(min(max_k, 1) + 1)]
    out += [(f"gd_joint neuron K={k}", "gd_joint", k, "neuron") for k in range(1, max_k + 1)]
    return out


def synthetic_cache(path: Path, settings: dict, n_train: int, n_test: int) -> Path:
    gen = torch.Generator().manual_seed(0)
    atomic_torch_save({
        "format": CACHE_FORMAT, "settings": prepare_settings(settings),
        "train_images": torch.randint(0, 256, (n_train, 28, 28), dtype=torch.uint8, generator=gen),
        "train_labels": torch.randint(0, 47, (n_train,), generator=gen), "train_index": torch.arange(n_train),
        "test_images": torch.randint(0, 256, (n_test, 28, 28), dtype=torch.uint8, generator=gen),
        "test_labels": torch.randint(0, 47, (n_test,), generator=gen), "test_index": torch.arange(n_test),
        "classes": data.balanced_classes()}, path)
    return path


def build(cfg: dict, cache: Path, device: str, variant: str, k: int, phase: str):
    settings = cfgmod.run_settings(cfg, Run("emnist", variant, 0))
    torch.manual_seed(0)
    exp = BENCHMARK.build(settings, cache, device)
    method = method_settings(settings, exp)  # the run's pb settings (pb_defaults + the emnist block), as the runner builds them
    ctl = pb_core.CycleController(exp.model, variant, optimizer_factory=exp.optimizer_factory,
                                  scheduler_factory=exp.scheduler_factory, **method.keywords())
    # K dendrites with non-zero u; in a dendrite phase the configured candidates per neuron (pb.candidates;
    # gd_dendrites: 1); the controller's own flags, perforation and optimizer, as in a run
    ctl.stage(k, phase)
    return exp, ctl


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def one_epoch(exp, ctl, phase: str, device: str, epoch: int) -> dict:
    """Times of the training pass and of the scoring (or the correlation summary) of one epoch."""
    covariance = phase == "dendrite" and ctl.variant.learning == "covariance"
    ctl.model.train()
    train = timed(lambda: exp.train_epoch(ctl.model, ctl.optimizer, EpochContext(phase, epoch, 1)), device)
    if covariance:
        score = timed(lambda: [layer.end_candidate_epoch() for layer in ctl.layers.values()], device)
    else:
        ctl.model.eval()
        score = timed(lambda: exp.evaluate(ctl.model), device)
    return {"train": train, "score": score, "scores": not covariance}


def leaf_ops(fn) -> int:
    """Leaf ATen operator calls (those that launch work) of ``fn()``."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    return sum(1 for e in aten if not any(c.name.startswith("aten::") for c in e.cpu_children))


def ops_per_batch(exp, ctl, phase: str, train_batches: int, score_batches: int) -> tuple[int, int]:
    """Leaf ATen ops per training batch and per scoring batch, from one profiled pass of each."""
    ctl.model.train()
    train = leaf_ops(lambda: exp.train_epoch(ctl.model, ctl.optimizer, EpochContext(phase, 0, 1)))
    ctl.model.eval()
    score = leaf_ops(lambda: exp.evaluate(ctl.model))
    return round(train / train_batches), round(score / score_batches)


def paper_estimate(per_epoch: dict, args) -> None:
    """Seconds of the paper profile on one device from seconds per epoch (``per_epoch[name]``)."""
    t = lambda name: per_epoch[name]  # noqa: E731
    neuron = {0: t("baseline neuron"), **{k: t(f"pb neuron K={k}") for k in range(1, args.max_k + 1)}}
    dendrite = {k: t(f"pb dendrite K={k}") for k in range(args.max_k + 1)}

    def at(table: dict, k: int) -> float:  # a straight line through the measured K, beyond them
        ks = sorted(table)
        if k in table:
            return table[k]
        slope = (table[ks[-1]] - table[ks[0]]) / max(ks[-1] - ks[0], 1)
        return table[ks[-1]] + slope * (k - ks[-1])

    f, later, dphase, final = args.first_cycle, args.later_cycle, args.dendrite_phase, args.final_dendrites
    cycles = range(final + 1)  # a run ending with `final` dendrites: final+1 dendrite phases and later cycles
    pb_epochs = f + (final + 1) * (dphase + later)
    runs = {
        "baseline": (f, f * neuron[0]),
        "pb": (pb_epochs, f * neuron[0] + sum(dphase * at(dendrite, k) + later * at(neuron, k + 1) for k in cycles)),
        "pb_head": (pb_epochs, f * neuron[0] + (final + 1) * (dphase * t("pb_head dendrite K=0")
                                                               + later * t("pb_head neuron K=1"))),
        "pb_backbone": (pb_epochs, f * neuron[0] + (final + 1) * (dphase * t("pb_backbone dendrite K=0")
                                                                   + later * t("pb_backbone neuron K=1"))),
        "cc_no_perforation": (pb_epochs, f * neuron[0] + sum(dphase * at(dendrite, k) for k in cycles)
                              + (final + 1) * later * t("cc_no_perforation neuron K=1")),
        "gd_dendrites": (pb_epochs, f * neuron[0] + (final + 1) * dphase * t("gd_dendrites dendrite K=1")
                         + sum(later * at(neuron, k + 1) for k in cycles)),
        "gd_joint": (f + (final + 1) * later, f * neuron[0] + (final + 1) * later * t("gd_joint neuron K=1")),
    }
    runs["baseline_matched"] = (pb_epochs, pb_epochs * neuron[0])
    print(f"\nPaper profile ({args.seeds} seeds x {len(runs)} variants, run one after another on one device), "
          f"assuming: first neuron cycle {f} epochs, later neuron cycles {later}, dendrite phases {dphase}, "
          f"{final} dendrite(s) kept (so {final + 1} dendrite phases per run); variants whose K > 1 epochs were "
          f"not measured use their K = 1 times; K beyond --max-k extrapolated linearly")
    print(f"{'variant':20s} {'epochs/run':>10s} {'hours/run':>10s} {'hours, all seeds':>16s}")
    total = 0.0
    for name, (epochs, seconds) in runs.items():
        total += seconds * args.seeds
        print(f"{name:20s} {epochs:10d} {seconds / 3600:10.2f} {seconds * args.seeds / 3600:16.1f}")
    print(f"{'total':20s} {'':10s} {'':10s} {total / 3600:16.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-k", type=int, default=2)
    p.add_argument("--train-images", type=int, default=None,
                   help=f"training images timed (default: cpu 960, cuda {FULL_TRAIN}); scaled to {FULL_TRAIN}")
    p.add_argument("--test-images", type=int, default=None,
                   help=f"official test images timed (default: cpu 500, cuda {FULL_TEST}); scaled to {FULL_TEST}")
    p.add_argument("--count-ops", action="store_true", help="also count ATen ops per training batch")
    p.add_argument("--gpu-us-per-op", type=float, default=10.0,
                   help="assumed GPU time per launched op (eager PyTorch, launch-bound) for the GPU estimate")
    p.add_argument("--first-cycle", type=int, default=40, help="assumed epochs of the first neuron cycle")
    p.add_argument("--later-cycle", type=int, default=35, help="assumed epochs of each later neuron cycle")
    p.add_argument("--dendrite-phase", type=int, default=35, help="assumed epochs of each dendrite phase")
    p.add_argument("--final-dendrites", type=int, default=2, help="assumed dendrites the runs keep")
    p.add_argument("--seeds", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_train = args.train_images or (FULL_TRAIN if args.device == "cuda" else 960)
    n_test = args.test_images or (FULL_TEST if args.device == "cuda" else 500)
    cfg = cfgmod.load_config()
    configs = configurations(args.max_k)

    with tempfile.TemporaryDirectory() as tmp:
        settings = cfgmod.run_settings(cfg, Run("emnist", "pb", 0))
        cache = synthetic_cache(Path(tmp) / "synthetic.pt", settings, n_train, n_test)
        built = {name: (*build(cfg, cache, args.device, variant, k, phase), phase)
                 for name, variant, k, phase in configs}
        times = {name: [] for name in built}
        for name, (exp, ctl, phase) in built.items():  # warm-up: first passes allocate and pick kernels
            one_epoch(exp, ctl, phase, args.device, 0)
        for repeat in range(args.repeats):
            for name, (exp, ctl, phase) in built.items():
                times[name].append(one_epoch(exp, ctl, phase, args.device, repeat + 1))
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
        train_cfg = cfg["benchmarks"]["emnist"]["train"]
        train_batches = -(-n_train // train_cfg["batch_size"])
        score_batches = sum(-(-n // train_cfg["eval_batch_size"]) for n in (n_train, n_test // 2, n_test - n_test // 2))
        ops = {name: ops_per_batch(exp, ctl, phase, train_batches, score_batches)
               for name, (exp, ctl, phase) in built.items()} if args.count_ops else {}
        params = {name: pb_core.count_parameters(ctl.model) for name, (_, ctl, _) in built.items()}

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {args.threads} thread(s)"
    print(f"EMNIST Balanced, MNIST-example CNN, {device}, torch {torch.__version__}; timed {n_train} training and "
          f"{n_test} test images, scaled to {FULL_TRAIN} + {FULL_TEST}; median of {args.repeats} repeats")
    clock = ("wall", "cpu") if args.device == "cpu" else ("wall",)
    header = f"{'configuration':30s} {'params':>10s}" + "".join(
        f" {'ms/img train ' + c:>17s} {'ms/img score ' + c:>17s} {'s/epoch ' + c:>14s}" for c in clock)
    header += f" {'quick s/epoch':>13s}" + (f" {'ops/batch':>9s} {'GPU s/epoch est':>15s}" if ops else "")
    print(header)
    print("-" * len(header))
    per_epoch, gpu_epoch = {}, {}
    ref = len(clock) - 1  # CPU seconds on the CPU (a shared machine inflates wall time), wall on a GPU
    for name, (exp, ctl, phase) in built.items():
        row = f"{name:30s} {params[name]:10,d}"
        scores = times[name][0]["scores"]
        for i, _ in enumerate(clock):
            train = statistics.median(t["train"][i] for t in times[name]) / n_train  # s per image
            score = statistics.median(t["score"][i] for t in times[name])
            score_per_img = score / (n_train + n_test) if scores else 0.0
            full = train * FULL_TRAIN + (score_per_img * (FULL_TRAIN + FULL_TEST) if scores else score)
            row += f" {1000 * train:17.3f} {1000 * score_per_img:17.3f} {full:14.1f}"
            if i == ref:
                per_epoch[name] = full
                # The quick profile: the partial copy, train_score running (only validation and test scored).
                quick = train * QUICK_TRAIN + score_per_img * QUICK_TEST
        row += f" {quick:13.1f}"
        if ops:
            train_ops, score_ops = ops[name]
            gpu = -(-FULL_TRAIN // 64) * train_ops * args.gpu_us_per_op * 1e-6
            if scores:
                gpu += -(-(FULL_TRAIN + FULL_TEST) // 1000) * score_ops * args.gpu_us_per_op * 1e-6
            gpu_epoch[name] = gpu
            row += f" {train_ops:9,d} {gpu:15.2f}"
        print(row)
    print("\ns/epoch: one epoch at full size (train pass + scoring of train, validation and test; covariance "
          "dendrite epochs score nothing). quick s/epoch: an epoch of the quick profile (9,120 training images, "
          "train_score running: only the 304 validation+test images scored), from the per-image times.")
    paper_estimate(per_epoch, args)
    if gpu_epoch:
        print(f"\nGPU estimate (not measured): each ATen op {args.gpu_us_per_op:g} us of launch and dispatch "
              "(a step of this small model is launch-bound, its arithmetic takes well under 1 ms per batch)")
        paper_estimate(gpu_epoch, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
