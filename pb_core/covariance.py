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

The running and epoch statistics are float64 sums (over a whole epoch float32 loses the covariance).
Each batch contributes moments computed in the layer's own layout, in float32 on batch-centred data
(one reduction per statistic), which are exact enough for one batch and cheap next to the layer itself.
"""
from __future__ import annotations

import torch


class CovarianceStats:
    """Running statistics of one layer's candidates (C per neuron, N neurons) and their errors.

    The sample counts (``d_count``, ``n``) are Python numbers, so testing them never waits for the
    device; ``state_dict`` stores ``d_count`` as the float64 tensor it always was.
    """

    def __init__(self, candidates: int, neurons: int, device, momentum: float = 0.9, eps: float = 1e-12):
        self.candidates, self.neurons = candidates, neurons
        self.momentum, self.eps = momentum, eps
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        # Phase-long error moments (for mean_D and its scale).
        self.d_count = 0
        self.d_sum, self.d_sq_sum = zeros(neurons), zeros(neurons)
        # Exponential running covariance (for sigma); NaN until the first batch.
        self.cov_ema = torch.full((candidates, neurons), float("nan"), dtype=torch.float64, device=device)
        # Best |correlation| seen per candidate and neuron over the phase's epochs.
        self.best_abs_corr = zeros(candidates, neurons)
        self.reset_epoch()

    def reset_epoch(self) -> None:
        c, n = self.candidates, self.neurons
        dev = self.d_sum.device
        self.n = 0
        self.sa = torch.zeros(c, n, dtype=torch.float64, device=dev)
        self.saa = torch.zeros(c, n, dtype=torch.float64, device=dev)
        self.sad = torch.zeros(c, n, dtype=torch.float64, device=dev)
        self.sd = torch.zeros(n, dtype=torch.float64, device=dev)
        self.sdd = torch.zeros(n, dtype=torch.float64, device=dev)

    @torch.no_grad()
    def gradient(self, act: torch.Tensor, err: torch.Tensor, neuron_dim: int = -1) -> torch.Tensor:
        """Update the statistics with one batch and return d(-sigma*S)/d(act), shaped like ``act``.

        err: the neuron errors, neurons on axis ``neuron_dim`` (negative), every other axis a sample or
        position axis; act: the candidate activations, shaped like ``err`` with the candidate axis (C)
        inserted just before the neuron axis. ``neuron_dim=-1`` is the flat layout: act (M, C, N),
        err (M, N); a conv layer passes its own layout, e.g. act (B, C, N, H, W), err (B, N, H, W), and
        M = B*H*W. The sign makes the usual minimising optimizer *increase* |S|.

        Nothing is copied into another layout. Each batch's moments are float32 (for float32 and half
        inputs; float64 stays float64) reductions of batch-centred data, one per statistic, and join
        the float64 running sums; the gradient is one affine map of ``err`` per candidate and neuron.
        """
        if err.dim() == -neuron_dim:  # a single unbatched sample: give it a sample axis
            return self.gradient(act.unsqueeze(0), err.unsqueeze(0), neuron_dim).squeeze(0)
        n_axis = err.dim() + neuron_dim  # of err; in act the candidate axis sits there, neurons after it
        red_d = tuple(i for i in range(err.dim()) if i != n_axis)
        red_a = tuple(i for i in range(act.dim()) if i not in (n_axis, n_axis + 1))
        m = err.numel() // err.shape[n_axis]
        work = torch.promote_types(act.dtype, torch.float32)
        d, a = err.to(work), act.to(work)
        d_c = d.unsqueeze(n_axis)  # broadcasts against the candidates
        # This batch's moments. The candidates are centred on their batch mean mu (the value actually
        # subtracted, so resid = sum(a - mu) is the rounding left over) before any product is summed.
        # Two full-size buffers serve every product: `ac` (later the gradient) and `prod`.
        a_sum = a.sum(red_a, keepdim=True)
        mu = a_sum / m
        ac = a - mu
        prod = torch.mul(ac, d_c)
        c_ad = prod.sum(red_a).double()  # (C, N)
        c_aa = torch.mul(ac, ac, out=prod).sum(red_a).double()
        d_sum = d.sum(red_d).double()
        d_sq = torch.mul(d, d, out=prod.select(n_axis, 0)).sum(red_d).double()
        a_sum, mu = a_sum.reshape(c_ad.shape).double(), mu.reshape(c_ad.shape).double()
        resid = a_sum - m * mu
        if self.d_count:
            mean_d = self.d_sum / self.d_count
            var_d = (self.d_sq_sum / self.d_count - mean_d**2).clamp_min(0)
        else:  # first batch of the phase: nothing earlier to lean on
            mean_d = d_sum / m
            var_d = (d_sq / m - mean_d**2).clamp_min(0)
        batch_cov = (c_ad - resid * (d_sum / m)) / m
        self.cov_ema = torch.where(torch.isnan(self.cov_ema), batch_cov,
                                   self.momentum * self.cov_ema + (1 - self.momentum) * batch_cov)
        sigma = torch.where(self.cov_ema < 0, -1.0, 1.0)
        scale = 1.0 / (var_d.sqrt() + self.eps)
        # -sigma * scale * (D - mean_D) / m = factor * D + offset, per candidate and neuron.
        factor = -sigma * scale / m
        offset = -factor * mean_d
        per_neuron = (*factor.shape, *([1] * (-neuron_dim - 1)))
        grad = torch.addcmul(offset.to(work).reshape(per_neuron), d_c, factor.to(work).reshape(per_neuron), out=ac)
        # Moments of this batch join the running and the epoch sums only after they were used above.
        self.d_count += m
        self.d_sum += d_sum
        self.d_sq_sum += d_sq
        self.n += m
        self.sa += a_sum
        self.saa += c_aa + 2 * mu * resid + m * mu**2  # sum(a^2) = sum((ac + mu)^2)
        self.sad += c_ad + mu * d_sum                  # sum(a d) = sum(ac d) + mu sum(d)
        self.sd += d_sum
        self.sdd += d_sq
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
        state = {"d_count": torch.tensor(float(self.d_count), dtype=torch.float64, device=self.d_sum.device)}
        state.update({k: getattr(self, k).clone() for k in ("d_sum", "d_sq_sum", "cov_ema", "best_abs_corr")})
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            if k == "d_count":  # a tensor in checkpoints, a Python number here
                v = float(v)
                self.d_count = int(v) if v.is_integer() else v
            else:
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
