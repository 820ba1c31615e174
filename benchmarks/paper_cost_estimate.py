#!/usr/bin/env python
"""Estimated compute of the full Tox21 paper profile (50 seeds x baseline, pb, baseline_matched).

An estimate, not a measurement: it multiplies epochs by seconds per epoch. Its inputs are printed with
the result, and each is a command-line option, so the estimate is redone when a number is measured:

* seconds per epoch (``tox21_epoch_times.py``): a neuron epoch with k dendrites and a dendrite epoch
  with k dendrites already in place, each a straight line through the measured K = 0, 1, 2 points;
* epochs per phase: the first neuron cycle (a paper-protocol baseline run measures it: give its
  ``epochs.csv`` with ``--first-cycle-from``), each later neuron cycle and each dendrite phase;
* how many dendrites the runs end with: the paper's Table 1 (SPEC section 3), 50 runs.

A run whose best model has K dendrites went through K + 2 neuron cycles (0..K+1 dendrites; the last one
did not beat the one before, which stops the run) and K + 1 dendrite phases (with 0..K dendrites in
place). ``baseline`` is the first neuron cycle; ``baseline_matched`` trains as many epochs as ``pb``
at the cost of a plain epoch.

    python benchmarks/paper_cost_estimate.py --first-cycle-from results/tox21/baseline/seed0/epochs.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

# The paper's Table 1: final dendrite count -> number of runs (of 50).
PAPER_DENDRITE_COUNTS = {0: 2, 1: 2, 2: 8, 3: 11, 4: 5, 5: 2, 6: 7, 7: 7, 8: 2, 9: 2, 10: 1, 11: 0, 12: 1}


def line_through(points: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of ``points[k]`` against k."""
    n = len(points)
    if n == 1:
        return points[0], 0.0
    mean_k, mean_t = (n - 1) / 2, sum(points) / n
    slope = sum((k - mean_k) * (t - mean_t) for k, t in enumerate(points)) / sum((k - mean_k) ** 2 for k in range(n))
    return mean_t - slope * mean_k, slope


def first_cycle_epochs(epochs_csv: Path) -> int:
    """Epochs of cycle 0 in a run's epochs.csv; the run must have finished that cycle."""
    with open(epochs_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["cycle"] == "0" and r["phase"] == "neuron"]
    if not rows:
        raise SystemExit(f"{epochs_csv}: no neuron epochs of cycle 0; is this a run's epochs.csv?")
    summary = epochs_csv.with_name("summary.json")
    if not summary.exists():
        print(f"warning: {summary} is missing, so the run may not have finished its first cycle; "
              f"using the {len(rows)} epochs it has so far (a lower bound)", file=sys.stderr)
    return len(rows)


def run_cost(final_dendrites: int, t_neuron, t_dendrite, first: int, later: int, dendrite: int) -> tuple[float, int]:
    """Seconds and epochs of one pb run whose best model has ``final_dendrites`` dendrites."""
    seconds = first * t_neuron(0)
    epochs = first
    for k in range(final_dendrites + 1):  # dendrite phase with k in place, then a neuron cycle with k + 1
        seconds += dendrite * t_dendrite(k) + later * t_neuron(k + 1)
        epochs += dendrite + later
    return seconds, epochs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--neuron-seconds", type=float, nargs="+", default=[16.26, 20.37, 27.17],
                   help="s per neuron epoch with K = 0, 1, 2 dendrites (default: this project's CPU, 1 thread)")
    p.add_argument("--dendrite-seconds", type=float, nargs="+", default=[13.14, 15.11, 18.37],
                   help="s per dendrite epoch with K = 0, 1, 2 dendrites in place (default: CPU, 1 thread)")
    p.add_argument("--first-cycle", type=int, default=None, help="epochs of the first neuron cycle")
    p.add_argument("--first-cycle-from", type=Path, default=None, help="a paper-protocol run's epochs.csv")
    p.add_argument("--later-cycle", type=int, default=130,
                   help="epochs of each later neuron cycle (patience 100 + epochs to its best)")
    p.add_argument("--dendrite-phase", type=int, default=300,
                   help="epochs of each dendrite phase (the one measured, pb seed 0's first, had run 204 "
                        "epochs with its layers' correlations still rising, so it lasts at least 304)")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--speedups", type=float, nargs="+", default=[5, 10, 20],
                   help="assumed ratios of these seconds per epoch to a GPU's, for the GPU-hour column")
    args = p.parse_args(argv)

    if args.first_cycle_from is not None:
        first = first_cycle_epochs(args.first_cycle_from)
    elif args.first_cycle is not None:
        first = args.first_cycle
    else:
        p.error("give --first-cycle N or --first-cycle-from RUN/epochs.csv")
    n0, n1 = line_through(args.neuron_seconds)
    d0, d1 = line_through(args.dendrite_seconds)
    t_neuron = lambda k: n0 + n1 * k  # noqa: E731
    t_dendrite = lambda k: d0 + d1 * k  # noqa: E731

    runs = sum(PAPER_DENDRITE_COUNTS.values())
    pb_seconds = pb_epochs = 0.0
    for final, count in PAPER_DENDRITE_COUNTS.items():
        s, e = run_cost(final, t_neuron, t_dendrite, first, args.later_cycle, args.dendrite_phase)
        pb_seconds += count * s / runs
        pb_epochs += count * e / runs
    per_seed = {"baseline": (first * t_neuron(0), first),
                "pb": (pb_seconds, pb_epochs),
                "baseline_matched": (pb_epochs * t_neuron(0), pb_epochs)}

    print(f"inputs: neuron epoch {n0:.2f} + {n1:.2f} k s, dendrite epoch {d0:.2f} + {d1:.2f} k s; "
          f"epochs: first cycle {first}, later cycles {args.later_cycle}, dendrite phases {args.dendrite_phase}; "
          f"final dendrites as the paper's Table 1 (mean "
          f"{sum(k * c for k, c in PAPER_DENDRITE_COUNTS.items()) / runs:.2f}); {args.seeds} seeds")
    header = f"{'variant':18s} {'epochs/seed':>11s} {'hours/seed':>10s} {'hours, all seeds':>16s}"
    header += "".join(f" {'GPU h at ' + format(s, 'g') + 'x':>13s}" for s in args.speedups)
    print(header)
    print("-" * len(header))
    total = 0.0
    for variant, (seconds, epochs) in per_seed.items():
        hours = seconds / 3600
        total += hours * args.seeds
        row = f"{variant:18s} {epochs:11.0f} {hours:10.2f} {hours * args.seeds:16.1f}"
        row += "".join(f" {hours * args.seeds / s:13.1f}" for s in args.speedups)
        print(row)
    row = f"{'total':18s} {'':11s} {'':10s} {total:16.1f}" + "".join(f" {total / s:13.1f}" for s in args.speedups)
    print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
