"""HIST: parameter count, the layout it reads Alpha360 in, its concept weights and links against hand
values, and properties of the whole forward pass (shapes, stock order, days without concepts)."""
import math

import pytest
import torch
from torch import nn

import pb_core
from experiments.csi300.model import (HIST, cosine_similarity_matrix, hidden_concept_links, market_value_weights,
                                      parameter_count)


def hist_parameters(hidden: int, d_feat: int = 6, layers: int = 2) -> int:
    """HIST's size by its architecture: a GRU (3 gates, input and recurrent weights, two biases per layer),
    seven HxH layers (es, es_back, es_fore, is, is_back, is_fore, indi) and the output layer Hx1."""
    gru = 3 * (hidden * d_feat + hidden * hidden + 2 * hidden)
    gru += (layers - 1) * 3 * (2 * hidden * hidden + 2 * hidden)
    return gru + 7 * (hidden * hidden + hidden) + hidden + 1


@pytest.mark.parametrize("hidden", [64, 128])
def test_parameter_count(hidden):
    assert parameter_count(HIST(hidden_size=hidden)) == hist_parameters(hidden)
    if hidden == 64:
        # the authors' module has three more unused Hx1 heads: 68,164 parameters
        assert parameter_count(HIST(hidden_size=64)) == 67_969 == 68_164 - 3 * 65


def test_gru_reads_six_series_over_sixty_days_oldest_first():
    model = HIST(hidden_size=8)
    seen = {}

    class Record(nn.Module):
        def forward(self, sequence):
            seen["sequence"] = sequence
            return sequence, None
    model.rnn = Record()
    x = torch.randn(5, 360)
    last = model.encode(x)
    sequence = seen["sequence"]
    assert sequence.shape == (5, 60, 6)
    for g in range(6):  # Alpha360: CLOSE59..CLOSE0, OPEN59..OPEN0, ... (series g, day t at column 60 g + t)
        for t in (0, 17, 59):
            assert torch.equal(sequence[:, t, g], x[:, 60 * g + t])
    assert torch.equal(last, x[:, [59, 119, 179, 239, 299, 359]])  # the last step: each series' day-0 value


def test_market_value_weights_by_hand():
    concepts = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    market_value = torch.tensor([1.0, 3.0, 2.0])
    # concept 0: members 0, 1 worth 1 + 3; concept 1: members 1, 2 worth 3 + 2; denominators + 1
    expected = torch.tensor([[1 / 5, 0.0], [3 / 5, 3 / 6], [0.0, 2 / 6]])
    torch.testing.assert_close(market_value_weights(concepts, market_value), expected)


def test_hidden_concept_links_by_hand():
    residual = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    ab, bc = 1 / math.sqrt(1.01), 0.1 / math.sqrt(1.01)
    # nearest other stock: a -> b, b -> a, c -> b; a and b are linked to, so they are concepts (with self 1)
    expected = torch.tensor([[1.0, ab, 0.0], [ab, 1.0, 0.0], [0.0, bc, 0.0]])
    torch.testing.assert_close(hidden_concept_links(residual, 1), expected)
    # k = 2: everyone links to both others (c to a with similarity 0, which is no link); all become concepts
    links = hidden_concept_links(residual, 2)
    torch.testing.assert_close(links.diagonal(), torch.ones(3))
    assert links[0, 2] == 0 and links[2, 0] == 0


def test_cosine_similarity_of_a_zero_row_is_zero_with_finite_gradients():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    similarity = cosine_similarity_matrix(x, x)
    torch.testing.assert_close(similarity.detach(), torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    similarity.sum().backward()
    assert torch.isfinite(x.grad).all()


def _day(n: int, concepts: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 360, generator=g)
    membership = (torch.rand(n, concepts, generator=g) < 0.4).float()
    market_value = torch.rand(n, generator=g) * 50 + 1
    return x, membership, market_value


@pytest.mark.parametrize("n", [2, 7, 40])
def test_one_score_per_stock_in_any_order(n):
    model = HIST(hidden_size=16).eval()
    x, concepts, market_value = _day(n)
    with torch.no_grad():
        scores = model(x, concepts, market_value)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
        permuted = model(x[perm], concepts[perm], market_value[perm])
    assert scores.shape == (n,) and torch.isfinite(scores).all()
    torch.testing.assert_close(permuted, scores[perm], rtol=1e-4, atol=1e-5)  # stocks have no order


def test_concepts_and_market_values_change_the_scores_and_a_day_without_concepts_trains():
    model = HIST(hidden_size=16)
    x, concepts, market_value = _day(12)
    with torch.no_grad():
        base = model(x, concepts, market_value)
        assert not torch.allclose(base, model(x, concepts, market_value * torch.linspace(0.1, 10, 12)))
        # relabelling the concepts changes nothing; other memberships do
        torch.testing.assert_close(model(x, torch.roll(concepts, 1, dims=1), market_value), base)
        assert not torch.allclose(base, model(x, _day(12, seed=5)[1], market_value))
    loss = model(x, torch.zeros_like(concepts), market_value).pow(2).mean()  # no stock in any concept
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                        if p.grad is not None)


def test_pb_core_wraps_the_gru_and_every_linear_layer_without_changing_the_function():
    model = HIST(hidden_size=16).eval()
    x, concepts, market_value = _day(9)
    with torch.no_grad():
        before = model(x, concepts, market_value)
    names = pb_core.wrap(model, "all", head="fc_out")
    assert names == ["rnn", "fc_es", "fc_es_back", "fc_es_fore", "fc_is", "fc_is_back", "fc_is_fore",
                     "fc_indi", "fc_out"]
    with torch.no_grad():
        torch.testing.assert_close(model(x, concepts, market_value), before)


def test_k_nearest_must_be_positive():
    with pytest.raises(ValueError, match="k_nearest"):
        HIST(k_nearest=0)
