"""The method and its ablations (SPEC section 1, paper Figure 7): configurations of one code path."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    layers: str           # layer preset: "all", "head", "backbone" or "none"
    learning: str | None  # "covariance", "gradient" (neurons frozen), "joint" (no dendrite phase), None
    perforated: bool      # True: no error flows through dendrites into earlier layers
    description: str

    @property
    def has_dendrites(self) -> bool:
        return self.learning is not None

    @property
    def has_dendrite_phase(self) -> bool:
        return self.learning in ("covariance", "gradient")


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("baseline", "none", None, True, "the model as it is: one neuron cycle, no dendrites"),
    Variant("pb", "all", "covariance", True, "Perforated Backpropagation on every wrapped layer"),
    Variant("pb_head", "head", "covariance", True, "dendrites on the output layer only"),
    Variant("pb_backbone", "backbone", "covariance", True, "dendrites on all but the output layer"),
    Variant("cc_no_perforation", "all", "covariance", False,
            "covariance dendrites, but the error flows through them in the neuron phase"),
    Variant("gd_dendrites", "all", "gradient", True,
            "dendrites trained by gradient descent on the task loss with the neurons frozen"),
    Variant("gd_joint", "all", "joint", False,
            "dendrites added with output weight 0 and trained jointly with everything by gradient descent, "
            "error flowing through them (what the openly published package does); no dendrite phase"),
]}


def get_variant(name: str | Variant) -> Variant:
    if isinstance(name, Variant):
        return name
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}") from None
