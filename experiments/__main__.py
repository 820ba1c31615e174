"""Command line of the suite.

    python -m experiments run tox21 --variant pb --seed 7      # train (or resume) one seed
    python -m experiments download tox21                       # fetch and verify the raw data
    python -m experiments prepare tox21                        # featurise once (cached)
    python -m experiments figure tox21                         # the candlestick chart from summary.csv

Every command reads config/config.yaml, then the files given with --configfile, then --set key=value
overrides. Problems with the input (data, config, earlier results) end with a message that says the fix
and exit status 2; nothing is left half-written.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import config as cfgmod
from .errors import UserError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", help="benchmark name, e.g. tox21")
    parser.add_argument("--configfile", action="append", default=[], metavar="YAML",
                        help="profile merged over config/config.yaml (repeatable), e.g. config/quick.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one key, e.g. --set device=cpu --set benchmarks.tox21.pb.candidates=2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train one (benchmark, variant, seed); resumes when interrupted")
    _common(run)
    run.add_argument("--variant", required=True)
    run.add_argument("--seed", type=int, required=True)
    for name, text in [("download", "download and verify the raw data"),
                       ("prepare", "featurise the data once (cached)"),
                       ("figure", "draw figures/<benchmark>_<metric>.pdf/.png from results/<benchmark>/summary.csv")]:
        _common(sub.add_parser(name, help=text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        cfg = cfgmod.load_config(args.configfile, args.overrides)
        if args.command == "run":
            from .runner import train_from_config
            train_from_config(cfg, args.benchmark, args.variant, args.seed)
        elif args.command == "download":
            from .pipeline import download
            download(cfg, args.benchmark)
        elif args.command == "prepare":
            from .pipeline import prepare
            prepare(cfg, args.benchmark)
        elif args.command == "figure":
            from .pipeline import figure
            figure(cfg, args.benchmark)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last finished epoch", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
