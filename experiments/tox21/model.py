"""TrimNet for Tox21, written with PyTorch Geometric's ``MessagePassing``.

TrimNet: Li et al., "TrimNet: learning molecular representation from triplet
messages for biomedicine", Briefings in Bioinformatics 22(4), 2021.  This is a
re-implementation that follows the authors' code (repository
``yvquanli/TrimNet``, files ``trimnet_drug/source/model.py`` for the network and
``trimnet_drug/source/run.py`` / ``trainer.py`` for the defaults and the way the
output is read), written so that a dendrite plug-in can wrap its layers.

Architecture (defaults: hidden 32, 4 heads, depth 3, dropout 0.2, 24 outputs)
------------------------------------------------------------------------------
* ``lin0``: ``Linear(39 -> hidden)`` followed by CELU.
* ``convs``: ``depth`` *separate* :class:`TripletBlock` modules (weights are
  NOT shared between blocks).  Each block runs ``time_step = 3`` iterations
  that DO share the block's weights (as in the original ``Block``):

      h = x
      repeat time_step times:
          m = celu(triplet_attention(x, edge_index, edge_attr))
          h = GRU(m, h)            # nn.GRU, sequence length 1
          x = LayerNorm(h)
      return x

  The GRU's hidden state carries the *un-normalised* GRU output; the LayerNorm
  output is what the next attention step sees (exactly as the original).
  Around each block a residual connection with dropout:
  ``x = x + dropout(block(x))``.
* ``MultiHeadTripletAttention`` (one per block), for an edge j -> i with head h:

      x' = W_node x              (hidden -> heads*hidden, no bias)
      e' = W_edge e_ij           (10 -> heads*hidden, no bias)
      alpha_ij^h = softmax_{j in N(i)} leaky_relu_0.2( a_h . [x'_i^h || e'^h_ij || x'_j^h] )
      msg_ij^h   = alpha_ij^h * e'^h_ij * x'^h_j        (element-wise)
      out_i      = W_scale concat_h(sum_j msg_ij^h) + b   (heads*hidden -> hidden)

  Sum aggregation; a node without incoming edges gets ``out_i = b``.
* ``set2set``: PyG ``Set2Set(hidden, processing_steps=3)`` -> 2*hidden.
* dropout, then the head ``out``: ``Linear(2*hidden -> 512)``, ``LayerNorm(512)``,
  ReLU, ``Dropout``, ``Linear(512 -> out_dim)``.

Output: ``forward`` returns logits of shape ``(num_graphs, out_dim // 2, 2)``,
i.e. ``(num_graphs, 12, 2)`` for Tox21: two logits (negative, positive) per
task, to be used with a per-task cross-entropy / softmax.  Task ``t`` is the
original's ``output[:, 2t:2t+2]`` (the original returns the flat
``(num_graphs, 24)`` tensor; we only reshape it).

Deviations from the original, forced by the dendrite plug-in
-----------------------------------------------------------
The plug-in replaces ``torch.nn.Linear`` / ``torch.nn.GRU`` / ``torch.nn.Conv1d``
modules in place, so every such layer here is a module called as a module.
The original's raw ``nn.Parameter`` matrices used with ``torch.matmul`` are
re-expressed as ``nn.Linear`` with the same parameter count and the same math:

* ``weight_node`` (hidden x heads*hidden)   -> ``conv.lin_node  = Linear(hidden, heads*hidden, bias=False)``
* ``weight_edge`` (10 x heads*hidden)       -> ``conv.lin_edge  = Linear(10, heads*hidden, bias=False)``
* ``weight_scale`` (heads*hidden x hidden) + ``bias`` (hidden)
                                            -> ``conv.lin_scale = Linear(heads*hidden, hidden)``

``nn.Linear`` stores the transpose of the original matrix; the initialisation
keeps the original's distribution (the original applies ``kaiming_uniform_`` to
the ``(in, out)`` matrix, whose fan is ``out``; we use
``kaiming_uniform_(mode="fan_out")`` on the ``(out, in)`` weight, the same
``U(-sqrt(6/out), sqrt(6/out))``; the bias starts at zero as in the original).

Other details: the head's ReLU is not in-place (same values; safer with
forward hooks/wrappers), and the next GRU hidden state is taken from the GRU's
*output* sequence rather than its returned ``h_n`` -- identical for a 1-layer
GRU run for one step, but it makes whatever a wrapper adds to the GRU output
also reach the recurrence.

Left without dendrites, and why
-------------------------------
* ``conv.att_triplet`` (shape ``(1, heads, 3*hidden)``, the attention score
  vectors ``a_h``): a per-head dot product (block-diagonal, one scalar per
  head) that only feeds the softmax.  As a dense ``nn.Linear(3*heads*hidden ->
  heads)`` it would have 4x the parameters (1,536 vs 384) and different math;
  it stays a raw parameter, as in the original.
* ``ln`` (per block) and ``out.1`` (``nn.LayerNorm``): normalisation, not an
  affine map of the input with per-neuron input weights.
* ``set2set.lstm`` (``nn.LSTM`` inside PyG's ``Set2Set``): not one of the
  wrapped module types, and the readout's query recurrence is PyG's code.

Dendrite-capable modules (``DENDRITE_LAYER_NAMES``, 15 at depth 3):
``lin0``, ``convs.{b}.conv.lin_node``, ``convs.{b}.conv.lin_edge``,
``convs.{b}.conv.lin_scale``, ``convs.{b}.gru`` for b = 0, 1, 2, ``out.0`` and
``out.4``.  The output ("head") layer is ``out.4`` (:data:`OUTPUT_LAYER_NAME`,
:meth:`TrimNet.output_layer_name`).

Parameter count (in_dim 39, edge_in_dim 10, hidden 32, heads 4, depth 3,
out_dim 24): **109,304**, identical to the original at the same settings.

    =========================== ========  ===============================
    submodule                     params  original
    =========================== ========  ===============================
    lin0                           1,280  lin0
    convs.{b}.conv.lin_node        4,096  weight_node
    convs.{b}.conv.lin_edge        1,280  weight_edge
    convs.{b}.conv.att_triplet       384  weight_triplet_att
    convs.{b}.conv.lin_scale       4,128  weight_scale (4,096) + bias (32)
    convs.{b}.gru                  6,336  gru
    convs.{b}.ln                      64  ln
    one block                     16,288
    convs (3 blocks)              48,864
    set2set (LSTM 64 -> 32)       12,544  set2set
    out.0  Linear(64, 512)        33,280  out[0]
    out.1  LayerNorm(512)          1,024  out[1]
    out.4  Linear(512, 24)        12,312  out[4]
    total                        109,304
    =========================== ========  ===============================
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing, Set2Set
from torch_geometric.utils import softmax

__all__ = [
    "TrimNet",
    "TripletBlock",
    "MultiHeadTripletAttention",
    "OUTPUT_LAYER_NAME",
    "DENDRITE_LAYER_NAMES",
    "EXPECTED_NUM_PARAMETERS",
    "dendrite_layer_names",
]

#: Name (as in ``model.named_modules()``) of the final Linear, the "head" layer.
OUTPUT_LAYER_NAME = "out.4"

#: Parameter count at the default settings (equal to the original TrimNet's).
EXPECTED_NUM_PARAMETERS = 109_304


def dendrite_layer_names(depth: int = 3) -> List[str]:
    """Names of the nn.Linear / nn.GRU modules of a ``TrimNet`` of this depth."""
    names = ["lin0"]
    for b in range(depth):
        names += [
            f"convs.{b}.conv.lin_node",
            f"convs.{b}.conv.lin_edge",
            f"convs.{b}.conv.lin_scale",
            f"convs.{b}.gru",
        ]
    names += ["out.0", OUTPUT_LAYER_NAME]
    return names


#: The dendrite-capable modules of the default model (depth 3).
DENDRITE_LAYER_NAMES = tuple(dendrite_layer_names(3))


class MultiHeadTripletAttention(MessagePassing):
    """Triplet (atom_i, bond_ij, atom_j) multi-head attention message passing.

    Same computation as the original ``MultiHeadTripletAttention``; the three
    raw weight matrices are ``nn.Linear`` modules here (see the module
    docstring), the attention vectors ``att_triplet`` stay a raw parameter.
    """

    def __init__(self, node_channels: int, edge_channels: int, heads: int = 4,
                 negative_slope: float = 0.2):
        super().__init__(aggr="add", node_dim=0)
        self.node_channels = node_channels
        self.edge_channels = edge_channels
        self.heads = heads
        self.negative_slope = negative_slope
        self.lin_node = nn.Linear(node_channels, heads * node_channels, bias=False)
        self.lin_edge = nn.Linear(edge_channels, heads * node_channels, bias=False)
        self.att_triplet = nn.Parameter(torch.empty(1, heads, 3 * node_channels))
        self.lin_scale = nn.Linear(heads * node_channels, node_channels, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The original draws kaiming_uniform_ on (in, out) matrices (fan = out);
        # nn.Linear stores (out, in), so use the fan_out mode for the same law.
        nn.init.kaiming_uniform_(self.lin_node.weight, mode="fan_out")
        nn.init.kaiming_uniform_(self.lin_edge.weight, mode="fan_out")
        nn.init.kaiming_uniform_(self.att_triplet)
        nn.init.kaiming_uniform_(self.lin_scale.weight, mode="fan_out")
        nn.init.zeros_(self.lin_scale.bias)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        x = self.lin_node(x)                      # (N, heads*C)
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.unsqueeze(-1)
        e = self.lin_edge(edge_attr)              # (E, heads*C)
        aggr = self.propagate(edge_index, x=x, e=e, size=None)  # (N, heads, C)
        return self.lin_scale(aggr.reshape(-1, self.heads * self.node_channels))

    def message(self, x_i: Tensor, x_j: Tensor, e: Tensor, index: Tensor,
                ptr, size_i) -> Tensor:
        h, c = self.heads, self.node_channels
        x_i = x_i.view(-1, h, c)
        x_j = x_j.view(-1, h, c)
        e = e.view(-1, h, c)
        triplet = torch.cat([x_i, e, x_j], dim=-1)             # (E, h, 3C)
        alpha = (triplet * self.att_triplet).sum(dim=-1)       # (E, h)
        alpha = F.leaky_relu(alpha, self.negative_slope)
        alpha = softmax(alpha, index, ptr, size_i)             # over incoming edges of i
        return alpha.unsqueeze(-1) * e * x_j                   # (E, h, C)

    def extra_repr(self) -> str:
        return (f"{self.node_channels}, {self.edge_channels}, heads={self.heads}, "
                f"negative_slope={self.negative_slope}")


class TripletBlock(nn.Module):
    """The original ``Block``: ``time_step`` weight-shared rounds of triplet
    attention -> CELU -> GRU (sequence length 1) -> LayerNorm."""

    def __init__(self, dim: int, edge_dim: int, heads: int = 4, time_step: int = 3):
        super().__init__()
        self.time_step = time_step
        self.conv = MultiHeadTripletAttention(dim, edge_dim, heads)
        self.gru = nn.GRU(dim, dim)
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        h = x.unsqueeze(0)                        # (1, N, C): GRU hidden state
        for _ in range(self.time_step):
            m = F.celu(self.conv(x, edge_index, edge_attr))
            out = self.gru(m.unsqueeze(0), h)[0]  # (1, N, C), equals h_n here
            h = out
            x = self.ln(out.squeeze(0))
        return x


class TrimNet(nn.Module):
    """TrimNet graph classifier (see the module docstring for details).

    Args:
        in_dim: atom feature width (39 for the Tox21 featuriser).
        edge_in_dim: bond feature width (10).
        hidden_dim: node state width (32).
        heads: attention heads (4).
        depth: number of (non-shared) triplet blocks (3).
        dropout: dropout probability (0.2, the original run.py default).
        out_dim: number of logits, two per task (24 = 2 * 12 for Tox21).
        time_step: weight-shared rounds inside each block (3 in the original).
        processing_steps: Set2Set steps (3 in the original).

    ``forward(data)`` takes a PyG ``Batch`` with ``x`` (num_nodes, in_dim) float,
    ``edge_index`` (2, E) long, ``edge_attr`` (E, edge_in_dim) float and
    ``batch`` (num_nodes,) and returns logits of shape
    ``(num_graphs, out_dim // 2, 2)``.  Graphs without bonds are supported.
    """

    def __init__(self, in_dim: int = 39, edge_in_dim: int = 10, hidden_dim: int = 32,
                 heads: int = 4, depth: int = 3, dropout: float = 0.2, out_dim: int = 24,
                 *, time_step: int = 3, processing_steps: int = 3):
        super().__init__()
        if out_dim % 2:
            raise ValueError(f"out_dim must be even (two logits per task), got {out_dim}")
        self.in_dim = in_dim
        self.edge_in_dim = edge_in_dim
        self.hidden_dim = hidden_dim
        self.heads = heads
        self.depth = depth
        self.dropout = dropout
        self.out_dim = out_dim
        self.num_tasks = out_dim // 2
        self.lin0 = nn.Linear(in_dim, hidden_dim)
        self.convs = nn.ModuleList(
            [TripletBlock(hidden_dim, edge_in_dim, heads, time_step) for _ in range(depth)]
        )
        self.set2set = Set2Set(hidden_dim, processing_steps=processing_steps)
        self.out = nn.Sequential(
            nn.Linear(2 * hidden_dim, 512),
            nn.LayerNorm(512),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(512, out_dim),
        )

    @staticmethod
    def output_layer_name() -> str:
        """Name of the final Linear (the "head" layer): ``"out.4"``."""
        return OUTPUT_LAYER_NAME

    def dendrite_layer_names(self) -> List[str]:
        """Names of this model's nn.Linear / nn.GRU modules."""
        return dendrite_layer_names(self.depth)

    def forward(self, data) -> Tensor:
        x, edge_index, edge_attr, batch = data.x, data.edge_index, data.edge_attr, data.batch
        if batch is None:
            batch = x.new_zeros(x.size(0), dtype=torch.long)
            num_graphs = 1
        else:
            num_graphs = int(data.num_graphs) if hasattr(data, "num_graphs") else int(batch.max()) + 1
        x = F.celu(self.lin0(x))
        for block in self.convs:
            x = x + F.dropout(block(x, edge_index, edge_attr), p=self.dropout,
                              training=self.training)
        x = self.set2set(x, batch, dim_size=num_graphs)
        x = self.out(F.dropout(x, p=self.dropout, training=self.training))
        return x.view(-1, self.num_tasks, 2)
