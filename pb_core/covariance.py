"""Cascade-Correlation training signal for candidate dendrites (SPEC section 1, dendrite phase).

For candidate c of neuron i the paper's objective is the magnitude of

    S_ci = sum over samples (and positions) of (a_ci - mean_a_ci) * (D_i - mean_D_i)

where D_i = dL/dpre_i is the neuron's error. Its gradient with respect to the candidate's activation,
with the means held fixed as in Cascade-Correlation, is sigma_ci * (D_i - mean_D_i); autograd then
multiplies by g'(in) and the candidate's input. ``mean_D`` is the running mean of previous mini-batches
of the phase (the network is frozen, so D is stationary), and ``sigma`` is the sign of an exponential
running covariance. Each neuron's signal is divided by the running standard deviation of its error:
a positive per-neuron factor that leaves the direction of each candidate's gradient unchanged and keeps
step sizes comparable across layers whose errors differ by orders of magnitude.

``objective="correlation"`` maximises |Pearson r| instead: the covariance divided by the candidate's
(batch) standard deviation. Raising the covariance by raising the activation's variance, i.e. by
growing the weights until g is a step function, then earns nothing; the gradient gains a term
``-sigma * cov / var_a * (a - mean_a)`` (scaled like the first) that removes the part of a step that
only stretches the activation.

What is measured (the epoch correlation that ranks candidates, decides progress and picks the
committed weights) is either the training activations themselves or, with a *probe*, the activations
of a frozen copy of the candidates' weights (``snapshot="measured"`` in :class:`~pb_core.DendriticLayer`),
so that a stored snapshot holds exactly the weights whose correlation was measured. The epoch sums
are also kept for the odd-numbered batches alone: the two halves' disagreement estimates the sampling
noise of an epoch's correlation (:meth:`CovarianceStats.split_half_noise`).

The running and epoch statistics are float64 sums (over a whole epoch float32 loses the covariance).
Each batch contributes moments computed in the layer's own layout, in float32 on batch-centred data
(one reduction per statistic), stacked and converted to float64 once per batch.
"""
from __future__ import annotations

import torch

from .settings import OBJECTIVES  # noqa: F401  (the names live with the other settings, torch-free)


class CovarianceStats:
    """Running statistics of one layer's candidates (C per neuron, N neurons) and their errors.

    The sample counts (``d_count``, ``n``) are Python numbers, so testing them never waits for the
    device; ``state_dict`` stores ``d_count`` as the float64 tensor it always was.
    """

    def __init__(self, candidates: int, neurons: int, device, momentum: float = 0.9, eps: float = 1e-12,
                 objective: str = "covariance"):
        if objective not in OBJECTIVES:
            raise ValueError(f"candidate objective must be one of {OBJECTIVES}, got {objective!r}")
        self.candidates, self.neurons = candidates, neurons
        self.momentum, self.eps, self.objective = momentum, eps, objective
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        # Phase-long error moments (for mean_D and its scale): [sum D, sum D^2].
        self.d_count = 0
        self.d_moments = zeros(2, neurons)
        # Exponential running covariance (for sigma); NaN until the first batch.
        self.cov_ema = torch.full((candidates, neurons), float("nan"), dtype=torch.float64, device=device)
        # Per candidate and neuron over the phase's epochs: the best |correlation| and the |covariance| of
        # that same epoch (what the snapshot holds), and the reference the progress criterion compares with.
        self.best_abs_corr = zeros(candidates, neurons)
        self.best_abs_cov = zeros(candidates, neurons)
        self.progress_ref = zeros(candidates, neurons)
        self.reset_epoch()

    # The epoch sums: over all batches, and over the odd-numbered batches only (for split_half_noise).
    def reset_epoch(self) -> None:
        c, n = self.candidates, self.neurons
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=self.d_moments.device)  # noqa: E731
        self.n, self.n_odd, self.batches = 0, 0, 0
        self.moments, self.moments_odd = zeros(3, c, n), zeros(3, c, n)  # [sum a, sum a^2, sum a D]
        self.d_epoch, self.d_epoch_odd = zeros(2, n), zeros(2, n)        # [sum D, sum D^2]

    # Named views (the epoch's sums over all batches, the phase's error sums).
    sa = property(lambda self: self.moments[0])
    saa = property(lambda self: self.moments[1])
    sad = property(lambda self: self.moments[2])
    sd = property(lambda self: self.d_epoch[0])
    sdd = property(lambda self: self.d_epoch[1])
    d_sum = property(lambda self: self.d_moments[0])
    d_sq_sum = property(lambda self: self.d_moments[1])

    @staticmethod
    def _batch_moments(a: torch.Tensor, d_c: torch.Tensor, red: tuple, m: int, shape) -> tuple:
        """Centre ``a`` on its batch mean and reduce: returns the centred tensor, a spare full-size buffer,
        and the float64 rows [sum a, mu, sum ac^2, sum ac*d], each (C, N), mu being the mean subtracted."""
        a_sum = a.sum(red, keepdim=True)
        mu = a_sum / m
        ac = a - mu
        prod = torch.mul(ac, d_c)
        c_ad = prod.sum(red)
        c_aa = torch.mul(ac, ac, out=prod).sum(red)
        small = torch.stack([a_sum.view(shape), mu.view(shape), c_aa, c_ad]).double()
        return ac, prod, small.unbind(0)

    def _accumulate(self, rows: tuple, d_small: torch.Tensor, m: int) -> None:
        """Add one batch's float64 moments (rows [sum a, mu, sum ac^2, sum ac*d]; d_small [sum D, sum D^2])
        to the epoch sums, and to the odd half's on odd-numbered batches."""
        a_sum, mu, c_aa, c_ad = rows
        resid = torch.sub(a_sum, mu, alpha=m)  # what centring on mu left over (float32 rounding)
        # sum(a^2) = sum((ac + mu)^2) = c_aa + 2 mu resid + m mu^2; sum(a d) = c_ad + mu sum(d)
        upd = torch.stack([a_sum, torch.addcmul(c_aa, mu, torch.add(mu, resid, alpha=2 / m), value=m),
                           torch.addcmul(c_ad, mu, d_small[0])])
        self.moments += upd
        self.d_epoch += d_small
        if self.batches % 2:
            self.moments_odd += upd
            self.d_epoch_odd += d_small
            self.n_odd += m
        self.n += m
        self.batches += 1

    @torch.no_grad()
    def gradient(self, act: torch.Tensor, err: torch.Tensor, neuron_dim: int = -1,
                 probe: torch.Tensor | None = None) -> torch.Tensor:
        """Update the statistics with one batch and return d(-sigma*objective)/d(act), shaped like ``act``.

        err: the neuron errors, neurons on axis ``neuron_dim`` (negative), every other axis a sample or
        position axis; act: the candidate activations, shaped like ``err`` with the candidate axis (C)
        inserted just before the neuron axis. ``neuron_dim=-1`` is the flat layout: act (M, C, N),
        err (M, N); a conv layer passes its own layout, e.g. act (B, C, N, H, W), err (B, N, H, W), and
        M = B*H*W. The sign makes the usual minimising optimizer *increase* |objective|.

        probe: activations (shaped like ``act``, no graph) of frozen copies of the candidates; when given,
        the epoch sums measure them instead of ``act``.

        Nothing is copied into another layout. Each batch's moments are float32 (for float32 and half
        inputs; float64 stays float64) reductions of batch-centred data, one per statistic, stacked and
        converted to float64 once; the small per-(candidate, neuron) arithmetic is a fixed, short list of
        ops on whole (C, N) tensors; the gradient is one affine map of ``err`` (and, for the correlation
        objective, of the centred ``act``) per candidate and neuron.
        """
        if err.dim() == -neuron_dim:  # a single unbatched sample: give it a sample axis
            return self.gradient(act.unsqueeze(0), err.unsqueeze(0), neuron_dim,
                                 None if probe is None else probe.unsqueeze(0)).squeeze(0)
        n_axis = err.dim() + neuron_dim  # of err; in act the candidate axis sits there, neurons after it
        red_d = tuple(i for i in range(err.dim()) if i != n_axis)
        red_a = tuple(i for i in range(act.dim()) if i not in (n_axis, n_axis + 1))
        m = err.numel() // err.shape[n_axis]
        cn = (self.candidates, self.neurons)
        work = torch.promote_types(act.dtype, torch.float32)
        d = err if err.dtype == work else err.to(work)
        a = act if act.dtype == work else act.to(work)
        d_c = d.unsqueeze(n_axis)  # broadcasts against the candidates
        ac, prod, rows = self._batch_moments(a, d_c, red_a, m, cn)
        a_sum, mu, c_aa, c_ad = rows
        d_sq = torch.mul(d, d, out=prod.select(n_axis, 0)).sum(red_d)
        d_small = torch.stack([d.sum(red_d), d_sq]).double()  # [sum D, sum D^2]
        resid = torch.sub(a_sum, mu, alpha=m)
        # The phase's error moments so far (the batch's own on the first batch of the phase).
        mean_d, mean_d2 = (self.d_moments / self.d_count if self.d_count else d_small / m).unbind(0)
        sd_d = torch.addcmul(mean_d2, mean_d, mean_d, value=-1).clamp_min_(0).sqrt_()
        batch_cov = torch.addcmul(c_ad, resid, d_small[0], value=-1 / m).div_(m)
        if self.d_count:
            self.cov_ema.lerp_(batch_cov, 1 - self.momentum)
        else:
            self.cov_ema = batch_cov
        sigma = torch.where(self.cov_ema < 0, -1.0, 1.0)
        # Covariance: -sigma (D - mean_D) / (m sd_D), an affine map of D per candidate and neuron.
        factor = sigma.div_(sd_d.add_(self.eps).mul_(-m))
        per_neuron = (*cn, *([1] * (-neuron_dim - 1)))
        if self.objective == "correlation":
            # d r / d a_j = [(D_j - mean_D) - cov / var_a (a_j - mean_a)] / (m sd_a sd_D), means held fixed:
            # factor (D - mean_D) + beta (a - mu).
            var_a = torch.addcmul(c_aa, resid, resid, value=-1 / m).div_(m).add_(self.eps)
            factor = factor.div_(var_a.sqrt())
            cov = torch.addcmul(c_ad, resid, mean_d, value=-1).div_(m)
            coef = torch.stack([-factor * mean_d, factor, -factor * cov / var_a]).to(work).view(3, *per_neuron)
            grad = torch.mul(ac, coef[2], out=prod)
            grad.addcmul_(d_c, coef[1]).add_(coef[0])
        else:
            coef = torch.stack([-factor * mean_d, factor]).to(work).view(2, *per_neuron)
            grad = torch.addcmul(coef[0], d_c, coef[1], out=ac)
        # Moments of this batch join the running and the epoch sums only after they were used above.
        if probe is not None:  # measure the frozen copies, not the candidates being trained
            rows = self._batch_moments(probe if probe.dtype == work else probe.to(work), d_c, red_a, m, cn)[2]
        self.d_count += m
        self.d_moments += d_small
        self._accumulate(rows, d_small, m)
        return grad if grad.dtype == act.dtype else grad.to(act.dtype)

    # ------------------------------------------------------------------ what an epoch measured
    @staticmethod
    def _pearson(moments: torch.Tensor, d_epoch: torch.Tensor, n: int) -> torch.Tensor:
        sa, saa, sad = moments
        sd, sdd = d_epoch
        ma, md = sa / n, sd / n
        cov = sad / n - ma * md
        var_a = (saa / n - ma**2).clamp_min(0)
        var_d = (sdd / n - md**2).clamp_min(0)
        return cov / (var_a * var_d).sqrt().clamp_min(1e-30)

    def epoch_correlation(self) -> torch.Tensor:
        """Pearson correlation of each candidate with its neuron's error over this epoch: (C, N)."""
        if self.n == 0:
            return torch.zeros_like(self.sa)
        return self._pearson(self.moments, self.d_epoch, self.n)

    def epoch_covariance(self) -> torch.Tensor:
        """Covariance (mean over samples) of each candidate with its neuron's error this epoch: (C, N)."""
        if self.n == 0:
            return torch.zeros_like(self.sa)
        return self.sad / self.n - (self.sa / self.n) * (self.sd / self.n)

    def split_half_noise(self) -> float:
        """Standard error of this epoch's correlations, estimated from the odd and even batches' disagreement.

        For halves of n_o and n_e samples, var(r_o - r_e) = s^2 (1/n_o + 1/n_e) and var(r) = s^2 / n, so
        se^2 = mean over candidates and neurons of (r_o - r_e)^2 / (n (1/n_o + 1/n_e)). This sees what an
        analytic 1/sqrt(n) would miss: positions of a conv map are not independent samples, dropout and
        a changing network make D itself noisy. 0.0 when the epoch had fewer than two batches (a
        full-batch epoch measures the same samples every time: there is nothing to estimate).
        """
        n_o, n_e = self.n_odd, self.n - self.n_odd
        if self.batches < 2 or n_o == 0 or n_e == 0:
            return 0.0
        r_o = self._pearson(self.moments_odd, self.d_epoch_odd, n_o)
        r_e = self._pearson(self.moments - self.moments_odd, self.d_epoch - self.d_epoch_odd, n_e)
        var = (r_o - r_e).square().mean() / (self.n * (1 / n_o + 1 / n_e))
        return float(var.sqrt())

    def state_dict(self) -> dict:
        state = {"d_count": torch.tensor(float(self.d_count), dtype=torch.float64, device=self.d_moments.device),
                 "d_sum": self.d_moments[0].clone(), "d_sq_sum": self.d_moments[1].clone()}
        state.update({k: getattr(self, k).clone() for k in ("cov_ema", "best_abs_corr", "best_abs_cov",
                                                             "progress_ref")})
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():  # checkpoints written before a key existed simply lack it
            if k == "d_count":  # a tensor in checkpoints, a Python number here
                v = float(v)
                self.d_count = int(v) if v.is_integer() else v
            elif k == "d_sum":
                self.d_moments[0] = v
            elif k == "d_sq_sum":
                self.d_moments[1] = v
            else:
                setattr(self, k, v.clone())


class CovarianceTap(torch.autograd.Function):
    """Identity on the layer's pre-activation whose backward also trains the layer's candidates.

    Forward returns ``pre`` unchanged (candidates do not touch the network's function). Backward receives
    the neuron errors D = dL/dpre, passes them on unchanged, and returns the covariance gradient for the
    candidate activations, so one ordinary ``loss.backward()`` both propagates the error through the
    frozen network and gives every candidate its gradient. ``probe`` (no graph, or None): the activations
    of the frozen copies whose correlation is measured.
    """

    @staticmethod
    def forward(ctx, pre, cand_act, layer, probe):
        ctx.layer = layer
        ctx.probe = probe
        ctx.save_for_backward(cand_act)
        return pre.view_as(pre)

    @staticmethod
    def backward(ctx, grad_pre):
        (cand_act,) = ctx.saved_tensors
        grad_cand = ctx.layer._covariance_gradient(cand_act, grad_pre, ctx.probe)
        ctx.probe = None
        return (grad_pre if ctx.needs_input_grad[0] else None), grad_cand, None, None
