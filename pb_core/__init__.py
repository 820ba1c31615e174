"""Perforated Backpropagation (Brenner & Itti, arXiv 2501.18018) as a plug-in PyTorch library.

Wrap the layers of any ``nn.Module`` with dendrites, train them with the covariance (Cascade-Correlation)
rule in dendrite phases, train neurons with perforated backpropagation in neuron phases, and let
:class:`CycleController` alternate the two around your own training loop.

Requirements: PyTorch only (numpy, when installed, has its random state checkpointed too). Nothing here
imports the benchmark suite (``experiments``) or its dependencies. ``pb_core.variants``, ``pb_core.records``
and ``pb_core.settings`` load without torch, so tools that only need the variant table or the settings (the
Snakefile, the configuration check) stay light; every other name below is imported on first use.
"""
import sys
import types
from importlib import import_module

from .variants import VARIANTS, Variant, get_variant

# name -> submodule that defines it (loaded lazily, PEP 562)
_LAZY = {
    "BidirectionalGRUAdapter": "adapters", "ConvAdapter": "adapters", "GRUAdapter": "adapters", "GRUCellAdapter": "adapters", "LayerAdapter": "adapters",
    "LinearAdapter": "adapters", "adapter_for": "adapters", "register_adapter": "adapters",
    "CycleController": "controller", "Scores": "controller", "load_model_state": "controller",
    "CandidateTraining": "settings", "PBSettings": "settings", "PhaseEnd": "settings", "Placement": "settings",
    "RunEnd": "settings", "SwitchPolicy": "settings",
    "ACTIVATIONS": "layer", "DendriticLayer": "layer",
    "summarize": "records",
    "count_parameters": "wrap", "dendritic_layers": "wrap", "select_layers": "wrap", "wrap": "wrap",
}
_SUBMODULES = ("adapters", "controller", "covariance", "layer", "records", "settings", "variants", "wrap")

__all__ = sorted([*_LAZY, "VARIANTS", "Variant", "get_variant"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pb_core' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY, *_SUBMODULES])


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # Importing the submodule pb_core.wrap binds that module to the package's attribute "wrap", which
        # would hide the function pb_core.wrap; keep the function there, as an eager import would.
        if name in _LAZY and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
