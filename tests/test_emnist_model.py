"""The PyTorch MNIST example CNN with 47 outputs: its parameter count by hand, its head, its layers."""
import pytest
import torch
from torch import nn

import pb_core
from experiments.emnist.model import HEAD, NUM_PARAMETERS, MnistNet


def conv_params(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def linear_params(n_in, n_out):
    return n_in * n_out + n_out


def test_parameter_count_by_hand():
    # 28x28 -> conv 3x3 -> 26 -> conv 3x3 -> 24 -> max-pool 2 -> 12: 64 * 12 * 12 = 9216 features
    flat = 64 * ((28 - 2 - 2) // 2) ** 2
    assert flat == 9216
    by_hand = conv_params(1, 32, 3) + conv_params(32, 64, 3) + linear_params(flat, 128) + linear_params(128, 47)
    model = MnistNet()
    assert by_hand == NUM_PARAMETERS == 1_204_655
    assert sum(p.numel() for p in model.parameters()) == by_hand
    assert pb_core.count_parameters(model) == by_hand
    per_layer = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()
                 if any(True for _ in m.parameters())}
    assert per_layer == {"conv1": 320, "conv2": 18_496, "fc1": 1_179_776, "fc2": 6_063}


def test_forward_gives_47_logits_and_head_is_the_output_layer():
    model = MnistNet().eval()
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 47)
    head = model.get_submodule(HEAD)
    assert isinstance(head, nn.Linear) and head.out_features == 47
    # The head's output is the network's output (no function after it).
    with torch.no_grad():
        captured = {}
        head.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
        assert torch.equal(model(torch.ones(2, 1, 28, 28)), captured["out"])


@pytest.mark.parametrize("preset, expected", [("all", ["conv1", "conv2", "fc1", "fc2"]), ("head", ["fc2"]),
                                              ("backbone", ["conv1", "conv2", "fc1"])])
def test_variant_layer_presets(preset, expected):
    assert pb_core.select_layers(MnistNet(), preset, head=HEAD) == expected


def test_dropout_rates_are_the_examples_and_configurable():
    model = MnistNet()
    assert (model.dropout1.p, model.dropout2.p) == (0.25, 0.5)
    other = MnistNet(dropout_conv=0.1, dropout_fc=0.2)
    assert (other.dropout1.p, other.dropout2.p) == (0.1, 0.2)


class ExampleNet(nn.Module):
    """The PyTorch MNIST example's network as published (fixed sizes), with 47 outputs: the reference."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 47)

    def forward(self, x):
        x = torch.flatten(self.dropout1(torch.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 2)), 1)
        return self.fc2(self.dropout2(torch.relu(self.fc1(x))))


def test_width_1_is_the_example_network_weight_for_weight_and_output_for_output():
    torch.manual_seed(3)
    reference = ExampleNet()
    torch.manual_seed(3)
    model = MnistNet(width=1)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model.eval()(x), reference.eval()(x))


@pytest.mark.parametrize("width, sizes", [(2, (64, 128, 256)), (0.5, (16, 32, 64)), (1.3, (42, 83, 166))])
def test_width_scales_both_convs_and_the_hidden_fc_rounded(width, sizes):
    c1, c2, hidden = sizes
    model = MnistNet(width=width)
    by_hand = conv_params(1, c1, 3) + conv_params(c1, c2, 3) + linear_params(144 * c2, hidden) + linear_params(hidden, 47)
    assert pb_core.count_parameters(model) == by_hand
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 47)


def test_width_must_be_positive():
    with pytest.raises(ValueError, match="width must be positive"):
        MnistNet(width=0)
