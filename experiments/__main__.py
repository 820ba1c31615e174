"""Command line of the suite: each step of the pipeline for one benchmark.

    python -m experiments run tox21 --variant pb --seed 7              # train (or resume) one run
    python -m experiments run physionet --variant pb --seed 0 --factor width=0.125
    python -m experiments grid tox21                                   # list the runs the configuration asks for
    python -m experiments download tox21                               # fetch and verify the raw data
    python -m experiments prepare tox21                                # read the raw data once (cached)
    python -m experiments aggregate tox21                              # summary.csv, stats.csv, ... from the runs
    python -m experiments output tox21 auc                             # a declared figure or table
    python -m experiments compare                                      # results/paper_comparison.csv
    python -m experiments budget                                       # results/compute_budget.csv
    python -m experiments reference tox21 --configfile config/evidence.yaml   # reference/evidence/tox21/

Every command reads config/config.yaml and config/benchmarks/*.yaml, then the files given with --configfile,
then --set key=value overrides (or, from the Snakefile, the whole resolved configuration with
--resolved-config). Problems with the input (data, configuration, earlier results) end with a message that
says the fix and exit status 2; nothing is left half-written.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import config as cfgmod
from .errors import ConfigError, UserError

SUITE_TABLES = {"compare": "paper_comparison.csv", "budget": "compute_budget.csv"}


def _common(parser: argparse.ArgumentParser, benchmark: bool = True) -> None:
    if benchmark:
        parser.add_argument("benchmark", help="a configured benchmark, e.g. tox21")
    parser.add_argument("--configfile", action="append", default=[], metavar="YAML",
                        help="profile merged over the default configuration (repeatable), e.g. config/quick.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one key, e.g. --set device=cpu --set benchmarks.tox21.train.lr=1e-3")
    parser.add_argument("--resolved-config", metavar="JSON",
                        help="the whole configuration as one JSON file (what the Snakefile passes); "
                             "replaces the default files, --configfile and --set")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train one run of the grid; resumes when interrupted")
    _common(run)
    run.add_argument("--variant", required=True)
    run.add_argument("--seed", type=int, help="the run's seed (a non-negative integer)")
    run.add_argument("--factor", action="append", default=[], metavar="NAME=VALUE",
                     help="a factor value of the run, e.g. --factor width=0.125 (one per configured factor)")
    run.add_argument("--point", help="the run's folder name instead of --seed/--factor, e.g. width0.125-seed3")
    run.add_argument("--threads", type=int, help="CPU threads for torch (default: torch_threads of the config)")
    run.add_argument("--first-cycle-only", action="store_true",
                     help="train only the shared first cycle the run starts from (the pipeline's first_cycle job)")
    run.add_argument("--attempt", type=int, default=1,
                     help="Snakemake's attempt number: a retry (> 1) keeps a run that finished in a job counted as failed")
    _common(sub.add_parser("grid", help="list every run of the benchmark's grid, with its folder"))
    download = sub.add_parser("download", help="download and verify the raw data")
    _common(download)
    download.add_argument("--file", help="only this raw file (its name below data_dir, or its base name)")
    _common(sub.add_parser("prepare", help="read the raw data once into the prepared cache"))
    _common(sub.add_parser("aggregate", help="results/<benchmark>/summary.csv, stats.csv, dendrite_counts.csv, "
                                             "by_dendrites.csv and improvement.csv from the finished runs"))
    output = sub.add_parser("output", help="one declared figure (figures/<benchmark>_<name>.pdf) or table "
                                           "(results/<benchmark>/<name>.csv)")
    _common(output)
    output.add_argument("name", help="the output's name, e.g. auc (the benchmark's meta.py declares them)")
    output.add_argument("--threads", type=int, help="CPU threads for torch where the output measures or computes")
    _common(sub.add_parser("compare", help="results/paper_comparison.csv: the paper's headline numbers beside "
                                           "ours, and the controls the paper lacks"), benchmark=False)
    _common(sub.add_parser("budget", help="results/compute_budget.csv: device-hours of the paper protocol from "
                                          "the runs done"), benchmark=False)
    reference = sub.add_parser("reference", help="copy a finished profile's small outputs (run records, tables, "
                                                 "job times, PNG figures, provenance) into reference/<profile>/<benchmark>/")
    _common(reference)
    reference.add_argument("--to", metavar="DIR", help="the folder to write (default reference/<profile>/<benchmark>)")
    reference.add_argument("--run-command", metavar="TEXT", help="the command that made the results (recorded)")
    reference.add_argument("--merge", action="store_true",
                           help="add this part's seeds to the folder an earlier export wrote (the same profile but "
                                "for the seeds); every table and figure is recomputed from the pooled run records")
    return parser


def _config(args) -> dict:
    if args.resolved_config is None:
        return cfgmod.load_config(args.configfile, args.overrides)
    if args.configfile or args.overrides:
        raise ConfigError("--resolved-config replaces --configfile and --set; give one or the other")
    return cfgmod.read_config_json(args.resolved_config)


def _run(cfg: dict, args):
    from .grid import make_run, parse_point

    if args.point is not None:
        if args.seed is not None or args.factor:
            raise ConfigError("--point names the seed and the factors: give it alone, or --seed and --factor")
        factors, seed = parse_point(cfg, args.benchmark, args.point)
        factors = dict(factors)
    else:
        if args.seed is None:
            raise ConfigError("give the run's --seed (and a --factor NAME=VALUE per configured factor)")
        seed, factors = args.seed, {}
        for text in args.factor:
            name, sep, value = text.partition("=")
            if not sep:
                raise ConfigError(f"--factor {text!r} must look like NAME=VALUE, e.g. width=0.125")
            factors[name] = cfgmod.load_yaml_text(value)
    return make_run(cfg, args.benchmark, args.variant, seed, factors)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        cfg = _config(args)
        if hasattr(args, "benchmark"):
            cfgmod.benchmark_block(cfg, args.benchmark)
        if cfg["reproducible_cpu"]:
            from .provenance import apply_reproducible_cpu
            apply_reproducible_cpu()  # before torch loads: the settings only act then
        if args.command == "run":
            run = _run(cfg, args)
            from .runner import train, train_first_cycle
            if args.first_cycle_only:
                train_first_cycle(cfg, run, threads=args.threads)
            else:
                train(cfg, run, threads=args.threads, attempt=args.attempt)
        elif args.command == "grid":
            from .grid import grid, run_dir
            for run in grid(cfg, args.benchmark):
                print(f"{run.label}\t{run_dir(cfg['results_dir'], run)}")
        elif args.command == "download":
            from .pipeline import download
            download(cfg, args.benchmark, only=args.file)
        elif args.command == "prepare":
            from .pipeline import prepare
            prepare(cfg, args.benchmark)
        elif args.command == "aggregate":
            from .pipeline import aggregate
            aggregate(cfg, args.benchmark)
        elif args.command == "output":
            from .outputs import make_output
            make_output(cfg, args.benchmark, args.name, threads=args.threads)
        elif args.command == "reference":
            from .reference import export, merge
            write = merge if args.merge else export
            print(f"wrote {write(cfg, args.benchmark, args.to, args.run_command, argv)}", file=sys.stderr)
        elif args.command in ("compare", "budget"):
            from pathlib import Path

            from .aggregate import write_csv_atomic
            if args.command == "compare":
                from .paper import paper_comparison as table
            else:
                from .budget import compute_budget as table
            path = write_csv_atomic(table(cfg), Path(cfg["results_dir"]) / SUITE_TABLES[args.command])
            print(f"wrote {path}", file=sys.stderr)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last finished epoch", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
