"""The runner's contract with a run folder: finished runs are not resume points, interrupted runs resume
exactly, bad runs fail loudly (a diverged loss, a run stuck at chance, stale prepared data), and nothing is
written before the input is checked. A tiny stand-in benchmark keeps these tests fast; the real ones run
end to end in test_pipeline.py."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from experiments import config as cfgmod
from experiments import runner
from experiments.errors import UserError
from experiments.grid import make_run, run_dir
from experiments.registry import EpochContext, Experiment, StaleCacheError

X = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]]).repeat(8, 1)
Y = (X[:, 0] != X[:, 1]).float().unsqueeze(1)


class StandIn:
    """A benchmark whose model is a two-layer MLP on XOR; its behaviour is set per test."""

    def __init__(self, diverge_at=None, stuck=False, interrupt_at=None):
        self.diverge_at, self.stuck, self.interrupt_at = diverge_at, stuck, interrupt_at
        self.phases: list[str] = []

    def build(self, settings, prepared, device):
        model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))

        def train_epoch(model, optimizer, ctx: EpochContext):
            assert isinstance(ctx, EpochContext) and ctx.network_parameters
            self.phases.append(ctx.phase)
            if self.interrupt_at is not None and ctx.epoch == self.interrupt_at:
                raise KeyboardInterrupt
            optimizer.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(model(X), Y)
            loss.backward()
            optimizer.step()
            if self.diverge_at is not None and ctx.epoch >= self.diverge_at:
                return float("nan")
            return loss.item()

        def evaluate(model):
            if self.stuck:
                return 0.5, 0.5, 0.5
            acc = ((model(X) > 0).float() == Y).float().mean().item()
            return acc, acc, acc

        return Experiment(model=model, train_epoch=train_epoch, evaluate=evaluate,
                          optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.05))


@pytest.fixture
def cfg(tmp_path):
    return cfgmod.load_config(overrides=[
        f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}",
        "benchmarks.tox21.pb.neuron_patience=2", "benchmarks.tox21.pb.dendrite_patience=2",
        "benchmarks.tox21.pb.max_dendrites=1", "benchmarks.tox21.pb.max_total_epochs=12"])


def use(monkeypatch, standin: StandIn) -> StandIn:
    monkeypatch.setattr(runner, "get_benchmark", lambda cfg, name: standin)
    return standin


def records(folder: Path) -> dict:
    return {name: pd.read_csv(folder / name).drop(columns=["seconds"], errors="ignore") for name in ("epochs.csv", "cycles.csv")}


def test_finished_run_is_not_a_resume_point_and_interrupted_run_resumes_exactly(cfg, monkeypatch):
    run = make_run(cfg, "tox21", "pb", 0)
    folder = run_dir(cfg["results_dir"], run)
    use(monkeypatch, StandIn())
    first = runner.train(cfg, run)
    reference = records(folder)
    shared = cfgmod.first_cycle_path(cfg, run)
    cycle_epochs = len(pd.read_csv(shared.parent / "epochs.csv"))
    assert 1 < cycle_epochs < first["epochs"] and first["first_cycle"] == str(shared.parent.relative_to(cfg["results_dir"]))
    # Started by hand with no shared first cycle: the command trained it first, and its log says so.
    assert "was missing: this command trained it first" in (folder / "run.log").read_text()
    assert not (folder / "checkpoint.pt").exists() and (folder / "model.pt").is_file()
    assert "dendrite" in set(pd.read_csv(folder / "epochs.csv")["phase"])
    # Finished with the same settings: nothing to do (no training epoch runs).
    standin = use(monkeypatch, StandIn())
    assert runner.train(cfg, run) == first and standin.phases == []
    # summary.json deleted (what `snakemake --forcerun train` does): trained again from the shared first cycle,
    # which is not trained again.
    (folder / "summary.json").unlink()
    standin = use(monkeypatch, StandIn())
    runner.train(cfg, run)
    assert len(standin.phases) == first["epochs"] - cycle_epochs
    for name, frame in records(folder).items():
        pd.testing.assert_frame_equal(frame, reference[name])
    # Interrupted two epochs after the fork (killed, walltime): the next start resumes there, same records.
    (folder / "summary.json").unlink()
    use(monkeypatch, StandIn(interrupt_at=cycle_epochs + 2))
    with pytest.raises(KeyboardInterrupt):
        runner.train(cfg, run)
    assert (folder / "checkpoint.pt").is_file() and not (folder / "summary.json").exists()
    standin = use(monkeypatch, StandIn())
    runner.train(cfg, run)
    assert len(standin.phases) == first["epochs"] - cycle_epochs - 2
    for name, frame in records(folder).items():
        pd.testing.assert_frame_equal(frame, reference[name])
    sessions = json.loads((folder / "provenance.json").read_text())["sessions"]
    assert len(sessions) == 2  # the interrupted session and the one that finished it


def test_killed_in_the_shared_first_cycle_resumes_it_and_every_variant_equals_its_unforked_run(cfg, monkeypatch):
    """Each variant of a seed starts from one first cycle, trained once; each ends with the records, scores and
    network of the same run trained on its own (share_first_cycle: false)."""
    own = cfgmod.load_config(overrides=[f"results_dir={Path(cfg['results_dir']).parent / 'own'}",
                                        "share_first_cycle=false",
                                        *(f"benchmarks.tox21.pb.{k}={v}" for k, v in cfg["benchmarks"]["tox21"]["pb"].items()
                                          if k in ("neuron_patience", "dendrite_patience", "max_dendrites", "max_total_epochs")),
                                        "benchmarks.tox21.variants=[baseline, pb, pb_head, gd_joint, baseline_matched]"])
    shared_cfg = cfgmod.deep_merge(own, {"share_first_cycle": True, "results_dir": cfg["results_dir"]})
    run = make_run(shared_cfg, "tox21", "pb", 6)
    shared = cfgmod.first_cycle_path(shared_cfg, run)
    use(monkeypatch, StandIn(interrupt_at=2))
    with pytest.raises(KeyboardInterrupt):
        runner.train_first_cycle(shared_cfg, run)
    assert (shared.parent / "checkpoint.pt").is_file() and not shared.exists()
    standin = use(monkeypatch, StandIn())
    runner.train(shared_cfg, run)  # resumes the cycle at epoch 2, then forks
    cycle_epochs = len(pd.read_csv(shared.parent / "epochs.csv"))
    assert standin.phases[:cycle_epochs - 2] == ["neuron"] * (cycle_epochs - 2) and not (shared.parent / "checkpoint.pt").exists()
    for variant in ("baseline", "pb", "pb_head", "gd_joint", "baseline_matched"):
        use(monkeypatch, StandIn())
        unforked = runner.train(own, make_run(own, "tox21", variant, 6))
        standin = use(monkeypatch, StandIn())
        forked = runner.train(shared_cfg, make_run(shared_cfg, "tox21", variant, 6))
        if variant != "pb":
            assert len(standin.phases) == forked["epochs"] - cycle_epochs  # the cycle was not trained again
        folders = [run_dir(c["results_dir"], make_run(c, "tox21", variant, 6)) for c in (own, shared_cfg)]
        for name in ("epochs.csv", "cycles.csv", "correlations.csv"):
            pd.testing.assert_frame_equal(*(pd.read_csv(f / name).drop(columns=["seconds"], errors="ignore")
                                            for f in folders), check_exact=True)
        for key in ("original", "max", "final_dendrites", "params_final", "epochs", "stopped_because"):
            assert forked[key] == unforked[key], (variant, key)
        assert unforked["first_cycle"] is None and forked["first_cycle"] == str(shared.parent.relative_to(cfg["results_dir"]))
        a, b = (torch.load(f / "model.pt", weights_only=False)["state"] for f in folders)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
                                            for k in a)
    # baseline is the first cycle and its end: its records are the cycle's.
    baseline = run_dir(cfg["results_dir"], make_run(shared_cfg, "tox21", "baseline", 6))
    pd.testing.assert_frame_equal(pd.read_csv(baseline / "epochs.csv"), pd.read_csv(shared.parent / "epochs.csv"))


def test_the_benchmark_is_told_the_phase(cfg, monkeypatch):
    standin = use(monkeypatch, StandIn())
    summary = runner.train(cfg, make_run(cfg, "tox21", "pb", 1))
    epochs = pd.read_csv(run_dir(cfg["results_dir"], make_run(cfg, "tox21", "pb", 1)) / "epochs.csv")
    assert standin.phases == list(epochs["phase"]) and summary["epochs"] == len(epochs)


def test_a_diverged_loss_stops_the_run_with_its_error_in_run_log(cfg, monkeypatch):
    run = make_run(cfg, "tox21", "pb", 2)
    folder = run_dir(cfg["results_dir"], run)
    use(monkeypatch, StandIn(diverge_at=1))
    # In the shared first cycle: the error is in that cycle's folder, and the run's folder is never made.
    with pytest.raises(runner.DivergedError, match=r"loss is nan in epoch 1 \(neuron phase, learning rate 0.05\)"):
        runner.train(cfg, run)
    shared = cfgmod.first_cycle_path(cfg, run).parent
    assert not folder.exists() and not (shared / "first_cycle.pt").exists()
    assert len(pd.read_csv(shared / "epochs.csv")) == 1  # the last finished epoch is kept
    assert "the run diverged" in (shared / "run.log").read_text()
    # After the fork: in the run's own folder.
    use(monkeypatch, StandIn())
    runner.train_first_cycle(cfg, run)
    cycle_epochs = len(pd.read_csv(shared / "epochs.csv"))
    use(monkeypatch, StandIn(diverge_at=cycle_epochs))
    with pytest.raises(runner.DivergedError, match=rf"loss is nan in epoch {cycle_epochs} \(dendrite phase"):
        runner.train(cfg, run)
    assert not (folder / "summary.json").exists()
    assert len(pd.read_csv(folder / "epochs.csv")) == cycle_epochs  # the last finished epoch is kept
    assert "the run diverged" in (folder / "run.log").read_text()


def test_a_run_stuck_at_chance_is_flagged(cfg, monkeypatch):
    use(monkeypatch, StandIn(stuck=True))
    assert runner.train(cfg, make_run(cfg, "tox21", "baseline", 0))["chance_level"] is True
    use(monkeypatch, StandIn())
    assert runner.train(cfg, make_run(cfg, "tox21", "baseline", 1))["chance_level"] is False


def test_changed_settings_start_afresh(cfg, monkeypatch):
    run = make_run(cfg, "tox21", "baseline", 3)
    use(monkeypatch, StandIn())
    runner.train(cfg, run)
    changed = cfgmod.load_config(overrides=[f"results_dir={cfg['results_dir']}",
                                            "benchmarks.tox21.pb.neuron_patience=3"])
    standin = use(monkeypatch, StandIn())
    summary = runner.train(changed, run)
    assert len(standin.phases) == summary["epochs"] > 0
    assert json.loads((run_dir(cfg["results_dir"], run) / "config.json").read_text())["pb"]["neuron_patience"] == 3


def test_baseline_matched_needs_its_reference_and_writes_nothing_without_it(cfg, monkeypatch):
    use(monkeypatch, StandIn())
    run = make_run(cfg, "tox21", "baseline_matched", 4)
    with pytest.raises(UserError, match="needs the finished pb run") as err:
        runner.train(cfg, run)
    assert "python -m experiments run tox21 --variant pb --seed 4" in str(err.value)
    assert not run_dir(cfg["results_dir"], run).exists()
    reference = runner.train(cfg, run.with_variant("pb"))
    assert runner.train(cfg, run)["epochs"] == reference["epochs"]


@pytest.fixture(scope="module")
def prepared_tox21(tmp_path_factory, real_data_dir):
    cache = tmp_path_factory.mktemp("cache")
    cfg = cfgmod.load_config(overrides=[f"data_dir={real_data_dir}", f"cache_dir={cache}", "download=false",
                                        "benchmarks.tox21.data.limit=40"])
    from experiments.pipeline import prepare

    return cfg, prepare(cfg, "tox21")


def test_a_training_job_never_writes_its_inputs_and_names_the_prepare_command(prepared_tox21, tmp_path):
    cfg, prepared = prepared_tox21
    other = cfgmod.load_config(overrides=[f"data_dir={cfg['data_dir']}", f"cache_dir={cfg['cache_dir']}",
                                          f"results_dir={tmp_path / 'results'}", "benchmarks.tox21.data.limit=50"])
    stale = cfgmod.prepared_path(other, "tox21")
    assert stale != prepared
    run = make_run(other, "tox21", "baseline", 0)
    with pytest.raises(StaleCacheError, match="does not exist.*python -m experiments prepare tox21"):
        runner.train(other, run)
    shutil.copyfile(prepared, stale)  # a cache made from other data settings, under this run's name
    before = stale.read_bytes()
    with pytest.raises(StaleCacheError, match="other data settings.*python -m experiments prepare tox21"):
        runner.train(other, run)
    assert stale.read_bytes() == before
    assert not (tmp_path / "results").exists()


def test_a_molecule_csv_with_other_columns_is_a_config_block(tmp_path, real_data_dir):
    """Columns, tasks and output size come from the data block, not from code."""
    from experiments.pipeline import prepare
    from experiments.tox21.data import TOX21, load_csv

    table = load_csv(real_data_dir / "tox21" / "tox21.csv.gz").head(30)
    custom = table.rename(columns={"smiles": "SMILES", "mol_id": "name", "NR-AR": "active", "SR-p53": "toxic"})
    (tmp_path / "data" / "mine").mkdir(parents=True)
    custom[["name", "SMILES", "active", "toxic"]].to_csv(tmp_path / "data" / "mine" / "mine.csv", index=False)
    block = json.loads(json.dumps(cfgmod.load_config()["benchmarks"]["tox21"]))
    block["data"] = {"file": "mine/mine.csv", "url": None, "md5": None, "sha256": None, "smiles_column": "SMILES",
                     "id_column": "name", "tasks": ["active", "toxic"], "limit": None}
    import yaml
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"benchmarks": {"mine": block}}))
    cfg = cfgmod.load_config([tmp_path / "mine.yaml"], [f"data_dir={tmp_path / 'data'}", f"cache_dir={tmp_path / 'c'}",
                                                        "download=false"])
    prepared = prepare(cfg, "mine")
    settings = cfgmod.run_settings(cfg, make_run(cfg, "mine", "baseline", 0))
    from experiments.tox21.benchmark import BENCHMARK

    exp = BENCHMARK.build(settings, prepared, "cpu")
    assert exp.model.out[-1].out_features == 4  # two tasks, two classes each
    graphs = torch.load(prepared, weights_only=False)["graphs"]
    assert len(graphs) == 30 and graphs[0].y.shape == (1, 2)
    assert graphs[0].y.tolist()[0] == [0.0 if math.isnan(v) else v for v in table.loc[0, ["NR-AR", "SR-p53"]]]
    assert TOX21.tasks[0] == "NR-AR"


def test_every_pb_key_reaches_pb_core(tmp_path, monkeypatch):
    """Candidate-training keys of the configuration arrive in the controller and its layers."""
    import pb_core

    made = []

    class Recording(pb_core.CycleController):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pb_core, "CycleController", Recording)
    cfg = cfgmod.load_config(overrides=[
        f"results_dir={tmp_path}", "benchmarks.tox21.pb.max_total_epochs=3", "benchmarks.tox21.pb.candidates=3",
        "benchmarks.tox21.pb.candidate_init=layer", "benchmarks.tox21.pb.candidate_init_std=0.2",
        "benchmarks.tox21.pb.candidate_objective=correlation", "benchmarks.tox21.pb.candidate_snapshot=epoch_end",
        "benchmarks.tox21.pb.candidate_selection=covariance", "benchmarks.tox21.pb.dendrite_noise_alpha=0.2",
        "benchmarks.tox21.pb.candidate_optimizer={name: sgd, lr: 0.3}", "benchmarks.tox21.pb.neuron_patience=1",
        "benchmarks.tox21.pb.stop_on_no_improvement=false", "benchmarks.tox21.pb.max_dendrites=2"])
    use(monkeypatch, StandIn())
    runner.train(cfg, make_run(cfg, "tox21", "pb", 0))
    first, ctl = made  # the shared first cycle's (dendrite-free), then the run's
    assert first.variant.name == "baseline" and not first.layers and ctl.variant.name == "pb"
    assert ctl.candidates == 3 and ctl.dendrite_noise_alpha == 0.2 and ctl.stop_on_no_improvement is False
    assert ctl.candidate_settings == {"init": "layer", "init_std": 0.2, "objective": "correlation",
                                      "snapshot": "epoch_end", "selection": "covariance"}
    optimizer = ctl.candidate_optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.3
    layer = next(iter(ctl.layers.values()))
    assert (layer.candidate_init, layer.candidate_init_std, layer.candidate_objective) == ("layer", 0.2, "correlation")


def _cli_run(tmp_path: Path, name: str, env_extra: dict, real_data_dir: Path, reproducible: bool):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                                                            "ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    env.update(env_extra, PYTHONWARNINGS="ignore")
    args = [sys.executable, "-m", "experiments", "run", "tox21", "--variant", "baseline", "--seed", "0",
            "--set", f"data_dir={real_data_dir}", "--set", f"cache_dir={tmp_path / 'cache'}",
            "--set", f"results_dir={tmp_path / name}", "--set", "download=false",
            "--set", f"reproducible_cpu={str(reproducible).lower()}", "--set", "benchmarks.tox21.data.limit=200",
            "--set", "benchmarks.tox21.train.batch_size=32", "--set", "benchmarks.tox21.pb.neuron_patience=1",
            "--set", "benchmarks.tox21.pb.max_total_epochs=3"]
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / name / "tox21" / "baseline" / "seed0"
    return pd.read_csv(folder / "epochs.csv").drop(columns=["seconds"]), json.loads(
        (folder / "provenance.json").read_text())["sessions"][0]


@pytest.mark.slow
def test_reproducible_cpu_gives_the_same_records_under_other_native_kernels(tmp_path, real_data_dir):
    """One seed of TrimNet, once with this machine's own kernels and once with every kernel library capped at
    AVX2 (another machine, emulated): with reproducible_cpu the records are identical to the last bit."""
    if not (real_data_dir / "tox21" / "tox21.csv.gz").is_file():
        pytest.skip("real Tox21 not found")
    from experiments.pipeline import prepare

    prepare(cfgmod.load_config(overrides=[f"data_dir={real_data_dir}", f"cache_dir={tmp_path / 'cache'}",
                                          "download=false", "benchmarks.tox21.data.limit=200"]), "tox21")
    avx2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    native, native_prov = _cli_run(tmp_path, "native", {}, real_data_dir, reproducible=True)
    capped, capped_prov = _cli_run(tmp_path, "avx2", avx2, real_data_dir, reproducible=True)
    pd.testing.assert_frame_equal(native, capped, check_exact=True)
    assert native_prov["reproducible_cpu"] and capped_prov["reproducible_cpu"]
    assert capped_prov["env"]["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"  # the emulated machine was in force


def test_a_run_picks_its_gpu_from_the_environment_never_assuming_gpu_0(monkeypatch):
    free = {0: 1e9, 1: 30e9, 2: 5e9}  # GPU 0 is busy (another run packed onto it)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 80e9))
    monkeypatch.delenv("PB_CUDA_DEVICE", raising=False)
    assert runner.resolve_device("cuda") == "cuda:1" and runner.resolve_device("auto") == "cuda:1"
    monkeypatch.setenv("PB_CUDA_DEVICE", "2")
    assert runner.resolve_device("cuda") == "cuda:2"
    monkeypatch.setenv("PB_CUDA_DEVICE", "7")
    with pytest.raises(UserError, match="not one of the 3 visible"):
        runner.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("PB_CUDA_DEVICE")
    assert runner.resolve_device("cuda") == "cuda:0"  # the one GPU the scheduler made visible
    assert runner.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        runner.resolve_device("cuda")


def test_a_retry_keeps_a_run_that_finished_in_a_job_counted_as_failed(cfg, monkeypatch):
    """SLURM may kill a job seconds after its run finished; Snakemake deletes summary.json and retries.
    The retry restores the finished run; a first attempt (a forced rerun) trains again from scratch."""
    run = make_run(cfg, "tox21", "pb", 5)
    folder = run_dir(cfg["results_dir"], run)
    use(monkeypatch, StandIn())
    first = runner.train(cfg, run)
    (folder / "summary.json").unlink()  # what Snakemake does to the outputs of a failed job
    standin = use(monkeypatch, StandIn())
    assert runner.train(cfg, run, attempt=2) == first and standin.phases == []
    (folder / "summary.json").unlink()
    standin = use(monkeypatch, StandIn())
    runner.train(cfg, run, attempt=1)
    cycle_epochs = len(pd.read_csv(cfgmod.first_cycle_path(cfg, run).parent / "epochs.csv"))
    assert len(standin.phases) == first["epochs"] - cycle_epochs > 0  # from the shared first cycle
