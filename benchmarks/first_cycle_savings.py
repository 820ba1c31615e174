"""What sharing the first cycle saved in a finished profile, by the runs' own records.

For every shared first cycle under ``<results>/<benchmark>/first_cycle/``: its epochs' seconds (epochs.csv),
and how many finished runs started from it (their summary.json names it). Without sharing, each of those runs
would have trained the cycle itself: the saving is (runs - 1) x the cycle's seconds. Epoch seconds only (the
training and evaluation passes): job start-up and model building are not in the records.

    python benchmarks/first_cycle_savings.py --results results/quick
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path


def savings(results: Path) -> list[dict]:
    users = Counter()
    for summary in results.glob("*/*/*/summary.json"):
        first = json.loads(summary.read_text()).get("first_cycle")
        if first:
            users[first] += 1
    rows = []
    for epochs in sorted(results.glob("*/first_cycle/*/*/epochs.csv")):
        folder = str(epochs.parent.relative_to(results))
        with open(epochs, newline="") as f:
            seconds = sum(float(row["seconds"]) for row in csv.DictReader(f))
        runs = users.get(folder, 0)
        rows.append({"benchmark": folder.split("/")[0], "first_cycle": folder, "seconds": seconds, "runs": runs,
                     "saved_seconds": max(runs - 1, 0) * seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a profile's results folder, e.g. results/quick")
    args = parser.parse_args()
    if not args.results.is_dir():
        parser.error(f"{args.results} is not a folder: give a profile's results folder, e.g. results/quick")
    rows = savings(args.results)
    if not rows:
        parser.error(f"no shared first cycle under {args.results}/<benchmark>/first_cycle/: nothing was shared")
    by_benchmark: dict[str, list[dict]] = {}
    for row in rows:
        by_benchmark.setdefault(row["benchmark"], []).append(row)
    print("benchmark  cycles  runs  cycle seconds  saved seconds")
    for name, group in sorted(by_benchmark.items()):
        print(f"{name:<10} {len(group):>6} {sum(r['runs'] for r in group):>5} "
              f"{sum(r['seconds'] for r in group):>14.0f} {sum(r['saved_seconds'] for r in group):>14.0f}")
    print(f"{'all':<10} {len(rows):>6} {sum(r['runs'] for r in rows):>5} {sum(r['seconds'] for r in rows):>14.0f} "
          f"{sum(r['saved_seconds'] for r in rows):>14.0f}")


if __name__ == "__main__":
    main()
