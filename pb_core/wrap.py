"""Choose layers of any ``nn.Module`` and turn them into dendrite-capable layers, in place."""
from __future__ import annotations

import fnmatch
from typing import Iterable, Iterator

from torch import nn

from .adapters import adapter_for
from .layer import DendriticLayer

PRESETS = ("all", "head", "backbone", "none")

# Modules that read their children's weights directly instead of calling them: a wrapper there would
# be silently bypassed, so their children are never chosen.
_OPAQUE_PARENTS = (nn.MultiheadAttention,)


def dendritic_layers(model: nn.Module) -> Iterator[tuple[str, DendriticLayer]]:
    """(name, layer) for every wrapped layer, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, DendriticLayer):
            yield name, module


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every layer an adapter can handle, in registration order, skipping children of opaque parents."""
    found, opaque = [], []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in opaque):
            continue
        if isinstance(module, _OPAQUE_PARENTS):
            opaque.append(name)
            continue
        if any(name.startswith(w + ".") for w, _ in found):
            continue
        # A layer wrapped earlier is still that layer (so wrapping again is a no-op); its children are not.
        if name and (isinstance(module, DendriticLayer) or adapter_for(module) is not None):
            found.append((name, module))
    return found


def _layer(module: nn.Module) -> nn.Module:
    return module.main if isinstance(module, DendriticLayer) else module


def select_layers(model: nn.Module, layers: str | Iterable = "all", head: str | None = None) -> list[str]:
    """Names of the layers to wrap.

    ``layers`` is a preset (``"all"``, ``"head"``: the output layer, ``"backbone"``: all but the output
    layer, ``"none"``), or a list whose items are layer types (``nn.Conv2d``) or name patterns
    (``"encoder.*"``, fnmatch syntax). The output layer is the last wrappable layer in module order unless
    ``head`` names it.
    """
    eligible = _candidates(model)
    names = [n for n, _ in eligible]
    modules = dict(model.named_modules())
    if head is not None and head not in modules:
        raise ValueError(f"head layer {head!r} is not a submodule of {type(model).__name__}; "
                         f"wrappable layers are: {names}")
    if isinstance(layers, str):
        if layers not in PRESETS:
            raise ValueError(f"unknown layer preset {layers!r}; use one of {PRESETS} or a list of types/patterns")
        if layers == "none":
            return []
        if not names:
            raise ValueError(f"{type(model).__name__} has no layer pb_core can wrap (it knows "
                             "nn.Linear, nn.Conv1d/2d/3d, nn.GRUCell, nn.GRU); register a LayerAdapter for yours")
        out_layer = head or names[-1]
        if layers == "all":
            return names
        if layers == "head":
            return [out_layer]
        return [n for n in names if n != out_layer]
    chosen: list[str] = []
    for item in layers:
        if isinstance(item, type):
            hits = [n for n, m in eligible if isinstance(_layer(m), item)]
        elif isinstance(item, str):
            wrapped = [n for n, m in eligible if isinstance(m, DendriticLayer)]
            hits = [n for n, m in modules.items() if n and fnmatch.fnmatchcase(n, item)
                    and not any(n.startswith(w + ".") for w in wrapped)]
            for n in hits:
                if adapter_for(_layer(modules[n])) is None:
                    raise TypeError(
                        f"layer '{n}' ({type(modules[n]).__name__}) matched {item!r} but pb_core has no adapter "
                        f"for {type(modules[n]).__name__}: subclass pb_core.LayerAdapter (implement "
                        f"num_neurons and stacked_forward) and call pb_core.register_adapter"
                        f"({type(modules[n]).__name__}, YourAdapter())")
                if n not in names:
                    raise TypeError(f"layer '{n}' sits inside a module that uses its weights directly "
                                    f"({', '.join(t.__name__ for t in _OPAQUE_PARENTS)}); a wrapper would be bypassed")
        else:
            raise TypeError(f"layer selector items must be types or name patterns, got {item!r}")
        if not hits:
            raise ValueError(f"layer selector {item!r} matches no wrappable layer of {type(model).__name__}; "
                             f"wrappable layers are: {names}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def wrap(model: nn.Module, layers: str | Iterable = "all", *, head: str | None = None,
         activation: str = "sigmoid") -> list[str]:
    """Replace the chosen layers of ``model`` by :class:`DendriticLayer` wrappers; return their names.

    The model's own code is untouched: each chosen submodule is swapped in its parent, so
    ``self.fc1(x)`` now runs the wrapper. Wrapping twice is a no-op for layers already wrapped.
    """
    names = select_layers(model, layers, head)
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, DendriticLayer):
            continue
        adapter = adapter_for(module)
        adapter.check(module, name)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = DendriticLayer(module, adapter, activation=activation, name=name)
        if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
            parent[int(attr)] = wrapped
        else:
            setattr(parent, attr, wrapped)
    return names


def count_parameters(model: nn.Module) -> int:
    """Parameters of the network: the original ones plus every committed dendrite; never candidates.

    The stored cascade tensor is square with structural zeros above the diagonal; only the used
    entries (K(K-1)/2 per neuron) are counted.
    """
    total = 0
    owned_by_layers: set[int] = set()
    for module in model.modules():  # parents come before their children
        if isinstance(module, DendriticLayer):
            total += module.dendrite_parameter_count()
            owned_by_layers.update({id(module.dendrite_weights), id(module.candidate_weights)})
        elif id(module) not in owned_by_layers:
            total += sum(p.numel() for p in module.parameters(recurse=False))
    return total
