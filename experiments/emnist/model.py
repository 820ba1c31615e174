"""The PyTorch MNIST example's CNN with a 47-class output layer (EMNIST Balanced; SPEC section 3).

    conv1  Conv2d(1, 32, 3)   -> ReLU                          28x28 -> 26x26
    conv2  Conv2d(32, 64, 3)  -> ReLU -> max-pool 2 -> dropout 0.25   -> 12x12x64 = 9216
    fc1    Linear(9216, 128)  -> ReLU -> dropout 0.5
    fc2    Linear(128, 47)                                     the output ("head") layer

Parameters (weights + biases), 1,204,655 in all:
    conv1  1*32*3*3 + 32   =       320
    conv2  32*64*3*3 + 64  =    18,496
    fc1    9216*128 + 128  = 1,179,776
    fc2    128*47 + 47     =     6,063

It returns logits (the example returns ``log_softmax`` and uses ``nll_loss``; ``cross_entropy`` on logits is
the same loss). Dendrites added to ``fc2`` add to the logits, as they would add to the example's input of
``log_softmax``. Every layer is a module called as a module, so ``pb_core.wrap`` can replace it in place.

``width`` (the benchmark's grid factor ``width``; the parameter-matched ``wider`` control widens through it)
multiplies the two conv layers' channels and fc1's hidden units, each rounded to the nearest integer (at least
1): conv 32w, conv 64w, fc (12 * 12 * 64w) -> 128w. At width 1 it is the example's network, parameter for
parameter (the layers are made in the same order with the same shapes, so a seed gives the same weights).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 47
#: The output layer's name in ``named_modules()`` (pb_head / pb_backbone split the model here).
HEAD = "fc2"
#: Parameter count of the default model (see the module docstring).
NUM_PARAMETERS = 1_204_655
#: Positions after the two 3x3 convolutions and the 2x2 max-pool of a 28x28 image: 12 x 12.
POOLED_PIXELS = ((28 - 2 - 2) // 2) ** 2


def scaled(size: int, width: float) -> int:
    """A layer size at ``width``: ``size x width`` rounded to the nearest integer, at least 1."""
    return max(1, round(size * width))


class MnistNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, dropout_conv: float = 0.25, dropout_fc: float = 0.5,
                 width: float = 1):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width!r}")
        channels1, channels2, hidden = (scaled(n, width) for n in (32, 64, 128))
        self.conv1 = nn.Conv2d(1, channels1, 3, 1)
        self.conv2 = nn.Conv2d(channels1, channels2, 3, 1)
        self.dropout1 = nn.Dropout(dropout_conv)
        self.dropout2 = nn.Dropout(dropout_fc)
        self.fc1 = nn.Linear(POOLED_PIXELS * channels2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return self.fc2(x)
