"""The CUDA code paths, on a real GPU: which GPU a run picks (PB_CUDA_DEVICE, CUDA_VISIBLE_DEVICES), a short run
with the determinism settings in force and in its provenance, checkpoints carried between a GPU and the CPU in
both directions, the dendritic layer's forward and covariance gradient on the GPU against the CPU, and a run on
the GPU killed mid-cycle (SIGKILL) that resumes to the same records as an uninterrupted one.

Every test here is marked ``cuda``: skipped where torch sees no CUDA device (conftest.py), run on a GPU by
``benchmarks/gpu_check.py``, which records the outcome in reference/gpu/."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import pb_core
from experiments import config as cfgmod
from experiments import runner
from experiments.errors import UserError
from experiments.grid import make_run, run_dir
from experiments.registry import Experiment

pytestmark = pytest.mark.cuda
REPO = Path(__file__).resolve().parents[1]


class DeviceStandIn:
    """A benchmark whose model (a two-layer MLP on XOR) and data live on the device the runner passes;
    ``interrupt_at``: the training epoch at which the process is 'killed' (KeyboardInterrupt)."""

    def __init__(self, interrupt_at=None):
        self.interrupt_at = interrupt_at
        self.devices: list[str] = []

    def build(self, settings, prepared, device):
        self.devices.append(device)
        x = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]]).repeat(8, 1).to(device)
        y = (x[:, 0] != x[:, 1]).float().unsqueeze(1)
        model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).to(device)

        def train_epoch(model, optimizer, ctx):
            if self.interrupt_at is not None and ctx.epoch == self.interrupt_at:
                raise KeyboardInterrupt
            optimizer.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
            loss.backward()
            optimizer.step()
            return loss.item()

        def evaluate(model):
            acc = ((model(x) > 0).float() == y).float().mean().item()
            loss = nn.functional.binary_cross_entropy_with_logits(model(x), y).item()
            return acc, acc, -loss  # validation plateaus (cycles end); the test score shows numeric drift

        return Experiment(model=model, train_epoch=train_epoch, evaluate=evaluate,
                          optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.05))


def _cfg(tmp_path: Path, name: str, device: str) -> dict:
    return cfgmod.load_config(overrides=[
        f"results_dir={tmp_path / name}", f"cache_dir={tmp_path / 'cache'}", f"device={device}",
        "benchmarks.tox21.pb.neuron_patience=2", "benchmarks.tox21.pb.dendrite_patience=2",
        "benchmarks.tox21.pb.max_dendrites=1", "benchmarks.tox21.pb.max_total_epochs=12"])


def _use(monkeypatch, standin: DeviceStandIn) -> DeviceStandIn:
    monkeypatch.setattr(runner, "get_benchmark", lambda cfg, name: standin)
    return standin


def _records(folder: Path) -> dict:
    return {name: pd.read_csv(folder / name).drop(columns=["seconds"], errors="ignore")
            for name in ("epochs.csv", "cycles.csv")}


def _sessions(folder: Path) -> list[dict]:
    return json.loads((folder / "provenance.json").read_text())["sessions"]


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter; ``env`` entries set to None are removed."""
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=full)


# ---------------------------------------------------------------------------------------------- device choice
def test_pb_cuda_device_names_the_gpu_and_a_bad_index_is_a_clear_error(monkeypatch):
    count = torch.cuda.device_count()
    monkeypatch.setenv("PB_CUDA_DEVICE", str(count - 1))
    assert runner.resolve_device("cuda") == f"cuda:{count - 1}" == runner.resolve_device("auto")
    monkeypatch.setenv("PB_CUDA_DEVICE", str(count))
    with pytest.raises(UserError, match=f"not one of the {count} visible"):
        runner.resolve_device("cuda")
    monkeypatch.delenv("PB_CUDA_DEVICE")
    if count == 1:
        assert runner.resolve_device("cuda") == "cuda:0"
    else:  # several visible: the one with the most free memory now
        free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
        assert runner.resolve_device("cuda") == f"cuda:{max(range(count), key=free.__getitem__)}"
    assert runner.resolve_device("cpu") == "cpu"


def test_cuda_visible_devices_decides_what_a_run_can_see():
    """Read in fresh processes: CUDA reads the variable when it starts."""
    code = ("from experiments import runner\nfrom experiments.errors import UserError\nimport torch\n"
            "print(torch.cuda.device_count(), runner.resolve_device('auto'))\n"
            "try:\n    print(runner.resolve_device('cuda'))\nexcept UserError as e:\n    print('error', e)\n")
    hidden = _python(code, {"CUDA_VISIBLE_DEVICES": "", "PB_CUDA_DEVICE": None})
    assert hidden.returncode == 0, hidden.stderr[-2000:]
    lines = hidden.stdout.split("\n")
    assert lines[0] == "0 cpu" and lines[1].startswith("error") and "torch sees no CUDA device" in lines[1]
    one = _python(code, {"CUDA_VISIBLE_DEVICES": "0", "PB_CUDA_DEVICE": None})
    assert one.returncode == 0, one.stderr[-2000:]
    assert one.stdout.split("\n")[:2] == ["1 cuda:0", "cuda:0"]
    narrowed = _python(code, {"CUDA_VISIBLE_DEVICES": "0", "PB_CUDA_DEVICE": "1"})
    assert narrowed.returncode != 0 and "not one of the 1 visible" in narrowed.stderr


# ---------------------------------------------------------------------------------------------- a run on the GPU
def test_a_short_run_on_cuda_is_deterministic_and_records_its_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("PB_CUDA_DEVICE", raising=False)
    outs = []
    for name in ("a", "b"):
        cfg = _cfg(tmp_path, name, "cuda")
        run = make_run(cfg, "tox21", "pb", 0)
        standin = _use(monkeypatch, DeviceStandIn())
        summary = runner.train(cfg, run)
        assert standin.devices and all(d.startswith("cuda:") for d in standin.devices)
        assert summary["device"].startswith("cuda:")
        outs.append(run_dir(cfg["results_dir"], run))
    # the determinism settings are in force, in the process and in the run's provenance
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()
    device = _sessions(outs[0])[-1]["device"]
    assert device["gpu"] == torch.cuda.get_device_name(0) and device["cudnn_deterministic"] is True
    assert device["cudnn_benchmark"] is False
    a, b = _records(outs[0]), _records(outs[1])
    assert "dendrite" in set(a["epochs.csv"]["phase"])
    for name in a:  # the same seed on the same GPU: the same records, to the last bit
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)


@pytest.mark.parametrize("first,then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_moves_between_gpu_and_cpu_and_the_run_resumes(tmp_path, monkeypatch, first, then):
    """Interrupted on one device, resumed on the other: the epochs before the interruption are kept as they
    were, the rest continue without a gap or a repeat, and agree with an uninterrupted run on the first device
    within float32 rounding (two devices' kernels are not bit-identical)."""
    monkeypatch.delenv("PB_CUDA_DEVICE", raising=False)
    ref_cfg = _cfg(tmp_path, "reference", first)
    run = make_run(ref_cfg, "tox21", "pb", 0)
    _use(monkeypatch, DeviceStandIn())
    total = runner.train(ref_cfg, run)["epochs"]
    reference = _records(run_dir(ref_cfg["results_dir"], run))
    cut = len(pd.read_csv(cfgmod.first_cycle_path(ref_cfg, run).parent / "epochs.csv")) + 2
    assert cut < total

    cfg = _cfg(tmp_path, "moved", first)
    _use(monkeypatch, DeviceStandIn(interrupt_at=cut))
    with pytest.raises(KeyboardInterrupt):
        runner.train(cfg, run)
    folder = run_dir(cfg["results_dir"], run)
    assert (folder / "checkpoint.pt").is_file() and not (folder / "summary.json").exists()
    moved_cfg = dict(cfg, device=then)
    standin = _use(monkeypatch, DeviceStandIn())
    summary = runner.train(moved_cfg, run)
    assert standin.devices[-1].startswith(then) and summary["device"].startswith(then)
    resumed = _records(folder)
    epochs = resumed["epochs.csv"]
    assert list(epochs["epoch"]) == list(range(len(epochs))) == list(reference["epochs.csv"]["epoch"])
    pd.testing.assert_frame_equal(epochs.iloc[:cut], reference["epochs.csv"].iloc[:cut], check_exact=True)
    for name in resumed:
        pd.testing.assert_frame_equal(resumed[name], reference[name], check_exact=False, rtol=1e-4, atol=1e-5)
    types = [s["device"]["type"] for s in _sessions(folder)]
    assert types[-1].startswith(then) and types[0].startswith(first)


# ---------------------------------------------------------------------------------------------- the layer
class Mixed(nn.Module):
    """A conv, a GRU and two Linear layers: every adapter kind a benchmark wraps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):  # x: (B, 2, 5, 5)
        h = torch.relu(self.conv(x)).mean(-1).transpose(1, 2)  # (B, 5, 4): a sequence of 5 steps
        out, _ = self.gru(h)
        return self.fc2(torch.tanh(self.fc1(out[:, -1])))


def _staged_pair(candidates: int):
    """The same network with one committed dendrite (u non-zero) per layer on the CPU and on the GPU, then
    ``candidates`` candidates per neuron with equal values on both."""
    torch.manual_seed(0)
    cpu = Mixed()
    ctl = pb_core.CycleController(cpu, "pb", optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1), candidates=1)
    ctl.stage(1, "neuron")
    gpu = copy.deepcopy(cpu).to("cuda")
    if candidates:
        for (_, a), (_, b) in zip(pb_core.dendritic_layers(cpu), pb_core.dendritic_layers(gpu)):
            a.add_candidates(candidates)
            b.add_candidates(candidates)
            with torch.no_grad():
                for pa, pb_ in zip(a.candidate_parameters(), b.candidate_parameters()):
                    pb_.copy_(pa)
    return cpu, gpu


def test_dendritic_layers_give_the_same_outputs_and_gradients_on_gpu_and_cpu():
    cpu, gpu = _staged_pair(candidates=0)
    x = torch.randn(16, 2, 5, 5)
    assert all(layer.num_dendrites == 1 for _, layer in pb_core.dendritic_layers(gpu))
    out_cpu, out_gpu = cpu(x), gpu(x.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-4, atol=1e-5)
    out_cpu.square().sum().backward()
    out_gpu.square().sum().backward()
    named = dict(gpu.named_parameters())
    grads = [(n, p.grad, named[n].grad) for n, p in cpu.named_parameters() if p.grad is not None]
    assert any("dendrite_out" in n for n, _, _ in grads)  # u trains in a neuron phase
    for name, g_cpu, g_gpu in grads:
        torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-3, atol=1e-5, msg=name)


def test_covariance_candidates_get_the_same_gradient_on_gpu_and_cpu():
    cpu, gpu = _staged_pair(candidates=3)
    x, y = torch.randn(16, 2, 5, 5), torch.randint(0, 3, (16,))
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        for p in model.parameters():
            p.requires_grad_(False)
        for _, layer in pb_core.dendritic_layers(model):
            for p in layer.candidate_parameters():
                p.requires_grad_(True)
        for _ in range(2):  # the second step uses the running means of the first
            nn.functional.cross_entropy(model(x.to(dev)), y.to(dev)).backward()
    for (name, a), (_, b) in zip(pb_core.dendritic_layers(cpu), pb_core.dendritic_layers(gpu)):
        for pa, pb_ in zip(a.candidate_parameters(), b.candidate_parameters()):
            assert pa.grad is not None and pa.grad.abs().sum() > 0, name
            torch.testing.assert_close(pb_.grad.cpu(), pa.grad, rtol=1e-3, atol=1e-6, msg=name)
        torch.testing.assert_close(b.end_candidate_epoch()["correlation"], a.end_candidate_epoch()["correlation"],
                                   rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------- killed on the GPU
def _data_dir() -> Path:
    return Path(os.environ.get("PB_SHARED_DATA", REPO.parent / "shared" / "data"))


KILL_CASES = {
    "tox21": (["--variant", "pb"], ["benchmarks.tox21.data.limit=400", "benchmarks.tox21.train.batch_size=32",
                                    "benchmarks.tox21.pb.neuron_patience=2", "benchmarks.tox21.pb.dendrite_patience=2",
                                    "benchmarks.tox21.pb.max_dendrites=1", "benchmarks.tox21.pb.max_total_epochs=10"],
              "tox21/tox21.csv.gz", "rdkit"),
    "physionet": (["--variant", "pb", "--factor", "width=0.125"],
                  ["benchmarks.physionet.data.limit=300", "benchmarks.physionet.pb.fixed_cycle_epochs=2",
                   "benchmarks.physionet.pb.max_total_epochs=7"],
                  "physionet2012/set-a.tar.gz", None),
}


@pytest.mark.parametrize("benchmark", sorted(KILL_CASES))
def test_a_run_killed_mid_cycle_on_the_gpu_resumes_to_the_same_records(tmp_path, benchmark):
    """A real kill (SIGKILL of the training process) two epochs after the shared first cycle, then the same
    command again; its records equal those of an uninterrupted run of the same seed on the same GPU."""
    run_args, sets, needed, module = KILL_CASES[benchmark]
    data = _data_dir()
    if not (data / needed).is_file():
        pytest.skip(f"{data / needed} not found (set PB_SHARED_DATA)")
    if module is not None:
        pytest.importorskip(module)
    common = ["--set", f"data_dir={data}", "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "download=false",
              "--set", "device=cuda", *sum((["--set", s] for s in sets), [])]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    logs = iter(range(100))

    def cli(*args):
        """The suite's command line; its stderr in a file (a full pipe would block it), read back by err()."""
        log = tmp_path / f"cli{next(logs)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "experiments", *args], cwd=REPO, env=env, text=True,
                                stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        proc.err = lambda: log.read_text()[-3000:]
        return proc

    prep = cli("prepare", benchmark, *common)
    assert prep.wait(timeout=300) == 0, prep.err()
    cfg = cfgmod.load_config(overrides=[c for c in common if c != "--set"] + [f"results_dir={tmp_path / 'ref'}"])
    factors = dict(f.split("=") for f in run_args[3::2]) if "--factor" in run_args else {}
    run = make_run(cfg, benchmark, "pb", 0, {k: float(v) for k, v in factors.items()})

    ref = cli("run", benchmark, *run_args, "--seed", "0", *common, "--set", f"results_dir={tmp_path / 'ref'}")
    assert ref.wait(timeout=300) == 0, ref.err()
    ref_folder = run_dir(tmp_path / "ref", run)
    reference = _records(ref_folder)
    cut = len(pd.read_csv(cfgmod.first_cycle_path(cfg, run).parent / "epochs.csv")) + 2
    assert cut < len(reference["epochs.csv"]), "the run is too short to be killed after its first cycle"

    killed_args = ["run", benchmark, *run_args, "--seed", "0", *common, "--set", f"results_dir={tmp_path / 'killed'}"]
    victim = cli(*killed_args)  # in this test's process group: a stopped check stops it too
    epochs = run_dir(tmp_path / "killed", run) / "epochs.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        try:
            rows = len(pd.read_csv(epochs)) if epochs.is_file() else 0
        except (pd.errors.EmptyDataError, OSError):
            rows = 0
        if rows >= cut:
            victim.send_signal(signal.SIGKILL)  # the training process has no children (num_workers=0)
            break
        time.sleep(0.01)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-cycle"
    folder = run_dir(tmp_path / "killed", run)
    assert (folder / "checkpoint.pt").is_file() and not (folder / "summary.json").exists()
    again = cli(*killed_args)
    assert again.wait(timeout=300) == 0, again.err()
    resumed = _records(folder)
    assert len(_sessions(folder)) == 2
    for name in reference:
        pd.testing.assert_frame_equal(resumed[name], reference[name], check_exact=True)
