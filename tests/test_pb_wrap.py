"""Choosing and wrapping layers, the variants' layer sets, parameter counting, errors, custom adapters."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pb_core
from pb_core import CycleController, DendriticLayer, LayerAdapter, Scores, SwitchPolicy, count_parameters
from pb_core import adapters as adapters_module


class MLP(nn.Module):
    """fc1 -> bn -> fc2 -> fc3, the BatchNorm never wrapped but always counted."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2, self.fc3 = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.bn(self.fc1(x))))))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 6, 3, groups=2)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def add_dendrites(model, k):
    for _ in range(k):
        for _, layer in pb_core.dendritic_layers(model):
            layer.add_candidates(2)
            layer.commit_candidates()


# ---------------------------------------------------------------------------------------------- counting
# Hand counts. MLP: fc1 4*6+6 = 30, bn 6+6 = 12, fc2 6*5+5 = 35, fc3 5*3+3 = 18: 95 in all.
# Each dendrite adds a copy of each wrapped layer (30, 35, 18) plus its output weights (6, 5, 3): 97;
# the cascade adds (6+5+3) = 14 per earlier dendrite, K(K-1)/2 per neuron: 0, 0, 14, 42 for K = 0..3.
MLP_COUNTS = {0: 95, 1: 95 + 97, 2: 95 + 2 * 97 + 14, 3: 95 + 3 * 97 + 3 * 14}
# ConvNet: conv1 2*4*9+4 = 76, conv2 (groups 2) 6*2*9+6 = 114, fc 96*3+3 = 291: 481.
# Per dendrite 76+4 + 114+6 + 291+3 = 494; cascade neurons 4+6+3 = 13.
CONV_COUNTS = {0: 481, 1: 481 + 494, 2: 481 + 2 * 494 + 13, 3: 481 + 3 * 494 + 3 * 13}


@pytest.mark.parametrize("make,counts,x", [
    (MLP, MLP_COUNTS, lambda: torch.randn(5, 4)),
    (ConvNet, CONV_COUNTS, lambda: torch.randn(2, 2, 8, 8)),
], ids=["mlp", "conv"])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_count_parameters_matches_hand_count(make, counts, x, k):
    model = make()
    assert count_parameters(model) == counts[0] == sum(p.numel() for p in model.parameters())
    pb_core.wrap(model, "all")
    assert count_parameters(model) == counts[0]
    add_dendrites(model, k)
    assert count_parameters(model) == counts[k]
    model(x())  # the counted structure is the one that runs
    # Candidates (either kind) are never counted.
    for _, layer in pb_core.dendritic_layers(model):
        layer.add_candidates(3)
    assert count_parameters(model) == counts[k]
    for _, layer in pb_core.dendritic_layers(model):
        layer.discard_candidates()
        layer.add_candidates(1, "gradient")
    assert count_parameters(model) == counts[k]


def test_count_parameters_head_only():
    model = MLP()
    pb_core.wrap(model, "head")
    add_dendrites(model, 2)
    assert count_parameters(model) == 95 + 2 * (18 + 3) + 3


# ---------------------------------------------------------------------------------------------- layer selection
EXPECTED_LAYERS = {
    "baseline": [], "pb": ["fc1", "fc2", "fc3"], "pb_head": ["fc3"], "pb_backbone": ["fc1", "fc2"],
    "cc_no_perforation": ["fc1", "fc2", "fc3"], "gd_dendrites": ["fc1", "fc2", "fc3"],
    "gd_joint": ["fc1", "fc2", "fc3"],
}


@pytest.mark.parametrize("variant", sorted(pb_core.VARIANTS))
def test_variant_puts_dendrites_on_the_right_layers(variant):
    assert set(EXPECTED_LAYERS) == set(pb_core.VARIANTS)
    model = MLP()
    ctl = CycleController(model, variant, optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1))
    wrapped = [name for name, _ in pb_core.dendritic_layers(model)]
    assert wrapped == EXPECTED_LAYERS[variant] == ctl.layer_names
    assert isinstance(model.bn, nn.BatchNorm1d)
    for name in ("fc1", "fc2", "fc3"):
        is_wrapped = isinstance(getattr(model, name), DendriticLayer)
        assert is_wrapped == (name in EXPECTED_LAYERS[variant])


def test_presets_head_override_types_and_patterns():
    model = MLP()
    assert pb_core.select_layers(model, "head", head="fc1") == ["fc1"]
    assert pb_core.select_layers(model, "backbone", head="fc1") == ["fc2", "fc3"]
    assert pb_core.select_layers(model, "none") == []
    assert pb_core.select_layers(model, ["fc[12]"]) == ["fc1", "fc2"]
    conv = ConvNet()
    assert pb_core.select_layers(conv, [nn.Conv2d]) == ["conv1", "conv2"]
    assert pb_core.select_layers(conv, [nn.Linear, "conv1"]) == ["fc", "conv1"]


def test_multihead_attention_projections_are_never_chosen():
    class Att(nn.Module):
        def __init__(self):
            super().__init__()
            self.att, self.out = nn.MultiheadAttention(4, 2), nn.Linear(4, 2)

    assert pb_core.select_layers(Att(), "all") == ["out"]
    with pytest.raises(TypeError, match="att.out_proj"):
        pb_core.select_layers(Att(), ["att.out_proj"])


def test_wrapping_twice_is_a_no_op():
    model = MLP()
    first = pb_core.wrap(model, "all")
    add_dendrites(model, 1)
    x = torch.randn(3, 4)
    model.eval()
    before = model(x)
    assert pb_core.wrap(model, "all") == first
    assert pb_core.wrap(model, [nn.Linear]) == first
    assert pb_core.wrap(model, ["fc*"]) == first
    nested = [n for n, m in model.named_modules() if isinstance(m, DendriticLayer)]
    assert nested == ["fc1", "fc2", "fc3"]
    assert torch.equal(model(x), before)


# ---------------------------------------------------------------------------------------------- errors
def test_pattern_on_layer_without_adapter_names_layer_and_register_adapter():
    class Rec(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(3, 4), nn.Linear(4, 2)

    with pytest.raises(TypeError) as info:
        pb_core.wrap(Rec(), ["lstm"])
    msg = str(info.value)
    assert "'lstm'" in msg and "LSTM" in msg and "register_adapter" in msg
    # "all" skips it silently: only known layers are wrappable.
    assert pb_core.select_layers(Rec(), "all") == ["fc"]


def test_preset_on_model_without_wrappable_layer_raises():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.ReLU(), nn.LSTM(3, 3))
    for preset in ("all", "head", "backbone"):
        with pytest.raises(ValueError, match="no layer pb_core can wrap"):
            pb_core.wrap(model, preset)
    with pytest.raises(ValueError, match="no layer pb_core can wrap"):
        CycleController(model, "pb", optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1))
    assert pb_core.wrap(model, "none") == []


def test_unknown_variant_preset_selector_and_head_raise():
    with pytest.raises(ValueError, match="unknown variant 'pbb'"):
        pb_core.get_variant("pbb")
    with pytest.raises(ValueError, match="unknown variant"):
        CycleController(MLP(), "pbb", optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ValueError, match="unknown layer preset"):
        pb_core.wrap(MLP(), "everything")
    with pytest.raises(ValueError, match="matches no wrappable layer"):
        pb_core.wrap(MLP(), ["decoder.*"])
    with pytest.raises(ValueError, match="head layer 'nope'"):
        pb_core.wrap(MLP(), "head", head="nope")
    with pytest.raises(ValueError, match="unknown dendrite activation"):
        pb_core.wrap(MLP(), "all", activation="relu6")
    with pytest.raises(ValueError, match="baseline_cycles"):
        CycleController(MLP(), "pb", optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1), baseline_cycles=[2])
    with pytest.raises(TypeError, match="LayerAdapter"):
        pb_core.register_adapter(nn.LSTM, object())


# ---------------------------------------------------------------------------------------------- custom adapter
class Diagonal(nn.Module):
    """y = x * w + b elementwise: one neuron per feature, not a layer pb_core knows."""

    def __init__(self, n):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.uniform_(self.weight, -1, 1)
        nn.init.uniform_(self.bias, -0.5, 0.5)

    def forward(self, x):
        return x * self.weight + self.bias


class DiagonalAdapter(LayerAdapter):
    neuron_dim = -1

    def num_neurons(self, module):
        return module.weight.numel()

    def stacked_forward(self, module, params, inputs):
        (x,) = inputs
        return x.unsqueeze(-2) * params["weight"] + params["bias"]  # (..., S, N)


class ScaledDiagonal(Diagonal):
    pass


@pytest.fixture
def diagonal_adapter():
    pb_core.register_adapter(Diagonal, DiagonalAdapter())
    yield
    adapters_module._ADAPTERS.pop(Diagonal, None)


def test_custom_adapter_registered_works(diagonal_adapter):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), ScaledDiagonal(4), nn.Linear(4, 1))
    assert pb_core.select_layers(model, "backbone") == ["0", "2"]  # subclasses use the adapter too
    x = torch.randn(32, 3)
    y = (x[:, :1] * x[:, 1:2]).sign()
    ctl = CycleController(model, "pb", optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.02),
                          neuron_switch=SwitchPolicy(fixed_epochs=2), dendrite_switch=SwitchPolicy(fixed_epochs=3),
                          candidates=2, max_dendrites=1)
    diag = model[2]
    assert isinstance(diag, DendriticLayer) and isinstance(diag.adapter, DiagonalAdapter)
    evals = []

    def train_epoch(m, opt):
        for _ in range(3):
            opt.zero_grad()
            loss = F.mse_loss(m(x), y)
            loss.backward()
            opt.step()
        return loss.item()

    def evaluate(m):
        evals.append(1)
        return Scores(0.0, float(len(evals)), 0.0)

    summary = ctl.fit(train_epoch, evaluate)
    assert summary["final_dendrites"] == 1 and diag.num_dendrites == 1
    assert diag.dendrite_weights["weight"].shape == (1, 4)
    # The layer computes the SPEC formula with the custom map as V.
    with torch.no_grad():
        diag.dendrite_out.normal_()
        h = torch.tanh(model[0](x))
        v, c = diag.dendrite_weights["weight"][0], diag.dendrite_weights["bias"][0]
        expected = diag.main(h) + diag.dendrite_out[0] * torch.sigmoid(h * v + c)
        assert torch.allclose(diag(h), expected, atol=1e-6)
    # originals 16 + 8 + 5, then one copy plus one output weight per neuron for each of the three layers
    assert count_parameters(model) == (16 + 8 + 5) + (16 + 4) + (8 + 4) + (5 + 1)
