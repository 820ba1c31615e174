"""How many runs per hour one machine gives when several runs share it (several seeds on one GPU).

For each packing level P, P training runs (different seeds, the same short schedule) start at once as
separate processes, exactly as `snakemake --resources gpu_slots=P` would start them, and the script measures
the wall time until the last one finishes: runs per hour = P / wall * 3600. On a GPU all P runs share it; on
the CPU each run gets `--threads` threads, so P runs ask for P x threads cores.

    python benchmarks/packing.py --benchmark tox21 --parallel 1 2 4 8 --device cuda --data-dir ../shared/data
    python benchmarks/packing.py --benchmark physionet --factor width=0.125 --variant pb --parallel 1 2 --data-dir ../shared/data

A run is capped at ``--epochs`` epochs, all in its first neuron cycle, so ``--variant pb`` times the same
epochs a baseline would (PhysioNet's width 0.125 configures only pb and baseline_matched).

Prints a table and writes benchmarks/out/packing_<benchmark>.csv.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="tox21")
    parser.add_argument("--factor", action="append", default=[], help="NAME=VALUE, e.g. width=0.125")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (one neuron cycle, no dendrites)")
    parser.add_argument("--variant", default="baseline", help="a variant configured at the factor values")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="extra --set for every run")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        common = ["--set", f"data_dir={Path(args.data_dir).resolve()}", "--set", f"cache_dir={tmp}/cache",
                  "--set", "download=false", "--set", f"device={args.device}",
                  "--set", f"benchmarks.{args.benchmark}.pb.max_total_epochs={args.epochs}",
                  "--set", f"benchmarks.{args.benchmark}.pb.neuron_patience={args.epochs}",
                  "--set", f"benchmarks.{args.benchmark}.seeds=64"]
        if args.factor:
            values = ", ".join(f.split("=", 1)[1] for f in args.factor)
            name = args.factor[0].split("=", 1)[0]
            common += ["--set", f"benchmarks.{args.benchmark}.factors={{{name}: [{values}]}}"]
        for override in args.overrides:
            common += ["--set", override]
        prep = _cli("prepare", args.benchmark, *common)
        if prep.wait() != 0:
            print(prep.stderr.read(), file=sys.stderr)
            return 1
        rows = []
        seed = 0
        for level in args.parallel:
            start = time.perf_counter()
            procs = []
            for _ in range(level):
                run_args = ["run", args.benchmark, "--variant", args.variant, "--seed", str(seed),
                            "--threads", str(args.threads), *sum((["--factor", f] for f in args.factor), []),
                            *common, "--set", f"results_dir={tmp}/results{level}"]
                procs.append(_cli(*run_args, env={**os.environ, "PYTHONWARNINGS": "ignore"}))
                seed += 1
            failed = [p.stderr.read()[-2000:] for p in procs if p.wait() != 0]
            wall = time.perf_counter() - start
            if failed:
                print(failed[0], file=sys.stderr)
                return 1
            rows.append({"benchmark": args.benchmark, "factors": " ".join(args.factor), "device": args.device,
                         "threads_per_run": args.threads, "parallel_runs": level, "epochs_per_run": args.epochs,
                         "wall_s": round(wall, 1), "runs_per_hour": round(level / wall * 3600, 1),
                         "epochs_per_hour": round(level * args.epochs / wall * 3600, 1)})
            print(f"{level} run(s) at once: {wall:.1f} s wall, {rows[-1]['runs_per_hour']} runs/h, "
                  f"{rows[-1]['epochs_per_hour']} epochs/h", flush=True)
    out = HERE / "out" / f"packing_{args.benchmark}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
