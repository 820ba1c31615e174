"""Snakemake `figure` rule: the candlestick chart of one benchmark."""
import logging

from experiments.pipeline import figure

with open(snakemake.log[0], "w") as log_file:  # noqa: F821 (injected by Snakemake)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=log_file)
    figure(snakemake.config, snakemake.wildcards.benchmark, metric=snakemake.wildcards.metric)  # noqa: F821
