"""The neuron/dendrite cycle controller (SPEC section 1, "Training alternates two phases").

It drives a training loop the user writes:

* ``train_epoch(model, optimizer) -> float``: one pass over the training data with the optimizer it is
  given (forward, loss, ``loss.backward()``, ``optimizer.step()``), returning the mean loss. The same
  function serves both phases: in a dendrite phase the optimizer holds the candidates, the network is
  frozen, and ``loss.backward()`` yields the neuron errors that train them.
* ``evaluate(model) -> Scores(train, val, test)``.

The controller switches phases, reloads each cycle's best weights, rebuilds the optimizer and scheduler
from the user's factories at every switch, stops when a neuron cycle fails to beat the previous one
(or at ``max_dendrites``), returns the best network, writes the records, and checkpoints everything at
every epoch end so that a killed run resumes to the same records.
"""
from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from . import records
from .layer import CANDIDATE_DEFAULTS, check_candidate_settings
from .variants import Variant, get_variant
from .wrap import count_parameters, dendritic_layers, wrap

log = logging.getLogger("pb_core")

CHECKPOINT_VERSION = 1
DEFAULT_NOISE_ALPHA = 0.05
DEFAULT_CANDIDATES = 4                         # covariance candidates per neuron (gradient variants: 1)
DEFAULT_CANDIDATE_OPTIMIZER = {"lr_scale": 5.0}  # the network's optimizer at 5x its learning rate


class Scores(NamedTuple):
    train: float
    val: float
    test: float


@dataclass
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


@dataclass
class _State:
    """Everything about the run's progress that is not a tensor (checkpointed as plain data)."""
    epoch: int = 0                  # epochs completed
    cycle: int = 0
    phase: str = "neuron"
    cycle_start: int = 0            # epoch index at which the current cycle began
    since_improvement: int = 0
    patience_reference: float | None = None
    layer_correlation_best: dict = field(default_factory=dict)  # dendrite phase, "layer" criterion
    cycle_best: dict | None = None  # the cycle's strictly best epoch row
    previous_neuron_best: float | None = None
    first_neuron_epochs: int | None = None
    overall_best: dict | None = None
    done: bool = False
    stopped_because: str = ""
    dendrites_added: int = 0
    rows: list = field(default_factory=list)
    cycle_rows: list = field(default_factory=list)
    correlation_rows: list = field(default_factory=list)


def _better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a > b if mode == "max" else a < b)


def _snapshot(model: nn.Module) -> dict:
    structure = {name: layer.structure() for name, layer in dendritic_layers(model)}
    state = {k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v))
             for k, v in model.state_dict().items()}
    return {"structure": structure, "state": state}


def _restore(model: nn.Module, snapshot: dict) -> None:
    layers = dict(dendritic_layers(model))
    if set(layers) != set(snapshot["structure"]):
        raise RuntimeError(f"saved state has dendrites on {sorted(snapshot['structure'])} but the model has "
                           f"them on {sorted(layers)}: build the model and variant exactly as in the saved run")
    for name, structure in snapshot["structure"].items():
        layers[name].apply_structure(structure)
    model.load_state_dict(snapshot["state"])


def optimizer_from_spec(spec: dict | Callable, network_factory: Callable | None = None) -> Callable:
    """An optimizer factory (``params -> Optimizer``) from a config mapping.

    ``{"name": "adam", "lr": 0.01, ...}``: ``name`` is any ``torch.optim`` class, case-insensitive; the
    other keys are its arguments. ``{"lr_scale": 5.0}`` (no name): the network's own factory
    (``network_factory``) with every learning rate multiplied by ``lr_scale``. A callable is returned as it is.
    """
    if callable(spec):
        return spec
    if isinstance(spec, dict) and "name" not in spec and set(spec) == {"lr_scale"}:
        scale = float(spec["lr_scale"])
        if not scale > 0 or network_factory is None:
            raise ValueError(f"optimizer spec {spec!r}: lr_scale must be > 0 and needs the network's optimizer factory")

        def scaled(params):
            optimizer = network_factory(params)
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * scale
            return optimizer
        return scaled
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"an optimizer spec is a mapping with a 'name' (e.g. {{'name': 'adam', 'lr': 0.01}}), or "
                         f"{{'lr_scale': 5.0}}, or a callable params -> optimizer; got {spec!r}")
    classes = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim)
               if isinstance(getattr(torch.optim, n), type) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
               and getattr(torch.optim, n) is not torch.optim.Optimizer}
    name = str(spec["name"]).lower()
    if name not in classes:
        raise ValueError(f"unknown optimizer {spec['name']!r}; torch.optim has {sorted(classes)}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    cls = classes[name]
    return lambda params: cls(params, **kwargs)


def noise_z(alpha: float, comparisons: int) -> float:
    """The z that a pure-noise improvement exceeds with probability at most ``alpha`` over ``comparisons``
    independent two-sided tests (Bonferroni): Phi^-1(1 - alpha / (2 comparisons))."""
    p = torch.tensor(alpha / (2 * max(comparisons, 1)), dtype=torch.float64)
    return float(-torch.special.ndtri(p))


def default_scheduler_step(scheduler, metric: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(metric)
    else:
        scheduler.step()


class CycleController:
    """Runs Perforated Backpropagation (or one of its ablations) around the user's training loop.

    Args:
        model: any ``nn.Module``; its layers are wrapped in place according to the variant.
        variant: a name from :data:`pb_core.VARIANTS` (``pb``, ``baseline``, ``pb_head`` ...).
        optimizer_factory: ``params -> torch.optim.Optimizer``, called at every switch.
        scheduler_factory: ``optimizer -> scheduler`` (or None), called at every switch; stepped once per
            epoch (``ReduceLROnPlateau`` gets the validation score, or the mean correlation in a dendrite
            phase).
        neuron_switch / dendrite_switch: :class:`SwitchPolicy` per phase (dendrite defaults to neuron's).
        candidates: candidate dendrites per neuron (C); None: 4 for covariance variants, 1 for gd_dendrites.
        max_dendrites: stop after the neuron cycle that has this many dendrites.
        cap_dendrite_phase: cap every dendrite phase at the length of the first neuron phase.
        dendrite_improvement: what counts as progress in a covariance dendrite phase (patience resets):
            ``"neuron"`` (SPEC wording): some neuron has a candidate that raised its |correlation| beyond
            its reference by more than the thresholds (and the noise margin below); ``"layer"``: some
            layer's mean over its neurons of the best candidate's |correlation| this epoch beat that
            layer's best epoch mean by more than the thresholds (and the noise margin over sqrt(N)).
        dendrite_noise_alpha: makes the dendrite-phase criterion noise-aware. A pair's improvement must
            exceed z standard errors of the epoch correlation (estimated per layer and epoch from the
            disagreement of the odd and even batches), with z chosen so that pure noise resets patience
            within one patience window with probability at most ``alpha`` (Bonferroni over every candidate
            of every neuron and the patience's epochs; see :func:`noise_z`). None: the thresholds alone
            (the rule before this option; with thousands of neurons sampling noise alone keeps
            "neuron" going for ever).
        candidate_init / candidate_init_std / candidate_objective / candidate_snapshot / candidate_selection:
            how covariance candidates are drawn, trained, measured and chosen (see
            :class:`~pb_core.DendriticLayer`); ``candidate_init`` also draws gd_dendrites' and gd_joint's
            new dendrites.
        candidate_optimizer: optimizer for dendrite phases: a factory ``params -> Optimizer``, a mapping
            ``{"name": "adam", "lr": 0.01, ...}``, or ``{"lr_scale": s}``: the network's optimizer factory with
            s times its learning rate (:func:`optimizer_from_spec`); None: ``optimizer_factory`` as it is.
            Default ``{"lr_scale": 5.0}`` (benchmarks/candidate_study.py: with the network's own rate the
            candidates barely learn). ``candidate_optimizer_factory`` is the older name of the same argument.
        stop_on_no_improvement: True (SPEC): stop after a neuron cycle that did not beat the previous one.
            False: keep adding dendrites up to ``max_dendrites`` (a protocol that scores every dendrite
            count); the final model is still the best one.
        mode: "max" if a higher validation score is better, "min" otherwise.
        layers / head / activation: override the variant's layer preset, name the output layer, choose g.
        baseline_cycles: for a dendrite-free variant, run neuron cycles of exactly these lengths, each
            starting from the previous cycle's best weights with a fresh optimizer and scheduler (a
            compute-matched control); None means one cycle with patience.
        candidate_optimizer_factory: optimizer for dendrite phases (default: ``optimizer_factory``).
        out_dir: where records and the checkpoint go; None keeps everything in memory.
        on_epoch_end: callables receiving each epoch's row (progress bars, logging).
        summary_extra: fields added to the run summary (e.g. benchmark, seed, metric).
    """

    def __init__(self, model: nn.Module, variant: str | Variant = "pb", *,
                 optimizer_factory: Callable, scheduler_factory: Callable | None = None,
                 neuron_switch: SwitchPolicy | None = None, dendrite_switch: SwitchPolicy | None = None,
                 candidates: int | None = None, max_dendrites: int | None = None, cap_dendrite_phase: bool = False,
                 dendrite_improvement: str = "neuron", dendrite_noise_alpha: float | None = DEFAULT_NOISE_ALPHA,
                 mode: str = "max", layers=None, head: str | None = None, activation: str = "sigmoid",
                 baseline_cycles: list[int] | None = None, candidate_optimizer_factory: Callable | None = None,
                 candidate_optimizer: dict | Callable | None = DEFAULT_CANDIDATE_OPTIMIZER,
                 candidate_init: str = CANDIDATE_DEFAULTS["init"],
                 candidate_init_std: float = CANDIDATE_DEFAULTS["init_std"],
                 candidate_objective: str = CANDIDATE_DEFAULTS["objective"],
                 candidate_snapshot: str = CANDIDATE_DEFAULTS["snapshot"],
                 candidate_selection: str = CANDIDATE_DEFAULTS["selection"],
                 stop_on_no_improvement: bool = True,
                 scheduler_step: Callable = default_scheduler_step, max_total_epochs: int | None = None,
                 out_dir: str | Path | None = None, on_epoch_end: list[Callable] | None = None,
                 summary_extra: dict | None = None):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if dendrite_improvement not in ("neuron", "layer"):
            raise ValueError(f"dendrite_improvement must be 'neuron' or 'layer', got {dendrite_improvement!r}")
        self.variant = get_variant(variant)
        if candidates is None:  # gradient-trained candidates all feed the output: one per neuron
            candidates = 1 if self.variant.learning == "gradient" else DEFAULT_CANDIDATES
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if not stop_on_no_improvement and max_dendrites is None:
            raise ValueError("stop_on_no_improvement=False needs max_dendrites (otherwise the run never ends)")
        if dendrite_noise_alpha is not None and not 0 < dendrite_noise_alpha < 1:
            raise ValueError(f"dendrite_noise_alpha must be in (0, 1) or None, got {dendrite_noise_alpha}")
        if candidate_optimizer_factory is not None:  # the older name of the same argument
            candidate_optimizer = candidate_optimizer_factory
        check_candidate_settings(candidate_init, candidate_init_std, candidate_objective, candidate_snapshot,
                                 candidate_selection)
        self.model = model
        if baseline_cycles is not None and self.variant.has_dendrites:
            raise ValueError("baseline_cycles is for dendrite-free variants (a compute-matched control)")
        if self.variant.learning == "gradient" and candidates != 1:
            raise ValueError(f"variant {self.variant.name} trains one gradient candidate per neuron; got candidates={candidates}")
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        self.candidate_optimizer = candidate_optimizer if isinstance(candidate_optimizer, dict) else None  # signature
        self.candidate_optimizer_factory = (optimizer_from_spec(candidate_optimizer, optimizer_factory)
                                            if candidate_optimizer is not None else optimizer_factory)
        self.candidate_settings = {"init": candidate_init, "init_std": candidate_init_std,
                                   "objective": candidate_objective, "snapshot": candidate_snapshot,
                                   "selection": candidate_selection}
        self.dendrite_noise_alpha = dendrite_noise_alpha
        self.stop_on_no_improvement = stop_on_no_improvement
        self.neuron_switch = neuron_switch or SwitchPolicy()
        self.dendrite_switch = dendrite_switch or self.neuron_switch
        self.candidates = candidates
        self.max_dendrites = max_dendrites
        self.cap_dendrite_phase = cap_dendrite_phase
        self.dendrite_improvement = dendrite_improvement
        self.mode = mode
        self.baseline_cycles = list(baseline_cycles) if baseline_cycles else None
        self.scheduler_step = scheduler_step
        self.max_total_epochs = max_total_epochs
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_epoch_end = list(on_epoch_end or [])
        self.summary_extra = dict(summary_extra or {})
        self.layer_names = wrap(model, layers if layers is not None else self.variant.layers,
                                head=head, activation=activation) if self.variant.has_dendrites else []
        self.layers = dict(dendritic_layers(model))
        for layer in self.layers.values():  # kept on the layers, so a resumed phase rebuilds the same statistics
            for key, value in self.candidate_settings.items():
                setattr(layer, f"candidate_{key}", value)
        # Parameters the user froze stay frozen in every phase.
        self._user_trainable = {id(p) for p in model.parameters() if p.requires_grad}
        # The network's own parameters (the wrapped layers' originals included, dendrites excluded).
        dendrite_ids = {id(p) for layer in self.layers.values() for p in layer.parameters()} - \
            {id(p) for layer in self.layers.values() for p in layer.main.parameters()}
        self._network_params = [p for p in model.parameters() if id(p) not in dendrite_ids]
        self._frozen_norms = False
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.register_forward_pre_hook(self._freeze_norm_statistics)
        self.state = _State()
        self.optimizer = None
        self.scheduler = None
        self._cycle_best_snapshot = None
        self._overall_best_snapshot = None
        self.params_original = count_parameters(model)

    # ------------------------------------------------------------------ public
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoint.pt"

    def signature(self) -> dict:
        """Settings a checkpoint must agree with to be resumed."""
        return {"variant": self.variant.name, "layers": self.layer_names, "candidates": self.candidates,
                "max_dendrites": self.max_dendrites, "mode": self.mode,
                "neuron_switch": asdict(self.neuron_switch), "dendrite_switch": asdict(self.dendrite_switch),
                "cap_dendrite_phase": self.cap_dendrite_phase, "dendrite_improvement": self.dendrite_improvement,
                "baseline_cycles": self.baseline_cycles, "dendrite_noise_alpha": self.dendrite_noise_alpha,
                "candidate_settings": self.candidate_settings, "candidate_optimizer": self.candidate_optimizer,
                "stop_on_no_improvement": self.stop_on_no_improvement}

    def fit(self, train_epoch: Callable, evaluate: Callable, resume: bool = True) -> dict:
        """Train until the stopping rule fires; return the run summary. The model ends as the best one."""
        ckpt = self.checkpoint_path
        if resume and ckpt is not None and ckpt.exists():
            self._load_checkpoint(ckpt)
            log.info("resumed %s at epoch %d (cycle %d, %s phase)", ckpt, self.state.epoch, self.state.cycle,
                     self.state.phase)
        else:
            self._configure_phase()
        while not self.state.done:
            self._run_epoch(train_epoch, evaluate)
            self._save()
        return self.summary()

    def summary(self) -> dict:
        st = self.state
        neuron_rows = [r for r in st.rows if r["phase"] == "neuron"]
        scores = records.summarize(neuron_rows, self.mode)
        return {"variant": self.variant.name, **self.summary_extra, "mode": self.mode, **scores,
                "final_dendrites": scores["max"]["dendrites"], "dendrites_added": st.dendrites_added,
                "params_original": self.params_original, "params_final": scores["max"]["params"],
                "epochs": st.epoch, "cycles": len(st.cycle_rows),
                "seconds": float(sum(r["seconds"] for r in st.rows)), "stopped_because": st.stopped_because}

    def stage(self, dendrites: int, phase: str = "neuron", *, output_weights: tuple[float, float] | None = (0.05, 0.2),
              snapshot: str | None = None) -> None:
        """Put the network into the shape it has in a later cycle of a run, without training to it.

        For timing and profiling tools: what an epoch costs depends on the shapes, not on the weights.
        ``dendrites`` dendrites are committed on every wrapped layer (random ones for joint learning, as
        ``gd_joint`` adds them), their output weights u drawn uniformly from ``output_weights`` so that no
        dendrite term is trivially zero (``None`` keeps u = 0: the function is unchanged), then ``phase``
        is set up as a run sets it up: in a dendrite phase the configured candidates per neuron
        (``snapshot`` overrides ``candidate_snapshot``), then trainable flags, perforation and a fresh
        optimizer.
        """
        if phase not in ("neuron", "dendrite"):
            raise ValueError(f"phase must be 'neuron' or 'dendrite', not {phase!r}")
        learning = self._learning()
        if phase == "dendrite" and learning not in ("covariance", "gradient"):
            raise ValueError(f"variant {self.variant.name!r} has no dendrite phase")
        for _ in range(dendrites):
            for layer in self.layers.values():
                if learning == "joint":
                    layer.add_random_dendrite()
                else:
                    layer.add_candidates(1, learning)
                    layer.commit_candidates()
        if dendrites and output_weights is not None:
            with torch.no_grad():
                for layer in self.layers.values():
                    layer.dendrite_out.uniform_(*output_weights)
        self.state.phase = phase
        if phase == "dendrite":
            for layer in self.layers.values():
                layer.add_candidates(self.candidates, learning, snapshot=snapshot)
        self._configure_phase()

    # ------------------------------------------------------------------ phases
    def _learning(self) -> str | None:
        return self.variant.learning

    def _configure_phase(self) -> None:
        """Set trainable flags and modes for the current phase; rebuild the optimizer and scheduler."""
        phase, learning = self.state.phase, self._learning()
        for p in self._network_params:
            p.requires_grad_(phase == "neuron" and id(p) in self._user_trainable)
        for layer in self.layers.values():
            layer.perforated = self.variant.perforated
            if phase == "neuron":
                layer.set_dendrites_trainable(weights=learning == "joint", output=True)
            else:
                layer.set_dendrites_trainable(weights=False, output=False)
                for p in layer.candidate_parameters():
                    p.requires_grad_(True)
        self._frozen_norms = phase == "dendrite"
        params = [p for p in self.model.parameters() if p.requires_grad]
        factory = self.optimizer_factory if phase == "neuron" else self.candidate_optimizer_factory
        self.optimizer = factory(params)
        self.scheduler = self.scheduler_factory(self.optimizer) if self.scheduler_factory else None

    def _freeze_norm_statistics(self, module, inputs):
        # A dendrite phase changes nothing in the network, running statistics of norm layers included.
        if self._frozen_norms:
            module.training = False

    def _begin_cycle(self, phase: str) -> None:
        st = self.state
        st.cycle += 1
        st.phase = phase
        st.cycle_start = st.epoch
        st.since_improvement = 0
        st.patience_reference = None
        st.layer_correlation_best = {}
        if phase == "dendrite":
            for layer in self.layers.values():
                layer.add_candidates(self.candidates, self._learning())
            if self._learning() == "covariance":
                self._cycle_best_snapshot = None  # the network does not change; cycle_best is kept
            else:
                st.cycle_best = None
        else:
            st.cycle_best = None
        self._configure_phase()

    def _end_cycle(self) -> None:
        st = self.state
        epochs = st.epoch - st.cycle_start
        best = st.cycle_best
        if st.phase == "neuron" or self._learning() == "gradient":
            _restore(self.model, self._cycle_best_snapshot)
        st.cycle_rows.append({"cycle": st.cycle, "phase": st.phase, "dendrites": best["dendrites"],
                              "params": best["params"], "epochs": epochs, "best_epoch": best["epoch"],
                              "val": best["val"], "test": best["test"]})
        if st.phase == "dendrite":
            for layer in self.layers.values():
                layer.commit_candidates()
            st.dendrites_added += 1
            self._begin_cycle("neuron")
            return
        # A neuron cycle ended.
        if st.first_neuron_epochs is None:
            st.first_neuron_epochs = epochs
        previous = st.previous_neuron_best
        improved = _better(best["val"], previous, self.mode) and best["val"] != previous
        if improved:
            st.previous_neuron_best = best["val"]
        dendrites = next(iter(self.layers.values())).num_dendrites if self.layers else 0
        if not self.variant.has_dendrites:
            finished = self.baseline_cycles is None or len(st.cycle_rows) >= len(self.baseline_cycles)
            if finished:
                return self._stop("baseline finished" if self.baseline_cycles is None
                                  else "matched schedule finished")
            return self._begin_cycle("neuron")
        if previous is not None and not improved and self.stop_on_no_improvement:
            return self._stop("neuron cycle did not improve validation")
        if self.max_dendrites is not None and dendrites >= self.max_dendrites:
            return self._stop("max_dendrites reached")
        if self._learning() == "joint":
            for layer in self.layers.values():
                layer.add_random_dendrite()
            st.dendrites_added += 1
            return self._begin_cycle("neuron")
        self._begin_cycle("dendrite")

    def _stop(self, reason: str) -> None:
        st = self.state
        st.done = True
        st.stopped_because = reason
        for layer in self.layers.values():
            layer.discard_candidates()
        _restore(self.model, self._overall_best_snapshot)
        self._configure_phase()
        log.info("stopped: %s; best validation %.6g at epoch %d with %d dendrites", reason,
                 st.overall_best["val"], st.overall_best["epoch"], st.overall_best["dendrites"])

    def _current_policy(self) -> SwitchPolicy:
        if self.state.phase == "neuron" and self.baseline_cycles is not None:
            return SwitchPolicy(fixed_epochs=self.baseline_cycles[len(self.state.cycle_rows)])
        return self.neuron_switch if self.state.phase == "neuron" else self.dendrite_switch

    # ------------------------------------------------------------------ one epoch
    def _run_epoch(self, train_epoch: Callable, evaluate: Callable) -> None:
        st = self.state
        start = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"]) if self.optimizer.param_groups else float("nan")
        self.model.train()
        loss = float(train_epoch(self.model, self.optimizer))
        covariance_phase = st.phase == "dendrite" and self._learning() == "covariance"
        correlation, progress = None, False
        if covariance_phase:
            policy = self.dendrite_switch
            z = self._noise_z() if self.dendrite_improvement == "neuron" else None
            per_layer = {name: layer.end_candidate_epoch(policy.rel_threshold, policy.abs_threshold, z)
                         for name, layer in self.layers.items()}
            correlation = _mean([r["correlation"] for r in per_layer.values()])
            progress = self._dendrite_progress(per_layer, policy)
            for name, r in per_layer.items():
                st.correlation_rows.append({"epoch": st.epoch, "cycle": st.cycle, "layer": name,
                                            "correlation": r["correlation"]})
            # The network is frozen and reloaded at its best: its scores are the cycle's best scores.
            scores = Scores(st.cycle_best["train"], st.cycle_best["val"], st.cycle_best["test"])
        else:
            self.model.eval()
            with torch.no_grad():
                scores = Scores(*map(float, evaluate(self.model)))
        dendrites = next(iter(self.layers.values())).num_dendrites if self.layers else 0
        row = {"epoch": st.epoch, "cycle": st.cycle, "phase": st.phase, "dendrites": dendrites,
               "train": scores.train, "val": scores.val, "test": scores.test, "loss": loss,
               "correlation": correlation, "lr": lr, "params": count_parameters(self.model),
               "seconds": time.perf_counter() - start}
        st.rows.append(row)
        st.epoch += 1
        if self.scheduler is not None:
            self.scheduler_step(self.scheduler, correlation if covariance_phase else scores.val)

        policy = self._current_policy()
        if covariance_phase:
            st.since_improvement = 0 if progress else st.since_improvement + 1
        else:
            if policy.improved(scores.val, st.patience_reference, self.mode):
                st.patience_reference = scores.val
                st.since_improvement = 0
            else:
                st.since_improvement += 1
            if st.cycle_best is None or _better(scores.val, st.cycle_best["val"], self.mode) \
                    and scores.val != st.cycle_best["val"]:
                st.cycle_best = dict(row)
                self._cycle_best_snapshot = _snapshot(self.model)
            if st.phase == "neuron" and (st.overall_best is None or (_better(scores.val, st.overall_best["val"], self.mode)
                                                                    and scores.val != st.overall_best["val"])):
                st.overall_best = dict(row)
                self._overall_best_snapshot = self._cycle_best_snapshot
        for callback in self.on_epoch_end:
            callback(row)

        in_cycle = st.epoch - st.cycle_start
        over = policy.cycle_over(in_cycle, st.since_improvement)
        if st.phase == "dendrite" and self.cap_dendrite_phase and st.first_neuron_epochs:
            over = over or in_cycle >= st.first_neuron_epochs
        if over:
            self._end_cycle()
        # Checked after a switch too, so a cycle that ends at the limit does not start another epoch.
        if not st.done and self.max_total_epochs is not None and st.epoch >= self.max_total_epochs:
            if st.phase == "dendrite":  # a half-trained dendrite is dropped, not committed
                for layer in self.layers.values():
                    layer.discard_candidates()
                st.phase = "neuron"
            return self._stop("max_total_epochs reached")

    def _noise_z(self) -> float | None:
        """z of the noise-aware dendrite criterion: Bonferroni over the patience window's epochs and every
        (candidate, neuron) pair ("neuron") or every layer ("layer")."""
        if self.dendrite_noise_alpha is None:
            return None
        policy = self.dendrite_switch
        epochs = policy.patience if policy.fixed_epochs is None else 1
        if self.dendrite_improvement == "neuron":
            tests = sum(layer.num_neurons * self.candidates for layer in self.layers.values())
        else:
            tests = len(self.layers)
        return noise_z(self.dendrite_noise_alpha, epochs * tests)

    def _dendrite_progress(self, per_layer: dict, policy: SwitchPolicy) -> bool:
        """Did this dendrite-phase epoch improve the candidates (see ``dendrite_improvement``)?"""
        if self.dendrite_improvement == "neuron":
            return any(r["improved"] for r in per_layer.values())
        best = self.state.layer_correlation_best
        z = self._noise_z()
        progress = False
        for name, r in per_layer.items():
            reference = best.get(name)
            # the layer mean's standard error is about se / sqrt(N) (neurons' errors are nearly independent)
            noisy = z is not None and reference is not None and \
                r["correlation"] <= reference + z * r["noise"] / r["neurons"] ** 0.5
            if policy.improved(r["correlation"], reference, "max") and not noisy:
                best[name] = r["correlation"]
                progress = True
        return progress

    # ------------------------------------------------------------------ persistence
    def _save(self) -> None:
        if self.out_dir is None:
            return
        st = self.state
        records.write_csv(self.out_dir / "epochs.csv", st.rows, records.EPOCH_COLUMNS)
        records.write_csv(self.out_dir / "cycles.csv", st.cycle_rows, records.CYCLE_COLUMNS)
        records.write_csv(self.out_dir / "correlations.csv", st.correlation_rows, records.CORRELATION_COLUMNS)
        checkpoint = {
            "version": CHECKPOINT_VERSION, "signature": self.signature(), "state": asdict(st),
            "model": _snapshot(self.model), "cycle_best": self._cycle_best_snapshot,
            "overall_best": self._overall_best_snapshot,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": _rng_state(),
        }
        records.atomic_torch_save(checkpoint, self.checkpoint_path)
        if st.done:
            records.write_json(self.out_dir / "summary.json", self.summary())
            records.atomic_torch_save(_snapshot(self.model), self.out_dir / "model.pt")

    def _load_checkpoint(self, path: Path) -> None:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file
            raise RuntimeError(f"cannot read checkpoint {path} ({exc}); delete it to start this run afresh") from exc
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise RuntimeError(f"checkpoint {path} has format version {ckpt.get('version')}, this pb_core writes "
                               f"{CHECKPOINT_VERSION}; delete it to start this run afresh")
        if ckpt["signature"] != self.signature():
            diff = {k: (ckpt["signature"].get(k), v) for k, v in self.signature().items()
                    if ckpt["signature"].get(k) != v}
            raise RuntimeError(f"checkpoint {path} was made with other settings (saved, now): {diff}; "
                               "delete that folder to start afresh, or rerun with the saved settings")
        self.state = _State(**ckpt["state"])
        device = next(self.model.parameters()).device
        to_device = lambda snap: None if snap is None else {  # noqa: E731
            "structure": snap["structure"],
            "state": {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in snap["state"].items()}}
        _restore(self.model, to_device(ckpt["model"]))
        self._cycle_best_snapshot = to_device(ckpt["cycle_best"])
        self._overall_best_snapshot = to_device(ckpt["overall_best"])
        self._configure_phase()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])


def _numpy():
    """numpy when installed (its global RNG is checkpointed too: user loops may draw from it), else None."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _mean(values: list[float]) -> float:
    # numpy's pairwise sum when numpy is there, so records stay bit-identical to those written before
    # numpy became optional; a plain sum otherwise.
    np = _numpy()
    return float(np.mean(values)) if np is not None else sum(values) / len(values)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np = _numpy()
    if np is not None:
        state["numpy"] = np.random.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np = _numpy()
    if np is not None and "numpy" in state:
        np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_state(model: nn.Module, path: str | Path, variant: str | Variant = "pb", layers=None,
                     head: str | None = None, activation: str = "sigmoid") -> nn.Module:
    """Rebuild a finished run's network (``model.pt``) on a freshly constructed ``model``."""
    v = get_variant(variant)
    if v.has_dendrites:
        wrap(model, layers if layers is not None else v.layers, head=head, activation=activation)
    snapshot = torch.load(path, map_location="cpu", weights_only=False)
    _restore(model, snapshot)
    return model
