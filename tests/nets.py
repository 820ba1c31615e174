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


class DropNet(nn.Module):
    """4 -> 12 (batch norm, ReLU, dropout 0.3) -> 3: dropout draws from the global RNG and batch norm keeps
    buffers, so a resumed or forked run that missed an RNG state or a buffer shows in its records."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.drop, self.fc2 = nn.Linear(4, 12), nn.BatchNorm1d(12), nn.Dropout(0.3), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def interruptible_epoch(controller, loader, interrupt_at=None, batch=2):
    """A cross-entropy training epoch for ``controller``'s runs that raises KeyboardInterrupt at batch ``batch``
    of epoch ``interrupt_at`` (a run killed mid-epoch)."""
    import torch.nn.functional as F

    def train_epoch(model, optimizer):
        total = 0.0
        for i, (xb, yb) in enumerate(loader):
            if controller.state.epoch == interrupt_at and i == batch:
                raise KeyboardInterrupt
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item()
        return total
    return train_epoch
