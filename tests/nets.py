"""Small networks shared by the pb_core tests."""
import torch
from torch import nn


class Tiny(nn.Module):
    """2 -> 3 (tanh) -> 2: two wrappable Linear layers, small enough for scripted controller runs."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))
