"""HIST (Xu et al., "HIST: A Graph-based Framework for Stock Trend Forecasting via Mining Concept-Oriented
Shared Information", arXiv 2110.13716), written from the paper and the authors' ``model.py``.

One forward pass sees one trading day: ``N`` stocks, each with Alpha360's 360 features (6 price/volume
series x 60 days), the stocks' rows of the predefined stock-to-concept matrix, and their market values.

1. A 2-layer GRU reads each stock's 60 days of 6 features; its last hidden state is the stock's
   representation ``h`` (N x H).
2. Predefined-concept module: a concept's first representation is the market-value weighted mean of its
   member stocks (HIST's weights: ``c_ij * mv_i / (c_ij * sum_k c_kj * mv_k + 1)``); concepts without
   members that day are dropped. It is re-estimated from ALL stocks by attention (``softmax`` over the
   stocks of ``h @ concept``), then every stock reads the concepts back through a softmax over the
   cosine similarities. ``fc_es`` gives the shared information, ``fc_es_back`` the part explained by
   predefined concepts (the "backcast"), ``fc_es_fore`` + LeakyReLU the module's forecast features.
3. Hidden-concept module, on what is left (``h - backcast``): each stock links to its ``k`` most
   cosine-similar other stocks; a stock that some stock links to becomes a hidden concept, the
   similarity-weighted sum of the stocks linking to it plus itself; stocks read the hidden concepts back
   by softmax attention. ``fc_is``, ``fc_is_back``, ``fc_is_fore`` as in step 2.
4. Individual module: ``h`` minus both backcasts, ``fc_indi`` + LeakyReLU.
5. The three forecast features are summed and ``fc_out`` maps the sum to one score per stock.

``predefined_concepts=False`` is HIST's ablation without the predefined-concept module (its "HIST w/o
predefined concepts"): step 2 and its three layers are left out, the hidden-concept module reads ``h``
itself, the individual module ``h`` minus the hidden-concept backcast, and the output is ``fc_out`` of the
two remaining forecasts (55,489 parameters at hidden size 64 instead of 67,969).

Differences from the authors' code, none of which changes the function computed:

* Their model also builds ``fc_out_es``, ``fc_out_is`` and ``fc_out_indi`` and computes per-module
  predictions it never uses; they receive no gradient. They are left out here (3 x (H + 1) parameters
  fewer), so dendrites are never put on a layer that takes no part in the output.
* Their cosine similarity divides by zero for an all-zero vector and then replaces the NaN by 0; here
  the norm is clamped, which gives the same 0 without a NaN in the backward pass.
* Their ``forward`` calls ``torch.get_device(x)``, which fails on the CPU; nothing here is device-bound.
"""
from __future__ import annotations

import torch
from torch import nn

FEATURE_SERIES = 6     # Alpha360: close, open, high, low, vwap, volume
WINDOW = 60            # days of each series, oldest first
OUTPUT_LAYER_NAME = "fc_out"
_EPS = 1e-12


def cosine_similarity_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(len(x), len(y)) cosine similarities of the rows; 0 where either row is all zeros."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True) * torch.linalg.vector_norm(y, dim=1).unsqueeze(0)
    return (x @ y.t()) / norms.clamp_min(_EPS)


def market_value_weights(concepts: torch.Tensor, market_value: torch.Tensor) -> torch.Tensor:
    """(N, C) weight of stock i in predefined concept j: ``c_ij mv_i / (c_ij sum_k c_kj mv_k + 1)``.

    The market-value weighted mean of the concept's members, except for the authors' ``+ 1`` in the
    denominator (which keeps non-members at 0 without a division by zero, and shrinks the weights of a
    concept whose members are worth little in total)."""
    weighted = concepts * market_value.unsqueeze(1)
    return weighted / (weighted.sum(0, keepdim=True) * concepts + 1.0)


def hidden_concept_links(residual: torch.Tensor, k: int) -> torch.Tensor:
    """(N, N) links of the hidden-concept module: entry (i, j) is the cosine similarity of stock i to
    stock j when j is one of i's ``k`` most similar other stocks, else 0; a stock j that some stock links
    to becomes a concept and also belongs to it itself (entry (j, j) = its self-similarity)."""
    n = len(residual)
    similarity = cosine_similarity_matrix(residual, residual)
    off_diagonal = similarity * (1.0 - torch.eye(n, device=residual.device, dtype=residual.dtype))
    k = min(k, n - 1)
    links = torch.zeros_like(off_diagonal)
    if k > 0:
        links = links.scatter(1, torch.topk(off_diagonal, k, dim=1).indices, 1.0)
    linked = off_diagonal * links
    is_concept = (linked.sum(0) != 0).to(residual.dtype)
    return linked + torch.diag(is_concept * similarity.diagonal())


def _xavier_linear(size: int, out: int | None = None) -> nn.Linear:
    layer = nn.Linear(size, size if out is None else out)
    if out is None:  # the authors initialise their square layers with Xavier-uniform weights
        nn.init.xavier_uniform_(layer.weight)
    return layer


class HIST(nn.Module):
    """HIST for one trading day: ``forward(x (N, 360), concepts (N, C), market_value (N,)) -> (N,)``."""

    def __init__(self, d_feat: int = FEATURE_SERIES, hidden_size: int = 64, num_layers: int = 2,
                 dropout: float = 0.0, k_nearest: int = 1, predefined_concepts: bool = True):
        super().__init__()
        if k_nearest < 1:
            raise ValueError(f"k_nearest must be at least 1, got {k_nearest}")
        self.d_feat = d_feat
        self.k_nearest = k_nearest
        self.has_predefined = predefined_concepts
        self.rnn = nn.GRU(input_size=d_feat, hidden_size=hidden_size, num_layers=num_layers,
                          batch_first=True, dropout=dropout)
        if predefined_concepts:  # Predefined-concept module
            self.fc_es = _xavier_linear(hidden_size)
            self.fc_es_back = _xavier_linear(hidden_size)
            self.fc_es_fore = _xavier_linear(hidden_size)
        # Hidden-concept module
        self.fc_is = _xavier_linear(hidden_size)
        self.fc_is_back = _xavier_linear(hidden_size)
        self.fc_is_fore = _xavier_linear(hidden_size)
        # Individual module and the output layer (PyTorch's default initialisation, as the authors')
        self.fc_indi = _xavier_linear(hidden_size)
        self.fc_out = _xavier_linear(hidden_size, 1)
        self.leaky_relu = nn.LeakyReLU()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 360) Alpha360 rows -> (N, H): the GRU's last hidden state over the 60 days."""
        sequence = x.reshape(len(x), self.d_feat, -1).permute(0, 2, 1)  # (N, 60 days, 6 series)
        output, _ = self.rnn(sequence)
        return output[:, -1, :]

    def predefined_concepts(self, h: torch.Tensor, concepts: torch.Tensor, market_value: torch.Tensor):
        """Shared information from the predefined concepts: (backcast, forecast), each (N, H)."""
        concept_h = market_value_weights(concepts, market_value).t() @ h      # (C, H)
        concept_h = concept_h[concept_h.sum(1) != 0]                          # concepts with members
        # Re-estimate every concept from all stocks: attention of the concept over the stocks.
        stock_to_concept = torch.softmax(h @ concept_h.t(), dim=0)            # (N, C'), sums to 1 per concept
        concept_h = stock_to_concept.t() @ h
        concept_to_stock = torch.softmax(cosine_similarity_matrix(h, concept_h), dim=1)
        shared = self.fc_es(concept_to_stock @ concept_h)
        return self.fc_es_back(shared), self.leaky_relu(self.fc_es_fore(shared))

    def hidden_concepts(self, residual: torch.Tensor):
        """Shared information from hidden concepts found among the stocks: (backcast, forecast)."""
        concept_h = hidden_concept_links(residual, self.k_nearest).t() @ residual  # (N, H), row j = concept j
        concept_h = concept_h[concept_h.sum(1) != 0]
        concept_to_stock = torch.softmax(cosine_similarity_matrix(residual, concept_h), dim=1)
        shared = self.fc_is(concept_to_stock @ concept_h)
        return self.fc_is_back(shared), self.leaky_relu(self.fc_is_fore(shared))

    def forward(self, x: torch.Tensor, concepts: torch.Tensor, market_value: torch.Tensor) -> torch.Tensor:
        h = self.encode(x)
        if not self.has_predefined:  # HIST's ablation: no predefined concepts (their inputs are ignored)
            is_back, is_out = self.hidden_concepts(h)
            return self.fc_out(is_out + self.leaky_relu(self.fc_indi(h - is_back))).squeeze(-1)
        es_back, es_out = self.predefined_concepts(h, concepts, market_value)
        is_back, is_out = self.hidden_concepts(h - es_back)
        individual = self.leaky_relu(self.fc_indi(h - es_back - is_back))
        return self.fc_out(es_out + is_out + individual).squeeze(-1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
