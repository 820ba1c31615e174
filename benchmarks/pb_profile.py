#!/usr/bin/env python
"""Where a DendriticLayer's time goes: its parts timed one by one on the MNIST-example CNN.

For every wrapped layer (conv1, conv2, fc1, fc2) and K = 1..--max-k, on the layer's real input
(batch 64, captured from a forward of the model), milliseconds per call (median, or with ``--stat min``
the fastest, of --repeats calls; the minimum is the steadier number on a shared machine):

* main        the layer itself, forward (no_grad)
* V stack     ``adapter.stacked_forward`` of the K frozen dendrites (the stacked conv/matmul)
* cascade     the rest of ``_dendrite_activations`` (no graph, so in place): cascade loop and g
* combine     ``_add_dendrite_term`` (``pre + sum_k u_k a_k``) forward, plus its backward (the gradient
              of u only)
* cand fwd    candidates (C = 1) forward with graph: stacked map + cascade input + g
* covariance  ``_covariance_gradient`` (statistics update + the candidates' gradient)
* cand bwd    backward from that gradient into the candidate weights (g' and the weight gradient)

    python benchmarks/pb_profile.py [--threads 2] [--repeats 15] [--max-k 3] [--stat median|min]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import pb_core  # noqa: E402
from pb_overhead import TRAIN_BATCH, build, make_data  # noqa: E402


def timed(fn, repeats: int, stat) -> float:
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return stat(samples) * 1e3


def capture_inputs(model) -> dict:
    seen = {}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].detach()))
             for name, layer in pb_core.dendritic_layers(model)]
    xs, _ = make_data(TRAIN_BATCH, "cpu", count=1)
    with torch.no_grad():
        model(xs[0])
    for h in hooks:
        h.remove()
    return seen


def parts(layer, x: torch.Tensor, repeats: int, stat) -> dict:
    out = {}
    with torch.no_grad():
        out["main"] = timed(lambda: layer.main(x), repeats, stat)
        weights = dict(layer.dendrite_weights)
        out["V stack"] = timed(lambda: layer.adapter.stacked_forward(layer.main, weights, (x,)), repeats, stat)
        act_fn = lambda: layer._dendrite_activations((x,))  # noqa: E731
        out["cascade"] = max(timed(act_fn, repeats, stat) - out["V stack"], 0.0)
        acts = act_fn()
        pre0 = layer.main(x)
    pre_leaf = pre0.clone().requires_grad_(True)
    u = layer.dendrite_out
    u.requires_grad_(True)
    grad = torch.randn_like(pre0)

    def combine():
        pre = layer._add_dendrite_term(pre_leaf, acts)
        torch.autograd.grad(pre, [u], grad)  # only what the term adds: d pre passes through unchanged
    out["combine"] = timed(combine, repeats, stat)

    layer.add_candidates(1)
    for p in layer.candidate_parameters():
        p.requires_grad_(True)
    out["cand fwd"] = timed(lambda: layer._candidate_activations((x,), acts), repeats, stat)
    cand = layer._candidate_activations((x,), acts)
    err = torch.randn_like(pre0) * 1e-3
    cov_fn = lambda: layer._covariance_gradient(cand.detach(), err)  # noqa: E731
    out["covariance"] = timed(cov_fn, repeats, stat)
    g = cov_fn()

    def cand_bwd():
        c = layer._candidate_activations((x,), acts)
        c.backward(g)
    out["cand bwd"] = max(timed(cand_bwd, repeats, stat) - out["cand fwd"], 0.0)
    layer.discard_candidates()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--max-k", type=int, default=3)
    ap.add_argument("--stat", choices=["median", "min"], default="median")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    stat = min if args.stat == "min" else statistics.median
    cols = ["main", "V stack", "cascade", "combine", "cand fwd", "covariance", "cand bwd"]
    print(f"ms per call, {args.stat} of {args.repeats}; threads {torch.get_num_threads()}; batch {TRAIN_BATCH}")
    print(f"{'layer':<6} {'K':>2} " + " ".join(f"{c:>10}" for c in cols))
    for k in range(1, args.max_k + 1):
        model, _ = build("neuron", k, 1, "cpu")
        inputs = capture_inputs(model)
        for name, layer in pb_core.dendritic_layers(model):
            res = parts(layer, inputs[name], args.repeats, stat)
            print(f"{name:<6} {k:>2} " + " ".join(f"{res[c]:>10.2f}" for c in cols), flush=True)


if __name__ == "__main__":
    main()
