"""How pb_core computes stacked copies of one kind of layer.

A dendrite is a copy of its layer's own affine map (SPEC section 1). A layer with K dendrites and C
candidates needs K (or C) copies of that map evaluated on the same input; an adapter computes all S
copies in one call (one stacked matmul or conv), never one call per copy.

Layout convention. The layer's *pre-activation* ``pre`` (the tensor dendrites add to) has its neurons
on axis ``neuron_dim`` (a negative index, so batched and unbatched inputs agree). A stacked result has
the same shape with a copy axis of size S inserted just before the neuron axis, e.g. ``(B, S, N)`` for
``nn.Linear`` and ``(B, S, N, H, W)`` for ``nn.Conv2d``. Stacked parameters carry the copy axis first:
``weight`` of shape ``(S, *layer.weight.shape)``.

To support another layer type, subclass :class:`LayerAdapter`, implement ``stacked_forward`` (and the
processing hooks ``pre_activation``/``rebuild_output`` when the layer returns a tuple), and register it
with :func:`register_adapter`.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LayerAdapter:
    """Base class: a linear-like layer whose output tensor holds the neurons on ``neuron_dim``."""

    neuron_dim: int = -1

    def check(self, module: nn.Module, name: str) -> None:
        """Raise ValueError naming ``name`` when this instance cannot take dendrites."""

    def num_neurons(self, module: nn.Module) -> int:
        raise NotImplementedError

    def neuron_separable(self, module: nn.Module) -> bool:
        """True when neuron i of a copy depends only on row i of the copy's weights (see to_neuron_major).

        Then candidates can be chosen per neuron; otherwise a whole copy is chosen for all neurons.
        """
        return True

    def parameter_names(self, module: nn.Module) -> list[str]:
        return [name for name, _ in module.named_parameters(recurse=False)]

    def fresh_parameters(self, module: nn.Module, copies: int) -> dict[str, torch.Tensor]:
        """``copies`` freshly initialised copies of the layer's parameters, stacked on a new axis 0.

        A deep copy of the layer is re-initialised with its own ``reset_parameters`` so a dendrite starts
        from the same distribution the layer itself was drawn from.
        """
        names = self.parameter_names(module)
        stacks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        with torch.no_grad():
            for _ in range(copies):
                clone = copy.deepcopy(module)
                clone.reset_parameters()
                for n in names:
                    stacks[n].append(getattr(clone, n).detach().clone())
        return {n: torch.stack(v) if v else _empty_stack(getattr(module, n)) for n, v in stacks.items()}

    def dendrite_inputs(self, args: tuple, kwargs: dict) -> tuple:
        """The inputs a copy of the map sees: by default the layer's positional arguments."""
        if kwargs:
            raise TypeError(f"{type(self).__name__} expects positional inputs only, got keywords {list(kwargs)}")
        return args

    def stacked_forward(self, module: nn.Module, params: dict[str, torch.Tensor], inputs: tuple) -> torch.Tensor:
        """Evaluate all copies in ``params`` (each of shape (S, ...)) on ``inputs``: shape of pre with S inserted."""
        raise NotImplementedError

    def pre_activation(self, module: nn.Module, output: Any) -> torch.Tensor:
        """Processing function: the tensor of the layer's output that dendrites add to."""
        return output

    def rebuild_output(self, module: nn.Module, output: Any, pre: torch.Tensor) -> Any:
        """Processing function: the layer's output with ``pre`` (dendrites added) in place of its tensor."""
        return pre

    def to_neuron_major(self, name: str, stacked: torch.Tensor) -> torch.Tensor:
        """View a stacked parameter (S, ...) as (S, N, ...) so per-neuron selection can index axis 1."""
        return stacked

    def from_neuron_major(self, name: str, tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_neuron_major`, giving a tensor shaped like ``like``."""
        return tensor.reshape(like.shape)


def _empty_stack(param: torch.Tensor) -> torch.Tensor:
    return param.detach().new_zeros((0, *param.shape))


class LinearAdapter(LayerAdapter):
    """``nn.Linear``: neurons are output features, on the last axis of any (..., in_features) input."""

    neuron_dim = -1

    def num_neurons(self, module: nn.Linear) -> int:
        return module.out_features

    def stacked_forward(self, module, params, inputs):
        (x,) = inputs
        weight = params["weight"]
        copies, neurons = weight.shape[:2]
        bias = params.get("bias")
        out = F.linear(x, weight.reshape(copies * neurons, -1), None if bias is None else bias.reshape(-1))
        return out.unflatten(-1, (copies, neurons))


class ConvAdapter(LayerAdapter):
    """``nn.Conv1d/2d/3d``: neurons are output channels, one output weight per channel over positions."""

    def __init__(self, spatial_dims: int):
        self.spatial_dims = spatial_dims
        self.neuron_dim = -(spatial_dims + 1)

    def num_neurons(self, module: nn.modules.conv._ConvNd) -> int:
        return module.out_channels

    def check(self, module, name):
        if module.transposed:
            raise ValueError(f"layer '{name}' is a transposed convolution; pb_core has no adapter for it")

    def stacked_forward(self, module, params, inputs):
        (x,) = inputs
        unbatched = x.dim() == self.spatial_dims + 1
        if unbatched:
            x = x.unsqueeze(0)
        weight = params["weight"]
        copies, neurons = weight.shape[:2]
        groups = module.groups
        # Output channels of a grouped conv are group-major, so the copies are interleaved inside each
        # group: channel order (group, copy, neuron-in-group). With groups == 1 this is a plain stack.
        w = weight.unflatten(1, (groups, neurons // groups)).transpose(0, 1).reshape(-1, *weight.shape[2:])
        bias = params.get("bias")
        if bias is not None:
            bias = bias.unflatten(1, (groups, neurons // groups)).transpose(0, 1).reshape(-1)
        out = module._conv_forward(x, w, bias)
        out = out.unflatten(1, (groups, copies, neurons // groups)).transpose(1, 2).flatten(2, 3)
        return out.squeeze(0) if unbatched else out


def _gru_gates(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One GRU step from input and hidden gate pre-activations shaped (..., S, 3, H); h broadcasts."""
    r = torch.sigmoid(gi[..., 0, :] + gh[..., 0, :])
    z = torch.sigmoid(gi[..., 1, :] + gh[..., 1, :])
    n = torch.tanh(gi[..., 2, :] + r * gh[..., 2, :])
    return (1 - z) * n + z * h


def _gate_major(name: str, stacked: torch.Tensor) -> torch.Tensor:
    """(S, 3H, ...) -> (S, H, 3, ...): the rows of gates r, z, n belonging to hidden unit i, together."""
    return stacked.unflatten(1, (3, -1)).movedim(2, 1)


def _gate_major_inverse(name: str, tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return tensor.movedim(1, 2).reshape(like.shape)


class GRUCellAdapter(LayerAdapter):
    """``nn.GRUCell``: neurons are hidden units; a dendrite is a copy of the whole cell on (x, h).

    The cell's new hidden state is its pre-activation: dendrites add to it, and the sum is what the
    user's loop feeds back as the next hidden state.
    """

    neuron_dim = -1

    def num_neurons(self, module: nn.GRUCell) -> int:
        return module.hidden_size

    def dendrite_inputs(self, args, kwargs):
        x = args[0] if args else kwargs["input"]
        h = args[1] if len(args) > 1 else kwargs.get("hx")
        return (x, h)

    def stacked_forward(self, module, params, inputs):
        x, h = inputs
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
            h = None if h is None else h.unsqueeze(0)
        if h is None:
            h = x.new_zeros(x.shape[0], module.hidden_size)
        w_ih, w_hh = params["weight_ih"], params["weight_hh"]
        copies = w_ih.shape[0]
        b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
        gi = F.linear(x, w_ih.reshape(-1, w_ih.shape[-1]), None if b_ih is None else b_ih.reshape(-1))
        gh = F.linear(h, w_hh.reshape(-1, w_hh.shape[-1]), None if b_hh is None else b_hh.reshape(-1))
        new_h = _gru_gates(gi.unflatten(-1, (copies, 3, -1)), gh.unflatten(-1, (copies, 3, -1)), h.unsqueeze(-2))
        return new_h.squeeze(0) if unbatched else new_h

    to_neuron_major = staticmethod(_gate_major)
    from_neuron_major = staticmethod(_gate_major_inverse)


def _batched(module: nn.GRU, x: torch.Tensor, h: torch.Tensor | None):
    """(x, h, unbatched): an unbatched input and state given a batch dimension of 1, as nn.GRU does."""
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1 if not module.batch_first else 0)
        h = None if h is None else h.unsqueeze(1)
    return x, h, unbatched


class GRUAdapter(LayerAdapter):
    """``nn.GRU`` (unidirectional, any depth): neurons are the last layer's hidden units.

    A dendrite is a copy of the whole GRU run over the same sequence from the same initial state. The S
    copies run as ONE wide GRU of hidden size S*H with block-diagonal weights, so the fused RNN kernel
    evaluates them in a single call. The processing functions take ``output`` out of the
    ``(output, h_n)`` tuple and put the last time step of the summed output back into ``h_n[-1]``.
    """

    neuron_dim = -1

    def check(self, module: nn.GRU, name: str) -> None:
        if module.bidirectional:
            raise ValueError(f"layer '{name}' is a bidirectional GRU; pb_core's GRU adapter supports "
                             "unidirectional GRUs only (wrap each direction as its own nn.GRU)")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"layer '{name}' has proj_size > 0, which the GRU adapter does not support")

    def num_neurons(self, module: nn.GRU) -> int:
        return module.hidden_size

    def neuron_separable(self, module: nn.GRU) -> bool:
        # A copy runs its own recurrence over the sequence: from the second time step on, every output
        # unit depends on all units of the copy (through W_hh, and the layers below in a deeper GRU), so
        # rows of different candidates cannot be mixed per neuron. (A GRUCell is separable: its copies
        # read the network's hidden state, not their own.)
        return False

    def dendrite_inputs(self, args, kwargs):
        x = args[0] if args else kwargs["input"]
        h = args[1] if len(args) > 1 else kwargs.get("hx")
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise TypeError("pb_core's GRU adapter does not take PackedSequence inputs; pad the batch instead")
        return (x, h)

    def stacked_forward(self, module, params, inputs):
        x, h, unbatched = _batched(module, *inputs)
        hidden, layers = module.hidden_size, module.num_layers
        copies = params["weight_ih_l0"].shape[0]
        batch = x.shape[0] if module.batch_first else x.shape[1]
        if h is None:
            h = x.new_zeros(layers, batch, hidden)
        wide_h = h.unsqueeze(-2).expand(layers, batch, copies, hidden).reshape(layers, batch, copies * hidden)
        eye = torch.eye(copies, dtype=x.dtype, device=x.device)
        flat = []
        for layer in range(layers):
            w_ih = params[f"weight_ih_l{layer}"].unflatten(1, (3, hidden)).transpose(0, 1)  # (3, S, H, I)
            w_hh = params[f"weight_hh_l{layer}"].unflatten(1, (3, hidden)).transpose(0, 1)  # (3, S, H, H)
            if layer == 0:  # every copy reads the same input
                flat.append(w_ih.reshape(3 * copies * hidden, -1))
            else:  # copy s reads only its own previous layer
                flat.append(torch.einsum("gshi,st->gshti", w_ih, eye).reshape(3 * copies * hidden, -1))
            flat.append(torch.einsum("gshi,st->gshti", w_hh, eye).reshape(3 * copies * hidden, -1))
            if module.bias:
                for kind in ("ih", "hh"):
                    flat.append(params[f"bias_{kind}_l{layer}"].unflatten(1, (3, hidden)).transpose(0, 1).reshape(-1))
        out, _ = torch._VF.gru(x, wide_h.contiguous(), flat, module.bias, layers, 0.0, False, False,
                               module.batch_first)
        out = out.unflatten(-1, (copies, hidden))
        return out.squeeze(1 if not module.batch_first else 0) if unbatched else out

    def pre_activation(self, module, output):
        return output[0]

    def rebuild_output(self, module, output, pre):
        _, h_n = output
        # The last time step of the summed output is the new final hidden state of the last layer.
        last = pre[:, -1] if (module.batch_first and pre.dim() == 3) else pre[-1]
        return pre, torch.cat([h_n[:-1], last.unsqueeze(0)], dim=0)

    def to_neuron_major(self, name, stacked):
        return _gate_major(name, stacked)

    def from_neuron_major(self, name, tensor, like):
        return _gate_major_inverse(name, tensor, like)



# Suffix of a bidirectional GRU's stacked parameters: both directions of one weight or bias, on axis 1.
_BOTH_DIRECTIONS = "_both_directions"


class BidirectionalGRUAdapter(GRUAdapter):
    """``nn.GRU`` in either direction; unidirectional ones exactly as :class:`GRUAdapter`.

    A bidirectional GRU's output holds the forward direction's H hidden units, then the backward
    direction's: its 2H neurons are those units, in that order. A dendrite is a copy of the whole
    bidirectional GRU (every layer, both directions) run over the same sequence from the same initial
    state. Its stacked parameters pair the two directions of each weight on axis 1: ``weight_ih_l0`` and
    ``weight_ih_l0_reverse`` become ``weight_ih_l0_both_directions`` of shape (S, 2, 3H, I), so neuron
    ``d*H + i`` (direction d, unit i) owns rows ``[:, d, gate*H + i]``. The S copies run as ONE wide
    bidirectional GRU of hidden size S*H with block-diagonal weights (one fused kernel call). The
    processing functions put the summed output's last time step (forward half) and first time step
    (backward half) back into the last layer's two final states in ``h_n``.
    """

    def check(self, module: nn.GRU, name: str) -> None:
        if not module.bidirectional:
            return super().check(module, name)

    def num_neurons(self, module: nn.GRU) -> int:
        return module.hidden_size * (2 if module.bidirectional else 1)

    def parameter_names(self, module: nn.GRU) -> list[str]:
        if not module.bidirectional:
            return super().parameter_names(module)
        return [n + _BOTH_DIRECTIONS for n, _ in module.named_parameters(recurse=False) if not n.endswith("_reverse")]

    def fresh_parameters(self, module: nn.GRU, copies: int) -> dict[str, torch.Tensor]:
        if not module.bidirectional:
            return super().fresh_parameters(module, copies)
        names = [n[: -len(_BOTH_DIRECTIONS)] for n in self.parameter_names(module)]
        stacks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        with torch.no_grad():
            for _ in range(copies):
                clone = copy.deepcopy(module)
                clone.reset_parameters()  # the distribution the GRU itself was drawn from
                for n in names:
                    stacks[n].append(torch.stack([getattr(clone, n), getattr(clone, n + "_reverse")]).detach().clone())
        out = {}
        for n, values in stacks.items():
            param = getattr(module, n)
            out[n + _BOTH_DIRECTIONS] = torch.stack(values) if values else param.detach().new_zeros((0, 2, *param.shape))
        return out

    def stacked_forward(self, module, params, inputs):
        if not module.bidirectional:
            return super().stacked_forward(module, params, inputs)
        x, h, unbatched = _batched(module, *inputs)
        hidden, layers = module.hidden_size, module.num_layers
        copies = params["weight_ih_l0" + _BOTH_DIRECTIONS].shape[0]
        batch = x.shape[0] if module.batch_first else x.shape[1]
        if h is None:
            h = x.new_zeros(2 * layers, batch, hidden)
        wide_h = h.unsqueeze(-2).expand(2 * layers, batch, copies, hidden).reshape(2 * layers, batch, copies * hidden)
        eye = torch.eye(copies, dtype=x.dtype, device=x.device)
        flat = []
        for layer in range(layers):
            w_ih = params[f"weight_ih_l{layer}" + _BOTH_DIRECTIONS]  # (S, 2, 3H, I)
            w_hh = params[f"weight_hh_l{layer}" + _BOTH_DIRECTIONS]  # (S, 2, 3H, H)
            for direction in range(2):
                wi = w_ih[:, direction].unflatten(1, (3, hidden)).transpose(0, 1)  # (3, S, H, I)
                wh = w_hh[:, direction].unflatten(1, (3, hidden)).transpose(0, 1)  # (3, S, H, H)
                if layer == 0:  # every copy reads the same input
                    flat.append(wi.reshape(3 * copies * hidden, -1))
                else:  # copy s reads its own forward and backward outputs of the layer below
                    wi = wi.unflatten(-1, (2, hidden))  # (3, S, H, 2, H): the input's two halves
                    flat.append(torch.einsum("gshdi,st->gshdti", wi, eye).reshape(3 * copies * hidden, -1))
                flat.append(torch.einsum("gshi,st->gshti", wh, eye).reshape(3 * copies * hidden, -1))
                if module.bias:
                    for kind in ("ih", "hh"):
                        b = params[f"bias_{kind}_l{layer}" + _BOTH_DIRECTIONS][:, direction]  # (S, 3H)
                        flat.append(b.unflatten(1, (3, hidden)).transpose(0, 1).reshape(-1))
        out, _ = torch._VF.gru(x, wide_h.contiguous(), flat, module.bias, layers, 0.0, False, True,
                               module.batch_first)
        # (..., [forward S*H | backward S*H]) -> (..., S, [forward H | backward H])
        out = out.unflatten(-1, (2, copies, hidden)).transpose(-3, -2).flatten(-2)
        return out.squeeze(1 if not module.batch_first else 0) if unbatched else out

    def rebuild_output(self, module, output, pre):
        if not module.bidirectional:
            return super().rebuild_output(module, output, pre)
        _, h_n = output
        hidden = module.hidden_size
        time_dim = 1 if (module.batch_first and pre.dim() == 3) else 0
        # The forward direction ends at the last time step, the backward direction at the first.
        last_forward = pre.select(time_dim, -1)[..., :hidden]
        last_backward = pre.select(time_dim, 0)[..., hidden:]
        return pre, torch.cat([h_n[:-2], last_forward.unsqueeze(0), last_backward.unsqueeze(0)], dim=0)

    def to_neuron_major(self, name, stacked):
        if not name.endswith(_BOTH_DIRECTIONS):
            return super().to_neuron_major(name, stacked)
        # (S, 2, 3H, ...) -> (S, 2H, 3, ...): neuron d*H + i holds its three gate rows.
        return stacked.unflatten(2, (3, -1)).transpose(2, 3).flatten(1, 2)

    def from_neuron_major(self, name, tensor, like):
        if not name.endswith(_BOTH_DIRECTIONS):
            return super().from_neuron_major(name, tensor, like)
        return tensor.unflatten(1, (2, -1)).transpose(2, 3).reshape(like.shape)

_ADAPTERS: dict[type, LayerAdapter] = {
    nn.Linear: LinearAdapter(),
    nn.Conv1d: ConvAdapter(1),
    nn.Conv2d: ConvAdapter(2),
    nn.Conv3d: ConvAdapter(3),
    nn.GRUCell: GRUCellAdapter(),
    nn.GRU: BidirectionalGRUAdapter(),  # unidirectional GRUs: GRUAdapter's behaviour, inherited
}


def register_adapter(layer_type: type, adapter: LayerAdapter) -> None:
    """Teach pb_core a new layer type (subclasses of ``layer_type`` use it too)."""
    if not isinstance(adapter, LayerAdapter):
        raise TypeError(f"adapter for {layer_type.__name__} must be a pb_core.LayerAdapter, got {type(adapter)}")
    _ADAPTERS[layer_type] = adapter


def adapter_for(module: nn.Module) -> LayerAdapter | None:
    """The adapter registered for ``type(module)`` or its nearest registered base class."""
    for cls in type(module).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    return None
