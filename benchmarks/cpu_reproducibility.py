#!/usr/bin/env python
"""Which CPU settings make training results bit-identical across machines, and what they cost.

PyTorch picks its CPU kernels from the machine: ATen's own kernels come in default/avx2/avx512 builds,
MKL (matrix products) and oneDNN (convolutions, the LSTM) dispatch on the instruction set. Other
machines are emulated here by capping each library's instruction set (set before torch loads):

    machine        ATEN_CPU_CAPABILITY  MKL_ENABLE_INSTRUCTIONS  ONEDNN_MAX_CPU_ISA   like
    native         (auto: avx512)       (auto: AVX-512 + AMX)    (auto: AVX10.1+AMX)  this Xeon
    avx512         avx512               AVX512                   AVX512_CORE          Skylake/Cascade Lake Xeon
    avx2           avx2                 AVX2                     AVX2                 AVX2-only CPU (EPYC before Zen 4)
    aten_avx2      avx2                 -                        -                    (one library at a time)
    mkl_avx2       -                    AVX2                     -
    onednn_avx2    -                    -                        AVX2
    sse42          default              SSE4_2                   SSE41                a pre-AVX CPU
    threads2       native, with 2 torch threads instead of 1

Each candidate fix (environment variables set before torch loads, plus switches set after: see FIXES)
runs every workload on every machine, each (fix, machine) in a fresh subprocess, and the results are
compared bit for bit: the sha256 of the final parameters and of the per-step losses (float64 bytes).
Cost = median over --timing-repeats runs on the native machine of the workload's CPU seconds (process
time, so that other jobs on the cores count less), divided by the same without a fix.

Workloads (all seeded, one torch thread unless the machine says otherwise):
  mlp      Linear(784,256)-ReLU-Dropout-Linear(256,10), Adam, batch 64, 50 steps
  cnn      the PyTorch MNIST example's CNN (two Conv2d, max-pool, dropout, two Linear), Adadelta, batch 32, 5 steps
  gru      GRU(16,64) over 30 time steps + Linear, Adam, batch 32, 20 steps
  lstm     the same with an LSTM (on the CPU torch runs it through oneDNN unless mkldnn is off)
  trimnet  experiments/tox21/model.py's TrimNet on random molecule-sized graphs, Adam, 32 graphs a step, 5 steps
  tox21    TrimNet on the first --tox21-molecules molecules of the real Tox21 CSV (the suite's featuriser,
           split, class-weighted loss and metric), Adam (lr 1e-3, wd 1e-5), batch 128, --tox21-epochs
           epochs; test AUC after each

    python benchmarks/cpu_reproducibility.py [--data-dir ../shared/data] [--workloads mlp,cnn,...]
                                             [--fixes none,full,...] [--machines native,avx2,...]
                                             [--timing-repeats 3] [--out benchmarks/out/cpu_reproducibility]

Writes <out>.csv (one row per fix x machine x workload) and <out>.json and prints the tables. Every
worker's result is kept in --cache (benchmarks/out/cpu_reproducibility_runs) and reused, so a grid can
be filled in several calls; delete it to measure afresh. A worker (one fix on one machine) is this
script with --worker; tests/test_provenance.py runs workers too.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from experiments.provenance import NUMERIC_ENV_VARS, reproducible_cpu_env  # noqa: E402  (torch-free)

MACHINES = {
    "native": ({}, 1),
    "avx512": ({"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, 1),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 1),
    "aten_avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 1),
    "mkl_avx2": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 1),
    "onednn_avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, 1),
    "sse42": ({"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}, 1),
    "threads2": ({}, 2),
}

# name -> (environment before torch loads, switches after it loads)
FIXES = {
    "none": ({}, {}),
    "cbwr": ({"MKL_CBWR": "COMPATIBLE"}, {}),
    "cbwr_auto_strict": ({"MKL_CBWR": "AUTO,STRICT"}, {}),
    "aten_default": ({"ATEN_CPU_CAPABILITY": "default"}, {}),
    "onednn_sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, {}),
    "no_mkldnn": ({}, {"mkldnn": False}),
    "deterministic": ({}, {"deterministic": True}),
    "cbwr+aten": ({"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}, {}),
    "cbwr+onednn": ({"MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}, {}),
    "aten+onednn": ({"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}, {}),
    "full": ({"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}, {}),
    "cbwr+aten+no_mkldnn": ({"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}, {"mkldnn": False}),
    "avx2_pinned": ({"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    # what the suite's reproducible_cpu option sets (today the same as cbwr+aten+no_mkldnn)
    "reproducible_cpu": (reproducible_cpu_env(), {"after_torch_import": True}),
}

WORKLOADS = ("mlp", "cnn", "gru", "lstm", "trimnet", "tox21")


def child_env(machine_env: dict, fix_env: dict) -> dict:
    """This process's environment without any numeric setting, then the machine's caps, then the fix's
    (a fix caps at least as low as any machine here, as it would on a real one)."""
    env = {k: v for k, v in os.environ.items() if k not in NUMERIC_ENV_VARS}
    env.update(machine_env)
    env.update(fix_env)
    env["PYTHONHASHSEED"] = "0"
    return env


# --------------------------------------------------------------------------------------------------
# Worker: runs in a fresh process, after the environment is set
# --------------------------------------------------------------------------------------------------

def _digest(chunks) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _params(model):
    import torch
    return torch.cat([p.detach().reshape(-1).double() for p in model.state_dict().values()
                      if p.is_floating_point()])


class Clock:
    """CPU seconds of this process (what a fix costs, whatever else shares the cores) and wall seconds."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    def __enter__(self):
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu += time.process_time() - self._cpu
        self.wall += time.perf_counter() - self._wall


def _record(model, losses, clock: Clock, extra=None) -> dict:
    import numpy as np
    flat = _params(model).numpy()
    losses = np.asarray(losses, dtype=np.float64)
    rec = {"params_sha256": _digest([flat.tobytes()]), "losses_sha256": _digest([losses.tobytes()]),
           "last_loss": float(losses[-1]), "cpu_seconds": clock.cpu, "wall_seconds": clock.wall, "params": flat}
    rec.update(extra or {})
    return rec


def _train(model, opt, batches, loss_fn):
    losses = []
    model.train()
    with Clock() as clock:
        for inputs, target in batches:
            opt.zero_grad()
            loss = loss_fn(model(inputs), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, clock


def run_mlp(steps: int = 50) -> dict:
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [(torch.randn(64, 784), torch.randint(0, 10, (64,))) for _ in range(steps)]
    losses, clock = _train(model, opt, batches, nn.functional.cross_entropy)
    return _record(model, losses, clock)


def mnist_net():
    """The PyTorch MNIST example's network (built here so that the driver never imports torch)."""
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = self.dropout1(x).flatten(1)
            x = self.dropout2(F.relu(self.fc1(x)))
            return F.log_softmax(self.fc2(x), dim=1)
    return Net()


def run_cnn(steps: int = 5) -> dict:
    import torch
    torch.manual_seed(0)
    model = mnist_net()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    batches = [(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))) for _ in range(steps)]
    losses, clock = _train(model, opt, batches, torch.nn.functional.nll_loss)
    return _record(model, losses, clock)


def _run_rnn(cell: str, steps: int) -> dict:
    import torch
    from torch import nn

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, cell)(16, 64, batch_first=True)
            self.head = nn.Linear(64, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1]).squeeze(-1)

    torch.manual_seed(0)
    model = Seq()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [(torch.randn(32, 30, 16), torch.randn(32)) for _ in range(steps)]
    losses, clock = _train(model, opt, batches, nn.functional.mse_loss)
    return _record(model, losses, clock)


def run_gru(steps: int = 20) -> dict:
    return _run_rnn("GRU", steps)


def run_lstm(steps: int = 20) -> dict:
    return _run_rnn("LSTM", steps)


def random_graphs(count: int, generator):
    """Molecule-sized random graphs (10-30 atoms, a ring plus random chords, both edge directions)."""
    import torch
    from torch_geometric.data import Data
    graphs = []
    for _ in range(count):
        n = int(torch.randint(10, 31, (1,), generator=generator))
        ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
        chords = torch.randint(0, n, (2, n // 3), generator=generator)
        edges = torch.cat([ring, chords], dim=1)
        edges = torch.cat([edges, edges.flip(0)], dim=1)
        graphs.append(Data(x=torch.rand(n, 39, generator=generator).round(),
                           edge_index=edges, edge_attr=torch.rand(edges.size(1), 10, generator=generator).round(),
                           y=torch.randint(0, 2, (1, 12), generator=generator)))
    return graphs


def run_trimnet(steps: int = 5) -> dict:
    import torch
    from torch_geometric.loader import DataLoader

    from experiments.tox21.model import TrimNet
    graphs = random_graphs(32 * steps, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = TrimNet(out_dim=24)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    batches = [(b, b.y) for b in DataLoader(graphs, batch_size=32)]
    loss_fn = lambda logits, y: torch.nn.functional.cross_entropy(logits.reshape(-1, 2), y.reshape(-1))  # noqa: E731
    losses, clock = _train(model, opt, batches, loss_fn)
    return _record(model, losses, clock)


def run_tox21(graphs_file: str, epochs: int = 3) -> dict:
    """The real thing on a slice: TrimNet trained as a Tox21 baseline run trains it, test AUC per epoch."""
    import torch
    from torch_geometric.loader import DataLoader

    from experiments.tox21.data import class_weights, split_indices
    from experiments.tox21.metric import masked_class_weighted_loss, masked_mean_roc_auc
    from experiments.tox21.model import TrimNet
    graphs = torch.load(graphs_file, weights_only=False)
    torch.manual_seed(0)
    train_idx, val_idx, test_idx = split_indices(len(graphs), 0, (0.8, 0.1, 0.1))
    weights = class_weights(graphs, train_idx)
    train_loader = DataLoader([graphs[i] for i in train_idx], batch_size=128, shuffle=True)
    test_loader = DataLoader([graphs[i] for i in test_idx], batch_size=512)
    model = TrimNet(out_dim=24)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    losses, aucs, clock = [], [], Clock()
    for _ in range(epochs):
        with clock:
            model.train()
            for batch in train_loader:
                opt.zero_grad()
                loss = masked_class_weighted_loss(model(batch), batch.y, batch.y_mask, weights)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                ys, probs, masks = zip(*[(b.y, torch.softmax(model(b), -1)[..., 1], b.y_mask) for b in test_loader])
            aucs.append(masked_mean_roc_auc(torch.cat(ys), torch.cat(probs), torch.cat(masks)))
    return _record(model, losses, clock, {"test_auc": aucs})


def worker(args) -> None:
    import numpy as np
    import torch

    from experiments import provenance
    torch.set_num_threads(args.threads)
    after = json.loads(args.after)
    if "mkldnn" in after:
        torch.backends.mkldnn.enabled = after["mkldnn"]
    if after.get("deterministic"):
        torch.use_deterministic_algorithms(True)
    if after.get("after_torch_import"):  # the suite's own switch-on (checks that the environment took)
        provenance.after_torch_import()
    out = {"provenance": provenance.provenance_row(provenance.provenance("cpu", args.threads)), "workloads": {}}
    for name in args.workloads.split(","):
        if name == "tox21":
            rec = run_tox21(args.tox21_graphs, args.tox21_epochs)
        else:
            rec = globals()[f"run_{name}"](**({"steps": args.steps} if args.steps else {}))
        if args.params_dir:
            np.save(Path(args.params_dir) / f"{name}.npy", rec["params"])
        rec.pop("params")
        out["workloads"][name] = rec
    print("RESULT " + json.dumps(out))


def run_worker(workloads: list[str], machine_env: dict, fix_env: dict, after: dict, threads: int = 1,
               tox21_graphs: str = "", tox21_epochs: int = 3, params_dir: Path | None = None,
               steps: int | None = None) -> dict:
    """One worker in a fresh process; its parsed result (raises with the worker's stderr if it fails).
    ``steps``: training steps of every workload but tox21 (default: each workload's own)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--workloads", ",".join(workloads),
           "--threads", str(threads), "--after", json.dumps(after), "--tox21-graphs", tox21_graphs,
           "--tox21-epochs", str(tox21_epochs)]
    if steps:
        cmd += ["--steps", str(steps)]
    if params_dir is not None:
        params_dir.mkdir(parents=True, exist_ok=True)
        cmd += ["--params-dir", str(params_dir)]
    done = subprocess.run(cmd, env=child_env(machine_env, fix_env), capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

def prepare_tox21(data_dir: Path, molecules: int, out: Path) -> str:
    """Featurise the first ``molecules`` molecules once (the suite's featuriser) for the workers."""
    target = out / f"tox21_first{molecules}.pt"
    if not target.is_file():
        code = ("import sys, pandas as pd, torch; sys.path.insert(0, sys.argv[4]);"
                "from experiments.tox21.data import TASKS; from experiments.tox21.features import smiles_to_data;"
                "df = pd.read_csv(sys.argv[1]).iloc[:int(sys.argv[2])];"
                "g = [smiles_to_data(s, row, m) for s, row, m in zip(df.smiles, df[TASKS].to_numpy(), df.mol_id)];"
                "torch.save([d for d in g if d is not None], sys.argv[3])")
        subprocess.run([sys.executable, "-c", code, str(data_dir / "tox21" / "tox21.csv.gz"), str(molecules),
                        str(target), str(REPO)], check=True, cwd=REPO)
    return str(target)


def cached_run(cache: Path, key: str, workloads: list[str], machine: str, fix: str, graphs: str,
               epochs: int) -> dict:
    """The worker result for (fix, machine) from ``cache/runs/<key>.json``, running only the workloads it
    lacks (so the grid can be filled in several sittings); parameters go to ``cache/params/<key>/``."""
    path = cache / "runs" / f"{key}.json"
    done = json.loads(path.read_text()) if path.is_file() else {"workloads": {}}
    missing = [w for w in workloads if w not in done["workloads"]]
    if missing:
        machine_env, threads = MACHINES[machine]
        fix_env, after = FIXES[fix]
        started = time.perf_counter()
        res = run_worker(missing, machine_env, fix_env, after, threads, graphs, epochs, cache / "params" / key)
        done = {"provenance": res["provenance"], "workloads": {**done["workloads"], **res["workloads"]}}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(done, indent=1))
        print(f"{key:40s} capability={res['provenance']['cpu_capability']:7s} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--after", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--params-dir", help=argparse.SUPPRESS)
    parser.add_argument("--tox21-graphs", default="", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--fixes", default=",".join(FIXES))
    parser.add_argument("--machines", default=",".join(MACHINES))
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--tox21-molecules", type=int, default=1000)
    parser.add_argument("--tox21-epochs", type=int, default=3)
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="runs of each fix on the native machine for its time (the first is the hash run)")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "cpu_reproducibility",
                        help="writes <out>.csv and <out>.json")
    parser.add_argument("--cache", type=Path, default=HERE / "out" / "cpu_reproducibility_runs",
                        help="each worker's result, reused by later calls (delete it to measure afresh)")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    workloads = args.workloads.split(",")
    fixes, machines = args.fixes.split(","), args.machines.split(",")
    for kind, chosen, known in (("fix", fixes, FIXES), ("machine", machines, MACHINES), ("workload", workloads, WORKLOADS)):
        for value in chosen:
            if value not in known:
                parser.error(f"unknown {kind} {value!r}; choose from {', '.join(known)}")
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    graphs = ""
    if "tox21" in workloads:
        csv_path = args.data_dir / "tox21" / "tox21.csv.gz"
        if not csv_path.is_file():
            print(f"no {csv_path}: leaving out the tox21 workload (give --data-dir)", file=sys.stderr)
            workloads.remove("tox21")
        else:
            graphs = prepare_tox21(args.data_dir, args.tox21_molecules, cache)

    results = {(fix, machine): cached_run(cache, f"{fix}__{machine}", workloads, machine, fix, graphs,
                                          args.tox21_epochs)
               for fix in fixes for machine in machines}
    # More native runs for the cost, interleaved so that load from other processes hits every fix alike.
    timed = {fix: [results[(fix, machines[0])]] for fix in fixes}
    for repeat in range(1, args.timing_repeats):
        for fix in fixes:
            timed[fix].append(cached_run(cache, f"{fix}__{machines[0]}__t{repeat}", workloads, machines[0],
                                         fix, graphs, args.tox21_epochs))

    def cost(fix: str, w: str) -> float:
        return statistics.median(r["workloads"][w]["cpu_seconds"] for r in timed[fix])

    import numpy as np
    rows = []
    for fix in fixes:
        for w in workloads:
            ref = results[(fix, machines[0])]["workloads"][w]
            ref_params = np.load(cache / "params" / f"{fix}__{machines[0]}" / f"{w}.npy")
            for machine in machines:
                rec = results[(fix, machine)]["workloads"][w]
                params = np.load(cache / "params" / f"{fix}__{machine}" / f"{w}.npy")
                rows.append({
                    "fix": fix, "machine": machine, "workload": w,
                    "cpu_capability": results[(fix, machine)]["provenance"]["cpu_capability"],
                    "params_sha256": rec["params_sha256"][:16], "losses_sha256": rec["losses_sha256"][:16],
                    "same_as_first_machine": rec["params_sha256"] == ref["params_sha256"]
                    and rec["losses_sha256"] == ref["losses_sha256"],
                    "max_abs_param_diff": float(np.abs(params - ref_params).max()),
                    "last_loss": repr(rec["last_loss"]),
                    "test_auc": ";".join(f"{a:.4f}" for a in rec.get("test_auc", [])),
                    "cpu_seconds_native_median": cost(fix, w),
                    "slowdown_vs_none": cost(fix, w) / cost("none", w) if "none" in fixes else "",
                })
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"machines": {m: MACHINES[m] for m in machines}, "fixes": {f: FIXES[f] for f in fixes},
         "provenance": results[(fixes[0], machines[0])]["provenance"],
         "results": {f"{fix}|{machine}": res for (fix, machine), res in results.items()}}, indent=1))

    print(f"\nmachines: {', '.join(machines)}. Per fix and workload: the number of different results (sha256 of "
          f"final parameters + losses) over the machines, 1 = bit-identical everywhere; x = median CPU seconds "
          f"on the native machine / the same without a fix ({args.timing_repeats} runs)")
    print(f"{'fix':22s} " + " ".join(f"{w:>13s}" for w in workloads))
    for fix in fixes:
        cells = []
        for w in workloads:
            distinct = len({(results[(fix, m)]["workloads"][w]["params_sha256"],
                             results[(fix, m)]["workloads"][w]["losses_sha256"]) for m in machines})
            slow = f"x{cost(fix, w) / cost('none', w):4.2f}" if "none" in fixes else ""
            cells.append(f"{distinct:d} {slow}".rjust(13))
        print(f"{fix:22s} " + " ".join(cells))
    print("\nmachines giving the first machine's result, per fix and workload:")
    for fix in fixes:
        for w in workloads:
            ref = results[(fix, machines[0])]["workloads"][w]["params_sha256"]
            same = [m for m in machines if results[(fix, m)]["workloads"][w]["params_sha256"] == ref]
            print(f"  {fix:22s} {w:8s} {', '.join(same)}")
    if "tox21" in workloads:
        print(f"\ntox21 (first {args.tox21_molecules} molecules) test AUC after each epoch:")
        for fix in fixes:
            print(f"  {fix:22s} " + " | ".join(
                f"{m}: " + ",".join(f"{a:.4f}" for a in results[(fix, m)]["workloads"]["tox21"]["test_auc"])
                for m in machines))
    print(f"\nwrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
