"""The mTAN classifier (experiments/physionet/model.py, loss.py) on synthetic batches.

* parameter counts per width equal an independent closed-form count of the architecture, and reproduce the
  paper's "about 27k" (width 0.125) and "1.19M" (width 1);
* the per-channel masked attention equals the original's 5-D masked softmax (values and gradients),
  including channels with no observation, and a record's outputs do not depend on how far it is padded;
* the loss equals a direct transcription of the original's formula; the KL annealing schedule;
* pb_core wraps every Linear and GRU (the bidirectional ones too), committed dendrites leave the output
  unchanged, and too small a width is a ConfigError.
"""
import math

import pytest
import torch
from torch import nn

import pb_core
from experiments.errors import ConfigError
from experiments.physionet.loss import kl_coefficient, mtan_loss
from experiments.physionet.model import (OUTPUT_LAYER_NAME, build_model, masked_channel_attention, parameter_counts,
                                        sizes_for_width)

MODEL = {"latent_dim": 20, "rec_hidden": 256, "gen_hidden": 50, "embed_time": 128, "classifier_hidden": 100,
         "mlp_hidden": 50, "ref_points": 128, "num_heads": 1}
D = 41


def linear(i, o):
    return i * o + o


def gru(i, h, directions=1):
    return directions * 3 * (i * h + h * h + 2 * h)


def expected_count(width: float) -> int:
    """The architecture counted by hand: sizes are int(base * width); the MLP hidden stays 50."""
    lat, rec, gen, emb, cls = (int(b * width) for b in (20, 256, 50, 128, 100))
    embeddings = 2 * (linear(1, 1) + linear(1, emb - 1))          # two learned time embeddings per part
    attention = lambda i, o: 2 * linear(emb, emb) + linear(i, o)  # noqa: E731  query, key, output maps
    encoder = embeddings + attention(2 * D, rec) + gru(rec, rec, 2) + linear(2 * rec, 50) + linear(50, 2 * lat)
    decoder = embeddings + attention(2 * gen, 2 * gen) + gru(lat, gen, 2) + linear(2 * gen, 50) + linear(50, D)
    classifier = gru(lat, rec) + linear(rec, cls) + linear(cls, cls) + linear(cls, 2)
    return encoder + decoder + classifier


@pytest.mark.parametrize("width", [0.125, 0.25, 0.5, 1, 2])
def test_parameter_count_per_width(width):
    model = build_model(MODEL, width)
    counts = parameter_counts(model)
    print(f"width {width}: {counts}")
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == expected_count(width)


def test_parameter_counts_match_the_paper():
    assert parameter_counts(build_model(MODEL, 0.125))["total"] == 27_289   # "about 27k"
    assert parameter_counts(build_model(MODEL, 1))["total"] == 1_193_861    # "1.19M"
    assert expected_count(0.125) * 10 < expected_count(1)                   # "under a tenth"


def test_too_small_width_is_a_config_error():
    with pytest.raises(ConfigError, match="width 0.01"):
        sizes_for_width(MODEL, 0.01)


def batch(b=3, t=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, t, D, generator=gen) < 0.3).float()
    mask[:, 0, :5] = 1                      # descriptors at time 0
    mask[0, :, 7] = 0                       # a channel never observed in record 0
    values = torch.randn(b, t, D, generator=gen) * mask
    times = torch.sort(torch.rand(b, t, generator=gen), dim=1).values
    times[:, 0] = 0
    return values, mask, times, torch.tensor([0, 1, 0][:b])


def test_masked_attention_equals_the_original_dense_softmax():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 1, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(2, 7, 6, generator=gen) < 0.4).double()
    mask[1, :, 2] = 0  # a channel with no observation: the original's uniform softmax over zeros gives 0
    value = torch.randn(2, 7, 6, generator=gen, dtype=torch.float64) * mask
    fast = masked_channel_attention(scores, value, mask)
    # The original, literally: repeat the scores per channel, fill masked keys with -1e9, softmax over keys.
    full = scores.unsqueeze(-1).repeat_interleave(6, dim=-1).masked_fill(mask.unsqueeze(1).unsqueeze(2) == 0, -1e9)
    reference = (torch.softmax(full, dim=-2) * value.unsqueeze(1).unsqueeze(2)).sum(-2)
    assert torch.allclose(fast, reference, atol=1e-12)
    assert torch.equal(fast[1, :, :, 2], torch.zeros_like(fast[1, :, :, 2]))
    g_fast, = torch.autograd.grad(fast.square().sum(), scores)
    g_ref, = torch.autograd.grad(reference.square().sum(), scores)
    assert torch.allclose(g_fast, g_ref, atol=1e-10)
    # A channel observed only at a key far below the row's maximum: exp underflows to 0 in the two-product
    # form; the result must still be the original's (softmax over that one key: its value).
    far = torch.zeros(2, 1, 5, 7, dtype=torch.float64)
    far[..., 0], far[..., 2] = 500.0, -500.0
    only = torch.zeros(2, 7, 6, dtype=torch.float64)
    only[:, 0, 0] = 1
    only[:, 2, 3] = 1
    vals = torch.randn(2, 7, 6, generator=gen, dtype=torch.float64) * only
    out = masked_channel_attention(far, vals, only)
    assert torch.equal(out[..., 3], vals[:, 2, 3].view(2, 1, 1).expand(2, 1, 5))
    assert torch.equal(out[..., 0], vals[:, 0, 0].view(2, 1, 1).expand(2, 1, 5))


def test_outputs_do_not_depend_on_padding():
    torch.manual_seed(0)
    model = build_model(MODEL, 0.125).eval()
    values, mask, times, _ = batch()
    pad = lambda x: torch.cat([x, torch.zeros(x.shape[0], 5, *x.shape[2:])], dim=1)  # noqa: E731
    with torch.no_grad():
        a = model.encoder(values, mask, times)
        b = model.encoder(pad(values), pad(mask), pad(times))
        rec_a = model.decoder(a[..., :2], times)
        rec_b = model.decoder(a[..., :2], pad(times))[:, :times.shape[1]]
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(rec_a, rec_b, atol=1e-6)


def test_shapes():
    torch.manual_seed(0)
    model = build_model(MODEL, 0.25)
    values, mask, times, _ = batch()
    reconstruction, logits, mean, logvar = model(values, mask, times, samples=2)
    assert reconstruction.shape == (2, 3, 9, D)
    assert logits.shape == (6, 2)
    assert mean.shape == logvar.shape == (3, 128, int(20 * 0.25))
    assert model.classify(values, mask, times).shape == (3, 2)


def original_loss(reconstruction, logits, mean, logvar, values, mask, labels, std, alpha, kl_coef):
    """tan_classification.py + utils.compute_losses, transcribed line by line (--norm, k samples)."""
    k = reconstruction.shape[0]
    noise_logvar = 2.0 * torch.log(torch.zeros_like(reconstruction) + std)
    const = torch.log(torch.tensor(2.0 * math.pi, dtype=values.dtype))
    logpx = (-0.5 * (const + noise_logvar + (values - reconstruction) ** 2 / torch.exp(noise_logvar)) * mask).sum(-1).sum(-1)
    v1 = torch.exp(logvar)
    kl = (0 - logvar / 2 + (v1 + mean ** 2) / 2 - 0.5).sum(-1).sum(-1)
    logpx = logpx / mask.sum(-1).sum(-1)
    kl = kl / mask.sum(-1).sum(-1)
    recon = -(torch.logsumexp(logpx - kl_coef * kl, dim=0).mean(0) - math.log(k))
    label = labels.unsqueeze(0).repeat_interleave(k, 0).view(-1)
    return recon + alpha * nn.CrossEntropyLoss()(logits, label)


def test_loss_matches_the_original_formula():
    torch.manual_seed(0)
    model = build_model(MODEL, 0.125).double()
    values, mask, times, labels = (t.double() if t.is_floating_point() else t for t in batch())
    out = model(values, mask, times, samples=2)
    for kl_coef in (0.0, 0.37):
        ours, recon, ce = mtan_loss(*out, values, mask, labels, std=0.01, alpha=100, kl_coef=kl_coef)
        ref = original_loss(*out, values, mask, labels, 0.01, 100, kl_coef)
        assert torch.allclose(ours, ref, rtol=1e-12)
        assert torch.allclose(ours, recon + 100 * ce)


def test_kl_annealing_schedule():
    assert [kl_coefficient(e) for e in range(1, 11)] == [0.0] * 10
    assert kl_coefficient(11) == pytest.approx(0.01)
    assert kl_coefficient(110) == pytest.approx(1 - 0.99 ** 100)
    assert kl_coefficient(3, anneal=False) == 1.0


def test_every_linear_and_gru_takes_dendrites_and_committing_keeps_the_output():
    torch.manual_seed(0)
    model = build_model(MODEL, 0.125)
    wrappable = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.GRU))]
    names = pb_core.wrap(model, "all", head=OUTPUT_LAYER_NAME)
    assert names == wrappable and len(names) == 24
    assert pb_core.select_layers(model, "head", head=OUTPUT_LAYER_NAME) == [OUTPUT_LAYER_NAME]
    assert model.encoder.gru.num_neurons == 2 * int(256 * 0.125)  # both directions' units
    values, mask, times, _ = batch()
    model.eval()
    with torch.no_grad():
        before = model.classify(values, mask, times, sample=False)
        for _, layer in pb_core.dendritic_layers(model):
            layer.add_candidates(1)
            layer.commit_candidates()
        after = model.classify(values, mask, times, sample=False)
    assert torch.allclose(before, after, atol=1e-6)
    assert pb_core.count_parameters(model) > 2 * parameter_counts(build_model(MODEL, 0.125))["total"]
