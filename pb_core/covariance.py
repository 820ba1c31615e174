"""Cascade-Correlation training signal for candidate dendrites (SPEC section 1, dendrite phase).

For candidate c of neuron i the objective is the magnitude of

    S_ci = sum over samples (and positions) of (a_ci - mean_a_ci) * (D_i - mean_D_i)

where D_i = dL/dpre_i is the neuron's error. Its gradient with respect to the candidate's activation,
with the means held fixed as in Cascade-Correlation, is sigma_ci * (D_i - mean_D_i); autograd then
multiplies by g'(in) and the candidate's input. ``mean_D`` is the running mean of previous mini-batches
of the phase (the network is frozen, so D is stationary), and ``sigma`` is the sign of an exponential
running covariance. Each neuron's signal is divided by the running standard deviation of its error:
a positive per-neuron factor that leaves the direction of each candidate's gradient unchanged and keeps
step sizes comparable across layers whose errors differ by orders of magnitude.

All statistics are float64: they are sums over a whole epoch, where float32 loses the covariance.
"""
from __future__ import annotations

import torch


class CovarianceStats:
    """Running statistics of one layer's candidates (C per neuron, N neurons) and their errors."""

    def __init__(self, candidates: int, neurons: int, device, momentum: float = 0.9, eps: float = 1e-12):
        self.candidates, self.neurons = candidates, neurons
        self.momentum, self.eps = momentum, eps
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        # Phase-long error moments (for mean_D and its scale).
        self.d_count = zeros(())
        self.d_sum, self.d_sq_sum = zeros(neurons), zeros(neurons)
        # Exponential running covariance (for sigma); NaN until the first batch.
        self.cov_ema = torch.full((candidates, neurons), float("nan"), dtype=torch.float64, device=device)
        # Best |correlation| seen per candidate and neuron over the phase's epochs.
        self.best_abs_corr = zeros(candidates, neurons)
        self.reset_epoch()

    def reset_epoch(self) -> None:
        c, n = self.candidates, self.neurons
        dev = self.d_sum.device
        self.n = torch.zeros((), dtype=torch.float64, device=dev)
        self.sa = torch.zeros(c, n, dtype=torch.float64, device=dev)
        self.saa = torch.zeros(c, n, dtype=torch.float64, device=dev)
        self.sad = torch.zeros(c, n, dtype=torch.float64, device=dev)
        self.sd = torch.zeros(n, dtype=torch.float64, device=dev)
        self.sdd = torch.zeros(n, dtype=torch.float64, device=dev)

    @torch.no_grad()
    def gradient(self, act: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """Update the statistics with one batch and return d(-sigma*S)/d(act), shaped like ``act``.

        act: (M, C, N) candidate activations, err: (M, N) neuron errors, M = samples x positions.
        The sign makes the usual minimising optimizer *increase* |S|.
        """
        a, d = act.double(), err.double()
        m = d.shape[0]
        if self.d_count > 0:
            mean_d = self.d_sum / self.d_count
            var_d = (self.d_sq_sum / self.d_count - mean_d**2).clamp_min(0)
        else:  # first batch of the phase: nothing earlier to lean on
            mean_d, var_d = d.mean(0), d.var(0, unbiased=False)
        batch_cov = ((a - a.mean(0)) * (d - d.mean(0)).unsqueeze(1)).mean(0)
        self.cov_ema = torch.where(torch.isnan(self.cov_ema), batch_cov,
                                   self.momentum * self.cov_ema + (1 - self.momentum) * batch_cov)
        sigma = torch.where(self.cov_ema < 0, -1.0, 1.0)
        scale = 1.0 / (var_d.sqrt() + self.eps)
        grad = -(sigma * ((d - mean_d) * scale).unsqueeze(1)) / m
        # Moments of this batch join the running and the epoch sums only after they were used above.
        self.d_count += m
        self.d_sum += d.sum(0)
        self.d_sq_sum += (d * d).sum(0)
        self.n += m
        self.sa += a.sum(0)
        self.saa += (a * a).sum(0)
        self.sad += (a * d.unsqueeze(1)).sum(0)
        self.sd += d.sum(0)
        self.sdd += (d * d).sum(0)
        return grad.to(act.dtype)

    def epoch_correlation(self) -> torch.Tensor:
        """Pearson correlation of each candidate with its neuron's error over this epoch: (C, N)."""
        if self.n == 0:
            return torch.zeros_like(self.sa)
        n = self.n
        ma, md = self.sa / n, self.sd / n
        cov = self.sad / n - ma * md
        var_a = (self.saa / n - ma**2).clamp_min(0)
        var_d = (self.sdd / n - md**2).clamp_min(0)
        return cov / (var_a * var_d).sqrt().clamp_min(1e-30)

    def epoch_covariance(self) -> torch.Tensor:
        """Covariance (mean over samples) of each candidate with its neuron's error this epoch: (C, N)."""
        if self.n == 0:
            return torch.zeros_like(self.sa)
        return self.sad / self.n - (self.sa / self.n) * (self.sd / self.n)

    def state_dict(self) -> dict:
        keys = ("d_count", "d_sum", "d_sq_sum", "cov_ema", "best_abs_corr")
        return {k: getattr(self, k).clone() for k in keys}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v.clone())


class CovarianceTap(torch.autograd.Function):
    """Identity on the layer's pre-activation whose backward also trains the layer's candidates.

    Forward returns ``pre`` unchanged (candidates do not touch the network's function). Backward receives
    the neuron errors D = dL/dpre, passes them on unchanged, and returns the covariance gradient for the
    candidate activations, so one ordinary ``loss.backward()`` both propagates the error through the
    frozen network and gives every candidate its gradient.
    """

    @staticmethod
    def forward(ctx, pre, cand_act, layer):
        ctx.layer = layer
        ctx.save_for_backward(cand_act)
        return pre.view_as(pre)

    @staticmethod
    def backward(ctx, grad_pre):
        (cand_act,) = ctx.saved_tensors
        grad_cand = ctx.layer._covariance_gradient(cand_act, grad_pre)
        return (grad_pre if ctx.needs_input_grad[0] else None), grad_cand, None
