"""The controller's settings as frozen groups: each refuses bad values once, with a message naming the value;
the older flat keywords build exactly the same controller; a checkpoint's signature is what it always was;
the suite builds the groups from its configuration keys (unchanged) and refuses a run that would never end."""
import dataclasses

import pytest
import torch

import pb_core
from experiments import config as cfgmod
from experiments.errors import ConfigError
from pb_core import CandidateTraining, CycleController, PBSettings, PhaseEnd, Placement, RunEnd, SwitchPolicy

from nets import Tiny

ADAM = lambda p: torch.optim.Adam(p, lr=0.05)  # noqa: E731


@pytest.mark.parametrize("make, message", [
    (lambda: SwitchPolicy(patience=0), "patience >= 1 or fixed_epochs"),
    (lambda: SwitchPolicy(fixed_epochs=0), "fixed_epochs must be >= 1"),
    (lambda: SwitchPolicy(rel_threshold=-1), "rel_threshold must be a number >= 0"),
    (lambda: SwitchPolicy(max_epochs=0), "max_epochs must be an integer >= 1"),
    (lambda: Placement(activation="relu"), "unknown dendrite activation 'relu'"),
    (lambda: CandidateTraining(count=0), "candidate count must be an integer >= 1"),
    (lambda: CandidateTraining(init="zeros"), "candidate init must be one of"),
    (lambda: CandidateTraining(init_std=0), "init_std must be > 0"),
    (lambda: CandidateTraining(objective="mse"), "candidate objective must be one of"),
    (lambda: CandidateTraining(optimizer={"lr": 0.1}), "a candidate optimizer is a mapping with a 'name'"),
    (lambda: CandidateTraining(optimizer={"lr_scale": 0}), "lr_scale must be a number > 0"),
    (lambda: PhaseEnd(improvement="epoch"), "dendrite_improvement must be 'neuron' or 'layer'"),
    (lambda: PhaseEnd(noise_alpha=1.5), r"dendrite_noise_alpha must be in \(0, 1\)"),
    (lambda: PhaseEnd(neuron=3), "PhaseEnd.neuron must be a SwitchPolicy"),
    (lambda: RunEnd(stop_on_no_improvement=False), "needs max_dendrites"),
    (lambda: RunEnd(max_total_epochs=0), "max_total_epochs must be an integer >= 1"),
    (lambda: RunEnd(baseline_cycles=[3, 0]), "every baseline_cycles length must be an integer >= 1"),
    (lambda: PBSettings(run_end=PhaseEnd()), "PBSettings.run_end must be a RunEnd"),
])
def test_each_group_refuses_bad_values_with_a_clear_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_groups_are_frozen_and_replace_checks_again():
    policy = SwitchPolicy(patience=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.patience = 4
    ends = RunEnd(max_dendrites=2, baseline_cycles=[4, 2])
    assert ends.baseline_cycles == (4, 2)  # a list becomes a tuple: the group stays immutable
    with pytest.raises(ValueError, match="needs max_dendrites"):
        dataclasses.replace(ends, max_dendrites=None, stop_on_no_improvement=False)


def test_flat_keywords_and_groups_build_the_same_controller_and_train_alike():
    x = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]]).repeat(4, 1)
    y = (x[:, 0] != x[:, 1]).long()

    def run(**kwargs):
        torch.manual_seed(0)
        ctl = CycleController(Tiny(), "pb", optimizer_factory=ADAM, **kwargs)

        def train_epoch(model, opt):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()

        def evaluate(model):
            out = model(x)
            return (out.argmax(1) == y).float().mean().item(), -torch.nn.functional.cross_entropy(out, y).item(), 0.0
        ctl.fit(train_epoch, evaluate)
        return ctl, [{k: v for k, v in r.items() if k != "seconds"} for r in ctl.state.rows]

    switch = SwitchPolicy(patience=2, max_epochs=6)
    flat, flat_rows = run(candidates=2, neuron_switch=switch, dendrite_switch=SwitchPolicy(patience=1, max_epochs=3),
                          max_dendrites=2, stop_on_no_improvement=False, candidate_init="layer",
                          dendrite_improvement="layer", activation="tanh")
    grouped, grouped_rows = run(
        placement=Placement(activation="tanh"), candidate_training=CandidateTraining(count=2, init="layer"),
        phase_end=PhaseEnd(neuron=switch, dendrite=SwitchPolicy(patience=1, max_epochs=3), improvement="layer"),
        run_end=RunEnd(max_dendrites=2, stop_on_no_improvement=False))
    assert flat.signature() == grouped.signature() and flat.settings == grouped.settings
    assert flat_rows == grouped_rows and any(r["phase"] == "dendrite" for r in flat_rows)
    # A flat keyword replaces one field of its group; an unknown one names the groups.
    mixed = CycleController(Tiny(), "pb", optimizer_factory=ADAM, run_end=RunEnd(max_dendrites=5), max_dendrites=1)
    assert mixed.settings.run_end == RunEnd(max_dendrites=1)
    with pytest.raises(TypeError, match="unknown keywords \\['patience'\\].*placement, candidate_training"):
        CycleController(Tiny(), "pb", optimizer_factory=ADAM, patience=3)


def test_a_checkpoint_signature_is_what_it_always_was():
    """Old checkpoints resume with exactly their settings: the signature of the default pb controller, and of
    a compute-matched control, as the flat-keyword controller wrote it."""
    ctl = CycleController(Tiny(), "pb", optimizer_factory=ADAM, phase_end=PhaseEnd(neuron=SwitchPolicy(patience=3)),
                          run_end=RunEnd(max_dendrites=2))
    policy = {"patience": 3, "fixed_epochs": None, "rel_threshold": 1e-4, "abs_threshold": 0.0, "max_epochs": None}
    assert ctl.signature() == {
        "variant": "pb", "layers": ["fc1", "fc2"], "candidates": 4, "max_dendrites": 2, "mode": "max",
        "neuron_switch": policy, "dendrite_switch": policy, "cap_dendrite_phase": False,
        "dendrite_improvement": "neuron", "baseline_cycles": None, "dendrite_noise_alpha": 0.05,
        "candidate_settings": {"init": "normal", "init_std": 0.01, "objective": "covariance", "snapshot": "measured",
                               "selection": "correlation"},
        "candidate_optimizer": {"lr_scale": 5.0}, "stop_on_no_improvement": True}
    matched = CycleController(Tiny(), "baseline", optimizer_factory=ADAM, run_end=RunEnd(baseline_cycles=(4, 2)))
    assert matched.signature()["baseline_cycles"] == [4, 2] and matched.signature()["layers"] == []


def test_the_suite_builds_the_groups_from_its_keys():
    cfg = cfgmod.load_config()
    defaults = cfgmod.pb_defaults(cfg)
    assert isinstance(defaults, PBSettings)
    assert defaults.phase_end.neuron == SwitchPolicy(patience=25, rel_threshold=1e-4, abs_threshold=0.0)
    assert defaults.phase_end.improvement == "layer" and defaults.run_end.max_dendrites == 16
    assert defaults.candidate_training == CandidateTraining(count=4)
    # A run's settings hold only the keys its variant reads; the others keep the values runs always had.
    only_neuron = cfgmod.pb_settings({"neuron_patience": 3, "max_cycle_epochs": 4})
    assert only_neuron.phase_end.neuron == SwitchPolicy(patience=3, max_epochs=4, rel_threshold=0.0)
    assert only_neuron.phase_end.dendrite is None and only_neuron.run_end == RunEnd()
    assert cfgmod.pb_settings({}, baseline_cycles=[3, 2]).run_end.baseline_cycles == (3, 2)


def test_a_pb_block_that_would_never_end_is_a_config_error_naming_its_key():
    with pytest.raises(ConfigError, match=r"benchmarks\.tox21\.pb: stop_on_no_improvement=False needs max_dendrites"):
        cfgmod.load_config(overrides=["benchmarks.tox21.pb.stop_on_no_improvement=false",
                                      "benchmarks.tox21.pb.max_dendrites=null"])
    with pytest.raises(ConfigError, match=r"benchmarks\.tox21\.seed_overrides\.3\.pb: stop_on_no_improvement"):
        cfgmod.load_config(overrides=["benchmarks.tox21.seed_overrides={3: {pb: {stop_on_no_improvement: false, "
                                      "max_dendrites: null}}}"])
    assert pb_core.PBSettings is PBSettings
