"""pb_core's bidirectional GRU adapter (BidirectionalGRUAdapter), checked against separately built GRUs.

* S stacked copies == S separately constructed bidirectional ``nn.GRU`` modules (depths 1 and 2, batch-first
  or not, with and without an initial state or biases, unbatched input);
* unidirectional GRUs still get GRUAdapter's exact results;
* the wrapped layer's output (sequence and final states) is unchanged when a dendrite is committed, and
  once u moves it is the SPEC formula, with h_n's last two entries taken from the summed output;
* perforation: the gradient reaching earlier layers is that of a network whose dendrite term is a constant;
* a dendrite phase trains candidates (covariance) and commits the chosen copy's weights intact.
"""
import copy

import pytest
import torch
from torch import nn

import pb_core
from pb_core import DendriticLayer, adapter_for
from pb_core.adapters import BidirectionalGRUAdapter, GRUAdapter

SUFFIX = "_both_directions"


def separate_gru(main: nn.GRU, params: dict, s: int) -> nn.GRU:
    """Copy ``s`` of the stacked parameters as its own bidirectional nn.GRU."""
    gru = nn.GRU(main.input_size, main.hidden_size, num_layers=main.num_layers, bias=main.bias,
                 batch_first=main.batch_first, bidirectional=True)
    state = {}
    for name, value in params.items():
        base = name[: -len(SUFFIX)]
        state[base], state[base + "_reverse"] = value[s, 0].detach(), value[s, 1].detach()
    gru.load_state_dict(state)
    return gru


CASES = [
    ("one_layer_batch_first", lambda: nn.GRU(3, 4, batch_first=True, bidirectional=True),
     lambda: (torch.randn(2, 6, 3), None)),
    ("one_layer_h0", lambda: nn.GRU(3, 4, bidirectional=True), lambda: (torch.randn(6, 2, 3), torch.randn(2, 2, 4))),
    ("two_layers", lambda: nn.GRU(3, 4, num_layers=2, bidirectional=True),
     lambda: (torch.randn(5, 3, 3), torch.randn(4, 3, 4))),
    ("two_layers_batch_first_no_bias", lambda: nn.GRU(3, 5, num_layers=2, bias=False, batch_first=True,
                                                      bidirectional=True), lambda: (torch.randn(3, 7, 3), None)),
    ("unbatched", lambda: nn.GRU(3, 4, num_layers=2, batch_first=True, bidirectional=True),
     lambda: (torch.randn(6, 3), None)),
]


@pytest.mark.parametrize("name,make,inputs", CASES, ids=[c[0] for c in CASES])
def test_stacked_copies_equal_separate_bidirectional_grus(name, make, inputs):
    main, (x, h) = make(), inputs()
    adapter = adapter_for(main)
    assert isinstance(adapter, BidirectionalGRUAdapter)
    copies = 3
    params = adapter.fresh_parameters(main, copies)
    assert params["weight_ih_l0" + SUFFIX].shape == (copies, 2, *main.weight_ih_l0.shape)
    stacked = adapter.stacked_forward(main, params, (x, h))
    assert stacked.shape[-2:] == (copies, 2 * main.hidden_size)
    outs = []
    for s in range(copies):
        ref, _ = separate_gru(main, params, s)(*((x,) if h is None else (x, h)))
        assert torch.allclose(stacked[..., s, :], ref, atol=1e-5, rtol=1e-5), f"copy {s}"
        outs.append(ref)
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)  # the copies really differ


def test_unidirectional_gru_keeps_gru_adapter_results():
    gru = nn.GRU(3, 4, num_layers=2, batch_first=True)
    adapter = adapter_for(gru)
    params = adapter.fresh_parameters(gru, 2)
    assert set(params) == {n for n, _ in gru.named_parameters()}  # the module's own names and layout
    x = torch.randn(2, 5, 3)
    assert torch.equal(adapter.stacked_forward(gru, params, (x, None)),
                       GRUAdapter().stacked_forward(gru, params, (x, None)))
    assert adapter.num_neurons(gru) == 4
    assert adapter.num_neurons(nn.GRU(3, 4, bidirectional=True)) == 8


def test_neuron_major_view_groups_each_units_gate_rows_and_round_trips():
    gru = nn.GRU(3, 2, bidirectional=True)
    adapter = adapter_for(gru)
    stacked = adapter.fresh_parameters(gru, 2)["weight_ih_l0" + SUFFIX]  # (S, 2, 3H, I)
    major = adapter.to_neuron_major("weight_ih_l0" + SUFFIX, stacked)
    assert major.shape == (2, 4, 3, 3)
    hidden = 2
    for d in range(2):
        for i in range(hidden):
            for gate in range(3):
                assert torch.equal(major[:, d * hidden + i, gate], stacked[:, d, gate * hidden + i])
    assert torch.equal(adapter.from_neuron_major("weight_ih_l0" + SUFFIX, major, stacked), stacked)


class Net(nn.Module):
    """A linear layer feeding a bidirectional GRU whose sequence output and final states reach the loss."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(2, 3)
        self.gru = nn.GRU(3, 4, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out, h_n = self.gru(torch.tanh(self.inp(x)))
        return self.head(out).mean(1) + self.head(torch.cat([h_n[-2], h_n[-1]], -1))


def naive_term(layer: DendriticLayer, x: torch.Tensor) -> torch.Tensor:
    """sum_k u_k a_k by the SPEC formula, each V_k a separately built bidirectional GRU."""
    params = dict(layer.dendrite_weights)
    acts = []
    for k in range(layer.num_dendrites):
        zk, _ = separate_gru(layer.main, params, k)(x)
        for j in range(k):
            zk = zk + layer.dendrite_cascade[k, j].detach() * acts[j]
        acts.append(torch.sigmoid(zk))
    return sum(layer.dendrite_out[k].detach() * a for k, a in enumerate(acts))


def grow(layer: DendriticLayer, k: int) -> None:
    for _ in range(k):
        layer.add_candidates(2)
        layer.commit_candidates()


def test_committed_dendrite_leaves_output_unchanged_until_u_moves():
    model = Net()
    pb_core.wrap(model, ["gru"])
    layer = model.gru
    x = torch.randn(5, 6, 2)
    seq_in = torch.tanh(model.inp(x))
    with torch.no_grad():
        base_out, base_h = layer.main(seq_in)
        grow(layer, 2)
        out, h_n = layer(seq_in)
    assert layer.dendrite_out.shape == (2, 8) and layer.dendrite_weights["weight_hh_l1" + SUFFIX].shape == (2, 2, 12, 4)
    assert torch.equal(out, base_out) and torch.equal(h_n, base_h)  # u starts at 0: nothing changed
    with torch.no_grad():
        layer.dendrite_out.copy_(torch.randn(2, 8))
        out, h_n = layer(seq_in)
        expected = base_out + naive_term(layer, seq_in)
    assert torch.allclose(out, expected, atol=1e-5)
    assert (out - base_out).abs().max() > 1e-2
    # h_n: lower layer untouched; last layer's forward state = last step, backward state = first step.
    assert torch.equal(h_n[:2], base_h[:2])
    assert torch.equal(h_n[-2], out[:, -1, :4]) and torch.equal(h_n[-1], out[:, 0, 4:])


def test_perforation_stops_error_through_bidirectional_dendrites():
    torch.manual_seed(3)
    model = Net()
    pb_core.wrap(model, ["gru"])
    layer = model.gru
    grow(layer, 2)
    with torch.no_grad():
        layer.dendrite_out.copy_(torch.randn(2, 8))
    layer.set_dendrites_trainable(weights=False, output=True)
    x = torch.randn(4, 5, 2)

    def input_grads(net):
        net.zero_grad(set_to_none=True)
        net(x).square().sum().backward()
        return [p.grad.clone() for p in net.inp.parameters()]

    layer.perforated = True
    perforated = input_grads(model)

    class ConstantDendrites(nn.Module):  # the same output, with the dendrite term as a constant
        def __init__(self, wrapped):
            super().__init__()
            self.wrapped = wrapped

        def forward(self, seq):
            out, h_n = self.wrapped.main(seq)
            with torch.no_grad():
                term = naive_term(self.wrapped, seq)
            return self.wrapped.adapter.rebuild_output(self.wrapped.main, (out, h_n), out + term)

    ref = copy.deepcopy(model)
    ref.gru = ConstantDendrites(ref.gru)
    for g, r in zip(perforated, input_grads(ref)):
        assert torch.allclose(g, r, atol=1e-6, rtol=1e-5)
    layer.perforated = False  # without perforation the error flows through the dendrites: it differs
    assert max((g - r).abs().max() for g, r in zip(input_grads(model), perforated)) > 1e-4


def test_dendrite_phase_trains_candidates_and_commits_the_chosen_copy():
    torch.manual_seed(5)
    model = Net()
    pb_core.wrap(model, ["gru"])
    layer = model.gru
    for p in model.parameters():
        p.requires_grad_(False)
    layer.add_candidates(3)
    params = layer.candidate_parameters()
    optimizer = torch.optim.Adam(params, lr=1e-2)
    x, y = torch.randn(16, 5, 2), torch.randn(16, 2)
    model.train()
    for _ in range(3):
        before = [p.detach().clone() for p in params]
        optimizer.zero_grad()
        (model(x) - y).square().mean().backward()
        optimizer.step()
        assert any((p - b).abs().max() > 0 for p, b in zip(params, before))
        report = layer.end_candidate_epoch()
        assert 0 < report["correlation"] <= 1
    best = {k: v.clone() for k, v in layer._best_candidates.items()}
    choice = layer.stats.best_abs_corr.mean(1).argmax()  # not neuron-separable: whole copies compete
    layer.commit_candidates()
    for name, value in layer.dendrite_weights.items():
        assert torch.equal(value[0], best[f"w.{name}"][choice])
