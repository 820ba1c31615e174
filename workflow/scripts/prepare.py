"""Snakemake `prepare` rule: featurise a benchmark's data once into cache_dir."""
import logging

from experiments.pipeline import prepare

with open(snakemake.log[0], "w") as log_file:  # noqa: F821 (injected by Snakemake)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=log_file)
    prepare(snakemake.config, snakemake.wildcards.benchmark)  # noqa: F821
