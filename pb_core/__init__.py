"""Perforated Backpropagation (Brenner & Itti, arXiv 2501.18018) as a plug-in PyTorch library.

Wrap the layers of any ``nn.Module`` with dendrites, train them with the covariance (Cascade-Correlation)
rule in dendrite phases, train neurons with perforated backpropagation in neuron phases, and let
:class:`CycleController` alternate the two around your own training loop.
"""
from .adapters import ConvAdapter, GRUAdapter, GRUCellAdapter, LayerAdapter, LinearAdapter, adapter_for, register_adapter
from .controller import CycleController, Scores, SwitchPolicy, load_model_state
from .layer import ACTIVATIONS, DendriticLayer
from .records import summarize
from .variants import VARIANTS, Variant, get_variant
from .wrap import count_parameters, dendritic_layers, select_layers, wrap

__all__ = [
    "ACTIVATIONS", "ConvAdapter", "CycleController", "DendriticLayer", "GRUAdapter", "GRUCellAdapter",
    "LayerAdapter", "LinearAdapter", "Scores", "SwitchPolicy", "VARIANTS", "Variant", "adapter_for",
    "count_parameters", "dendritic_layers", "get_variant", "load_model_state", "register_adapter",
    "select_layers", "summarize", "wrap",
]
