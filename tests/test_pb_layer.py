"""Properties of pb_core's dendritic layer (SPEC section 1), checked against independent computations.

* stacked adapters == S separately constructed modules (Linear, Conv1d/2d incl. groups, GRUCell, GRU);
* the forward formula pre = main + sum_k u_k g(V_k x + sum_j c_kj a_j), u per neuron / per channel;
* perforation: the gradient reaching earlier layers equals that of a network in which the dendrites'
  contribution is a detached constant; without perforation it is the full gradient;
* committing a dendrite leaves the function unchanged until u moves; per-neuron candidate selection;
* the covariance rule: its step raises |covariance|, and over epochs on a frozen network it rises;
* the fast paths against plain float64 references: the native-layout float32 covariance statistics and
  gradient (and what autograd makes of it for the candidates), the in-place no-graph dendrite forward
  and u's gradient, the multiply-add chain (gradcheck); the statistics resume exactly from a state_dict.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pb_core
from pb_core import DendriticLayer, adapter_for
from pb_core.covariance import CovarianceStats


# ---------------------------------------------------------------------------------------------- helpers
def construct_like(m: nn.Module) -> nn.Module:
    """A new module of the same type and configuration, built through its constructor."""
    if isinstance(m, nn.Linear):
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if isinstance(m, nn.modules.conv._ConvNd):
        return type(m)(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                       dilation=m.dilation, groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)
    if isinstance(m, nn.GRUCell):
        return nn.GRUCell(m.input_size, m.hidden_size, bias=m.bias)
    if isinstance(m, nn.GRU):
        return nn.GRU(m.input_size, m.hidden_size, num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first)
    raise TypeError(type(m))


def naive_copies(main: nn.Module, params: dict, inputs: tuple, dtype=None) -> list[torch.Tensor]:
    """Copy s of the layer's map, evaluated by its own freshly constructed module (in ``dtype`` if given):
    a list of S outputs."""
    copies = next(iter(params.values())).shape[0]
    outs = []
    for s in range(copies):
        m = construct_like(main).to(dtype)
        m.load_state_dict({k: v[s].detach() for k, v in params.items()})
        args = tuple(t for t in inputs if t is not None)
        out = m(*args)
        outs.append(out[0] if isinstance(m, nn.GRU) else out)
    return outs


def per_neuron(vec: torch.Tensor, like: torch.Tensor, neuron_dim: int) -> torch.Tensor:
    shape = [1] * like.dim()
    shape[neuron_dim] = vec.numel()
    return vec.reshape(shape)


def naive_dendrites(layer: DendriticLayer, inputs: tuple, dtype=None):
    """(sum_k u_k a_k, [a_k]) by the SPEC formula, each V_k run as its own module (in ``dtype`` if given)."""
    z = naive_copies(layer.main, dict(layer.dendrite_weights), inputs, dtype)
    nd = layer.adapter.neuron_dim
    acts = []
    for k, zk in enumerate(z):
        for j in range(k):
            zk = zk + per_neuron(layer.dendrite_cascade[k, j].detach(), zk, nd) * acts[j]
        acts.append(torch.sigmoid(zk))
    total = sum(per_neuron(layer.dendrite_out[k].detach(), a, nd) * a for k, a in enumerate(acts))
    return total, acts


def grow(layer: DendriticLayer, k: int, seed: int = 1) -> None:
    """Commit k dendrites (random V, random cascade) and give them random output weights u."""
    for _ in range(k):
        layer.add_candidates(2, init="layer")  # random V and (from the second on) a non-zero cascade
        layer.commit_candidates()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.dendrite_out.copy_(torch.randn(layer.dendrite_out.shape, generator=gen))
    layer.set_dendrites_trainable(weights=False, output=True)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 2)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.gru, self.head = nn.Linear(2, 3), nn.GRU(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        out, h_n = self.gru(torch.tanh(self.inp(x)))
        return self.head(out[:, -1]) + self.head(h_n[-1])


class CellNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.cell, self.head = nn.Linear(2, 3), nn.GRUCell(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = None
        for t in range(x.shape[1]):
            h = self.cell(torch.tanh(self.inp(x[:, t])), h)
        return self.head(h)


# model factory, input, earlier layer (gets gradients), the dendrite-carrying layer
CASES = {
    "mlp": (MLP, lambda: torch.randn(7, 4), "fc1", "fc2"),
    "conv": (ConvNet, lambda: torch.randn(3, 2, 5, 5), "conv1", "conv2"),
    "gru": (GRUNet, lambda: torch.randn(3, 4, 2), "inp", "gru"),
    "grucell": (CellNet, lambda: torch.randn(3, 4, 2), "inp", "cell"),
}


class Reference(nn.Module):
    """Stands in for a DendriticLayer: main(x) + dendrite term, the term either built from given constant
    activations (one stack per call, in call order; added by the layer's own ``_add_dendrite_term``, so
    the forward is bitwise the layer's) or recomputed by the naive formula from the (non-detached) inputs."""

    def __init__(self, layer: DendriticLayer, constants=None):
        super().__init__()
        self.main, self.layer, self.constants = layer.main, layer, constants
        self.calls = 0

    def forward(self, *args):
        out = self.main(*args)
        adapter = self.layer.adapter
        pre = adapter.pre_activation(self.main, out)
        if self.constants is not None:
            summed = self.layer._add_dendrite_term(pre, self.constants[self.calls])
        else:
            term, _ = naive_dendrites(self.layer, args)
            summed = pre + term
        self.calls += 1
        return adapter.rebuild_output(self.main, out, summed)


def _grads(model, x, first):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    model(x).square().sum().backward()
    mod = model.get_submodule(first)
    mod = mod.main if isinstance(mod, DendriticLayer) else mod
    return [x.grad.clone(), mod.weight.grad.clone(), mod.bias.grad.clone()]


# ---------------------------------------------------------------------------------------------- stacked adapters
STACK_CASES = [
    ("linear", lambda: nn.Linear(5, 4), lambda: (torch.randn(3, 5),)),
    ("linear_3d_input", lambda: nn.Linear(5, 4), lambda: (torch.randn(2, 3, 5),)),
    ("linear_unbatched", lambda: nn.Linear(5, 4), lambda: (torch.randn(5),)),
    ("linear_nobias", lambda: nn.Linear(5, 4, bias=False), lambda: (torch.randn(3, 5),)),
    ("conv2d", lambda: nn.Conv2d(4, 6, 3, padding=1), lambda: (torch.randn(2, 4, 5, 5),)),
    ("conv2d_groups2", lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2), lambda: (torch.randn(2, 4, 7, 7),)),
    ("conv2d_unbatched", lambda: nn.Conv2d(4, 6, 3, groups=2), lambda: (torch.randn(4, 5, 5),)),
    ("conv1d", lambda: nn.Conv1d(3, 4, 2, dilation=2), lambda: (torch.randn(2, 3, 9),)),
    ("grucell", lambda: nn.GRUCell(3, 5), lambda: (torch.randn(4, 3), torch.randn(4, 5))),
    ("grucell_no_h", lambda: nn.GRUCell(3, 5), lambda: (torch.randn(4, 3), None)),
    ("grucell_unbatched", lambda: nn.GRUCell(3, 5), lambda: (torch.randn(3), torch.randn(5))),
    ("gru1", lambda: nn.GRU(3, 5), lambda: (torch.randn(6, 2, 3), None)),
    ("gru1_bf_h0", lambda: nn.GRU(3, 5, batch_first=True), lambda: (torch.randn(2, 6, 3), torch.randn(1, 2, 5))),
    ("gru2", lambda: nn.GRU(3, 5, num_layers=2), lambda: (torch.randn(6, 2, 3), torch.randn(2, 2, 5))),
    ("gru2_bf", lambda: nn.GRU(3, 5, num_layers=2, batch_first=True), lambda: (torch.randn(2, 6, 3), None)),
    ("gru2_unbatched", lambda: nn.GRU(3, 5, num_layers=2, batch_first=True),
     lambda: (torch.randn(6, 3), torch.randn(2, 5))),
]


@pytest.mark.parametrize("name,make,inputs", STACK_CASES, ids=[c[0] for c in STACK_CASES])
def test_stacked_forward_equals_separate_modules(name, make, inputs):
    main, x = make(), inputs()
    adapter = adapter_for(main)
    copies = 3
    params = adapter.fresh_parameters(main, copies)
    assert all(p.shape == (copies, *getattr(main, k).shape) for k, p in params.items())
    stacked = adapter.stacked_forward(main, params, x)
    stack_dim = adapter.neuron_dim - 1
    assert stacked.shape[stack_dim] == copies
    naive = naive_copies(main, params, x)
    for s in range(copies):
        assert stacked.select(stack_dim, s).shape == naive[s].shape
        assert torch.allclose(stacked.select(stack_dim, s), naive[s], atol=1e-5, rtol=1e-5), f"copy {s}"
    # The copies really differ (the comparison above could not pass with the wrong copy's weights).
    assert not torch.allclose(naive[0], naive[1], atol=1e-3)


# ---------------------------------------------------------------------------------------------- forward formula
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_formula_and_perforation_is_exact(case):
    make, make_x, first, target = CASES[case]
    model = make()
    pb_core.wrap(model, [target])
    layer = model.get_submodule(target)
    grow(layer, 2)
    assert (layer.dendrite_cascade[1, 0].abs() > 0).all()  # the cascade is exercised
    x = make_x()

    # Record the layer's inputs and its dendrite activations (its own stacked ops, so bitwise).
    seen = []
    hook = layer.register_forward_pre_hook(lambda mod, args: seen.append(args))
    layer.perforated = True
    grads_perf = _grads(model, x, first)
    hook.remove()
    constants = []
    with torch.no_grad():
        for args in seen:
            inputs = layer.adapter.dendrite_inputs(args, {})
            acts = layer._dendrite_activations(tuple(t.detach() if torch.is_tensor(t) else t for t in inputs))
            constants.append(acts)
            term = (layer._per_neuron(layer.dendrite_out) * acts).sum(layer.stack_dim)
            naive_term, _ = naive_dendrites(layer, inputs)
            assert torch.allclose(term, naive_term, atol=1e-5, rtol=1e-5)  # the SPEC formula
            assert naive_term.abs().max() > 1e-2

    # Perforated: exactly the gradient of the network whose dendrite term is a constant.
    ref = copy.deepcopy(model)
    setattr_path(ref, target, Reference(ref.get_submodule(target), constants))
    grads_const = _grads(ref, x, first)
    for g, r in zip(grads_perf, grads_const):
        assert torch.equal(g, r)
    # Perforated with V trainable (gd_joint-like flags): still no error into earlier layers.
    layer.set_dendrites_trainable(weights=True, output=True)
    for g, r in zip(_grads(model, x, first), grads_const):
        assert torch.equal(g, r)
    layer.set_dendrites_trainable(weights=False, output=True)

    # cc_no_perforation: the error flows through the dendrites, the full gradient of the formula.
    layer.perforated = False
    grads_full = _grads(model, x, first)
    ref_full = copy.deepcopy(model)
    setattr_path(ref_full, target, Reference(ref_full.get_submodule(target)))
    grads_naive = _grads(ref_full, x, first)
    for g, r, c in zip(grads_full, grads_naive, grads_const):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)
        assert (g - c).abs().max() > 1e-3  # and it is not the perforated gradient


def setattr_path(model, path, value):
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, value)


@pytest.mark.parametrize("case", list(CASES))
def test_neuron_phase_gradients_reach_u_not_v_or_cascade(case):
    make, make_x, first, target = CASES[case]
    model = make()
    pb_core.wrap(model, [target])
    layer = model.get_submodule(target)
    grow(layer, 2)
    for perforated in (True, False):
        layer.perforated = perforated
        model.zero_grad(set_to_none=True)
        model(make_x()).square().sum().backward()
        assert layer.dendrite_out.grad is not None and layer.dendrite_out.grad.abs().max() > 0
        assert all(p.grad is None for p in layer.dendrite_weights.values())
        assert layer.dendrite_cascade.grad is None


def test_conv_output_weight_is_per_channel_and_scales_whole_map():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = DendriticLayer(conv, adapter_for(conv))
    grow(layer, 2)
    assert layer.dendrite_out.shape == (2, 4)
    assert layer.dendrite_weights["weight"].shape == (2, 4, 3, 3, 3)
    assert layer.dendrite_weights["bias"].shape == (2, 4)
    assert layer.dendrite_cascade.shape == (2, 2, 4)
    x = torch.randn(2, 3, 6, 5)
    base = conv(x)
    assert layer(x).shape == base.shape
    _, acts = naive_dendrites(layer, (x,))
    channel = 2
    for value in (1.0, 2.5):
        with torch.no_grad():
            layer.dendrite_out.zero_()
            layer.dendrite_out[1, channel] = value
            diff = layer(x) - base
        expected = torch.zeros_like(base)
        expected[:, channel] = value * acts[1][:, channel]
        assert torch.allclose(diff, expected, atol=1e-6)
        assert (diff[:, channel].abs() > 1e-3).all()  # every position of the channel moved


def test_gru_shapes_and_final_state_follow_the_dendrites():
    gru = nn.GRU(3, 4, num_layers=2, batch_first=True)
    layer = DendriticLayer(gru, adapter_for(gru))
    grow(layer, 2)
    assert layer.dendrite_weights["weight_ih_l0"].shape == (2, 12, 3)
    assert layer.dendrite_weights["weight_hh_l1"].shape == (2, 12, 4)
    assert layer.dendrite_out.shape == (2, 4)
    x = torch.randn(5, 7, 3)
    out, h_n = layer(x)
    base_out, base_h = gru(x)
    assert out.shape == base_out.shape and h_n.shape == base_h.shape
    term, _ = naive_dendrites(layer, (x, None))
    assert torch.allclose(out, base_out + term, atol=1e-5)
    assert torch.equal(h_n[-1], out[:, -1]) and torch.equal(h_n[0], base_h[0])


def test_grucell_dendrite_adds_to_new_hidden_state():
    cell = nn.GRUCell(3, 4)
    layer = DendriticLayer(cell, adapter_for(cell))
    grow(layer, 1)
    x, h = torch.randn(5, 3), torch.randn(5, 4)
    term, _ = naive_dendrites(layer, (x, h))
    assert torch.allclose(layer(x, h), cell(x, h) + term, atol=1e-6)
    assert torch.allclose(layer(x), cell(x) + naive_dendrites(layer, (x, None))[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------- adding a dendrite
@pytest.mark.parametrize("case", list(CASES))
def test_commit_keeps_function_until_u_moves(case):
    make, make_x, _, _ = CASES[case]
    model = make()
    pb_core.wrap(model, "all")
    layers = dict(pb_core.dendritic_layers(model))
    x = make_x()
    target = torch.randn_like(model(x))
    for layer in layers.values():  # one dendrite already there, so cascades are involved
        grow(layer, 1)
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    before_train = model(x).detach()
    # Candidates exist and train (covariance): the network's output is untouched in train mode too.
    for layer in layers.values():
        layer.add_candidates(3)
    assert torch.equal(model(x), before_train)
    cand_params = [p for lay in layers.values() for p in lay.candidate_parameters()]
    opt = torch.optim.Adam(cand_params, lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(model(x), target).backward()
        opt.step()
    for layer in layers.values():
        layer.end_candidate_epoch()
        layer.commit_candidates()
        assert layer.num_dendrites == 2 and layer.num_candidates == 0
        assert torch.equal(layer.dendrite_out[1], torch.zeros_like(layer.dendrite_out[1]))
    model.eval()
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, before, atol=1e-6, rtol=0)
    # One optimizer step on u alone changes the output (and nothing else).
    us = [lay.dendrite_out for lay in layers.values()]
    others = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v) and "dendrite_out" not in k}
    opt = torch.optim.SGD(us, lr=0.5)
    opt.zero_grad()
    F.mse_loss(model(x), target).backward()
    opt.step()
    with torch.no_grad():
        moved = model(x)
    assert (moved - before).abs().max() > 1e-4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in others.items())
    assert all(lay.dendrite_out[1].abs().max() > 0 for lay in layers.values())


STRUCTURE_CASES = [
    ("linear", lambda: nn.Linear(5, 6), lambda: (torch.randn(8, 5),), True),
    ("conv", lambda: nn.Conv2d(2, 6, 3, groups=2), lambda: (torch.randn(2, 2, 5, 5),), True),
    ("grucell", lambda: nn.GRUCell(3, 6), lambda: (torch.randn(4, 3), torch.randn(4, 6)), True),
    ("gru1", lambda: nn.GRU(3, 6, batch_first=True), lambda: (torch.randn(2, 5, 3), None), False),
    ("gru2", lambda: nn.GRU(3, 6, num_layers=2), lambda: (torch.randn(5, 2, 3), None), False),
]


@pytest.mark.parametrize("name,make,inputs,separable", STRUCTURE_CASES, ids=[c[0] for c in STRUCTURE_CASES])
def test_commit_picks_each_neurons_best_candidate(name, make, inputs, separable):
    """Per neuron, the committed dendrite computes exactly the chosen candidate's activation for that neuron
    (whole copies for a non-separable layer), i.e. per-neuron selection slices the right weight rows."""
    main, x = make(), inputs()
    layer = DendriticLayer(main, adapter_for(main))
    assert layer.adapter.neuron_separable(main) is separable
    layer.add_candidates(3)
    n = layer.num_neurons
    cand = [torch.sigmoid(z) for z in naive_copies(main, dict(layer.candidate_weights), x)]
    score = torch.rand(3, n, dtype=torch.float64)
    choice = torch.arange(n) % 3
    score[choice, torch.arange(n)] = 2.0  # the designed winner of each neuron
    if not separable:
        score[1] += 10.0  # copy 1 wins on the mean
    layer.stats.best_abs_corr = score
    layer._best_candidates = layer._candidate_snapshot()
    info = layer.commit_candidates()
    assert info["mean_abs_correlation"] is not None
    committed = torch.sigmoid(naive_copies(main, dict(layer.dendrite_weights), x)[0])
    nd = layer.adapter.neuron_dim
    for i in range(n):
        c = int(choice[i]) if separable else 1
        assert torch.allclose(committed.select(nd, i), cand[c].select(nd, i), atol=1e-6), f"neuron {i}"


def test_commit_uses_weights_of_best_correlation_epoch():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    pb_core.wrap(net, ["0"])
    layer = net[0]
    for p in net.parameters():
        p.requires_grad_(False)
    layer.add_candidates(2, snapshot="epoch_end")  # the snapshot holds the weights after the epoch's last step
    x = torch.randn(64, 2)
    y = torch.sin(3 * x[:, :1]) * x[:, 1:]
    opt = torch.optim.Adam(layer.candidate_parameters(), lr=0.05)
    for _ in range(4):
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()
    res = layer.end_candidate_epoch()
    assert res["improved"] == 4
    best_w = layer.candidate_weights["weight"].detach().clone()
    best_score = layer.stats.best_abs_corr.clone()
    with torch.no_grad():  # the candidates wander off; the next epoch sees no data, so it cannot improve
        layer.candidate_weights["weight"].add_(torch.randn_like(best_w))
    assert layer.end_candidate_epoch()["improved"] == 0
    layer.commit_candidates()
    choice = best_score.argmax(0)
    assert torch.equal(layer.dendrite_weights["weight"][0], best_w[choice, torch.arange(4)])


# ---------------------------------------------------------------------------------------------- covariance rule
def test_covariance_step_increases_magnitude_of_covariance():
    torch.manual_seed(0)
    m, c, n = 200, 3, 4
    stats = CovarianceStats(c, n, "cpu")
    act = torch.rand(m, c, n, dtype=torch.float64)
    err = torch.randn(m, n, dtype=torch.float64) + 0.5 * act[:, 0]
    err[:, 1] = -err[:, 1]

    def cov(a):
        return ((a - a.mean(0)) * (err - err.mean(0)).unsqueeze(1)).mean(0)

    grad = stats.gradient(act, err)
    assert grad.shape == act.shape
    # The SPEC gradient: sigma * (D - mean D) up to a positive per-neuron factor, negated for a minimiser.
    sigma = torch.sign(cov(act))
    centred = (err - err.mean(0)).unsqueeze(1)
    ratio = -grad / (sigma * centred)
    assert torch.allclose(ratio, ratio[:1, :1, :].expand_as(ratio), rtol=1e-9)
    assert (ratio > 0).all()
    stepped = act - 0.1 * grad / grad.abs().max()
    assert (cov(stepped).abs() > cov(act).abs()).all()


def _frozen_problem():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(256, 3)
    y = torch.stack([torch.sin(3 * x[:, 0]) * x[:, 1], (x[:, 2] > 0).float()], 1)
    pb_core.wrap(net, "all")
    for p in net.parameters():
        p.requires_grad_(False)
    return net, x, y


def test_candidate_correlation_with_error_rises_over_epochs():
    net, x, y = _frozen_problem()
    layers = [lay for _, lay in pb_core.dendritic_layers(net)]
    for lay in layers:
        lay.add_candidates(4)
    params = [p for lay in layers for p in lay.candidate_parameters()]
    net_state = {k: v.clone() for k, v in net.state_dict().items() if "candidate" not in k and torch.is_tensor(v)}
    opt = torch.optim.Adam(params, lr=0.03)
    corr_hist, cov_hist = [], []
    for epoch in range(12):
        for batch in torch.randperm(256).split(32):
            opt.zero_grad()
            F.mse_loss(net(x[batch]), y[batch]).backward()
            opt.step()
        corr_hist.append([lay.stats.epoch_correlation().abs().max(0).values.mean().item() for lay in layers])
        cov_hist.append([lay.stats.epoch_covariance().abs().max(0).values.mean().item() for lay in layers])
        for lay in layers:
            lay.end_candidate_epoch()
    corr, cov = torch.tensor(corr_hist), torch.tensor(cov_hist)
    for i in range(len(layers)):
        assert corr[-1, i] > corr[0, i] + 0.05, corr[:, i]
        assert cov[-1, i] > 1.2 * cov[0, i], cov[:, i]
        assert corr[-3:, i].mean() > corr[:3, i].mean()
    # The network (weights and everything else) never moved.
    for k, v in net_state.items():
        assert torch.equal(v, net.state_dict()[k]), k


# ---------------------------------------------------------------------------------------------- fast paths vs float64
def _copy_map64(main: nn.Module, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One copy of a Linear/Conv2d map with the given (float64) weights, by the functional op."""
    if isinstance(main, nn.Linear):
        return F.linear(x, weight, bias)
    return F.conv2d(x, weight, bias, main.stride, main.padding, main.dilation, main.groups)


class _CovarianceReference:
    """The covariance rule written out plainly in float64 on the flat (M, C, N) layout."""

    def __init__(self, c: int, n: int, momentum: float = 0.9, eps: float = 1e-12):
        self.momentum, self.eps = momentum, eps
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.d_count, self.d_sum, self.d_sq_sum, self.cov_ema = 0, z(n), z(n), None
        self.n, self.sa, self.saa, self.sad, self.sd, self.sdd = 0, z(c, n), z(c, n), z(c, n), z(n), z(n)

    def step(self, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        m = d.shape[0]
        if self.d_count:
            mean_d = self.d_sum / self.d_count
            var_d = self.d_sq_sum / self.d_count - mean_d**2
        else:
            mean_d, var_d = d.mean(0), d.var(0, unbiased=False)
        cov = ((a - a.mean(0)) * (d - d.mean(0)).unsqueeze(1)).mean(0)
        self.cov_ema = cov if self.cov_ema is None else self.momentum * self.cov_ema + (1 - self.momentum) * cov
        sigma = torch.where(self.cov_ema < 0, -1.0, 1.0).double()
        grad = -sigma * ((d - mean_d) / (var_d.sqrt() + self.eps)).unsqueeze(1) / m
        self.d_count += m
        self.d_sum, self.d_sq_sum = self.d_sum + d.sum(0), self.d_sq_sum + (d * d).sum(0)
        self.n += m
        self.sa, self.saa = self.sa + a.sum(0), self.saa + (a * a).sum(0)
        self.sad = self.sad + (a * d.unsqueeze(1)).sum(0)
        self.sd, self.sdd = self.sd + d.sum(0), self.sdd + (d * d).sum(0)
        return grad


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> bool:
    """|actual - expected| <= rel * max|expected| everywhere (a float32-vs-float64 comparison)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return actual.shape == expected.shape and bool((actual - expected).abs().max() <= rel * expected.abs().max())


COV_CASES = [
    ("linear", lambda: nn.Linear(6, 5), lambda: torch.randn(32, 6)),
    ("conv2d", lambda: nn.Conv2d(3, 4, 3, padding=1), lambda: torch.randn(4, 3, 7, 6)),
]


@pytest.mark.parametrize("name,make,make_x", COV_CASES, ids=[c[0] for c in COV_CASES])
@pytest.mark.parametrize("k", [1, 2])
def test_covariance_gradient_and_statistics_match_float64_reference(name, make, make_x, k):
    """The native-layout float32 covariance step (statistics, candidate gradient, and what autograd makes of
    it for the candidates' weights and cascade weights) against the rule written out in float64, C = 2."""
    torch.manual_seed(11)
    main = make()
    layer = DendriticLayer(main, adapter_for(main))
    grow(layer, k)
    layer.add_candidates(2, init="layer")
    for p in main.parameters():
        p.requires_grad_(False)
    layer.set_dendrites_trainable(weights=False, output=False)
    nd, sd = layer.adapter.neuron_dim, layer.stack_dim
    c, n = layer.num_candidates, layer.num_neurons
    seen = []
    original = layer._covariance_gradient
    layer._covariance_gradient = lambda act, err, probe: seen.append((err, original(act, err, probe))) or seen[-1][1]
    ref = _CovarianceReference(c, n)
    all_a, all_d = [], []
    for batch in range(3):
        x = make_x()
        y = torch.randn_like(main(x))
        for p in layer.candidate_parameters():
            p.grad = None
        out = layer(x)
        layer.eval()  # candidates are not evaluated in eval mode: the same computation without them
        assert torch.equal(out, layer(x))  # candidates leave the output alone
        layer.train()
        F.mse_loss(out, y, reduction="sum").backward()
        err, grad = seen[-1]
        assert torch.allclose(err, 2 * (out - y).detach(), atol=1e-6)  # the tap hands over D = dL/dpre
        assert grad.shape == (*err.shape[: err.dim() + nd], c, *err.shape[err.dim() + nd:]) and grad.is_contiguous()

        # float64 reference: candidate activations by the formula, D moved to (M, N), the rule on (M, C, N).
        x64 = x.double()
        _, acts = naive_dendrites(layer, (x64,), torch.float64)
        w64 = layer.candidate_weights["weight"].detach().double().requires_grad_(True)
        b64 = layer.candidate_weights["bias"].detach().double().requires_grad_(True)
        casc64 = layer.candidate_cascade.detach().double().requires_grad_(True)
        cand = []
        for ci in range(c):
            z = _copy_map64(main, w64[ci], b64[ci], x64)
            for j, a_j in enumerate(acts):
                z = z + per_neuron(casc64[ci, j], z, nd) * a_j
            cand.append(torch.sigmoid(z))
        cand64 = torch.stack(cand, dim=sd)  # the layer's layout
        flat_a = cand64.movedim((sd, nd), (-2, -1)).reshape(-1, c, n).detach()
        flat_d = err.double().movedim(nd, -1).reshape(-1, n)
        flat_g = ref.step(flat_a, flat_d)
        grad64 = flat_g.reshape(cand64.movedim((sd, nd), (-2, -1)).shape).movedim((-2, -1), (sd, nd))
        assert _close(grad, grad64, 1e-5), f"batch {batch}: candidate-activation gradient"
        (cand64 * grad64).sum().backward()
        assert _close(layer.candidate_weights["weight"].grad, w64.grad, 1e-4), f"batch {batch}: weight grad"
        assert _close(layer.candidate_weights["bias"].grad, b64.grad, 1e-4), f"batch {batch}: bias grad"
        assert _close(layer.candidate_cascade.grad, casc64.grad, 1e-4), f"batch {batch}: cascade grad"
        stats = layer.stats
        assert stats.d_count == ref.d_count and stats.n == ref.n == (batch + 1) * flat_d.shape[0]
        for key in ("d_sum", "d_sq_sum", "cov_ema", "sa", "saa", "sad", "sd", "sdd"):
            assert _close(getattr(stats, key), getattr(ref, key), 1e-5), f"batch {batch}: stats.{key}"
        all_a.append(flat_a)
        all_d.append(flat_d)
    # The epoch correlation equals Pearson's r of each candidate with its neuron's error over all samples.
    a, d = torch.cat(all_a), torch.cat(all_d)
    ac, dc = a - a.mean(0), (d - d.mean(0)).unsqueeze(1)
    pearson = (ac * dc).sum(0) / ((ac * ac).sum(0) * (dc * dc).sum(0)).sqrt()
    assert pearson.abs().max() > 0.05
    assert torch.allclose(layer.stats.epoch_correlation(), pearson, atol=1e-5, rtol=0)


def test_covariance_state_dict_resumes_exactly():
    """The phase's running error moments (their sample count included) survive a checkpoint, in the
    checkpoint format pb_core always wrote (d_count a float64 0-dim tensor)."""
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 3, 3)
    layer = DendriticLayer(conv, adapter_for(conv))
    grow(layer, 1)
    layer.add_candidates(2)
    for p in conv.parameters():
        p.requires_grad_(False)
    layer.set_dendrites_trainable(weights=False, output=False)
    xs = [torch.randn(4, 2, 6, 6) for _ in range(3)]

    def step(lay, x):
        for p in lay.candidate_parameters():
            p.grad = None
        lay(x).square().sum().backward()
        return [p.grad.clone() for p in lay.candidate_parameters()]

    for x in xs[:2]:
        step(layer, x)
    state = layer.stats.state_dict()
    assert set(state) == {"d_count", "d_sum", "d_sq_sum", "cov_ema", "best_abs_corr", "best_abs_cov", "progress_ref"}
    assert state["d_count"].dtype == torch.float64 and state["d_count"].dim() == 0
    assert float(state["d_count"]) == 2 * 4 * 4 * 4
    resumed = DendriticLayer(construct_like(conv), adapter_for(conv))
    resumed.apply_structure(layer.structure())
    resumed.load_state_dict(layer.state_dict())
    for p in resumed.main.parameters():
        p.requires_grad_(False)
    for p in resumed.candidate_parameters():
        p.requires_grad_(True)
    assert resumed.stats.d_count == layer.stats.d_count
    for a, b in zip(step(resumed, xs[2]), step(layer, xs[2])):
        assert torch.equal(a, b)
    # A fresh phase (nothing seen yet) takes the batch's own moments instead: a different step.
    fresh = copy.deepcopy(resumed)
    fresh.stats.load_state_dict({**state, "d_count": torch.zeros((), dtype=torch.float64)})
    assert not torch.allclose(step(fresh, xs[2])[0], step(copy.deepcopy(layer), xs[2])[0])


@pytest.mark.parametrize("name,make,make_x", COV_CASES, ids=[c[0] for c in COV_CASES])
def test_no_graph_dendrite_forward_matches_formula_and_gradient_of_u(name, make, make_x, monkeypatch):
    """Frozen dendrites in a perforated phase are computed in place without a graph; the output, the
    gradient of u (sum over positions of a_k * dL/dpre) and of the layer's own weights equal autograd on
    the formula in float64, in training and (eval, no_grad / inference_mode) alike."""
    torch.manual_seed(7)
    main = make()
    layer = DendriticLayer(main, adapter_for(main))
    grow(layer, 3)  # the cascade reaches back two steps
    assert layer.perforated and not layer.dendrite_cascade.requires_grad and layer.dendrite_out.requires_grad
    nd = layer.adapter.neuron_dim
    x = make_x()
    out = layer(x)
    # No graph through the dendrites: the only backward nodes are the layer's map and the multiply-adds.
    nodes, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            stack.extend(f for f, _ in node.next_functions)
    names = {type(node).__name__ for node in nodes}
    assert not any("Sigmoid" in nm or "Stack" in nm for nm in names), names
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    # ... because the activations are computed in place in the stacked map's own output.
    made = []
    stacked = layer.adapter.stacked_forward
    monkeypatch.setattr(layer.adapter, "stacked_forward", lambda *args: made.append(stacked(*args)) or made[-1])
    with torch.no_grad():
        assert layer._dendrite_activations((x,)) is made[-1]
    monkeypatch.undo()

    x64 = x.double()
    u64 = layer.dendrite_out.detach().double().requires_grad_(True)
    w64 = main.weight.detach().double().requires_grad_(True)
    _, acts = naive_dendrites(layer, (x64,), torch.float64)
    out64 = _copy_map64(main, w64, main.bias.detach().double(), x64)
    for k, a_k in enumerate(acts):
        out64 = out64 + per_neuron(u64[k], a_k, nd) * a_k
    (out64 * weights.double()).sum().backward()
    assert _close(out, out64, 1e-6)
    assert _close(layer.dendrite_out.grad, u64.grad, 1e-5)
    assert (u64.grad.abs() > 1e-3).all()
    assert _close(main.weight.grad, w64.grad, 1e-5)
    # Inference: the same numbers from the in-place path under no_grad and inference_mode.
    layer.eval()
    with torch.no_grad():
        assert _close(layer(x), out64, 1e-6)
    with torch.inference_mode():
        assert _close(layer(x), out64, 1e-6)


FUSED_CASES = [
    ("linear", lambda: nn.Linear(6, 5), lambda: torch.randn(3, 6)),
    ("linear_unbatched", lambda: nn.Linear(6, 5), lambda: torch.randn(6)),
    ("conv2d_groups2", lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), lambda: torch.randn(2, 4, 5, 5)),
    ("conv1d_nobias", lambda: nn.Conv1d(3, 4, 2, bias=False), lambda: torch.randn(1, 3, 7)),
]


@pytest.mark.parametrize("name,make,make_x", FUSED_CASES, ids=[c[0] for c in FUSED_CASES])
def test_fused_inference_matches_the_formula_and_follows_weight_changes(name, make, make_x):
    """Without autograd a Linear/Conv layer runs its own map as copy 0 of the dendrites' stacked call (one
    call instead of two). Its output equals the formula; the cached fused weights follow every in-place
    change (an optimizer step) and every new dendrite; a hook on the layer's module turns fusion off."""
    torch.manual_seed(8)
    main, x = make(), make_x()
    layer = DendriticLayer(main, adapter_for(main))
    made = []
    for k in (1, 2, 3):
        grow(layer, 1, seed=k)  # one more dendrite, new random u
        with torch.no_grad():
            fused = layer(x)
        made.append(layer._fused_cache is not None)
        term, _ = naive_dendrites(layer, (x,))
        assert _close(fused, main(x) + term, 1e-6), f"K={k}"
        assert (term.abs() > 1e-3).any()
    assert all(made)
    opt = torch.optim.SGD([*main.parameters(), layer.dendrite_out], lr=0.5)
    opt.zero_grad()
    layer(x).square().sum().backward()
    opt.step()  # the layer's own weights and u move in place
    with torch.no_grad():
        fused = layer(x)
    term, _ = naive_dendrites(layer, (x,))
    assert _close(fused, main(x) + term, 1e-6)
    calls = []
    main.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        assert _close(layer(x), fused, 1e-6)
    assert calls == [1]  # the hooked module ran itself


def test_multiply_add_gradients_match_gradcheck():
    """The chain of multiply-adds behind the dendrite term and the cascade inputs: base + sum_k w_k * x_k
    with small per-neuron w_k broadcast over full-size x_k (and the other way round), every input's
    gradient checked numerically in float64."""
    from pb_core.layer import _multiply_add

    torch.manual_seed(2)
    base = torch.randn(3, 2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 2, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    xs = [torch.randn(3, 1, 4, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda b, w, *x: _multiply_add(b, w, x), (base, weights, *xs))
    # Only some inputs need a gradient (as for u in a perforated phase), and a base that broadcasts.
    xs = [x.detach() for x in xs]
    small_base = torch.randn(1, 2, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b, w: _multiply_add(b, w, xs), (small_base, weights))
    with torch.no_grad():
        expected = small_base + sum(w * x for w, x in zip(weights, xs))
        assert torch.allclose(_multiply_add(small_base, weights, xs), expected)
