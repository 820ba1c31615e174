"""Command line of the suite.

    python -m experiments run tox21 --variant pb --seed 7      # train (or resume) one seed
    python -m experiments download tox21                       # fetch and verify the raw data
    python -m experiments prepare tox21                        # featurise once (cached)
    python -m experiments aggregate tox21                      # summary.csv, dendrite_counts.csv, stats.csv
    python -m experiments figure tox21                         # the candlestick chart from summary.csv

Every command reads config/config.yaml, then the files given with --configfile, then --set key=value
overrides (or, from the Snakefile, the whole configuration as --config-json). Problems with the input
(data, config, earlier results) end with a message that says the fix and exit status 2; nothing is left
half-written.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from . import config as cfgmod
from .errors import ConfigError, UserError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", help="benchmark name, e.g. tox21")
    parser.add_argument("--configfile", action="append", default=[], metavar="YAML",
                        help="profile merged over config/config.yaml (repeatable), e.g. config/quick.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one key, e.g. --set device=cpu --set benchmarks.tox21.pb.candidates=2")
    parser.add_argument("--config-json", metavar="JSON",
                        help="the whole configuration as JSON (what the Snakefile passes); "
                             "replaces config/config.yaml, --configfile and --set")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train one (benchmark, variant, seed); resumes when interrupted")
    _common(run)
    run.add_argument("--variant", required=True)
    run.add_argument("--seed", type=int, required=True)
    run.add_argument("--threads", type=int, help="CPU threads for torch (default: torch_threads of the config)")
    download = sub.add_parser("download", help="download and verify the raw data")
    _common(download)
    download.add_argument("--file", help="only this raw file (its name, e.g. tox21.csv.gz)")
    _common(sub.add_parser("prepare", help="featurise the data once (cached)"))
    _common(sub.add_parser("aggregate", help="results/<benchmark>/summary.csv, dendrite_counts.csv and "
                                             "stats.csv from the finished runs"))
    figure = sub.add_parser("figure", help="figures/<benchmark>_<metric>.pdf/.png from "
                                           "results/<benchmark>/summary.csv")
    _common(figure)
    figure.add_argument("--metric", help="the benchmark's metric (checked; the file name carries it)")
    return parser


def _config(args) -> dict:
    if args.config_json is None:
        return cfgmod.load_config(args.configfile, args.overrides)
    if args.configfile or args.overrides:
        raise ConfigError("--config-json replaces --configfile and --set; give one or the other")
    try:
        cfg = json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config-json is not valid JSON: {exc}") from None
    return cfgmod.validate(cfg, "--config-json")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        cfg = _config(args)
        if args.command == "run":
            from .runner import train_from_config
            train_from_config(cfg, args.benchmark, args.variant, args.seed, threads=args.threads)
        elif args.command == "download":
            from .pipeline import download
            download(cfg, args.benchmark, only=args.file)
        elif args.command == "prepare":
            from .pipeline import prepare
            prepare(cfg, args.benchmark)
        elif args.command == "aggregate":
            from .pipeline import aggregate
            aggregate(cfg, args.benchmark)
        elif args.command == "figure":
            from .pipeline import figure
            figure(cfg, args.benchmark, metric=args.metric)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last finished epoch", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
