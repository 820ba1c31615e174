"""mTAND-Full's training loss and ROC-AUC, as the mTAN authors' ``tan_classification.py`` computes them.

    loss = recon + alpha * CE
    recon = -( logsumexp_k( logp(x | z_k) - kl_coef * KL(q(z|x) || N(0, I)) ) - log k )      (mean over batch)

``logp(x | z)`` is a Gaussian log-likelihood with fixed std (0.01) summed over the observed entries, and
both it and the KL (summed over reference points and latent units) are divided by the record's number of
observed entries (``--norm``). ``kl_coef`` anneals the KL in (``--kl``): 0 for the first epochs
(epoch < 10, epochs counted from 1 over the whole run), then ``1 - 0.99 ** (epoch - 10)``. The
cross-entropy is over the ``k`` samples of z per record (``--k-iwae``; 1 in the classification command),
each with its record's label.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def log_normal_pdf(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 / torch.exp(logvar)) * mask


def normal_kl(mu1, logvar1, mu2, logvar2) -> torch.Tensor:
    """KL(N(mu1, exp(logvar1)) || N(mu2, exp(logvar2))), elementwise."""
    return (logvar2 - logvar1) / 2 + (torch.exp(logvar1) + (mu1 - mu2) ** 2) / (2 * torch.exp(logvar2)) - 0.5


def kl_coefficient(epoch: int, anneal: bool = True, wait: int = 10, rate: float = 0.99) -> float:
    """The KL weight in epoch ``epoch`` (counted from 1 over the whole run)."""
    if not anneal:
        return 1.0
    return 0.0 if epoch < wait else 1.0 - rate ** (epoch - wait)


def mtan_loss(reconstruction, logits, mean, logvar, values, mask, labels, *, std: float, alpha: float,
              kl_coef: float, normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, cross-entropy) of one batch; ``reconstruction`` is (k, B, T, D), ``logits`` (k * B, 2)."""
    samples = reconstruction.shape[0]
    noise_logvar = torch.full_like(reconstruction, 2.0 * math.log(std))
    logpx = log_normal_pdf(values, reconstruction, noise_logvar, mask).sum(dim=(-1, -2))  # (k, B)
    kl = normal_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar)).sum(dim=(-1, -2))  # (B,)
    if normalise:
        observed = mask.sum(dim=(-1, -2))  # every record has its descriptors at time 0, so > 0
        logpx = logpx / observed
        kl = kl / observed
    recon = -(torch.logsumexp(logpx - kl_coef * kl, dim=0).mean() - math.log(samples))
    ce = F.cross_entropy(logits, labels.repeat(samples))
    return recon + alpha * ce, recon, ce


def roc_auc(labels, scores) -> float:
    """ROC-AUC of 0/1 ``labels`` against ``scores`` (scikit-learn's, as the original)."""
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("ROC-AUC of scores containing NaN: the model produced NaN outputs")
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))
