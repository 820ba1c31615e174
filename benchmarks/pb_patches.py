"""Proposed speed-ups for pb_core, applied by monkeypatching (the files in pb_core/ are not touched).

``python benchmarks/pb_overhead.py --patched`` measures the same configurations with these
replacements so their effect can be read off the same table; ``check_equivalence()`` (run by
``--patched``) verifies on random data that each replacement computes what pb_core computes.

1. ``covariance_gradient``: replaces ``DendriticLayer._covariance_gradient`` +
   ``CovarianceStats.gradient``. Same statistics and the same gradient, but
   * works on the layer's native layout (reduces over batch and positions in place) instead of
     ``movedim(...).reshape(-1, C, N)`` copies of the candidate activations and the errors, and the
     inverse copy of the gradient;
   * computes each batch's moments in float32 on data centred by the batch mean (so nothing cancels)
     and adds them to the float64 running sums (the phase/epoch sums stay float64, which is what the
     float64 was for), instead of casting (M, C, N) to float64 and making ~20 float64 passes;
   * forms the gradient ``-sigma * (D - mean_D) * scale / m`` as one ``addcmul`` (a per-neuron
     affine map of D) instead of five full-size temporaries.
2. ``dendrite_forward``: replaces ``DendriticLayer.forward``/``_dendrite_activations`` when the
   frozen dendrite stack needs no graph (perforated neuron and dendrite phases, inference): the cascade
   and the activation run in place on the stacked pre-activations (no ``torch.stack`` of the
   earlier activations inside the loop, no final stack), and ``sum_k u_k a_k`` is accumulated with
   ``addcmul`` instead of a (K, ...)-sized product, a ``sum`` and an ``add``.
"""
from __future__ import annotations

import torch

from pb_core import layer as pb_layer
from pb_core.covariance import CovarianceTap

_ORIGINAL = {
    "forward": pb_layer.DendriticLayer.forward,
    "_dendrite_activations": pb_layer.DendriticLayer._dendrite_activations,
    "_covariance_gradient": pb_layer.DendriticLayer._covariance_gradient,
}

_INPLACE_G = {"sigmoid": torch.Tensor.sigmoid_, "tanh": torch.Tensor.tanh_, "identity": lambda t: t}


def _per_neuron_row(layer, row: torch.Tensor) -> torch.Tensor:
    """(N,) -> broadcastable against one copy of the stacked tensor (neuron axis, then positions)."""
    return row.reshape(row.shape[0], *([1] * (-layer.adapter.neuron_dim - 1)))


# ---------------------------------------------------------------------------------------- 1. covariance
@torch.no_grad()
def covariance_gradient(self, cand_act: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    stats = self.stats
    nd, sd = self.adapter.neuron_dim, self.stack_dim
    n_axis_d = err.dim() + nd
    red_d = tuple(i for i in range(err.dim()) if i != n_axis_d)
    red_a = tuple(i for i in range(cand_act.dim()) if i not in (cand_act.dim() + sd, cand_act.dim() + nd))
    if not red_d:  # a single unbatched sample: nothing to gain, keep pb_core's code path
        return _ORIGINAL["_covariance_gradient"](self, cand_act, err)
    m = err.numel() // err.shape[n_axis_d]
    work = torch.promote_types(cand_act.dtype, torch.float32)  # half precision: moments in float32
    d, cand_act_w = err.to(work), cand_act.to(work)
    d_e = d.unsqueeze(sd)  # the copy axis, so it broadcasts against the candidates
    # Error moments of this batch (float32 reductions of one pass each, accumulated in float64).
    d_sum = d.sum(red_d).double()
    d_sq = torch.linalg.vector_norm(d, dim=red_d).double() ** 2
    # Candidate moments, centred on the batch mean mu (the float32 value actually subtracted).
    a_sum = cand_act_w.sum(red_a, keepdim=True)
    mu = a_sum / m
    ac = cand_act_w - mu
    c_ad = (ac * d_e).sum(red_a).double()  # (C, N)
    c_aa = torch.linalg.vector_norm(ac, dim=red_a).double() ** 2
    a_sum = a_sum.reshape(c_ad.shape).double()
    mu = mu.reshape(c_ad.shape).double()
    resid = a_sum - m * mu  # sum(ac): zero up to rounding
    # Same order as CovarianceStats.gradient: running error moments from earlier batches first.
    if stats.d_count > 0:
        mean_d = stats.d_sum / stats.d_count
        var_d = (stats.d_sq_sum / stats.d_count - mean_d ** 2).clamp_min(0)
    else:
        mean_d = d_sum / m
        var_d = (d_sq / m - mean_d ** 2).clamp_min(0)
    batch_cov = (c_ad - resid * (d_sum / m)) / m
    stats.cov_ema = torch.where(torch.isnan(stats.cov_ema), batch_cov,
                                stats.momentum * stats.cov_ema + (1 - stats.momentum) * batch_cov)
    sigma = torch.where(stats.cov_ema < 0, -1.0, 1.0)
    scale = 1.0 / (var_d.sqrt() + stats.eps)
    factor = -sigma * scale / m                  # grad = factor * (D - mean_D) = factor * D + offset
    offset = -factor * mean_d
    shape = (*factor.shape, *([1] * (-nd - 1)))
    grad = torch.addcmul(offset.to(cand_act.dtype).reshape(shape), d_e,
                         factor.to(cand_act.dtype).reshape(shape))
    stats.d_count += m
    stats.d_sum += d_sum
    stats.d_sq_sum += d_sq
    stats.n += m
    stats.sa += a_sum
    stats.saa += c_aa + 2 * mu * resid + m * mu ** 2
    stats.sad += c_ad + mu * d_sum
    stats.sd += d_sum
    stats.sdd += d_sq
    if grad.shape != cand_act.shape:  # C > 1 with nothing else broadcasting: autograd wants the exact shape
        grad = grad.expand_as(cand_act)
    return grad


# ---------------------------------------------------------------------------------------- 2. dendrites
def _dendrite_activations_inplace(self, inputs: tuple) -> torch.Tensor:
    """Same values as pb_core's, computed in place on the stacked pre-activations (no graph needed)."""
    z = self.adapter.stacked_forward(self.main, dict(self.dendrite_weights), inputs)
    sd = self.stack_dim
    g_ = _INPLACE_G[self.activation]
    for k in range(self.num_dendrites):
        zk = z.select(sd, k)
        for j in range(k):
            zk.addcmul_(z.select(sd, j), _per_neuron_row(self, self.dendrite_cascade[k, j]))
        g_(zk)
    return z


def forward(self, *args, **kwargs):
    k, c = self.num_dendrites, self.num_candidates
    needs_graph = torch.is_grad_enabled() and k > 0 and (
        not self.perforated or self.dendrite_cascade.requires_grad
        or any(p.requires_grad for p in self.dendrite_weights.values()))
    if k == 0 or needs_graph:
        return _ORIGINAL["forward"](self, *args, **kwargs)
    output = self.main(*args, **kwargs)
    train_candidates = c > 0 and (self.candidate_learning == "gradient"
                                  or (self.training and torch.is_grad_enabled()))
    pre = self.adapter.pre_activation(self.main, output)
    inputs = self.adapter.dendrite_inputs(args, kwargs)
    detached = tuple(t.detach() if torch.is_tensor(t) else t for t in inputs)
    sd = self.stack_dim
    with torch.no_grad():
        acts = _dendrite_activations_inplace(self, detached)
    # sum_k u_k a_k: the first term out of place (autograd keeps `pre` intact), the rest in place on
    # that fresh tensor (AddcmulBackward saves only a_k and u_k, never the tensor it adds to).
    u = self.dendrite_out
    pre = torch.addcmul(pre, acts.select(sd, 0), _per_neuron_row(self, u[0]))
    for j in range(1, k):
        pre = pre.addcmul_(acts.select(sd, j), _per_neuron_row(self, u[j]))
    if train_candidates:
        cand = self._candidate_activations(detached, acts)
        if self.candidate_learning == "covariance":
            pre = CovarianceTap.apply(pre, cand, self)
        else:
            pre = pre + (self._per_neuron(self.candidate_out) * cand).sum(sd)
    return self.adapter.rebuild_output(self.main, output, pre)


# ---------------------------------------------------------------------------------------- switches
def apply(which=("covariance_gradient", "dendrite_forward")) -> None:
    if "covariance_gradient" in which:
        pb_layer.DendriticLayer._covariance_gradient = covariance_gradient
    if "dendrite_forward" in which:
        pb_layer.DendriticLayer.forward = forward


def restore() -> None:
    for name, fn in _ORIGINAL.items():
        setattr(pb_layer.DendriticLayer, name, fn)


def check_equivalence(seed: int = 0, atol: float = 1e-5, rtol: float = 1e-4) -> dict:
    """Run stock and patched pb_core on identical layers and data; return the largest differences.

    Covers a Conv2d and a Linear layer with K = 2 dendrites and C = 2 candidates: the forward output,
    the gradients of the neuron weights and of u (neuron phase), and, over three dendrite-phase
    batches, the candidates' gradients and every running statistic. Raises AssertionError when a
    difference exceeds the tolerances.
    """
    import copy

    from torch import nn

    import pb_core

    torch.manual_seed(seed)
    cases = [(nn.Conv2d(3, 8, 3), lambda: torch.randn(4, 3, 9, 9)),
             (nn.Linear(10, 6), lambda: torch.randn(16, 10))]
    worst: dict[str, float] = {}

    def note(name, a, b):
        a, b = a.detach().double(), b.detach().double()
        err = float(((a - b).abs() / (atol + rtol * b.abs())).max()) if a.numel() else 0.0
        worst[name] = max(worst.get(name, 0.0), err)

    for main, data in cases:
        base = nn.Sequential(main)
        pb_core.wrap(base, "all")
        layer = base[0]
        for _ in range(2):
            layer.add_candidates(2)
            layer.commit_candidates()
        with torch.no_grad():
            layer.dendrite_out.uniform_(-1, 1)
        layer.set_dendrites_trainable(weights=False, output=True)
        xs = [data() for _ in range(3)]
        # neuron phase: output and gradients
        runs = {}
        for label in ("stock", "patched"):
            restore() if label == "stock" else apply()
            net = copy.deepcopy(base)
            out = net(xs[0])
            (out.square().sum()).backward()
            runs[label] = (out, net[0].main.weight.grad, net[0].dendrite_out.grad)
        restore()
        for name, a, b in zip(("forward", "grad_w", "grad_u"), runs["patched"], runs["stock"]):
            note(name, a, b)
        # dendrite phase: candidate gradients and statistics over three batches
        layer.add_candidates(2)
        for p in layer.main.parameters():
            p.requires_grad_(False)
        layer.set_dendrites_trainable(weights=False, output=False)
        runs = {}
        for label in ("stock", "patched"):
            restore() if label == "stock" else apply()
            net = copy.deepcopy(base)
            grads = []
            for x in xs:
                net.zero_grad()
                net(x).square().sum().backward()
                grads.append(net[0].candidate_weights["weight"].grad.clone())
            s = net[0].stats
            runs[label] = (grads, {k: getattr(s, k).clone() for k in
                                   ("d_count", "d_sum", "d_sq_sum", "cov_ema", "n", "sa", "saa", "sad", "sd", "sdd")},
                           s.epoch_correlation())
        restore()
        for a, b in zip(runs["patched"][0], runs["stock"][0]):
            note("grad_candidates", a, b)
        for key in runs["stock"][1]:
            note(f"stats.{key}", runs["patched"][1][key], runs["stock"][1][key])
        note("epoch_correlation", runs["patched"][2], runs["stock"][2])
    bad = {k: v for k, v in worst.items() if v > 1.0}
    assert not bad, f"patched pb_core differs from stock beyond atol={atol}, rtol={rtol}: {bad}"
    return worst
