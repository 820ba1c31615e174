"""mTAN for classification (mTAND-Full; Shukla & Marlin, ICLR 2021), with a width multiplier.

The architecture of the mTAN authors' classification command (``tan_classification.py --enc mtan_rnn
--dec mtan_rnn --learn-emb --classif``), as the Perforated Backpropagation authors scaled it
(``--multiplier``):

* learned time embedding: ``[linear(t), sin(periodic(t))]`` of size ``embed_time``; the encoder and the
  decoder each have two, one for the observed times and one for the 128 reference points (the PB code
  splits the original's shared embedding in two; that is the model the paper's parameter counts are of);
* encoder: multi-time attention from the reference points (queries) to the observed times (keys) over
  the values and their masks (one masked softmax per channel), a linear map to ``rec_hidden``, a
  bidirectional GRU, and an MLP (hidden 50) to the mean and log-variance of a latent sequence (one
  latent vector per reference point);
* decoder: a bidirectional GRU over a sampled latent sequence, multi-time attention from the observed
  times back to the reference points, a linear map, and an MLP (hidden 50) to the 41 variables;
* classifier: a GRU over the latent sequence whose final state feeds an MLP
  (``classifier_hidden``, ``classifier_hidden``, 2).

``width`` multiplies latent_dim, rec_hidden, gen_hidden, embed_time and classifier_hidden, each rounded
down (Python ``int()``, as the PB code). The encoder/decoder MLP hidden size stays 50: the PB code computes
``nlin = int(50 * multiplier)`` but never passes it on. With the defaults this gives 27,289 parameters at
width 0.125 and 1,193,861 at width 1 (the paper's "about 27k" and "1.19M").

Every parametrised layer is an ``nn.Linear`` or ``nn.GRU`` (two of them bidirectional), so pb_core can
give each of them dendrites (the bidirectional ones through ``BidirectionalGRUAdapter``). Nothing reads
a layer's weights directly, so no wrapped layer would be bypassed. The output layer is
``classifier.mlp.4`` (:data:`OUTPUT_LAYER_NAME`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConfigError

OUTPUT_LAYER_NAME = "classifier.mlp.4"
INPUT_DIM = 41
# Keys of the configuration's ``model`` block that the width multiplies.
SCALED = ("latent_dim", "rec_hidden", "gen_hidden", "embed_time", "classifier_hidden")


@dataclass(frozen=True)
class Sizes:
    latent_dim: int = 20
    rec_hidden: int = 256
    gen_hidden: int = 50
    embed_time: int = 128
    classifier_hidden: int = 100
    mlp_hidden: int = 50
    ref_points: int = 128
    num_heads: int = 1
    input_dim: int = INPUT_DIM


def sizes_for_width(model_cfg: dict, width: float = 1.0) -> Sizes:
    """The layer sizes of ``model_cfg`` (the configuration's model block) at ``width``."""
    sizes = {k: int(v) for k, v in model_cfg.items()}
    for key in SCALED:
        sizes[key] = int(sizes[key] * width)
    too_small = [k for k in SCALED if sizes[k] < (2 if k == "embed_time" else 1)]
    if too_small:
        raise ConfigError(f"width {width} makes mTAN's {too_small} smaller than 1 (embed_time: 2); "
                          f"use a larger width or larger base sizes in the model block")
    if sizes["embed_time"] % sizes["num_heads"]:
        raise ConfigError(f"embed_time {sizes['embed_time']} (at width {width}) is not divisible by "
                          f"num_heads {sizes['num_heads']}")
    return Sizes(**sizes)


class TimeEmbedding(nn.Module):
    """Learned embedding of time stamps (..., T) -> (..., T, dim): one linear and dim-1 sine features."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.periodic = nn.Linear(1, dim - 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.unsqueeze(-1)
        return torch.cat([self.linear(t), torch.sin(self.periodic(t))], dim=-1)


def masked_channel_attention(scores: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mTAN's attention with one masked softmax over the keys per value channel, without its 5-D tensor.

    ``scores`` (B, h, Q, T), ``value`` and ``mask`` (B, T, D) -> (B, h, Q, D). The original repeats the
    scores over the D channels, fills masked keys with -1e9 and takes a softmax per channel; that equals
    ``sum_t w_t m_td v_td / sum_t w_t m_td`` with ``w = exp(scores - max)``, two matrix products. A channel
    with no observed key gets a uniform softmax there, over values that are all zero: 0 here too. If a
    channel's observed keys all lie so far below the row's maximum that their weights underflow, the batch
    is recomputed the original's way (never seen on this data; kept for exactness).
    """
    shift = scores.amax(dim=-1, keepdim=True).detach()
    weights = torch.exp(scores - shift)
    m, v = mask.unsqueeze(1), value.unsqueeze(1)  # (B, 1, T, D)
    numerator = weights @ (m * v)
    denominator = weights @ m
    observed = m.sum(dim=-2, keepdim=True) > 0  # (B, 1, 1, D)
    tiny = torch.finfo(denominator.dtype).tiny
    if bool(((denominator < tiny) & observed).any()):
        return _dense_masked_attention(scores, value, mask)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(tiny), torch.zeros_like(numerator))


def _dense_masked_attention(scores, value, mask):
    full = scores.unsqueeze(-1).expand(*scores.shape, value.shape[-1])  # (B, h, Q, T, D)
    full = full.masked_fill(mask.unsqueeze(1).unsqueeze(2) == 0, -1e9)
    return (torch.softmax(full, dim=-2) * value.unsqueeze(1).unsqueeze(2)).sum(dim=-2)


class MultiTimeAttention(nn.Module):
    """Attention from query times to key times over ``value`` (B, T, input_dim) -> (B, Q, out_dim)."""

    def __init__(self, input_dim: int, out_dim: int, embed_time: int, num_heads: int = 1):
        super().__init__()
        self.heads, self.head_dim = num_heads, embed_time // num_heads
        self.query = nn.Linear(embed_time, embed_time)
        self.key = nn.Linear(embed_time, embed_time)
        self.out = nn.Linear(input_dim * num_heads, out_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        batch = value.shape[0]
        q = self.query(query).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (Bq, h, Q, d)
        k = self.key(key).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)      # (B, h, T, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)                        # (B, h, Q, T)
        if mask is None:
            x = torch.softmax(scores, dim=-1) @ value.unsqueeze(1)
        else:
            x = masked_channel_attention(scores, value, mask)
        return self.out(x.transpose(1, 2).reshape(batch, -1, self.heads * value.shape[-1]))


class Encoder(nn.Module):
    """(values ‖ mask) at observed times -> mean and log-variance of the latent sequence (B, R, 2 latent)."""

    def __init__(self, s: Sizes):
        super().__init__()
        self.input_dim = s.input_dim
        self.time_embedding = TimeEmbedding(s.embed_time)       # keys: the observed times
        self.reference_embedding = TimeEmbedding(s.embed_time)  # queries: the reference points
        self.attention = MultiTimeAttention(2 * s.input_dim, s.rec_hidden, s.embed_time, s.num_heads)
        self.gru = nn.GRU(s.rec_hidden, s.rec_hidden, batch_first=True, bidirectional=True)
        self.to_latent = nn.Sequential(nn.Linear(2 * s.rec_hidden, s.mlp_hidden), nn.ReLU(),
                                       nn.Linear(s.mlp_hidden, 2 * s.latent_dim))
        self.register_buffer("reference_times", torch.linspace(0, 1, s.ref_points), persistent=False)

    def forward(self, values: torch.Tensor, mask: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        x = torch.cat([values, mask], dim=-1)
        channel_mask = torch.cat([mask, mask], dim=-1)  # a value and its mask bit are observed together
        key = self.time_embedding(times)
        query = self.reference_embedding(self.reference_times.unsqueeze(0))
        out, _ = self.gru(self.attention(query, key, x, channel_mask))
        return self.to_latent(out)


class Decoder(nn.Module):
    """Latent sequence (B, R, latent) -> reconstruction of the 41 variables at ``times`` (B, T, 41)."""

    def __init__(self, s: Sizes):
        super().__init__()
        self.time_embedding = TimeEmbedding(s.embed_time)       # queries: the observed times
        self.reference_embedding = TimeEmbedding(s.embed_time)  # keys: the reference points
        self.gru = nn.GRU(s.latent_dim, s.gen_hidden, batch_first=True, bidirectional=True)
        self.attention = MultiTimeAttention(2 * s.gen_hidden, 2 * s.gen_hidden, s.embed_time, s.num_heads)
        self.to_observations = nn.Sequential(nn.Linear(2 * s.gen_hidden, s.mlp_hidden), nn.ReLU(),
                                             nn.Linear(s.mlp_hidden, s.input_dim))
        self.register_buffer("reference_times", torch.linspace(0, 1, s.ref_points), persistent=False)

    def forward(self, z: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(z)
        query = self.time_embedding(times)
        key = self.reference_embedding(self.reference_times.unsqueeze(0))
        return self.to_observations(self.attention(query, key, out))


class Classifier(nn.Module):
    """Latent sequence (B, R, latent) -> two logits, from a GRU's final state."""

    def __init__(self, s: Sizes):
        super().__init__()
        self.gru = nn.GRU(s.latent_dim, s.rec_hidden, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(s.rec_hidden, s.classifier_hidden), nn.ReLU(),
                                 nn.Linear(s.classifier_hidden, s.classifier_hidden), nn.ReLU(),
                                 nn.Linear(s.classifier_hidden, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, h_n = self.gru(z)
        return self.mlp(h_n[-1])


class MTAN(nn.Module):
    """The full mTAND classifier: encoder, variational latent, decoder and classifier."""

    def __init__(self, sizes: Sizes):
        super().__init__()
        self.sizes = sizes
        self.encoder = Encoder(sizes)
        self.decoder = Decoder(sizes)
        self.classifier = Classifier(sizes)

    def latent(self, values, mask, times, samples: int = 1, generator: torch.Generator | None = None,
               sample: bool = True):
        """(z of shape (samples * B, R, latent), mean, logvar): z = mean + eps * exp(logvar / 2), eps ~ N(0, I)
        drawn from ``generator`` (default: the global generator); ``sample=False``: z = mean."""
        out = self.encoder(values, mask, times)
        mean, logvar = out.split(self.sizes.latent_dim, dim=-1)
        if not sample:
            return mean.expand(samples, *mean.shape).flatten(0, 1), mean, logvar
        eps = torch.randn((samples, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
        z = eps * torch.exp(0.5 * logvar) + mean
        return z.flatten(0, 1), mean, logvar

    def forward(self, values, mask, times, samples: int = 1, generator: torch.Generator | None = None):
        """(reconstruction (samples, B, T, 41), logits (samples * B, 2), mean, logvar)."""
        z, mean, logvar = self.latent(values, mask, times, samples, generator)
        logits = self.classifier(z)
        reconstruction = self.decoder(z, times.repeat(samples, 1)).unflatten(0, (samples, values.shape[0]))
        return reconstruction, logits, mean, logvar

    def classify(self, values, mask, times, samples: int = 1, generator: torch.Generator | None = None,
                 sample: bool = True):
        """Logits (samples * B, 2) without the decoder (what evaluation needs)."""
        z, _, _ = self.latent(values, mask, times, samples, generator, sample)
        return self.classifier(z)


def build_model(model_cfg: dict, width: float = 1.0) -> MTAN:
    return MTAN(sizes_for_width(model_cfg, width))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of the encoder, decoder and classifier, and their total."""
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("encoder", "decoder", "classifier")}
    return {**parts, "total": sum(parts.values())}


def describe(sizes: Sizes) -> dict:
    return asdict(sizes)
