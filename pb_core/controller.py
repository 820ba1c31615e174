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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from . import records
from .records import FIRST_CYCLE_FILE
from .settings import (DEFAULT_CANDIDATE_OPTIMIZER, DEFAULT_CANDIDATES, DEFAULT_NOISE_ALPHA, FLAT_KEYWORDS,  # noqa: F401
                       CandidateTraining, PBSettings, PhaseEnd, Placement, RunEnd, SwitchPolicy)
from .variants import Variant, get_variant
from .wrap import count_parameters, dendritic_layers, wrap

log = logging.getLogger("pb_core")

CHECKPOINT_VERSION = 1


class Scores(NamedTuple):
    train: float
    val: float
    test: float


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


def _settings_with(settings: PBSettings, flat: dict) -> PBSettings:
    """``settings`` with the older flat keywords (FLAT_KEYWORDS) put into their groups."""
    unknown = sorted(set(flat) - set(FLAT_KEYWORDS))
    if unknown:
        raise TypeError(f"CycleController got unknown keywords {unknown}; the method's settings are the groups "
                        f"placement, candidate_training, phase_end and run_end (pb_core.settings)")
    if flat.get("candidate_optimizer_factory") is None:  # the older name of candidate_optimizer; None: not given
        flat.pop("candidate_optimizer_factory", None)
    else:
        flat.pop("candidate_optimizer", None)
    # What the flat form read as "the default": no neuron policy (SwitchPolicy()), no cycle list (one cycle).
    if flat.get("neuron_switch", 0) is None:
        flat.pop("neuron_switch")
    if "baseline_cycles" in flat and not flat["baseline_cycles"]:
        flat["baseline_cycles"] = None
    groups = settings.keywords()
    changes: dict[str, dict] = {}
    for key, value in flat.items():
        group, name = FLAT_KEYWORDS[key]
        changes.setdefault(group, {})[name] = value
    for group, values in changes.items():
        groups[group] = replace(groups[group], **values)
    return PBSettings(**groups)


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
            epoch by ``scheduler_step`` (``ReduceLROnPlateau`` gets the validation score, or the mean
            correlation in a dendrite phase).
        placement / candidate_training / phase_end / run_end: the method's settings, one frozen group each
            (:mod:`pb_core.settings`: where dendrites go, how candidates are trained, when a phase ends, when
            the run ends); a :class:`PBSettings` gives all four as ``**settings.keywords()``. Each defaults
            to its class's defaults.
        mode: "max" if a higher validation score is better, "min" otherwise.
        out_dir: where records and the checkpoint go; None keeps everything in memory.
        on_epoch_end: callables receiving each epoch's row (progress bars, logging).
        summary_extra: fields added to the run summary (e.g. benchmark, seed, metric).
        **flat: the older one-keyword-per-setting form (``candidates=4``, ``neuron_switch=...``,
            ``max_dendrites=2``; :data:`pb_core.settings.FLAT_KEYWORDS` maps each to its group's field); each
            replaces that field of its group.
    """

    def __init__(self, model: nn.Module, variant: str | Variant = "pb", *,
                 optimizer_factory: Callable, scheduler_factory: Callable | None = None,
                 placement: Placement | None = None, candidate_training: CandidateTraining | None = None,
                 phase_end: PhaseEnd | None = None, run_end: RunEnd | None = None,
                 mode: str = "max", scheduler_step: Callable = default_scheduler_step,
                 out_dir: str | Path | None = None, on_epoch_end: list[Callable] | None = None,
                 summary_extra: dict | None = None, **flat):
        settings = _settings_with(PBSettings(placement=placement or Placement(),
                                             candidate_training=candidate_training or CandidateTraining(),
                                             phase_end=phase_end or PhaseEnd(), run_end=run_end or RunEnd()), flat)
        placement, training = settings.placement, settings.candidate_training
        phases, ends = settings.phase_end, settings.run_end
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.variant = get_variant(variant)
        self.settings = settings
        candidates = training.count
        if candidates is None:  # gradient-trained candidates all feed the output: one per neuron
            candidates = 1 if self.variant.learning == "gradient" else DEFAULT_CANDIDATES
        self.model = model
        if ends.baseline_cycles is not None and self.variant.has_dendrites:
            raise ValueError("baseline_cycles is for dendrite-free variants (a compute-matched control)")
        if self.variant.learning == "gradient" and candidates != 1:
            raise ValueError(f"variant {self.variant.name} trains one gradient candidate per neuron; got candidates={candidates}")
        # The groups' fields as attributes (what the phases read, and the checkpoint's signature records).
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        spec = training.optimizer
        self.candidate_optimizer = spec if isinstance(spec, dict) else None  # signature
        self.candidate_optimizer_factory = (optimizer_from_spec(spec, optimizer_factory)
                                            if spec is not None else optimizer_factory)
        self.candidate_settings = training.layer_settings
        self.candidates = candidates
        self.neuron_switch, self.dendrite_switch = phases.neuron, phases.dendrite_policy
        self.cap_dendrite_phase, self.dendrite_improvement = phases.cap_dendrite_phase, phases.improvement
        self.dendrite_noise_alpha = phases.noise_alpha
        self.max_dendrites, self.stop_on_no_improvement = ends.max_dendrites, ends.stop_on_no_improvement
        self.max_total_epochs = ends.max_total_epochs
        self.baseline_cycles = list(ends.baseline_cycles) if ends.baseline_cycles else None
        self.mode = mode
        self.scheduler_step = scheduler_step
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_epoch_end = list(on_epoch_end or [])
        self.summary_extra = dict(summary_extra or {})
        layers = placement.layers if placement.layers is not None else self.variant.layers
        self.layer_names = wrap(model, layers, head=placement.head, activation=placement.activation) \
            if self.variant.has_dendrites else []
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

    def fit(self, train_epoch: Callable, evaluate: Callable, resume: bool = True,
            first_cycle: str | Path | None = None) -> dict:
        """Train until the stopping rule fires; return the run summary. The model ends as the best one.

        ``first_cycle``: a file written by :meth:`fit_first_cycle` (a dendrite-free controller's first
        neuron cycle on the same network, data and seed). A run with no checkpoint of its own starts from
        it instead of training that cycle again, and ends exactly as if it had trained it itself: its
        records begin with the cycle's records, and its own rule decides what follows the cycle's last epoch.
        """
        ckpt = self.checkpoint_path
        if resume and ckpt is not None and ckpt.exists():
            self._load_checkpoint(ckpt)
            log.info("resumed %s at epoch %d (cycle %d, %s phase)", ckpt, self.state.epoch, self.state.cycle,
                     self.state.phase)
        elif first_cycle is not None:
            self._fork(Path(first_cycle))
            log.info("continues from the first cycle %s (%d epochs)", first_cycle, len(self.state.rows))
        else:
            self._configure_phase()
        while not self.state.done:
            self._run_epoch(train_epoch, evaluate)
            self._save()
        return self.summary()

    def fit_first_cycle(self, train_epoch: Callable, evaluate: Callable) -> Path:
        """Train the first neuron cycle only, and write it where :meth:`fit` of any variant can start from it
        (``out_dir/first_cycle.pt``; the records so far go beside it); return that file.

        The file holds the state right after the cycle's last epoch, before the end-of-cycle decision
        (best-weights reload, what comes next), which each run that starts from it makes by its own rule.
        Only a dendrite-free controller (variant ``baseline``, no ``baseline_cycles``) trains it: every
        variant's first cycle is the plain network's (wrapped layers without dendrites compute the same).
        A killed call resumes from ``checkpoint.pt`` like :meth:`fit`.
        """
        if self.variant.has_dendrites or self.baseline_cycles is not None or self.out_dir is None:
            raise ValueError("a shared first cycle is trained by a dendrite-free controller (variant 'baseline', "
                             "no baseline_cycles) with an out_dir")
        path = self.out_dir / FIRST_CYCLE_FILE
        ckpt = self.checkpoint_path
        if ckpt.exists():
            self._load_checkpoint(ckpt)
            log.info("resumed %s at epoch %d", ckpt, self.state.epoch)
        else:
            self._configure_phase()
        while True:
            self._train_and_score(train_epoch, evaluate)
            if self._first_cycle_ends():
                first = self._checkpoint()
                first["first_cycle"] = {"mode": self.mode, "neuron_switch": asdict(self.neuron_switch),
                                        "max_total_epochs": self.max_total_epochs, "epochs": self.state.epoch}
                self._write_records()
                records.atomic_torch_save(first, path)
                ckpt.unlink(missing_ok=True)
                return path
            self._decide()  # not the cycle's end: changes nothing, as in every run
            self._save()

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
        self._train_and_score(train_epoch, evaluate)
        self._decide()

    def _train_and_score(self, train_epoch: Callable, evaluate: Callable) -> None:
        """One epoch: train, score, record, track the bests and patience (no end-of-cycle decision)."""
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

    def _cycle_over(self) -> bool:
        st = self.state
        in_cycle = st.epoch - st.cycle_start
        over = self._current_policy().cycle_over(in_cycle, st.since_improvement)
        if st.phase == "dendrite" and self.cap_dendrite_phase and st.first_neuron_epochs:
            over = over or in_cycle >= st.first_neuron_epochs
        return over

    def _at_epoch_limit(self) -> bool:
        return self.max_total_epochs is not None and self.state.epoch >= self.max_total_epochs

    def _first_cycle_ends(self) -> bool:
        """The epoch just trained is the first neuron cycle's last: the cycle is over, or the run's epochs are."""
        st = self.state
        return st.phase == "neuron" and not st.cycle_rows and (self._cycle_over() or self._at_epoch_limit())

    def _decide(self) -> None:
        """After an epoch: end the cycle when its rule says so, and the run at max_total_epochs."""
        st = self.state
        if self._cycle_over():
            self._end_cycle()
        # Checked after a switch too, so a cycle that ends at the limit does not start another epoch.
        if not st.done and self._at_epoch_limit():
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
        self._write_records()
        records.atomic_torch_save(self._checkpoint(), self.checkpoint_path)
        if st.done:
            records.write_json(self.out_dir / "summary.json", self.summary())
            records.atomic_torch_save(_snapshot(self.model), self.out_dir / "model.pt")

    def _write_records(self) -> None:
        st = self.state
        records.write_csv(self.out_dir / "epochs.csv", st.rows, records.EPOCH_COLUMNS)
        records.write_csv(self.out_dir / "cycles.csv", st.cycle_rows, records.CYCLE_COLUMNS)
        records.write_csv(self.out_dir / "correlations.csv", st.correlation_rows, records.CORRELATION_COLUMNS)

    def _checkpoint(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION, "signature": self.signature(), "state": asdict(self.state),
            "model": _snapshot(self.model), "cycle_best": self._cycle_best_snapshot,
            "overall_best": self._overall_best_snapshot,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": _rng_state(),
        }

    @staticmethod
    def _read_checkpoint(path: Path) -> dict:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file
            raise RuntimeError(f"cannot read checkpoint {path} ({exc}); delete it to start this run afresh") from exc
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise RuntimeError(f"checkpoint {path} has format version {ckpt.get('version')}, this pb_core writes "
                               f"{CHECKPOINT_VERSION}; delete it to start this run afresh")
        return ckpt

    def _fork(self, path: Path) -> None:
        """Start from a shared first cycle (see :meth:`fit_first_cycle`), then decide its end by this run's rule."""
        ckpt = self._read_checkpoint(path)
        first = ckpt.get("first_cycle")
        if first is None:
            raise RuntimeError(f"{path} is not a first-cycle file (CycleController.fit_first_cycle writes them)")
        why = self._first_cycle_differs(first)
        if why:
            raise RuntimeError(f"this run cannot start from the first cycle {path}: {why}")
        template = _snapshot(self.model)  # this network before any training: its dendrite-free wrapped form
        lift = lambda snap: None if snap is None else self._to_device(self._lift(snap, template, path))  # noqa: E731
        self.state = _State(**ckpt["state"])
        _restore(self.model, lift(ckpt["model"]))
        self._cycle_best_snapshot = lift(ckpt["cycle_best"])
        self._overall_best_snapshot = lift(ckpt["overall_best"])
        _set_rng_state(ckpt["rng"])
        # The optimizer and scheduler of the cycle are not carried over: every outcome of a first cycle's end
        # (a dendrite phase, another neuron cycle, the stop) builds both afresh from the factories.
        self._decide()
        if self.optimizer is None:
            raise RuntimeError(f"the first cycle {path} did not end by this run's rule")
        self._save()

    def _first_cycle_differs(self, first: dict) -> str:
        """Why this run's first cycle would not be the shared one ('' when it is)."""
        if first["mode"] != self.mode:
            return f"its mode is {self.mode!r}, the cycle's {first['mode']!r}"
        epochs = first["epochs"]
        if self.baseline_cycles is not None:  # a compute-matched control: its first cycle has a fixed length
            if self.baseline_cycles[0] != epochs or (self.max_total_epochs or epochs) < epochs:
                return f"its first cycle has {self.baseline_cycles[0]} epochs, the shared one {epochs}"
            return ""
        if asdict(self.neuron_switch) != first["neuron_switch"] or self.max_total_epochs != first["max_total_epochs"]:
            return (f"its neuron-cycle rule {asdict(self.neuron_switch)}, max_total_epochs {self.max_total_epochs} "
                    f"differ from the cycle's {first['neuron_switch']}, {first['max_total_epochs']}")
        return ""

    def _lift(self, snap: dict, template: dict, path: Path) -> dict:
        """A snapshot of the plain network in this run's form: each wrapped layer's weights under ``main``,
        its (empty) dendrite tensors from ``template``."""
        if snap["structure"]:
            raise RuntimeError(f"{path} holds a network with dendrites; a first cycle has none")
        prefixes = {f"{name}.": f"{name}.main." for name in self.layers}
        state = dict(template["state"])
        lifted = set()
        for key, value in snap["state"].items():
            prefix = next((p for p in prefixes if key.startswith(p)), None)
            new = key if prefix is None else prefixes[prefix] + key[len(prefix):]
            if new not in state:
                raise RuntimeError(f"{path} was trained on another network: it has {key!r}, which this one lacks")
            state[new] = value
            lifted.add(new)
        own = {k for k in state if not any(k.startswith(p) and not k.startswith(m) for p, m in prefixes.items())}
        if lifted != own:
            raise RuntimeError(f"{path} was trained on another network: it lacks {sorted(own - lifted)[:5]}")
        return {"structure": template["structure"], "state": state}

    def _to_device(self, snap: dict | None) -> dict | None:
        device = next(self.model.parameters()).device
        return None if snap is None else {
            "structure": snap["structure"],
            "state": {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in snap["state"].items()}}

    def _load_checkpoint(self, path: Path) -> None:
        ckpt = self._read_checkpoint(path)
        if ckpt["signature"] != self.signature():
            diff = {k: (ckpt["signature"].get(k), v) for k, v in self.signature().items()
                    if ckpt["signature"].get(k) != v}
            raise RuntimeError(f"checkpoint {path} was made with other settings (saved, now): {diff}; "
                               "delete that folder to start afresh, or rerun with the saved settings")
        self.state = _State(**ckpt["state"])
        to_device = self._to_device
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
