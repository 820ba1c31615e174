"""A layer with dendrites (SPEC section 1).

    pre_i(x) = main(x)_i + sum_k u_{k,i} * a_{k,i}(x)
    a_{k,i}(x) = g( V_k(x)_i + sum_{j<k} c_{k,j,i} * a_{j,i}(x) )

All K dendrites of a layer are stacked: one call of the adapter evaluates every ``V_k``; the cascade
over k is a short elementwise recurrence (k depends on j < k, so it cannot be one product). Candidates
(C per neuron, trained in a dendrite phase) are stacked the same way.

Frozen dendrites in a perforated phase (and at inference) need no autograd graph: their cascade and
activation then run in place on the stacked pre-activations, and every sum over k (the output term
sum_k u_k a_k, a candidate's cascade input) is a chain of fused multiply-adds, one per k, never a
(K, ...)-sized product.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .adapters import ConvAdapter, LayerAdapter, LinearAdapter
from .covariance import CovarianceStats, CovarianceTap
from .settings import (CANDIDATE_DEFAULTS, CANDIDATE_INITS, CANDIDATE_SELECTIONS, CANDIDATE_SNAPSHOTS,  # noqa: F401
                       check_candidate_settings)

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "identity": lambda t: t}

# How candidates are trained where the paper is silent: pb_core.settings (each a DendriticLayer and
# CycleController setting).
_IN_PLACE = {"sigmoid": torch.Tensor.sigmoid_, "tanh": torch.Tensor.tanh_, "identity": lambda t: t}


_FUSABLE = (LinearAdapter, ConvAdapter)


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


def _multiply_add_chain(base: torch.Tensor, weights: torch.Tensor, xs) -> torch.Tensor:
    # The first product is added out of place (``base`` may be saved for some backward), the rest in place
    # into that fresh tensor.
    out = torch.addcmul(base, xs[0], weights[0])
    for k in range(1, len(xs)):
        out.addcmul_(xs[k], weights[k])
    return out


class _MultiplyAdd(torch.autograd.Function):
    """``base + sum_k weights[k] * xs[k]`` for small ``weights[k]`` (per neuron) broadcast over full-size
    ``xs[k]``. The backward forms each weight's gradient from one product (``(grad * x_k)`` summed;
    torch.addcmul's own backward multiplies twice) and a gradient of x_k only where one is needed."""

    @staticmethod
    def forward(ctx, base, weights, *xs):
        need = ctx.needs_input_grad
        # Keep only what the backward will use: the xs for the weights' gradient, the weights for the xs'.
        ctx.save_for_backward(weights if any(need[2:]) else None, *(xs if need[1] else ()))
        ctx.shapes = base.shape, weights.shape[1:], [x.shape for x in xs]
        return _multiply_add_chain(base, weights, xs)

    @staticmethod
    def backward(ctx, grad):
        weights, *xs = ctx.saved_tensors
        need = ctx.needs_input_grad
        base_shape, weight_shape, x_shapes = ctx.shapes
        grad_base = grad_weights = None
        if need[0]:
            grad_base = grad if grad.shape == base_shape else grad.sum_to_size(base_shape)
        if need[1]:  # one full-size product buffer for all k (fresh allocations are not free)
            prod = None
            grads = []
            for x in xs:
                prod = grad * x if prod is None else torch.mul(grad, x, out=prod)
                grads.append(prod.sum_to_size(weight_shape).clone())  # (is prod itself if nothing is summed)
            grad_weights = torch.stack(grads)
        grad_xs = [(grad * weights[k]).sum_to_size(shape) if n else None
                   for k, (shape, n) in enumerate(zip(x_shapes, need[2:]))]
        return grad_base, grad_weights, *grad_xs


def _multiply_add(base: torch.Tensor, weights: torch.Tensor, xs) -> torch.Tensor:
    """``base + sum_k weights[k] * xs[k]``, one fused multiply-add per k, never a (K, ...)-sized product."""
    if torch.is_grad_enabled() and (base.requires_grad or weights.requires_grad or any(x.requires_grad for x in xs)):
        return _MultiplyAdd.apply(base, weights, *xs)
    return _multiply_add_chain(base, weights, xs)


class DendriticLayer(nn.Module):
    """Wraps one layer (``main``) and owns its dendrites and candidates.

    Modes, set by the cycle controller (or by hand):
      * ``perforated``: dendrites see their inputs detached, so no error flows through them into
        earlier layers, and a frozen dendrite stack costs one forward pass and no backward.
      * candidates present + ``candidate_learning == "covariance"``: a dendrite phase; candidates do not
        change the output and learn from the covariance signal captured on this layer's backward.
      * candidates present + ``"gradient"``: candidates add to the output through their own output weight
        and learn from the task loss (the ``gd_dendrites`` ablation).

    Candidate training (covariance candidates; the paper leaves these open):
      * ``candidate_init``: ``"layer"`` draws each candidate as the layer itself is drawn (its
        ``reset_parameters``) with cascade weights uniform in +-1/sqrt(K); ``"normal"`` draws every weight
        and bias from N(0, ``candidate_init_std``) with cascade weights 0 (what the openly published
        package does), so candidates start unsaturated and nearly constant.
      * ``candidate_objective``: ``"covariance"`` (the paper's S) or ``"correlation"`` (S divided by the
        candidate's standard deviation, which saturating cannot raise); see :mod:`pb_core.covariance`.
      * ``candidate_snapshot``: ``"measured"``: during each epoch a frozen copy of the candidates' weights
        from the epoch's start (the *probe*) is evaluated beside them (one more forward of the candidates,
        no backward); its correlation is the epoch's measurement, and a snapshot holds exactly those
        weights. ``"epoch_end"``: the correlation is measured on the training activations while the
        weights move, and the snapshot holds the weights after the epoch's last step.
      * ``candidate_selection``: per neuron, commit the candidate with the highest snapshot |correlation|
        (``"correlation"``, the paper's choice) or |covariance| (``"covariance"``, Cascade-Correlation's
        score).
    """

    def __init__(self, main: nn.Module, adapter: LayerAdapter, activation: str = "sigmoid", name: str = "", *,
                 candidate_init: str = CANDIDATE_DEFAULTS["init"],
                 candidate_init_std: float = CANDIDATE_DEFAULTS["init_std"],
                 candidate_objective: str = CANDIDATE_DEFAULTS["objective"],
                 candidate_snapshot: str = CANDIDATE_DEFAULTS["snapshot"],
                 candidate_selection: str = CANDIDATE_DEFAULTS["selection"]):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown dendrite activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        check_candidate_settings(candidate_init, candidate_init_std, candidate_objective, candidate_snapshot,
                                 candidate_selection)
        # Candidate training (see the class docstring); add_candidates may override them per phase.
        self.candidate_init, self.candidate_init_std = candidate_init, candidate_init_std
        self.candidate_objective, self.candidate_snapshot = candidate_objective, candidate_snapshot
        self.candidate_selection = candidate_selection
        self._probe: dict[str, torch.Tensor] | None = None
        self._fused_cache: tuple | None = None
        self.main = main
        self.adapter = adapter
        self.layer_name = name
        self.activation = activation
        self.num_neurons = adapter.num_neurons(main)
        self.perforated = True
        self.candidate_learning = "covariance"
        self.stats: CovarianceStats | None = None
        self._best_candidates: dict[str, torch.Tensor] | None = None
        template = adapter.fresh_parameters(main, 0)
        n = self.num_neurons
        self.dendrite_weights = nn.ParameterDict({k: _frozen(v) for k, v in template.items()})
        self.dendrite_cascade = _frozen(self._new(0, 0, n))   # (K, K, N), row k uses columns j < k
        self.dendrite_out = nn.Parameter(self._new(0, n))      # (K, N): u, per neuron (per channel)
        self.candidate_weights = nn.ParameterDict({k: _frozen(v.clone()) for k, v in template.items()})
        self.candidate_cascade = _frozen(self._new(0, 0, n))  # (C, K, N)
        self.candidate_out = _frozen(self._new(0, n))         # (C, N): only for gradient-trained candidates

    # ------------------------------------------------------------------ shapes and bookkeeping
    def _new(self, *shape) -> torch.Tensor:
        ref = next(self.main.parameters())
        return torch.zeros(*shape, dtype=ref.dtype, device=ref.device)

    @property
    def num_dendrites(self) -> int:
        return self.dendrite_out.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.candidate_cascade.shape[0]

    @property
    def stack_dim(self) -> int:
        return self.adapter.neuron_dim - 1

    def _per_neuron(self, scalars: torch.Tensor) -> torch.Tensor:
        """(S, N) -> a view that broadcasts against a stacked tensor (copy axis before neuron axis)."""
        trailing = -self.adapter.neuron_dim - 1
        return scalars.reshape(*scalars.shape, *([1] * trailing))

    def dendrite_parameter_count(self) -> int:
        """Parameters the dendrites add: K copies of the map, the used cascade weights, K output weights."""
        k, n = self.num_dendrites, self.num_neurons
        copies = sum(p.numel() for p in self.dendrite_weights.values())
        return copies + n * k * (k - 1) // 2 + n * k

    def structure(self) -> dict:
        """What must exist before a state_dict of this layer can be loaded."""
        return {"dendrites": self.num_dendrites, "candidates": self.num_candidates,
                "candidate_out": self.candidate_out.shape[0] > 0}

    def apply_structure(self, structure: dict) -> None:
        """Allocate (zero) dendrites and candidates to match ``structure``; values come from a state_dict."""
        k, c = structure["dendrites"], structure["candidates"]
        n = self.num_neurons
        shapes = {name: p.shape[1:] for name, p in self.dendrite_weights.items()}
        for name, shape in shapes.items():
            self.dendrite_weights[name] = _frozen(self._new(k, *shape))
            self.candidate_weights[name] = _frozen(self._new(c, *shape))
        self.dendrite_cascade = _frozen(self._new(k, k, n))
        self.dendrite_out = nn.Parameter(self._new(k, n))
        self.candidate_cascade = _frozen(self._new(c, k, n))
        self.candidate_out = _frozen(self._new(c if structure["candidate_out"] else 0, n))
        if c:
            self.candidate_learning = "gradient" if structure["candidate_out"] else "covariance"
        self._fused_cache = None
        self.stats = (CovarianceStats(c, n, self.dendrite_out.device, objective=self.candidate_objective)
                      if c and not structure["candidate_out"] else None)
        self._probe = None
        self._best_candidates = self._candidate_snapshot() if self.stats is not None else None

    # Candidate statistics and per-neuron best weights are part of the state, so a run interrupted in a
    # dendrite phase resumes exactly.
    def get_extra_state(self):
        return {"stats": None if self.stats is None else self.stats.state_dict(),
                "best": None if self._best_candidates is None
                else {k: v.clone() for k, v in self._best_candidates.items()}}

    def set_extra_state(self, state):
        if state["stats"] is not None and self.stats is not None:
            self.stats.load_state_dict(state["stats"])
        if state["best"] is not None:
            self._best_candidates = {k: v.clone() for k, v in state["best"].items()}

    # ------------------------------------------------------------------ forward
    def _g(self, t: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](t)

    def _dendrite_activations(self, inputs: tuple) -> torch.Tensor:
        """The K activations a_k, stacked like a stacked forward (copy axis just before the neuron axis).

        When no graph is recorded (grad mode off, or nothing here requires grad) the cascade and g run in
        place on the stacked pre-activations; otherwise out of place, and stacked once at the end.
        """
        z = self.adapter.stacked_forward(self.main, dict(self.dendrite_weights), inputs)
        sd = self.stack_dim
        cascade = self._per_neuron(self.dendrite_cascade)  # (K, K, N, 1...): row k uses columns j < k
        if torch.is_grad_enabled() and (z.requires_grad or self.dendrite_cascade.requires_grad):
            acts: list[torch.Tensor] = []
            for k in range(self.num_dendrites):
                zk = z.select(sd, k)
                acts.append(self._g(_multiply_add(zk, cascade[k, :k], acts) if k else zk))
            return torch.stack(acts, dim=sd)
        g_ = _IN_PLACE[self.activation]
        for k in range(self.num_dendrites):
            zk = z.select(sd, k)  # a view: the updates below land in z
            for j in range(k):
                zk.addcmul_(z.select(sd, j), cascade[k, j])  # slot j already holds a_j
            g_(zk)
        return z

    def _add_dendrite_term(self, pre: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        """``pre + sum_k u_k a_k``; u's gradient is sum over samples and positions of a_k * dL/dpre."""
        sd = self.stack_dim
        return _multiply_add(pre, self._per_neuron(self.dendrite_out), acts.unbind(sd))

    def _candidate_activations(self, inputs: tuple, dendrite_acts: torch.Tensor | None,
                               weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The candidates' activations; ``weights`` (a snapshot-style dict) evaluates other weights instead."""
        if weights is None:
            params, cascade_w = dict(self.candidate_weights), self.candidate_cascade
        else:
            params = {name: weights[f"w.{name}"] for name in self.candidate_weights}
            cascade_w = weights["cascade"]
        z = self.adapter.stacked_forward(self.main, params, inputs)
        if dendrite_acts is not None:
            sd = self.stack_dim
            # Each candidate's cascade input sum_k c_k a_k: every a_k, as a (1, N) slice, against the (C, N)
            # weights c_k.
            cascade = self._per_neuron(cascade_w.transpose(0, 1))  # (K, C, N, 1...)
            acts = [a.unsqueeze(sd) for a in dendrite_acts.detach().unbind(sd)]
            z = _multiply_add(z, cascade, acts)
        return self._g(z)

    def _fusable(self, args: tuple, kwargs: dict) -> bool:
        """Can the layer's own map run as copy 0 of the dendrites' stacked call? Only without autograd (the
        fused weights are a cached concatenation), for single-tensor affine layers, and when nothing hooks
        the layer's own module (a fused call would bypass its hooks)."""
        return (not torch.is_grad_enabled() and not kwargs and len(args) == 1 and type(self.adapter) in _FUSABLE
                and not (self.main._forward_hooks or self.main._forward_pre_hooks
                         or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks))

    def _fused_parameters(self) -> dict[str, torch.Tensor]:
        """The layer's parameters stacked in front of its dendrites' (copy 0 = the layer itself), cached until
        any of them changes (tensor version counters move with every in-place update, e.g. an optimizer step)."""
        own = dict(self.main.named_parameters(recurse=False))
        tensors = (*own.values(), *self.dendrite_weights.values())
        versions = tuple(t._version for t in tensors)
        cache = self._fused_cache
        # The cache holds the tensors themselves (not their ids, which a new tensor could reuse).
        if cache is None or cache[1] != versions or any(a is not b for a, b in zip(cache[0], tensors)):
            fused = {name: torch.cat([own[name].detach().unsqueeze(0), self.dendrite_weights[name].detach()])
                     for name in self.dendrite_weights}
            self._fused_cache = cache = (tensors, versions, fused)
        return cache[2]

    def _fused_inference(self, x: torch.Tensor) -> torch.Tensor:
        """Inference with K dendrites in ONE stacked call of the map (K + 1 copies), then the cascade, g and
        sum_k u_k a_k in place: at batch 1 the per-call overhead, not arithmetic, is what a layer costs."""
        z = self.adapter.stacked_forward(self.main, self._fused_parameters(), (x,))
        sd, g_ = self.stack_dim, _IN_PLACE[self.activation]
        cascade = self._per_neuron(self.dendrite_cascade)
        u = self._per_neuron(self.dendrite_out)
        pre = z.select(sd, 0)
        for k in range(self.num_dendrites):
            zk = z.select(sd, k + 1)
            for j in range(k):
                zk.addcmul_(z.select(sd, j + 1), cascade[k, j])  # slot j + 1 already holds a_j
            g_(zk)
            pre.addcmul_(zk, u[k])
        return pre

    def forward(self, *args, **kwargs):
        k, c = self.num_dendrites, self.num_candidates
        if k and (c == 0 or self.candidate_learning == "covariance") and self._fusable(args, kwargs):
            return self._fused_inference(args[0])
        output = self.main(*args, **kwargs)
        # Covariance candidates only exist for their training signal; gradient candidates feed the output
        # through their own output weight, so they are part of the network whenever present (evaluation
        # included: the controller selects the phase's best epoch by validation).
        train_candidates = c > 0 and (self.candidate_learning == "gradient"
                                      or (self.training and torch.is_grad_enabled()))
        if k == 0 and not train_candidates:
            return output
        pre = self.adapter.pre_activation(self.main, output)
        inputs = self.adapter.dendrite_inputs(args, kwargs)
        detached = tuple(t.detach() if torch.is_tensor(t) else t for t in inputs)
        sd = self.stack_dim
        acts = None
        if k:
            needs_graph = torch.is_grad_enabled() and (not self.perforated or self.dendrite_cascade.requires_grad
                                                       or any(p.requires_grad for p in self.dendrite_weights.values()))
            with torch.set_grad_enabled(needs_graph):
                acts = self._dendrite_activations(detached if self.perforated else inputs)
            pre = self._add_dendrite_term(pre, acts)
        if train_candidates:
            cand = self._candidate_activations(detached, acts)
            if self.candidate_learning == "covariance":
                probe = None
                if self.candidate_snapshot == "measured":
                    if self._probe is None:  # a fresh phase, or a run resumed at an epoch's end
                        self._probe = self._candidate_snapshot()
                    with torch.no_grad():
                        probe = self._candidate_activations(detached, acts, self._probe)
                pre = CovarianceTap.apply(pre, cand, self, probe)
            else:
                pre = pre + (self._per_neuron(self.candidate_out) * cand).sum(sd)
        return self.adapter.rebuild_output(self.main, output, pre)

    # ------------------------------------------------------------------ covariance training
    def _covariance_gradient(self, cand_act: torch.Tensor, err: torch.Tensor,
                             probe: torch.Tensor | None = None) -> torch.Tensor:
        """Statistics update and the candidates' gradient, in the layer's own layout (no copies)."""
        return self.stats.gradient(cand_act, err, self.adapter.neuron_dim, probe)

    # ------------------------------------------------------------------ candidates
    def add_candidates(self, count: int, learning: str = "covariance", *, init: str | None = None,
                       init_std: float | None = None, objective: str | None = None,
                       snapshot: str | None = None, selection: str | None = None) -> None:
        """Start a dendrite phase: ``count`` fresh candidates per neuron, trainable.

        The keyword settings override the layer's ``candidate_*`` attributes (and are kept there, so a
        resumed run rebuilds the same statistics).
        """
        if learning not in ("covariance", "gradient"):
            raise ValueError(f"candidate learning must be 'covariance' or 'gradient', got {learning!r}")
        if learning == "gradient" and count != 1:
            raise ValueError("gradient-trained candidates all feed the output at once, so only one per neuron "
                             f"is meaningful; got candidates={count}")
        self.candidate_init = init or self.candidate_init
        self.candidate_init_std = init_std or self.candidate_init_std
        self.candidate_objective = objective or self.candidate_objective
        self.candidate_snapshot = snapshot or self.candidate_snapshot
        self.candidate_selection = selection or self.candidate_selection
        check_candidate_settings(self.candidate_init, self.candidate_init_std, self.candidate_objective,
                                 self.candidate_snapshot, self.candidate_selection)
        k, n = self.num_dendrites, self.num_neurons
        ref = self.dendrite_out
        if self.candidate_init == "layer":
            fresh = self.adapter.fresh_parameters(self.main, count)
            bound = 1.0 / math.sqrt(max(k, 1))
            cascade = torch.empty(count, k, n, dtype=ref.dtype, device=ref.device).uniform_(-bound, bound)
        else:  # small random weights: near-constant, unsaturated activations, no cascade input yet
            std = self.candidate_init_std
            fresh = {name: torch.randn(count, *p.shape[1:], dtype=ref.dtype, device=ref.device) * std
                     for name, p in self.dendrite_weights.items()}
            cascade = self._new(count, k, n)
        for name, value in fresh.items():
            self.candidate_weights[name] = nn.Parameter(value.to(ref.device, ref.dtype))
        self.candidate_cascade = nn.Parameter(cascade)
        self.candidate_learning = learning
        self._probe = None
        if learning == "gradient":
            self.candidate_out = nn.Parameter(self._new(count, n))
            self.stats = None
            self._best_candidates = None
        else:
            self.candidate_out = _frozen(self._new(0, n))
            self.stats = CovarianceStats(count, n, ref.device, objective=self.candidate_objective)
            self._best_candidates = self._candidate_snapshot()

    def candidate_parameters(self) -> list[nn.Parameter]:
        params = list(self.candidate_weights.values()) + [self.candidate_cascade]
        if self.candidate_learning == "gradient":
            params.append(self.candidate_out)
        return params

    def _candidate_snapshot(self) -> dict[str, torch.Tensor]:
        snap = {f"w.{k}": v.detach().clone() for k, v in self.candidate_weights.items()}
        snap["cascade"] = self.candidate_cascade.detach().clone()
        return snap

    @torch.no_grad()
    def end_candidate_epoch(self, rel_threshold: float = 0.0, abs_threshold: float = 0.0,
                            noise_z: float | None = None) -> dict:
        """Close a dendrite-phase epoch: correlations, per-neuron improvement, best-weight snapshots.

        ``noise_z`` None (the rule before noise-awareness): a (candidate, neuron) improves when its |r|
        beats its best so far by the thresholds, and only then is its snapshot replaced. ``noise_z`` given:
        the snapshot keeps the weights of each pair's highest |r| (any improvement), while *progress*
        needs a pair's |r| to beat its progress reference (its |r| when it last made progress, 0 at the
        start) by more than max(rel_threshold * reference, abs_threshold, noise_z * se), se being this
        epoch's split-half standard error of the layer's correlations.

        Returns ``{"correlation": mean over neurons of the best candidate's |r| this epoch, "improved":
        number of neurons with a candidate that made progress, "noise": se, "neurons": N}``.
        """
        stats = self.stats
        corr = stats.epoch_correlation().abs()  # (C, N)
        cov = stats.epoch_covariance().abs()
        noise = stats.split_half_noise()
        separable = self.adapter.neuron_separable(self.main)

        def per_copy(t):  # whole copies compete in a non-separable layer: judge a copy by its neuron mean
            return t if separable else t.mean(1, keepdim=True).expand_as(t)

        if noise_z is None:
            better = per_copy(corr) > per_copy(stats.best_abs_corr) * (1 + rel_threshold) + abs_threshold
            progress = better
        else:
            better = per_copy(corr) > per_copy(stats.best_abs_corr)
            ref = per_copy(stats.progress_ref)
            margin = torch.maximum(ref * rel_threshold, torch.full_like(ref, max(abs_threshold, noise_z * noise)))
            progress = per_copy(corr) > ref + margin
            stats.progress_ref = torch.where(progress, corr, stats.progress_ref)
        improved_neurons = int(progress.any(0).sum())
        stats.best_abs_corr = torch.where(better, corr, stats.best_abs_corr)
        stats.best_abs_cov = torch.where(better, cov, stats.best_abs_cov)
        self._store_best(better)
        # The probe of the next epoch: the weights as they are now.
        self._probe = self._candidate_snapshot() if self.candidate_snapshot == "measured" else None
        epoch_mean = float(corr.max(0).values.mean()) if corr.numel() else 0.0
        stats.reset_epoch()
        return {"correlation": epoch_mean, "improved": improved_neurons, "noise": noise,
                "neurons": self.num_neurons}

    def _store_best(self, better: torch.Tensor) -> None:
        """Copy the measured weights of each (candidate, neuron) that just improved into the snapshot: the
        probe's (the epoch's frozen copy) with ``candidate_snapshot="measured"``, else the current ones."""
        source = self._probe if self._probe is not None else self._candidate_snapshot()
        for name, param in self.candidate_weights.items():
            key = f"w.{name}"
            cur = self.adapter.to_neuron_major(name, source[key])
            best = self.adapter.to_neuron_major(name, self._best_candidates[key])
            mask = better.reshape(*better.shape, *([1] * (cur.dim() - 2)))
            self._best_candidates[key] = self.adapter.from_neuron_major(name, torch.where(mask, cur, best), param)
        self._best_candidates["cascade"] = torch.where(better.unsqueeze(1), source["cascade"],
                                                       self._best_candidates["cascade"])

    @torch.no_grad()
    def commit_candidates(self) -> dict:
        """End a dendrite phase: the chosen candidate of each neuron becomes dendrite K+1.

        Covariance candidates: per neuron, the candidate with the highest snapshot |correlation| (or
        |covariance|, ``candidate_selection``), with the weights of that snapshot; its output weight
        starts at 0, so the network's function is unchanged. Gradient candidates: the (single) candidate
        as it is, output weight included.
        """
        k, n, c = self.num_dendrites, self.num_neurons, self.num_candidates
        if c == 0:
            raise RuntimeError(f"layer '{self.layer_name}' has no candidates to commit")
        if self.candidate_learning == "covariance":
            score = self.stats.best_abs_corr if self.candidate_selection == "correlation" else self.stats.best_abs_cov
            if not self.adapter.neuron_separable(self.main):
                score = score.mean(1, keepdim=True).expand_as(score)
            choice = score.argmax(0)  # (N,)
            chosen_corr = self.stats.best_abs_corr.gather(0, choice.unsqueeze(0)).squeeze(0)
            new_weights = {}
            for name, param in self.candidate_weights.items():
                snap = self.adapter.to_neuron_major(name, self._best_candidates[f"w.{name}"])
                picked = snap[choice, torch.arange(n, device=choice.device)]  # (N, ...)
                new_weights[name] = self.adapter.from_neuron_major(name, picked.unsqueeze(0), param[:1])
            cascade = self._best_candidates["cascade"][choice, :, torch.arange(n, device=choice.device)].T  # (K, N)
            out = self._new(1, n)
        else:
            chosen_corr = None
            new_weights = {name: p.detach()[:1].clone() for name, p in self.candidate_weights.items()}
            cascade = self.candidate_cascade.detach()[0]
            out = self.candidate_out.detach()[:1].clone()
        for name, value in new_weights.items():
            self.dendrite_weights[name] = _frozen(torch.cat([self.dendrite_weights[name].detach(), value]))
        grown = self._new(k + 1, k + 1, n)
        grown[:k, :k] = self.dendrite_cascade.detach()
        grown[k, :k] = cascade
        self.dendrite_cascade = _frozen(grown)
        self.dendrite_out = nn.Parameter(torch.cat([self.dendrite_out.detach(), out]))
        self._fused_cache = None
        self.discard_candidates()
        return {"layer": self.layer_name,
                "mean_abs_correlation": None if chosen_corr is None else float(chosen_corr.mean()),
                "abs_correlation": None if chosen_corr is None else chosen_corr.clone()}

    def add_random_dendrite(self) -> None:
        """Append one freshly initialised dendrite with output weight 0 (the ``gd_joint`` variant)."""
        self.add_candidates(1, "gradient")
        self.commit_candidates()

    def discard_candidates(self) -> None:
        k, n = self.num_dendrites, self.num_neurons
        for name, p in self.candidate_weights.items():
            self.candidate_weights[name] = _frozen(self._new(0, *p.shape[1:]))
        self.candidate_cascade = _frozen(self._new(0, k, n))
        self.candidate_out = _frozen(self._new(0, n))
        self.stats = None
        self._best_candidates = None
        self._probe = None

    def set_dendrites_trainable(self, weights: bool, output: bool) -> None:
        for p in self.dendrite_weights.values():
            p.requires_grad_(weights)
        self.dendrite_cascade.requires_grad_(weights)
        self.dendrite_out.requires_grad_(output)

    def extra_repr(self) -> str:
        return (f"neurons={self.num_neurons}, dendrites={self.num_dendrites}, candidates={self.num_candidates}, "
                f"activation={self.activation}, perforated={self.perforated}")
