"""The cycle controller (SPEC sections 1-2) on scripted score sequences and on tiny real problems.

Scripted runs: ``train_epoch`` writes the epoch index into a bias of the network and ``evaluate`` returns
validation/test scores from a list, so the exact switch epochs, the reloaded weights (the bias tells
which epoch they come from), the stopping rule and the summary can be asserted exactly.
"""
import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pb_core
from pb_core import CycleController, DendriticLayer, Scores, SwitchPolicy, count_parameters

from nets import DropNet, Tiny, interruptible_epoch


# ---------------------------------------------------------------------------------------------- scripted harness
def _main(module):
    return module.main if isinstance(module, DendriticLayer) else module


class Script:
    """train_epoch: in neuron epochs, fc2.bias := epoch index; logs what each epoch starts from.
    evaluate: the next (val, test) of the script."""

    def __init__(self, vals, tests=None):
        self.vals, self.tests = list(vals), None if tests is None else list(tests)
        self.log, self.optimizers, self.evals, self.ctl = [], [], 0, None

    def train_epoch(self, model, opt):
        ctl = self.ctl
        bias = _main(model.fc2).bias
        self.log.append({"epoch": ctl.state.epoch, "phase": ctl.state.phase, "start": bias[0].item(),
                         "dendrites": _main_dendrites(model)})
        self.optimizers.append(opt)
        opt.step()  # no gradients: changes nothing, but keeps the scheduler's step-order check quiet
        if ctl.state.phase == "neuron":
            with torch.no_grad():
                bias.fill_(ctl.state.epoch)
        return 0.0

    def evaluate(self, model):
        i = self.evals
        self.evals += 1
        val = self.vals[i]
        return Scores(val, val, self.tests[i] if self.tests is not None else -val)


def _main_dendrites(model):
    layers = [lay for _, lay in pb_core.dendritic_layers(model)]
    return layers[0].num_dendrites if layers else 0


def scripted_run(variant, vals, tests=None, model=None, **kw):
    model = model or Tiny()
    script = Script(vals, tests)
    kw.setdefault("optimizer_factory", lambda p: torch.optim.SGD(p, lr=0.1))
    ctl = CycleController(model, variant, **kw)
    script.ctl = ctl
    summary = ctl.fit(script.train_epoch, script.evaluate)
    return ctl, script, summary, model


def phases(ctl):
    return "".join("N" if r["phase"] == "neuron" else "D" for r in ctl.state.rows)


def final_bias(model):
    return _main(model.fc2).bias[0].item()


# ---------------------------------------------------------------------------------------------- patience
PATIENCE_CASES = [
    # policy, mode, val sequence, epochs in the cycle, best epoch
    (dict(patience=3), "max", [1, 2, 3, 3, 3, 3, 9, 9], 6, 2),  # ties neither reset patience nor win
    (dict(patience=2, rel_threshold=0.1), "max", [1.0, 1.05, 1.2, 1.25, 1.3, 5], 5, 4),
    (dict(patience=2, rel_threshold=0.0, abs_threshold=0.5), "max", [0, 0.4, 0.8, 1.0, 1.2, 9], 5, 4),
    (dict(patience=2, rel_threshold=0.1), "min", [10, 9.5, 8, 7.5, 7.3, 0], 5, 4),
    (dict(patience=1, rel_threshold=0.1, abs_threshold=0.3), "max", [1, 1.25, 9], 2, 1),  # abs margin wins
    (dict(patience=1, rel_threshold=0.1, abs_threshold=0.3), "max", [10, 10.5, 99], 2, 1),  # rel margin wins
    (dict(patience=1, rel_threshold=0.1, abs_threshold=0.3), "max", [10, 11.5, 11.6, 99], 3, 2),
    (dict(patience=10, max_epochs=3), "max", [1, 2, 3, 4, 5], 3, 2),
    (dict(patience=2, fixed_epochs=4), "max", [5, 1, 1, 1, 1, 9], 4, 0),
]


@pytest.mark.parametrize("policy,mode,vals,epochs,best", PATIENCE_CASES)
def test_neuron_cycle_switch_epoch_and_best_reload(policy, mode, vals, epochs, best):
    ctl, script, summary, model = scripted_run("baseline", vals, neuron_switch=SwitchPolicy(**policy), mode=mode)
    assert summary["epochs"] == epochs and phases(ctl) == "N" * epochs
    assert ctl.state.cycle_rows == [{"cycle": 0, "phase": "neuron", "dendrites": 0, "params": 17, "epochs": epochs,
                                     "best_epoch": best, "val": vals[best], "test": -vals[best]}]
    assert final_bias(model) == best  # the best epoch's weights were reloaded
    assert summary["stopped_because"] == "baseline finished"


def test_phase_switches_and_reload_across_cycles():
    vals = [1.0, 1.05, 1.2, 1.25, 1.3,  # neuron cycle 0: ends after epoch 4, best epoch 4
            1.4, 1.35, 1.5]             # neuron cycle 2 (epochs 7-9): ends after 9; best 9 though no reset
    ctl, script, summary, model = scripted_run(
        "pb", vals, neuron_switch=SwitchPolicy(patience=2, rel_threshold=0.1),
        dendrite_switch=SwitchPolicy(fixed_epochs=2), max_dendrites=1)
    assert phases(ctl) == "NNNNNDDNNN"
    assert [r["cycle"] for r in ctl.state.rows] == [0] * 5 + [1] * 2 + [2] * 3
    assert [r["dendrites"] for r in ctl.state.rows] == [0] * 7 + [1] * 3
    # The dendrite phase and the next neuron cycle start from epoch 4's weights, not epoch 4's successors.
    assert [e["start"] for e in script.log[5:8]] == [4.0, 4.0, 4.0]
    assert [(c["phase"], c["epochs"], c["best_epoch"], c["val"]) for c in ctl.state.cycle_rows] == [
        ("neuron", 5, 4, 1.3), ("dendrite", 2, 4, 1.3), ("neuron", 3, 9, 1.5)]
    assert summary["stopped_because"] == "max_dendrites reached"
    assert final_bias(model) == 9 and all(lay.num_dendrites == 1 for lay in ctl.layers.values())
    # A fresh optimizer at every switch, the same one within a cycle.
    opts = script.optimizers
    assert opts[0] is opts[4] and opts[5] is opts[6] and opts[7] is opts[9]
    assert opts[4] is not opts[5] and opts[6] is not opts[7]


def test_dendrite_phase_patience_counts_improving_neurons(monkeypatch):
    improved = iter([3, 0, 1, 0, 0, 7, 7])
    calls = []

    def fake_end_epoch(self, rel_threshold=0.0, abs_threshold=0.0, noise_z=None):
        calls.append((rel_threshold, abs_threshold))
        self.stats.reset_epoch()
        return {"correlation": 0.5, "improved": next(improved) if self.layer_name == "fc1" else 0}

    monkeypatch.setattr(DendriticLayer, "end_candidate_epoch", fake_end_epoch)
    ctl, script, summary, model = scripted_run(
        "pb", [1, 2, 3, 4], neuron_switch=SwitchPolicy(fixed_epochs=2),
        dendrite_switch=SwitchPolicy(patience=2, rel_threshold=0.25, abs_threshold=0.125), max_dendrites=1)
    assert phases(ctl) == "NN" + "D" * 5 + "NN"
    assert set(calls) == {(0.25, 0.125)}
    assert [r["correlation"] for r in ctl.state.rows if r["phase"] == "dendrite"] == [0.5] * 5


def test_dendrite_phase_patience_on_layer_mean_correlation(monkeypatch):
    # fc1's epoch mean |r| improves by more than 10% twice, then only by noise-sized steps; fc2 never
    # improves after its first epoch. Every epoch some neuron "improves", which "layer" ignores.
    means = {"fc1": iter([0.10, 0.20, 0.21, 0.30, 0.31, 0.32, 0.325, 9.0]), "fc2": iter([0.5] * 8)}

    def fake_end_epoch(self, rel_threshold=0.0, abs_threshold=0.0, noise_z=None):
        self.stats.reset_epoch()
        return {"correlation": next(means[self.layer_name]), "improved": 5, "noise": 0.0, "neurons": 3}

    monkeypatch.setattr(DendriticLayer, "end_candidate_epoch", fake_end_epoch)
    ctl, script, summary, model = scripted_run(
        "pb", [1, 2, 3, 4], neuron_switch=SwitchPolicy(fixed_epochs=2),
        dendrite_switch=SwitchPolicy(patience=2, rel_threshold=0.1), max_dendrites=1,
        dendrite_improvement="layer")
    # progress at dendrite epochs 0 (first), 1 (0.2 > 0.11), 3 (0.30 > 0.22); none at 4, 5: ends after 5
    assert phases(ctl) == "NN" + "D" * 6 + "NN"
    assert [r["correlation"] for r in ctl.state.rows if r["phase"] == "dendrite"] == pytest.approx(
        [0.3, 0.35, 0.355, 0.4, 0.405, 0.41])
    with pytest.raises(ValueError, match="dendrite_improvement"):
        CycleController(Tiny(), "pb", optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1),
                        dendrite_improvement="epoch")


def test_cap_dendrite_phase_at_first_neuron_phase_length(monkeypatch):
    monkeypatch.setattr(DendriticLayer, "end_candidate_epoch",
                        lambda self, *args: {"correlation": 0.1, "improved": 1})
    ctl, _, _, _ = scripted_run("pb", [1, 2, 2, 3, 3], neuron_switch=SwitchPolicy(patience=1),
                                dendrite_switch=SwitchPolicy(patience=50, max_epochs=6), cap_dendrite_phase=True, max_dendrites=1)
    assert phases(ctl) == "NNN" + "DDD" + "NN"


def test_stops_when_neuron_cycle_does_not_improve_and_returns_best_model(tmp_path):
    for second_cycle in ([1.5, 1.9], [2.0, 1.0]):  # lower, and a tie with the previous best
        ctl, script, summary, model = scripted_run(
            "pb", [1, 2] + second_cycle, neuron_switch=SwitchPolicy(fixed_epochs=2),
            dendrite_switch=SwitchPolicy(fixed_epochs=1), out_dir=tmp_path / str(second_cycle[0]))
        assert phases(ctl) == "NNDNN"
        assert summary["stopped_because"] == "neuron cycle did not improve validation"
        # The last dendrite lost: the result is the first cycle's best network, without dendrites.
        assert final_bias(model) == 1.0
        assert all(lay.num_dendrites == 0 and lay.num_candidates == 0 for lay in ctl.layers.values())
        assert summary["final_dendrites"] == 0 and summary["dendrites_added"] == 1
        assert summary["params_final"] == summary["params_original"] == count_parameters(model) == 17
        # model.pt holds exactly that network.
        fresh = pb_core.load_model_state(Tiny(), tmp_path / str(second_cycle[0]) / "model.pt", "pb")
        assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))


def test_stops_at_max_dendrites():
    ctl, _, summary, model = scripted_run("pb", range(1, 20), neuron_switch=SwitchPolicy(fixed_epochs=2),
                                          dendrite_switch=SwitchPolicy(fixed_epochs=1), max_dendrites=2)
    assert phases(ctl) == "NNDNNDNN"
    assert summary["stopped_because"] == "max_dendrites reached" and summary["final_dendrites"] == 2
    assert all(lay.num_dendrites == 2 for lay in ctl.layers.values()) and final_bias(model) == 7
    ctl, _, summary, _ = scripted_run("pb", range(1, 20), neuron_switch=SwitchPolicy(fixed_epochs=2), max_dendrites=0)
    assert phases(ctl) == "NN" and summary["stopped_because"] == "max_dendrites reached"


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5])
def test_max_total_epochs_is_an_exact_cap(limit):
    """Limits landing mid neuron cycle (1, 5), at a neuron->dendrite switch (2), mid dendrite phase (3) and at
    a dendrite->neuron switch (4): exactly `limit` epochs run and the best network so far is returned."""
    ctl, _, summary, model = scripted_run("pb", range(1, 20), neuron_switch=SwitchPolicy(fixed_epochs=2),
                                          dendrite_switch=SwitchPolicy(fixed_epochs=2), max_total_epochs=limit)
    assert phases(ctl) == "NNDDNNDD"[:limit] and summary["epochs"] == limit
    assert summary["stopped_because"] == "max_total_epochs reached"
    best = max(i for i, p in enumerate("NNDDNNDD"[:limit]) if p == "N")
    assert final_bias(model) == best
    expected_dendrites = 1 if best >= 4 else 0
    assert all(lay.num_dendrites == expected_dendrites and lay.num_candidates == 0 for lay in ctl.layers.values())


def test_fixed_length_cycles_ignore_scores():
    vals = [1, 1, 1, 2, 2, 2, 3, 1, 1]
    ctl, script, summary, model = scripted_run(
        "pb", vals, neuron_switch=SwitchPolicy(patience=1, fixed_epochs=3),
        dendrite_switch=SwitchPolicy(fixed_epochs=2), max_dendrites=2)
    assert phases(ctl) == "NNN" + "DD" + "NNN" + "DD" + "NNN"
    assert [c["best_epoch"] for c in ctl.state.cycle_rows] == [0, 0, 5, 5, 10]  # earliest on ties
    assert final_bias(model) == 10


def test_baseline_cycles_compute_matched_control():
    vals = [1, 3, 2, 2.5, 2.9, 5, 1, 1, 1]
    ctl, script, summary, model = scripted_run(
        "baseline", vals, baseline_cycles=[3, 2, 4], neuron_switch=SwitchPolicy(patience=1),
        scheduler_factory=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
    assert [c["epochs"] for c in ctl.state.cycle_rows] == [3, 2, 4] and phases(ctl) == "N" * 9
    assert summary["stopped_because"] == "matched schedule finished"
    # Each cycle starts from the previous cycle's best weights (even one that did not improve) ...
    assert [script.log[i]["start"] for i in (3, 5)] == [1.0, 4.0]
    # ... with a fresh optimizer and scheduler.
    assert [r["lr"] for r in ctl.state.rows] == [0.1, 0.05, 0.025, 0.1, 0.05, 0.1, 0.05, 0.025, 0.0125]
    opts = script.optimizers
    assert opts[2] is not opts[3] and opts[4] is not opts[5] and opts[3] is opts[4]
    assert final_bias(model) == 5 and summary["max"]["epoch"] == 5 and summary["original"]["epoch"] == 1


# ---------------------------------------------------------------------------------------------- summary (SPEC 2)
def test_summary_original_and_max_follow_spec(tmp_path):
    vals = [0.5, 0.7, 0.6, 0.65, 0.8, 0.75, 0.85, 0.9, 0.88]
    tests = [0.9, 0.4, 0.95, 0.99, 0.55, 0.1, 0.2, 0.61, 0.98]
    ctl, _, summary, _ = scripted_run("pb", vals, tests, neuron_switch=SwitchPolicy(fixed_epochs=3),
                                      dendrite_switch=SwitchPolicy(fixed_epochs=1), max_dendrites=2,
                                      out_dir=tmp_path)
    assert phases(ctl) == "NNNDNNNDNNN"
    # original: first neuron cycle's best validation epoch (epoch 1) and ITS test score
    assert summary["original"] == {"epoch": 1, "cycle": 0, "dendrites": 0, "params": 17, "train": 0.7,
                                   "val": 0.7, "test": 0.4}
    # max: the test score at the epoch of the highest validation score of the whole run (epoch 9)
    p2 = summary["max"]["params"]
    assert summary["max"] == {"epoch": 9, "cycle": 4, "dendrites": 2, "params": p2, "train": 0.9, "val": 0.9,
                              "test": 0.61}
    # Tiny has fc1 (9 params, 3 neurons) and fc2 (8 params, 2 neurons): 17; each dendrite adds a copy plus an
    # output weight per neuron (12 + 10), the second dendrite one cascade weight per neuron (3 + 2).
    assert p2 == 17 + 2 * ((9 + 3) + (8 + 2)) + (3 + 2)
    assert summary["final_dendrites"] == 2 and summary["params_final"] == p2
    # Covariance dendrite epochs repeat the reloaded best (val and its test).
    assert [(r["val"], r["test"]) for r in ctl.state.rows if r["phase"] == "dendrite"] == [(0.7, 0.4), (0.8, 0.55)]
    assert [(c["best_epoch"], c["val"], c["test"]) for c in ctl.state.cycle_rows] == [
        (1, 0.7, 0.4), (1, 0.7, 0.4), (5, 0.8, 0.55), (5, 0.8, 0.55), (9, 0.9, 0.61)]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["original"]["test"] == 0.4 and saved["max"]["test"] == 0.61
    rows = list(csv.DictReader(open(tmp_path / "cycles.csv")))
    assert [(r["best_epoch"], float(r["test"])) for r in rows][-1] == ("9", 0.61)
    # mode="min": lowest validation wins
    rows_min = [dict(epoch=i, cycle=c, dendrites=0, params=1, train=0, val=v, test=t)
                for i, (c, v, t) in enumerate([(0, 3, 1), (0, 2, 2), (1, 2.5, 3), (1, 1, 4), (1, 1, 5)])]
    s = pb_core.summarize(rows_min, "min")
    assert (s["original"]["epoch"], s["original"]["test"], s["max"]["epoch"], s["max"]["test"]) == (1, 2, 3, 4)


# ---------------------------------------------------------------------------------------------- dendrite phase freezes
class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _data(n=64, d=4, classes=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long() + (x[:, 2] > 1).long() * (classes - 2)
    return x, y


def _network_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if torch.is_tensor(v) and "candidate" not in k}


def test_dendrite_phase_changes_no_network_parameter_or_buffer():
    x, y = _data()
    model = BNNet()
    log = []
    ctl = CycleController(model, "pb", optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.05), candidates=2,
                          neuron_switch=SwitchPolicy(fixed_epochs=2), dendrite_switch=SwitchPolicy(fixed_epochs=3),
                          max_dendrites=1)

    def eval_out(m):
        was = m.training
        m.eval()
        with torch.no_grad():
            out = m(x)
        m.train(was)
        return out

    def train_epoch(m, opt):
        m.zero_grad(set_to_none=True)
        before, out_before = _network_state(m), eval_out(m)
        cands = {k: v.detach().clone() for k, v in m.named_parameters() if k.split(".")[1].startswith("candidate_w")}
        for batch in torch.arange(64).split(16):
            opt.zero_grad()
            loss = F.cross_entropy(m(x[batch]), y[batch])
            loss.backward()
            opt.step()
        after = _network_state(m)
        log.append({"phase": ctl.state.phase, "dendrites": _main_dendrites(m), "out_before": out_before,
                    "unchanged": [k for k in before if torch.equal(before[k], after[k])], "all": list(before),
                    "grads": [k for k, p in m.named_parameters() if p.grad is not None and "candidate" not in k],
                    "cands_changed": [k for k, v in cands.items() if not torch.equal(v, dict(m.named_parameters())[k])],
                    "cands": list(cands)})
        return loss.item()

    evals = iter(range(100))
    summary = ctl.fit(train_epoch, lambda m: Scores(0, next(evals), 0))
    assert [e["phase"] for e in log] == ["neuron"] * 2 + ["dendrite"] * 3 + ["neuron"] * 2
    for e in log[2:5]:
        assert e["unchanged"] == e["all"]  # weights, dendrites, BN running stats and num_batches_tracked
        assert any("running_mean" in k for k in e["all"]) and any("num_batches_tracked" in k for k in e["all"])
        assert e["grads"] == []  # the network is not even given gradients
        assert e["cands_changed"] == e["cands"] and len(e["cands"]) == 4
    # In a neuron epoch the same check sees the BN statistics move (so the check above can fail).
    assert "bn.running_mean" not in log[0]["unchanged"] and "bn.num_batches_tracked" not in log[0]["unchanged"]
    # Across the whole dendrite phase and the commit, the function is unchanged (u = 0).
    assert torch.allclose(log[5]["out_before"], log[2]["out_before"], atol=1e-6)
    assert log[5]["dendrites"] == 1
    assert all(r["correlation"] is not None and 0 < r["correlation"] <= 1 for r in ctl.state.rows
               if r["phase"] == "dendrite")


# ---------------------------------------------------------------------------------------------- variants' phases
class MLP3(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _category(name):
    layer, _, rest = name.partition(".")
    for prefix, cat in (("main.", "net"), ("dendrite_weights.", "V"), ("dendrite_cascade", "c"),
                        ("dendrite_out", "u"), ("candidate_weights.", "cand_V"), ("candidate_cascade", "cand_c"),
                        ("candidate_out", "cand_u")):
        if rest.startswith(prefix):
            return layer, cat
    return layer, "net"


WRAPPED = {"pb": "123", "pb_head": "3", "pb_backbone": "12", "cc_no_perforation": "123", "gd_dendrites": "123",
           "gd_joint": "123", "baseline": ""}


def _expected(variant, phase, k):
    out = {(f"fc{i}", "net") for i in "123"} if phase == "neuron" else set()
    for i in WRAPPED[variant]:
        layer = f"fc{i}"
        if phase == "neuron" and k:
            out.add((layer, "u"))
            if variant == "gd_joint":
                out |= {(layer, "V"), (layer, "c")}
        if phase == "dendrite":
            out.add((layer, "cand_V"))
            if k:
                out.add((layer, "cand_c"))
            if variant == "gd_dendrites":
                out.add((layer, "cand_u"))
    return out


@pytest.mark.parametrize("variant", sorted(WRAPPED))
def test_variant_trains_the_right_parameters_in_each_phase(variant):
    x, y = _data(32)
    model = MLP3()
    log = []
    ctl = CycleController(model, variant, optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.2), candidates=1,
                          neuron_switch=SwitchPolicy(fixed_epochs=1), dendrite_switch=SwitchPolicy(fixed_epochs=1),
                          max_dendrites=2)
    v = pb_core.get_variant(variant)

    def train_epoch(m, opt):
        named = dict(m.named_parameters())
        before = {k: p.detach().clone() for k, p in named.items()}
        trainable = {k for k, p in named.items() if p.requires_grad and p.numel()}
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        assert in_opt == {id(named[k]) for k, p in named.items() if p.requires_grad}
        for _ in range(2):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        changed = {k for k, p in named.items() if p.numel() and not torch.equal(before[k], p.detach())}
        layers = dict(pb_core.dendritic_layers(m))
        log.append({"phase": ctl.state.phase, "k": _main_dendrites(m),
                    "trainable": {_category(k) for k in trainable}, "changed": {_category(k) for k in changed},
                    "perforated": {lay.perforated for lay in layers.values()},
                    "cand_out": {lay.candidate_out.numel() for lay in layers.values() if lay.num_candidates},
                    "stats": {lay.stats is None for lay in layers.values() if lay.num_candidates}})
        return loss.item()

    evals = iter(range(100))
    ctl.fit(train_epoch, lambda m: Scores(0, next(evals), 0))
    seq = [(e["phase"], e["k"]) for e in log]
    if variant == "baseline":
        assert seq == [("neuron", 0)]
    elif variant == "gd_joint":
        assert seq == [("neuron", 0), ("neuron", 1), ("neuron", 2)]  # no dendrite phase
    else:
        assert seq == [("neuron", 0), ("dendrite", 0), ("neuron", 1), ("dendrite", 1), ("neuron", 2)]
    for e in log:
        expected = _expected(variant, e["phase"], e["k"])
        assert e["trainable"] == expected, e
        # everything trainable moves in two steps, except gd_joint's cascade with one dendrite: its only
        # entry is the unused structural zero
        moved = expected - ({(f"fc{i}", "c") for i in "123"} if variant == "gd_joint" and e["k"] == 1 else set())
        assert e["changed"] == moved, e
        if WRAPPED[variant]:
            assert e["perforated"] == {v.perforated}
        if e["phase"] == "dendrite" and variant != "gd_dendrites":
            assert e["cand_out"] == {0} and e["stats"] == {False}  # covariance candidates: no output weight
        if e["phase"] == "dendrite" and variant == "gd_dendrites":
            assert e["cand_out"] == {8, 3} and e["stats"] == {True}  # one output weight per neuron, no stats
    for _, lay in pb_core.dendritic_layers(model):  # the unused cascade entries stay zero
        assert torch.equal(torch.triu(lay.dendrite_cascade.permute(2, 0, 1)),
                           torch.zeros_like(lay.dendrite_cascade.permute(2, 0, 1)))
    assert v.perforated == (variant not in ("cc_no_perforation", "gd_joint"))


def test_gd_dendrites_candidates_feed_the_output_and_best_epoch_is_committed():
    x, y = _data(48)
    xv = x + 0.1
    model = MLP3()
    dendrite_vals = iter([0.1, 0.5, 0.2])  # the middle dendrite epoch is the best
    outs = {}

    def evaluate(m):
        out = m(xv)
        if ctl.state.phase == "dendrite":
            outs.setdefault("dendrite", []).append(out)
            return Scores(0, next(dendrite_vals), 0)
        outs.setdefault("neuron", []).append(out)
        return Scores(0, -0.001 * len(outs["neuron"]) + (10 if _main_dendrites(m) else 0), 0)

    def train_epoch(m, opt):
        if ctl.state.phase == "neuron" and _main_dendrites(m) == 1 and "start" not in outs:
            m.eval()
            with torch.no_grad():
                outs["start"] = m(xv)
            m.train()
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        return loss.item()

    ctl = CycleController(model, "gd_dendrites", optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.05),
                          neuron_switch=SwitchPolicy(fixed_epochs=1), dendrite_switch=SwitchPolicy(fixed_epochs=3),
                          max_dendrites=1)
    ctl.fit(train_epoch, evaluate)
    assert phases(ctl) == "NDDDN"
    frozen_net = outs["neuron"][0]
    # In the dendrite phase the candidates (with their output weights) are part of the evaluated network.
    assert all((o - frozen_net).abs().max() > 1e-4 for o in outs["dendrite"])
    # The committed dendrite is the candidate as it was at the best validation epoch of the phase.
    assert torch.allclose(outs["start"], outs["dendrite"][1], atol=1e-5)
    assert (outs["start"] - outs["dendrite"][2]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------- conv and recurrent cycles
class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3), nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.fc = nn.GRU(3, 5, batch_first=True), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.gru(x)[0][:, -1])


class CellNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell, self.fc = nn.GRUCell(3, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = None
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.fc(h)


@pytest.mark.parametrize("make,shape,layers", [
    (ConvNet, (16, 1, 6, 6), {"conv1": 3, "conv2": 4, "fc": 3}),
    (GRUNet, (16, 4, 3), {"gru": 5, "fc": 3}),
    (CellNet, (16, 4, 3), {"cell": 5, "fc": 3}),
], ids=["conv", "gru", "grucell"])
def test_full_cycles_on_conv_and_recurrent_models(make, shape, layers):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g)
    y = torch.randint(0, 3, (shape[0],), generator=g)
    model = make()
    ctl = CycleController(model, "pb", optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.02), candidates=2,
                          neuron_switch=SwitchPolicy(fixed_epochs=2), dendrite_switch=SwitchPolicy(fixed_epochs=2),
                          max_dendrites=2)

    def train_epoch(m, opt):
        for batch in torch.arange(shape[0]).split(8):
            opt.zero_grad()
            loss = F.cross_entropy(m(x[batch]), y[batch])
            loss.backward()
            opt.step()
        return loss.item()

    evals = iter(range(100))
    summary = ctl.fit(train_epoch, lambda m: Scores(0, next(evals), 0))
    assert phases(ctl) == "NNDDNNDDNN"
    assert [r["dendrites"] for r in ctl.state.rows] == [0] * 4 + [1] * 4 + [2] * 2
    assert {name: lay.num_neurons for name, lay in ctl.layers.items()} == layers
    for name, lay in ctl.layers.items():
        assert lay.num_dendrites == 2 and lay.dendrite_out.shape == (2, layers[name])
        assert lay.dendrite_out.abs().sum() > 0  # the output weights trained in the neuron cycles
    params = [r["params"] for r in ctl.state.rows]
    assert params[0] < params[4] < params[8] == count_parameters(model) == summary["params_final"]
    corr = ctl.state.correlation_rows
    assert len(corr) == 2 * 2 * len(layers) and all(0 < r["correlation"] <= 1 for r in corr)
    assert model(x).shape == (shape[0], 3)


# ---------------------------------------------------------------------------------------------- XOR
XOR_X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = torch.tensor([[0.0], [1.0], [1.0], [0.0]])


class Neuron(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x):
        return self.fc(x)


def _xor_train(model, opt):
    for _ in range(25):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(XOR_X), XOR_Y)
        loss.backward()
        opt.step()
    return loss.item()


def _xor_accuracy(model):
    return ((model(XOR_X) > 0).float() == XOR_Y).float().mean().item()


def _xor_eval(model):
    acc = _xor_accuracy(model)
    return Scores(acc, -F.binary_cross_entropy_with_logits(model(XOR_X), XOR_Y).item(), acc)


@pytest.mark.parametrize("variant", ["baseline", "pb"])
def test_xor_single_neuron_needs_dendrites(variant):
    model = Neuron()
    ctl = CycleController(model, variant, optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.1), candidates=4,
                          neuron_switch=SwitchPolicy(patience=3, rel_threshold=1e-2, max_epochs=40),
                          dendrite_switch=SwitchPolicy(patience=3, rel_threshold=1e-2, max_epochs=20),
                          max_dendrites=2)
    summary = ctl.fit(_xor_train, _xor_eval)
    model.eval()
    with torch.no_grad():
        acc = _xor_accuracy(model)
    assert summary["original"]["test"] <= 0.75  # a linear neuron cannot separate XOR
    if variant == "baseline":
        assert acc <= 0.75 and summary["final_dendrites"] == 0
    else:
        assert acc == 1.0 and summary["max"]["test"] == 1.0
        assert summary["final_dendrites"] >= 1 and model.fc.num_dendrites == summary["final_dendrites"]


# ---------------------------------------------------------------------------------------------- resume
def _resume_run(out_dir, interrupt_at=None, seed=0, candidates=2):
    x, y = _data(96, seed=11)
    xv, yv = _data(48, seed=12)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    torch.manual_seed(seed)
    model = DropNet()
    ctl = CycleController(model, "pb", optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.02),
                          scheduler_factory=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.7),
                          neuron_switch=SwitchPolicy(patience=2, max_epochs=5),
                          dendrite_switch=SwitchPolicy(patience=2, max_epochs=3),
                          candidates=candidates, max_dendrites=2, out_dir=out_dir)

    train_epoch = interruptible_epoch(ctl, loader, interrupt_at)

    def evaluate(m):
        out = m(xv)
        acc = (out.argmax(1) == yv).float().mean().item()
        # The dendrite count keeps every cycle improving, so the run goes through two dendrite phases.
        return Scores(acc, -F.cross_entropy(out, yv).item() + _main_dendrites(m), acc)

    return ctl, model, train_epoch, evaluate


def _read(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    # Module fixtures run before conftest's per-test one: match its thread count (float sums depend on it).
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    ctl, model, train_epoch, evaluate = _resume_run(out)
    ctl.fit(train_epoch, evaluate)
    return out, {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}, ctl.state.rows


@pytest.mark.parametrize("phase", ["neuron", "dendrite"])
def test_resume_after_interruption_is_identical(tmp_path, reference_run, phase):
    ref_dir, ref_state, ref_rows = reference_run
    assert sum(r["phase"] == "dendrite" for r in ref_rows) >= 4  # two dendrite phases of >= 2 epochs
    assert ref_rows[-1]["dendrites"] == 2
    # mid-cycle: the second epoch of the first dendrite phase, or the second epoch of the neuron cycle after it
    first_dendrite = next(r["epoch"] for r in ref_rows if r["phase"] == "dendrite")
    if phase == "dendrite":
        stop = first_dendrite + 1
    else:
        stop = next(r["epoch"] for r in ref_rows if r["phase"] == "neuron" and r["dendrites"] == 1) + 1
    assert ref_rows[stop]["phase"] == phase and ref_rows[stop - 1]["phase"] == phase

    ctl, model, train_epoch, evaluate = _resume_run(tmp_path, interrupt_at=stop)
    with pytest.raises(KeyboardInterrupt):
        ctl.fit(train_epoch, evaluate)
    assert len(_read(tmp_path / "epochs.csv")) == stop
    # A fresh process would start from other random numbers: seed differently, build everything anew.
    torch.manual_seed(1234)
    ctl, model, train_epoch, evaluate = _resume_run(tmp_path, seed=1234)
    ctl.fit(train_epoch, evaluate)
    for name in ("epochs.csv", "cycles.csv", "correlations.csv"):
        assert _read(tmp_path / name) == _read(ref_dir / name), name
    state = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    assert state.keys() == ref_state.keys()
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (tmp_path, ref_dir))
    s1.pop("seconds"), s2.pop("seconds")
    assert s1 == s2
    # Resuming a finished run trains nothing (train_epoch would raise at epoch 0) and gives the final network.
    ctl, model, train_epoch, evaluate = _resume_run(tmp_path, interrupt_at=0, seed=99)
    again = ctl.fit(train_epoch, evaluate)
    again.pop("seconds")
    assert again == s1
    assert all(torch.equal(v, ref_state[k]) for k, v in model.state_dict().items() if torch.is_tensor(v))


def test_resume_with_other_settings_raises(tmp_path):
    ctl, model, train_epoch, evaluate = _resume_run(tmp_path, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        ctl.fit(train_epoch, evaluate)
    ctl, model, train_epoch, evaluate = _resume_run(tmp_path, candidates=3)
    with pytest.raises(RuntimeError, match=r"other settings.*'candidates': \(2, 3\)"):
        ctl.fit(train_epoch, evaluate)
    # resume=False starts afresh in the same folder
    ctl.max_total_epochs = 1
    assert ctl.fit(train_epoch, evaluate, resume=False)["epochs"] == 1


# ---------------------------------------------------------------------------------------------- stage()
@pytest.mark.parametrize("variant", ["pb", "gd_joint"])
def test_stage_gives_the_shapes_and_flags_of_a_later_cycle(variant):
    torch.manual_seed(0)
    model = Tiny()
    ctl = CycleController(model, variant, optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1), candidates=3)
    x = torch.randn(5, 2)
    before = model(x).detach()
    ctl.stage(2, "neuron", output_weights=None)
    # u = 0: two dendrites on every wrapped layer and the network's function unchanged
    assert all(layer.num_dendrites == 2 and layer.num_candidates == 0 for layer in ctl.layers.values())
    torch.testing.assert_close(model(x), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("main" in n for n in trainable)  # neuron phase: the network trains

    if variant == "gd_joint":  # dendrites train with the network: there is no dendrite phase to stage
        with pytest.raises(ValueError, match="no dendrite phase"):
            ctl.stage(0, "dendrite")
        return
    staged = CycleController(Tiny(), variant, optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1), candidates=3)
    staged.stage(1, "dendrite")
    for layer in staged.layers.values():
        assert layer.num_dendrites == 1 and layer.num_candidates == 3
        assert bool((layer.dendrite_out != 0).all())  # non-zero u: no dendrite term is trivially zero
    trainable = [p for p in staged.model.parameters() if p.requires_grad]
    candidates = [p for layer in staged.layers.values() for p in layer.candidate_parameters()]
    assert {id(p) for p in trainable} == {id(p) for p in candidates}  # dendrite phase: only candidates train
    assert {id(p) for g in staged.optimizer.param_groups for p in g["params"]} == {id(p) for p in candidates}
    with pytest.raises(ValueError, match="phase"):
        staged.stage(0, "baseline")


def test_max_dendrite_epochs_from_the_config_ends_dendrite_phases_and_is_counted(monkeypatch, tmp_path):
    from experiments import aggregate, config as cfgmod

    # Candidates that improve every epoch: only the cap can end the dendrite phase.
    monkeypatch.setattr(DendriticLayer, "end_candidate_epoch",
                        lambda self, *args: {"correlation": 0.1, "improved": 1})
    pb = {"neuron_patience": 1, "dendrite_patience": 50, "max_dendrite_epochs": 3, "max_dendrites": 1,
          "rel_threshold": 0.0, "abs_threshold": 0.0}
    settings = cfgmod.pb_settings(pb)
    assert settings.phase_end.neuron.max_epochs is None and settings.phase_end.dendrite.max_epochs == 3
    assert cfgmod.pb_settings({**pb, "max_cycle_epochs": 2}).phase_end.dendrite.max_epochs == 2
    assert cfgmod.pb_settings({"neuron_patience": 4, "max_dendrite_epochs": 3}).phase_end.dendrite == \
        SwitchPolicy(patience=4, max_epochs=3, rel_threshold=0.0)  # no dendrite rule of its own: the neuron one's
    ctl, _, summary, _ = scripted_run("pb", [1, 2, 2, 3, 4, 4, 4], out_dir=tmp_path, **settings.keywords())
    assert phases(ctl) == "NNN" + "DDD" + "NNN"  # the neuron cycles still end by their patience
    (tmp_path / "config.json").write_text(json.dumps({"pb": pb}))
    assert aggregate.cycles_at_cap(tmp_path, summary["stopped_because"]) == (0, 1)
