"""Snakemake `download` rule: fetch one raw file of a benchmark into data_dir and verify it."""
import logging

from experiments.pipeline import download

with open(snakemake.log[0], "w") as log_file:  # noqa: F821 (injected by Snakemake)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=log_file)
    download(snakemake.config, snakemake.wildcards.benchmark, only=snakemake.wildcards.filename)  # noqa: F821
