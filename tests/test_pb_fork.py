"""A shared first cycle: every variant that starts from it ends exactly as if it had trained the cycle itself.

The network has dropout (the global RNG matters), batch norm (buffers), a step scheduler and Adam, so a
fork that missed the RNG state, a buffer or the end-of-cycle decision would show in the records.
"""
import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from pb_core import VARIANTS, CycleController, SwitchPolicy

from nets import DropNet, interruptible_epoch


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] * x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def _setup(out_dir, variant, interrupt_at=None, baseline_cycles=None, seed=0, max_total_epochs=None):
    x, y = _data(96, seed=11)
    xv, yv = _data(48, seed=12)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    torch.manual_seed(seed)
    model = DropNet()
    ctl = CycleController(model, variant, optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.02),
                          scheduler_factory=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.7),
                          neuron_switch=SwitchPolicy(patience=2, max_epochs=5),
                          dendrite_switch=SwitchPolicy(patience=2, max_epochs=3), max_dendrites=2,
                          stop_on_no_improvement=False, baseline_cycles=baseline_cycles,
                          max_total_epochs=max_total_epochs, out_dir=out_dir)

    train_epoch = interruptible_epoch(ctl, loader, interrupt_at)

    def evaluate(m):
        out = m(xv)
        acc = (out.argmax(1) == yv).float().mean().item()
        return acc, -F.cross_entropy(out, yv).item(), acc

    return ctl, model, train_epoch, evaluate


def _records(folder):
    out = {}
    for name in ("epochs.csv", "cycles.csv", "correlations.csv"):
        with open(folder / name) as f:
            out[name] = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("seconds")
    return out, summary


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def _first_cycle(folder, seed=0, interrupt_at=None, **kw):
    ctl, _, train_epoch, evaluate = _setup(folder, "baseline", interrupt_at=interrupt_at, seed=seed, **kw)
    return ctl.fit_first_cycle(train_epoch, evaluate)


def _assert_same_run(a, b, model_a, model_b):
    ra, sa = _records(a)
    rb, sb = _records(b)
    assert ra == rb and sa == sb
    state_a, state_b = _state(model_a), _state(model_b)
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return _first_cycle(tmp_path_factory.mktemp("first"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_forked_run_equals_the_run_that_trains_its_own_first_cycle(tmp_path, shared, variant):
    ctl, model, train_epoch, evaluate = _setup(tmp_path / "own", variant)
    ctl.fit(train_epoch, evaluate)
    torch.manual_seed(777)  # another process: other random numbers until the fork sets them
    forked, forked_model, train_epoch, evaluate = _setup(tmp_path / "forked", variant, seed=5)
    trained = []
    forked.fit(lambda m, o: trained.append(forked.state.epoch) or train_epoch(m, o), evaluate, first_cycle=shared)
    first_epochs = torch.load(shared, weights_only=False)["first_cycle"]["epochs"]
    assert first_epochs >= 3 and trained == list(range(first_epochs, ctl.state.epoch))  # the cycle is not retrained
    _assert_same_run(tmp_path / "own", tmp_path / "forked", model, forked_model)
    if VARIANTS[variant].has_dendrites:
        assert ctl.state.dendrites_added >= 1


def test_a_compute_matched_control_forks_when_its_first_cycle_has_the_shared_length(tmp_path, shared):
    first_epochs = torch.load(shared, weights_only=False)["first_cycle"]["epochs"]
    cycles = [first_epochs, 3, 2]
    ctl, model, train_epoch, evaluate = _setup(tmp_path / "own", "baseline", baseline_cycles=cycles)
    ctl.fit(train_epoch, evaluate)
    forked, forked_model, train_epoch, evaluate = _setup(tmp_path / "forked", "baseline", baseline_cycles=cycles)
    forked.fit(train_epoch, evaluate, first_cycle=shared)
    _assert_same_run(tmp_path / "own", tmp_path / "forked", model, forked_model)
    # Another first-cycle length is another first cycle: refused, with the reason.
    other, _, train_epoch, evaluate = _setup(tmp_path / "other", "baseline", baseline_cycles=[first_epochs + 1])
    with pytest.raises(RuntimeError, match=f"first cycle has {first_epochs + 1} epochs, the shared one {first_epochs}"):
        other.fit(train_epoch, evaluate, first_cycle=shared)


def test_other_first_cycle_settings_are_refused(tmp_path, shared):
    ctl, _, train_epoch, evaluate = _setup(tmp_path, "pb", max_total_epochs=50)
    with pytest.raises(RuntimeError, match="max_total_epochs 50 differ"):
        ctl.fit(train_epoch, evaluate, first_cycle=shared)
    with pytest.raises(ValueError, match="dendrite-free controller"):
        _first_cycle(tmp_path / "pb-first", baseline_cycles=[3])


def test_a_first_cycle_cut_by_max_total_epochs_is_shared_too(tmp_path):
    first = _first_cycle(tmp_path / "first", max_total_epochs=2)
    assert torch.load(first, weights_only=False)["first_cycle"]["epochs"] == 2
    ctl, model, train_epoch, evaluate = _setup(tmp_path / "own", "pb", max_total_epochs=2)
    ctl.fit(train_epoch, evaluate)
    forked, forked_model, train_epoch, evaluate = _setup(tmp_path / "forked", "pb", max_total_epochs=2)
    forked.fit(train_epoch, evaluate, first_cycle=first)
    _assert_same_run(tmp_path / "own", tmp_path / "forked", model, forked_model)
    assert forked.state.stopped_because == "max_total_epochs reached"


def test_killed_during_the_first_cycle_or_after_the_fork_resumes_exactly(tmp_path, shared):
    ctl, model, train_epoch, evaluate = _setup(tmp_path / "own", "pb")
    ctl.fit(train_epoch, evaluate)
    # Killed in the second epoch of the shared cycle: the next call resumes there, to the same file.
    with pytest.raises(KeyboardInterrupt):
        _first_cycle(tmp_path / "first", interrupt_at=1)
    assert (tmp_path / "first" / "checkpoint.pt").is_file() and not (tmp_path / "first" / "first_cycle.pt").exists()
    torch.manual_seed(99)
    first = _first_cycle(tmp_path / "first", seed=99)
    assert not (tmp_path / "first" / "checkpoint.pt").exists()
    a, b = (torch.load(p, weights_only=False) for p in (first, shared))
    assert a["state"]["rows"] == b["state"]["rows"] or all(
        {k: v for k, v in r.items() if k != "seconds"} == {k: v for k, v in s.items() if k != "seconds"}
        for r, s in zip(a["state"]["rows"], b["state"]["rows"]))
    assert all(torch.equal(a["model"]["state"][k], b["model"]["state"][k]) for k in b["model"]["state"])
    assert a["rng"]["torch"].equal(b["rng"]["torch"])
    # Killed two epochs after the fork: it resumes from its own checkpoint, never from the fork again.
    stop = a["first_cycle"]["epochs"] + 2
    forked, _, train_epoch, evaluate = _setup(tmp_path / "forked", "pb", interrupt_at=stop)
    with pytest.raises(KeyboardInterrupt):
        forked.fit(train_epoch, evaluate, first_cycle=first)
    torch.manual_seed(1234)
    forked, forked_model, train_epoch, evaluate = _setup(tmp_path / "forked", "pb", seed=1234)
    trained = []
    forked.fit(lambda m, o: trained.append(forked.state.epoch) or train_epoch(m, o), evaluate, first_cycle=first)
    assert trained[0] == stop
    _assert_same_run(tmp_path / "own", tmp_path / "forked", model, forked_model)
