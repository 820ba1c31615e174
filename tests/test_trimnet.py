"""Tests for experiments/tox21/model.py (TrimNet), on hand-made synthetic graphs."""
import math

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from experiments.tox21.model import (
    DENDRITE_LAYER_NAMES,
    EXPECTED_NUM_PARAMETERS,
    OUTPUT_LAYER_NAME,
    MultiHeadTripletAttention,
    TrimNet,
)

IN_DIM, EDGE_DIM = 39, 10


def _graph(num_nodes, bonds, seed):
    """A molecule-like graph: random features, each bond stored in both directions."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, IN_DIM, generator=gen)
    if bonds:
        src, dst = zip(*bonds)
        edge_index = torch.tensor([list(src) + list(dst), list(dst) + list(src)], dtype=torch.long)
        attr = torch.randn(len(bonds), EDGE_DIM, generator=gen)
        edge_attr = torch.cat([attr, attr], dim=0)
    else:
        edge_index = torch.empty(2, 0, dtype=torch.long)
        edge_attr = torch.empty(0, EDGE_DIM)
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr)


def _graphs():
    return [
        _graph(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)], seed=1),   # ring
        _graph(1, [], seed=2),                                          # single atom, no bonds
        _graph(4, [(0, 1), (0, 2), (0, 3)], seed=3),                    # star
        _graph(6, [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5)], seed=4),    # branched chain
    ]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TrimNet()


def test_output_shape(model):
    batch = Batch.from_data_list(_graphs())
    for mode in (model.train, model.eval):
        mode()
        out = model(batch)
        assert out.shape == (4, 12, 2)
        assert torch.isfinite(out).all()


def test_batch_without_any_bond(model):
    model.eval()
    batch = Batch.from_data_list([_graph(1, [], seed=5), _graph(2, [], seed=6)])
    out = model(batch)
    assert out.shape == (2, 12, 2)
    assert torch.isfinite(out).all()


def test_out_dim_controls_tasks():
    assert TrimNet(out_dim=2).eval()(Batch.from_data_list(_graphs())).shape == (4, 1, 2)
    with pytest.raises(ValueError):
        TrimNet(out_dim=5)


def test_parameter_count(model):
    n = sum(p.numel() for p in model.parameters())
    assert n == EXPECTED_NUM_PARAMETERS == 109_304


def test_parameter_breakdown(model):
    def count(module):
        return sum(p.numel() for p in module.parameters())

    expected = {
        "lin0": 1_280,
        "set2set": 12_544,
        "out.0": 33_280,
        "out.1": 1_024,
        "out.4": 12_312,
    }
    per_block = {
        "conv.lin_node": 4_096,
        "conv.lin_edge": 1_280,
        "conv.lin_scale": 4_128,
        "gru": 6_336,
        "ln": 64,
    }
    for b in range(3):
        for k, v in per_block.items():
            expected[f"convs.{b}.{k}"] = v
    modules = dict(model.named_modules())
    got = {name: count(modules[name]) for name in expected}
    assert got == expected
    for b in range(3):
        assert model.convs[b].conv.att_triplet.shape == (1, 4, 96)
        assert count(model.convs[b]) == 16_288
    assert sum(expected.values()) + 3 * 384 == EXPECTED_NUM_PARAMETERS
    # Conv/GRU weights are not shared across blocks (they are only shared inside a block).
    assert model.convs[0].gru.weight_ih_l0.data_ptr() != model.convs[1].gru.weight_ih_l0.data_ptr()


def test_dendrite_capable_modules_are_pinned(model):
    expected = [
        "lin0",
        "convs.0.conv.lin_node", "convs.0.conv.lin_edge", "convs.0.conv.lin_scale", "convs.0.gru",
        "convs.1.conv.lin_node", "convs.1.conv.lin_edge", "convs.1.conv.lin_scale", "convs.1.gru",
        "convs.2.conv.lin_node", "convs.2.conv.lin_edge", "convs.2.conv.lin_scale", "convs.2.gru",
        "out.0", "out.4",
    ]
    found = [n for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.GRU, nn.Conv1d))]
    assert found == expected
    assert list(DENDRITE_LAYER_NAMES) == expected == model.dendrite_layer_names()
    # Exact torch.nn classes (not torch_geometric.nn.Linear or other subclasses).
    for name in found:
        assert type(dict(model.named_modules())[name]) in (nn.Linear, nn.GRU)
    assert OUTPUT_LAYER_NAME == model.output_layer_name() == "out.4"
    head = dict(model.named_modules())[OUTPUT_LAYER_NAME]
    assert type(head) is nn.Linear and head.in_features == 512 and head.out_features == 24


def test_layers_are_called_as_modules(model):
    """Forward hooks fire on every listed layer (so in-place wrappers take effect)."""
    calls = {}
    modules = dict(model.named_modules())
    for name in DENDRITE_LAYER_NAMES:
        modules[name].register_forward_hook(
            lambda mod, inp, out, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    model.eval()
    model(Batch.from_data_list(_graphs()))
    expected = {name: (3 if name.startswith("convs.") else 1) for name in DENDRITE_LAYER_NAMES}
    assert calls == expected


def test_output_layer_wrapper_changes_output(model):
    """Replacing the head in place with a wrapper that adds to its output is seen."""
    class AddOne(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 1.0

    model.eval()
    batch = Batch.from_data_list(_graphs())
    before = model(batch)
    model.out[4] = AddOne(model.out[4])
    assert torch.allclose(model(batch), before + 1.0, atol=1e-6)


def test_permutation_invariance(model):
    model.eval()
    graphs = _graphs()
    g = graphs[3]
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(7))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    # new node k is old node perm[k]; edges are relabelled and shuffled too
    eperm = torch.randperm(g.edge_index.size(1), generator=torch.Generator().manual_seed(8))
    g2 = Data(x=g.x[perm], edge_index=inv[g.edge_index][:, eperm], edge_attr=g.edge_attr[eperm])
    with torch.no_grad():
        out1 = model(Batch.from_data_list(graphs))
        out2 = model(Batch.from_data_list(graphs[:3] + [g2]))
    assert torch.allclose(out1, out2, atol=1e-5)


def test_graphs_do_not_interact(model):
    model.eval()
    a, b = _graphs()[0], _graphs()[2]
    with torch.no_grad():
        alone = model(Batch.from_data_list([a]))
        with_b = model(Batch.from_data_list([a, b]))
        b_first = model(Batch.from_data_list([b, a]))
        b_alone = model(Batch.from_data_list([b]))
    assert torch.allclose(alone[0], with_b[0], atol=1e-5)
    assert torch.allclose(alone[0], b_first[1], atol=1e-5)
    assert torch.allclose(b_alone[0], with_b[1], atol=1e-5)


def test_gradients_reach_every_layer(model):
    model.train()
    out = model(Batch.from_data_list(_graphs()))
    target = torch.randint(0, 2, out.shape[:2])
    loss = nn.functional.cross_entropy(out.reshape(-1, 2), target.reshape(-1))
    loss.backward()
    assert model.lin0.weight.grad is not None and model.lin0.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_eval_deterministic_train_uses_dropout(model):
    batch = Batch.from_data_list(_graphs())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))
        ref = model(batch)
    model.train()
    with torch.no_grad():
        t1, t2 = model(batch), model(batch)
    assert not torch.allclose(t1, t2)
    assert not torch.allclose(t1, ref)
    assert TrimNet().dropout == 0.2 and TrimNet().out[3].p == 0.2


def test_init_matches_original_distribution(model):
    conv = model.convs[0].conv
    # original: kaiming_uniform_ on (in, out) matrices -> bound sqrt(6 / out)
    for lin in (conv.lin_node, conv.lin_edge, conv.lin_scale):
        bound = math.sqrt(6.0 / lin.out_features)
        w = lin.weight.abs().max().item()
        assert 0.8 * bound < w <= bound
    assert torch.all(conv.lin_scale.bias == 0)
    assert conv.lin_node.bias is None and conv.lin_edge.bias is None
    bound = math.sqrt(6.0 / (4 * 96))
    assert conv.att_triplet.abs().max().item() <= bound


def test_triplet_attention_matches_dense_reference():
    """The MessagePassing layer equals an explicit per-node loop of the paper's formula."""
    torch.manual_seed(3)
    C, H = 8, 3
    layer = MultiHeadTripletAttention(C, EDGE_DIM, heads=H)
    with torch.no_grad():
        layer.lin_scale.bias.normal_()
    n = 5
    x = torch.randn(n, C)
    edge_index = torch.tensor([[0, 1, 2, 3, 1, 0], [1, 0, 1, 1, 3, 2]])  # node 4: no incoming edge
    edge_attr = torch.randn(edge_index.size(1), EDGE_DIM)
    got = layer(x, edge_index, edge_attr)

    Wn, We = layer.lin_node.weight, layer.lin_edge.weight
    a = layer.att_triplet[0]
    xp = (x @ Wn.t()).view(n, H, C)
    ep = (edge_attr @ We.t()).view(-1, H, C)
    expected = []
    for i in range(n):
        incoming = (edge_index[1] == i).nonzero().flatten().tolist()
        agg = torch.zeros(H, C)
        if incoming:
            scores = torch.stack([
                torch.nn.functional.leaky_relu(
                    (torch.cat([xp[i], ep[k], xp[edge_index[0, k]]], dim=-1) * a).sum(-1), 0.2)
                for k in incoming])                                  # (deg, H)
            alpha = torch.softmax(scores, dim=0)
            for r, k in enumerate(incoming):
                agg += alpha[r].unsqueeze(-1) * ep[k] * xp[edge_index[0, k]]
        expected.append(layer.lin_scale(agg.reshape(H * C)))
    expected = torch.stack(expected)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got[4], layer.lin_scale.bias)
