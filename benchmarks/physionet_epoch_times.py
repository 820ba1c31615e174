#!/usr/bin/env python
"""Seconds per epoch of mTAN on the real PhysioNet 2012 data per width and dendrite count, next to the paper's
Table 2, and the compute the paper profile (config/benchmarks/physionet.yaml) would take.

The networks are built exactly as the suite's runs build them (experiments.physionet.timing, the code of the
`timing` table): same data, split, model, optimizer and training loop, K dendrites committed on every layer
the pb variant wraps. A neuron epoch is a training pass plus the evaluation of train, validation and test;
a dendrite epoch is a training pass with the configured pb.candidates covariance candidates per neuron
(the network frozen).
``--train-batches N`` times N batches of each pass and scales to the whole pass (the paper profile's own
timing job times whole epochs).

    python benchmarks/physionet_epoch_times.py --data-dir ../shared/data [--device cpu|cuda] [--threads 1]
        [--widths 0.125 0.25 0.5 1 2] [--train-batches 5] [--eval-batches 2] [--out timing.csv]

The estimate at the end assumes: every run of the paper profile's grid (its seeds, variants per width and
max_dendrites per width) runs all its cycles (stop_on_no_improvement: false), each of
pb.fixed_cycle_epochs epochs; a pb run of width w with K dendrites = K+1 neuron cycles (k = 0..K dendrites)
and K dendrite cycles; its baseline_matched control = as many epochs as that run, all without dendrites; a
baseline = one cycle; every epoch costs what was measured here on this device (on a CPU: its CPU seconds, what
an idle core would take; nothing else: no start-up,
checkpoint writing or data preparation, and no concurrency between runs).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import pb_core  # noqa: E402
from experiments import config as cfgmod  # noqa: E402
from experiments.grid import factor_values, seeds, variants_at  # noqa: E402
from experiments.physionet.benchmark import BENCHMARK  # noqa: E402
from experiments.physionet.timing import COLUMNS, measure, schedule  # noqa: E402


def paper_table(cfg: dict) -> dict:
    rows = cfg["benchmarks"]["physionet"]["outputs"].get("table2", {}).get("paper", [])
    return {(float(r["width"]), r["phase"], int(r["dendrites"])): r["seconds_per_epoch"] for r in rows}


def paper_seconds_per_epoch(cfg: dict) -> dict:
    """Seconds per epoch on the paper's GPU for every (width, phase, dendrites) of the grid, from the paper's
    Table 2 values (outputs.table2.paper) and these assumptions: at widths below 1 an epoch costs what it costs
    at width 0.125 (the GPU is latency-bound: width 1, with 44x the parameters, takes only 1.4x as long),
    linear in the number of dendrites between the quoted ends (0 and 3 for neuron epochs, 0 and 2 for
    dendrite epochs); above width 1 an epoch costs width 1's times the width."""
    paper = paper_table(cfg)

    def line(phase, k):
        known = sorted((d, v) for (w, ph, d), v in paper.items() if w == 0.125 and ph == phase)
        (k0, v0), (k1, v1) = known[0], known[-1]
        return v0 + (v1 - v0) * (k - k0) / (k1 - k0)

    out = {}
    for width in factor_values(cfg, "physionet")["width"]:
        _, max_k, _ = schedule(cfg, "physionet", width)
        for k in range(max_k + 1):
            for phase in ("neuron", "dendrite"):
                if width < 1:
                    out[(float(width), phase, k)] = line(phase, k)
                elif phase == "neuron" and k == 0:
                    out[(float(width), phase, k)] = paper[(1.0, "neuron", 0)] * width
    return out


def busy_seconds(row) -> float:
    """Seconds of an epoch on an idle core: the wall seconds times the CPU share measured with them (the
    share is below 1 when other processes took the core meanwhile; a GPU row has none)."""
    share = getattr(row, "cpu_share", None)
    return row.seconds_per_epoch * (1.0 if share is None or pd.isna(share) else min(float(share), 1.0))


def estimate(cfg: dict, table: pd.DataFrame | None = None, per_epoch: dict | None = None) -> pd.DataFrame:
    """Hours of every (width, variant) of the configuration's grid from seconds per epoch (measured ``table``,
    or ``per_epoch`` {(width, phase, dendrites): seconds})."""
    if per_epoch is None:
        per_epoch = {(float(r.width), r.phase, int(r.dendrites)): busy_seconds(r) for r in table.itertuples()}
    rows = []
    n_seeds = len(seeds(cfg, "physionet"))
    for width in factor_values(cfg, "physionet")["width"]:
        _, max_k, epochs = schedule(cfg, "physionet", width)
        for variant in variants_at(cfg, "physionet", (("width", width),)):
            if variant != "baseline_matched" and pb_core.get_variant(variant).has_dendrites:
                seconds = epochs * (sum(per_epoch[(float(width), "neuron", k)] for k in range(max_k + 1))
                                    + sum(per_epoch[(float(width), "dendrite", k)] for k in range(max_k)))
                run_epochs = epochs * (2 * max_k + 1)
            elif variant == "baseline_matched":
                run_epochs = epochs * (2 * max_k + 1)
                seconds = run_epochs * per_epoch[(float(width), "neuron", 0)]
            else:
                run_epochs = epochs
                seconds = epochs * per_epoch[(float(width), "neuron", 0)]
            rows.append({"width": width, "variant": variant, "epochs_per_run": run_epochs, "runs": n_seeds,
                         "hours_per_run": seconds / 3600, "hours": n_seeds * seconds / 3600})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--cache-dir", help="prepared data (default: a temporary folder)")
    parser.add_argument("--configfile", action="append", default=[], help="profile over the default configuration")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--widths", type=float, nargs="*", help="default: the configured widths")
    parser.add_argument("--train-batches", type=int, default=5, help="timed batches per training pass (0: all)")
    parser.add_argument("--eval-batches", type=int, default=2, help="timed batches per split scored (0: all)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", help="also write the measured rows as CSV")
    parser.add_argument("--from-csv", help="measure nothing: print the table and estimate of an earlier --out CSV")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")

    cfg = cfgmod.load_config(args.configfile)
    cfg["device"] = args.device
    block = cfg["benchmarks"]["physionet"]
    if args.from_csv:
        table = pd.read_csv(args.from_csv)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cache_dir = Path(args.cache_dir or tmp)
            prepared = BENCHMARK.prepare(block, Path(args.data_dir), cache_dir, download=False)
            options = {"train_batches": args.train_batches or None, "eval_batches": args.eval_batches or None,
                       "warmup_batches": args.warmup, "repeats": args.repeats}
            widths = [int(w) if w.is_integer() else w for w in args.widths] if args.widths else None
            rows = measure(cfg, "physionet", prepared, threads=args.threads, options=options, widths=widths)
        table = pd.DataFrame(rows, columns=COLUMNS)
        if args.out:
            table.to_csv(args.out, index=False)
    paper = paper_table(cfg)
    first = table.iloc[0]
    print(f"mTAN on PhysioNet 2012 set A: seconds per epoch on {first['device']} ({first['machine']}, "
          f"{first['threads']} thread(s)); training pass timed on {first['train_batches_timed']} of "
          f"{first['train_batches']} batches and scaled to the epoch")
    print(f"{'width':>6} {'phase':>8} {'dendr':>5} {'params':>9} {'train s':>8} {'eval s':>7} {'s/epoch':>8} "
          f"{'CPU s/epoch':>11} {'paper s/epoch (RTX 2080)':>25} {'CPU inputs/s (batch 1)':>23} "
          f"{'GPU inputs/s (batch 100)':>25} {'CPU share':>9}")
    for r in table.itertuples():
        ref = paper.get((float(r.width), r.phase, int(r.dendrites)))
        gpu = "" if pd.isna(r.gpu_inputs_per_second) else f"{r.gpu_inputs_per_second:.0f}"
        cpu = "" if pd.isna(r.cpu_inputs_per_second) else f"{r.cpu_inputs_per_second:.1f}"
        share = getattr(r, "cpu_share", None)
        busy = "" if share is None or pd.isna(share) else f"{r.seconds_per_epoch * share:.2f}"
        print(f"{r.width:>6g} {r.phase:>8} {r.dendrites:>5} {r.params:>9} {r.train_seconds_per_epoch:>8.2f} "
              f"{r.eval_seconds_per_epoch:>7.2f} {r.seconds_per_epoch:>8.2f} {busy:>11} "
              f"{'' if ref is None else ref:>25} {cpu:>23} {gpu:>25} "
              f"{'' if share is None or pd.isna(share) else f'{share:.2f}':>9}")
    print("CPU share: the timing job's CPU seconds per wall second and thread; below 1, other processes shared "
          "the cores and the seconds above are longer than on an idle machine. CPU s/epoch = s/epoch x CPU share: "
          "the CPU time the epoch used, about what it takes on an idle core")
    if set(table["width"].astype(float)) != {float(w) for w in factor_values(cfg, "physionet")["width"]}:
        print("\n(no estimate: only part of the configured widths was measured)")
        return
    est = estimate(cfg, table)
    print(f"\nEstimated compute of the configured profile ({cfg['profile']}) on this device, every run's cycles "
          f"at the CPU seconds per epoch above (see the docstring for the assumptions):")
    print(est.to_string(index=False, formatters={"width": "{:g}".format, "hours_per_run": "{:,.2f}".format,
                                                 "hours": "{:,.1f}".format}))
    print(f"total: {est['hours'].sum():,.1f} {first['device'].upper()}-hours "
          f"({est.loc[est['variant'] != 'baseline_matched', 'hours'].sum():,.1f} without baseline_matched)")
    paper_est = estimate(cfg, per_epoch=paper_seconds_per_epoch(cfg))
    print("\nThe same grid on the paper's GPU (one RTX 2080), from its Table 2 values (assumptions in "
          "paper_seconds_per_epoch):")
    print(paper_est.to_string(index=False, formatters={"width": "{:g}".format, "hours_per_run": "{:,.2f}".format,
                                                       "hours": "{:,.1f}".format}))
    print(f"total: {paper_est['hours'].sum():,.1f} GPU-hours "
          f"({paper_est.loc[paper_est['variant'] != 'baseline_matched', 'hours'].sum():,.1f} without baseline_matched)")
    n_seeds = len(seeds(cfg, "physionet"))
    for r in block["outputs"].get("table2", {}).get("paper_totals", []):
        print(f"the paper's own total for one width-{r['width']:g} run on one RTX 2080: {r['seconds']:,} s; "
              f"x {n_seeds} seeds = {n_seeds * r['seconds'] / 3600:,.1f} GPU-hours")


if __name__ == "__main__":
    main()
