"""The cycle controller's settings as small frozen groups, each checking itself once when it is made.

* :class:`Placement`: where the dendrites go (which layers, the output layer, the dendrites' g).
* :class:`CandidateTraining`: how candidate dendrites are drawn, trained, measured and chosen.
* :class:`SwitchPolicy`: when one cycle ends; :class:`PhaseEnd` holds the neuron and dendrite phases' policies
  and what counts as a dendrite phase's progress.
* :class:`RunEnd`: when the run ends (dendrite count, no improvement, epoch limit, a fixed schedule).
* :class:`PBSettings`: the four groups together, as :class:`~pb_core.CycleController` takes them
  (``CycleController(model, "pb", optimizer_factory=..., **settings.keywords())``).

Nothing here imports torch (the benchmark suite checks its configuration with these classes).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

OBJECTIVES = ("covariance", "correlation")  # see pb_core.covariance
# How candidates are trained where the paper is silent (docs/candidate_training.md; measured by
# benchmarks/candidate_study.py).
CANDIDATE_INITS = ("layer", "normal")      # the layer's own reset_parameters / N(0, init_std), cascade 0
CANDIDATE_SNAPSHOTS = ("measured", "epoch_end")
CANDIDATE_SELECTIONS = ("correlation", "covariance")
CANDIDATE_DEFAULTS = {"init": "normal", "init_std": 0.01, "objective": "covariance", "snapshot": "measured",
                      "selection": "correlation"}
DEFAULT_NOISE_ALPHA = 0.05
DEFAULT_CANDIDATES = 4                         # covariance candidates per neuron (gradient variants: 1)
DEFAULT_CANDIDATE_OPTIMIZER = {"lr_scale": 5.0}  # the network's optimizer at 5x its learning rate
DENDRITE_IMPROVEMENTS = ("neuron", "layer")
ACTIVATION_NAMES = ("sigmoid", "tanh", "identity")  # pb_core.layer.ACTIVATIONS


def check_candidate_settings(init: str, init_std: float, objective: str, snapshot: str, selection: str) -> None:
    for name, value, allowed in (("init", init, CANDIDATE_INITS), ("objective", objective, OBJECTIVES),
                                 ("snapshot", snapshot, CANDIDATE_SNAPSHOTS),
                                 ("selection", selection, CANDIDATE_SELECTIONS)):
        if value not in allowed:
            raise ValueError(f"candidate {name} must be one of {allowed}, got {value!r}")
    if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not init_std > 0:
        raise ValueError(f"candidate init_std must be > 0, got {init_std!r}")


def _whole(name: str, value, minimum: int, none_ok: bool = True) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if none_ok else ''}, got {value!r}")


@dataclass(frozen=True)
class SwitchPolicy:
    """When a cycle ends.

    ``fixed_epochs`` set: every cycle has exactly that many epochs. Otherwise the cycle ends when the
    watched score (validation in a neuron phase, the candidates' correlations in a dendrite phase) has
    not improved for ``patience`` epochs; an improvement must beat the reference by more than both
    ``rel_threshold * |reference|`` and ``abs_threshold``. ``max_epochs`` caps any cycle.
    """
    patience: int = 25
    fixed_epochs: int | None = None
    rel_threshold: float = 1e-4
    abs_threshold: float = 0.0
    max_epochs: int | None = None

    def __post_init__(self):
        if self.fixed_epochs is None and (self.patience is None or self.patience < 1):
            raise ValueError(f"SwitchPolicy needs patience >= 1 or fixed_epochs, got patience={self.patience}")
        if self.fixed_epochs is not None and self.fixed_epochs < 1:
            raise ValueError(f"fixed_epochs must be >= 1, got {self.fixed_epochs}")
        _whole("max_epochs", self.max_epochs, 1)
        for name in ("rel_threshold", "abs_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    def improved(self, value: float, reference: float | None, mode: str) -> bool:
        if reference is None:
            return True
        margin = max(self.abs_threshold, self.rel_threshold * abs(reference))
        return value > reference + margin if mode == "max" else value < reference - margin

    def cycle_over(self, epochs_in_cycle: int, epochs_since_improvement: int) -> bool:
        if self.fixed_epochs is not None:
            return epochs_in_cycle >= self.fixed_epochs
        if self.max_epochs is not None and epochs_in_cycle >= self.max_epochs:
            return True
        return epochs_since_improvement >= self.patience


@dataclass(frozen=True)
class Placement:
    """Where the dendrites go: ``layers`` overrides the variant's preset (``"all"``, ``"head"``, ``"backbone"``,
    ``"none"``, or a list of layer types / name patterns, see :func:`pb_core.select_layers`); ``head`` names
    the output layer (default: the last wrappable one); ``activation`` is the dendrites' g."""
    layers: str | tuple | list | None = None
    head: str | None = None
    activation: str = "sigmoid"

    def __post_init__(self):
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"unknown dendrite activation {self.activation!r}; choose one of {list(ACTIVATION_NAMES)}")
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))


@dataclass(frozen=True)
class CandidateTraining:
    """How candidate dendrites are trained (see :class:`~pb_core.DendriticLayer`).

    ``count``: candidates per neuron (C); None: 4 for covariance variants, 1 for gd_dendrites.
    ``init`` / ``init_std`` / ``objective`` / ``snapshot`` / ``selection``: how covariance candidates are drawn,
    trained, measured and chosen; ``init`` also draws gd_dendrites' and gd_joint's new dendrites.
    ``optimizer``: the dendrite phases' optimizer: a factory ``params -> Optimizer``, a mapping
    ``{"name": "adam", "lr": 0.01, ...}``, or ``{"lr_scale": s}``: the network's optimizer factory at s times its
    learning rate (:func:`~pb_core.controller.optimizer_from_spec`); None: the network's factory as it is.
    Default ``{"lr_scale": 5.0}`` (benchmarks/candidate_study.py: at the network's own rate the candidates
    barely learn).
    """
    count: int | None = None
    init: str = CANDIDATE_DEFAULTS["init"]
    init_std: float = CANDIDATE_DEFAULTS["init_std"]
    objective: str = CANDIDATE_DEFAULTS["objective"]
    snapshot: str = CANDIDATE_DEFAULTS["snapshot"]
    selection: str = CANDIDATE_DEFAULTS["selection"]
    optimizer: dict | Callable | None = field(default_factory=lambda: dict(DEFAULT_CANDIDATE_OPTIMIZER))

    def __post_init__(self):
        _whole("candidate count", self.count, 1)
        check_candidate_settings(self.init, self.init_std, self.objective, self.snapshot, self.selection)
        spec = self.optimizer
        if spec is None or callable(spec):
            return
        if not isinstance(spec, dict) or not ("name" in spec or set(spec) == {"lr_scale"}):
            raise ValueError(f"a candidate optimizer is a mapping with a 'name' (e.g. {{'name': 'adam', 'lr': 0.01}}), "
                             f"or {{'lr_scale': 5.0}}, or a callable params -> optimizer, or None; got {spec!r}")
        if "name" not in spec:
            scale = spec["lr_scale"]
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
                raise ValueError(f"candidate optimizer {spec!r}: lr_scale must be a number > 0")

    @property
    def layer_settings(self) -> dict:
        """What each wrapped layer keeps (and a checkpoint's signature records as ``candidate_settings``)."""
        return {"init": self.init, "init_std": self.init_std, "objective": self.objective,
                "snapshot": self.snapshot, "selection": self.selection}


@dataclass(frozen=True)
class PhaseEnd:
    """When a phase ends.

    ``neuron`` / ``dendrite``: the :class:`SwitchPolicy` of each phase (``dendrite`` None: the neuron one).
    ``cap_dendrite_phase``: no dendrite phase longer than the first neuron phase.
    ``improvement``: what counts as progress in a covariance dendrite phase (patience resets): ``"neuron"``
    (SPEC wording): some neuron has a candidate that raised its |correlation| beyond its reference by more
    than the thresholds (and the noise margin below); ``"layer"``: some layer's mean over its neurons of the
    best candidate's |correlation| this epoch beat that layer's best epoch mean by more than the thresholds
    (and the noise margin over sqrt(N)).
    ``noise_alpha``: makes that criterion noise-aware. A pair's improvement must exceed z standard errors of
    the epoch correlation (estimated per layer and epoch from the disagreement of the odd and even batches),
    with z chosen so that pure noise resets patience within one patience window with probability at most
    ``alpha`` (Bonferroni over every candidate of every neuron and the patience's epochs; see
    :func:`~pb_core.controller.noise_z`). None: the thresholds alone (with thousands of neurons, sampling noise
    alone keeps "neuron" going for ever).
    """
    neuron: SwitchPolicy = field(default_factory=SwitchPolicy)
    dendrite: SwitchPolicy | None = None
    cap_dendrite_phase: bool = False
    improvement: str = "neuron"
    noise_alpha: float | None = DEFAULT_NOISE_ALPHA

    def __post_init__(self):
        for name in ("neuron", "dendrite"):
            value = getattr(self, name)
            if not (isinstance(value, SwitchPolicy) or (name == "dendrite" and value is None)):
                raise ValueError(f"PhaseEnd.{name} must be a SwitchPolicy, got {value!r}")
        if self.improvement not in DENDRITE_IMPROVEMENTS:
            raise ValueError(f"dendrite_improvement must be 'neuron' or 'layer', got {self.improvement!r}")
        if self.noise_alpha is not None and not 0 < self.noise_alpha < 1:
            raise ValueError(f"dendrite_noise_alpha must be in (0, 1) or None, got {self.noise_alpha}")
        if not isinstance(self.cap_dendrite_phase, bool):
            raise ValueError(f"cap_dendrite_phase must be true or false, got {self.cap_dendrite_phase!r}")

    @property
    def dendrite_policy(self) -> SwitchPolicy:
        return self.dendrite if self.dendrite is not None else self.neuron


@dataclass(frozen=True)
class RunEnd:
    """When the run ends.

    ``max_dendrites``: stop after the neuron cycle that has this many dendrites.
    ``stop_on_no_improvement``: True (SPEC): stop after a neuron cycle that did not beat the previous one.
    False: keep adding dendrites up to ``max_dendrites`` (a protocol that scores every dendrite count); the
    final model is still the best one.
    ``max_total_epochs``: stop after this many epochs (a dendrite phase cut short is dropped).
    ``baseline_cycles``: for a dendrite-free variant, neuron cycles of exactly these lengths, each starting
    from the previous cycle's best weights with a fresh optimizer and scheduler (a compute-matched control);
    None means one cycle with patience.
    """
    max_dendrites: int | None = None
    stop_on_no_improvement: bool = True
    max_total_epochs: int | None = None
    baseline_cycles: tuple[int, ...] | None = None

    def __post_init__(self):
        _whole("max_dendrites", self.max_dendrites, 0)
        _whole("max_total_epochs", self.max_total_epochs, 1)
        if not self.stop_on_no_improvement and self.max_dendrites is None:
            raise ValueError("stop_on_no_improvement=False needs max_dendrites (otherwise the run never ends)")
        if self.baseline_cycles is not None:
            cycles = tuple(self.baseline_cycles)
            if not cycles:
                raise ValueError("baseline_cycles must list at least one cycle length (or be None)")
            for length in cycles:
                _whole("every baseline_cycles length", length, 1, none_ok=False)
            object.__setattr__(self, "baseline_cycles", cycles)


@dataclass(frozen=True)
class PBSettings:
    """Every setting of the method, in its four groups (each keyword of :class:`~pb_core.CycleController`)."""
    placement: Placement = field(default_factory=Placement)
    candidate_training: CandidateTraining = field(default_factory=CandidateTraining)
    phase_end: PhaseEnd = field(default_factory=PhaseEnd)
    run_end: RunEnd = field(default_factory=RunEnd)

    def __post_init__(self):
        for f in fields(self):
            if not isinstance(getattr(self, f.name), f.default_factory):
                raise ValueError(f"PBSettings.{f.name} must be a {f.default_factory.__name__}, "
                                 f"got {getattr(self, f.name)!r}")

    def keywords(self) -> dict:
        """The groups as CycleController keywords."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The older flat keywords of CycleController, each a field of one group (they keep working).
FLAT_KEYWORDS = {
    "layers": ("placement", "layers"), "head": ("placement", "head"), "activation": ("placement", "activation"),
    "candidates": ("candidate_training", "count"), "candidate_init": ("candidate_training", "init"),
    "candidate_init_std": ("candidate_training", "init_std"),
    "candidate_objective": ("candidate_training", "objective"),
    "candidate_snapshot": ("candidate_training", "snapshot"),
    "candidate_selection": ("candidate_training", "selection"),
    "candidate_optimizer": ("candidate_training", "optimizer"),
    "candidate_optimizer_factory": ("candidate_training", "optimizer"),
    "neuron_switch": ("phase_end", "neuron"), "dendrite_switch": ("phase_end", "dendrite"),
    "cap_dendrite_phase": ("phase_end", "cap_dendrite_phase"), "dendrite_improvement": ("phase_end", "improvement"),
    "dendrite_noise_alpha": ("phase_end", "noise_alpha"),
    "max_dendrites": ("run_end", "max_dendrites"), "stop_on_no_improvement": ("run_end", "stop_on_no_improvement"),
    "max_total_epochs": ("run_end", "max_total_epochs"), "baseline_cycles": ("run_end", "baseline_cycles"),
}
