"""Snakemake `aggregate` rule: summary.csv, dendrite_counts.csv and stats.csv of one benchmark."""
import logging

from experiments.pipeline import aggregate

with open(snakemake.log[0], "w") as log_file:  # noqa: F821 (injected by Snakemake)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=log_file)
    aggregate(snakemake.config, snakemake.wildcards.benchmark, run_summaries=snakemake.input)  # noqa: F821
