"""Snakemake `train` rule: one (benchmark, variant, seed), settings from the rule's params."""
import logging
import sys
from pathlib import Path

from experiments.runner import train_run

cfg = snakemake.config  # noqa: F821 (injected by Snakemake)
with open(snakemake.log[0], "w") as log_file:  # noqa: F821
    sys.stdout = sys.stderr = log_file
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=log_file)
    train_run(dict(snakemake.params.settings), data_dir=Path(cfg["data_dir"]),  # noqa: F821
              cache_dir=Path(cfg["cache_dir"]), results_dir=Path(cfg["results_dir"]), device=cfg["device"],
              download=cfg["download"], threads=snakemake.threads)  # noqa: F821
