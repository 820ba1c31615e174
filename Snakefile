# Perforated Backpropagation suite: download -> prepare -> train each seed -> aggregate -> figure.
#
#   snakemake --cores 1 figures/tox21_auc.pdf                                  # paper protocol (50 seeds)
#   snakemake --cores 2 --configfile config/quick.yaml figures/tox21_auc.pdf   # quick profile
#   snakemake --cores 16 --resources gpu_slots=4 --config device=cuda ...      # 4 seeds share one GPU
#
# Wildcards: benchmark, variant, seed. Every rule has a log: and a benchmark: file under logs/.
#
# What reruns, and what never does:
# * A training run reruns only when its own settings change (params `settings` is the run's whole
#   configuration, seed_overrides included). Rules are shell commands of `python -m experiments`, so
#   editing the package's code never silently retrains 50 seeds (Snakemake reruns `script:` rules
#   whenever the script file is newer than their outputs); use --forcerun train for that.
# * Raw data is never a rule's output once it exists: the download rule only matches files missing from
#   data_dir when the workflow is parsed, so a user's own copy (even with --forceall) is never
#   deleted or overwritten.
import json
import re
import shlex
import sys
from pathlib import Path

from experiments import config as cfgmod
from experiments.registry import get_benchmark

configfile: str(cfgmod.DEFAULT_CONFIG)  # absolute: also found when run with --directory
cfgmod.validate(config, "Snakemake configuration (config/config.yaml + --configfile/--config)")

DATA = config["data_dir"]
CACHE = config["cache_dir"]
RESULTS = config["results_dir"]
FIGURES = config["figures_dir"]
LOGS = config["logs_dir"]
# Each step is `python -m experiments <step> ... --config-json CONFIG`: the whole validated configuration,
# so a step run by the pipeline sees exactly what a step run by hand with the same files would.
EXPERIMENTS = f"{shlex.quote(sys.executable)} -m experiments"
CONFIG_JSON = json.dumps(config, sort_keys=True)
MISSING_RAW = sorted({Path(f.name).name for b in config["benchmarks"] for f in get_benchmark(b).raw_files()
                      if not (Path(DATA) / f.name).exists()})


wildcard_constraints:
    benchmark="[a-z0-9_]+",
    variant="[a-z_]+",
    seed="[0-9]+",
    metric="[a-z_0-9]+",


def raw_files(wildcards):
    return [f"{DATA}/{f.name}" for f in get_benchmark(wildcards.benchmark).raw_files()]


def run_summaries(wildcards):
    b = wildcards.benchmark
    return [f"{RESULTS}/{b}/{v}/seed{s}/summary.json"
            for v in config["benchmarks"][b]["variants"] for s in cfgmod.seeds(config, b)]


def reference_run(wildcards):
    # The compute-matched control trains as long as the pb run of the same seed did.
    if wildcards.variant == "baseline_matched":
        return [f"{RESULTS}/{wildcards.benchmark}/pb/seed{wildcards.seed}/summary.json"]
    return []


rule all:
    input:
        [f"{FIGURES}/{b}_{get_benchmark(b).metric}.pdf" for b in config["benchmarks"]],


rule download:
    output:
        f"{DATA}/{{benchmark}}/{{filename}}",
    wildcard_constraints:
        # Only files missing when the workflow was parsed; "(?!)" matches nothing.
        filename="|".join(map(re.escape, MISSING_RAW)) or "(?!)",
    log:
        f"{LOGS}/download/{{benchmark}}_{{filename}}.log",
    benchmark:
        f"{LOGS}/download/{{benchmark}}_{{filename}}.benchmark.tsv"
    shell:
        "{EXPERIMENTS} download {wildcards.benchmark} --file {wildcards.filename:q} "
        "--config-json {CONFIG_JSON:q} > {log:q} 2>&1"


rule prepare:
    input:
        raw_files,
    output:
        f"{CACHE}/{{benchmark}}/prepared.pt",
    log:
        f"{LOGS}/prepare/{{benchmark}}.log",
    benchmark:
        f"{LOGS}/prepare/{{benchmark}}.benchmark.tsv"
    shell:
        "{EXPERIMENTS} prepare {wildcards.benchmark} --config-json {CONFIG_JSON:q} > {log:q} 2>&1"


rule train:
    input:
        # ancient: featurising again (same data, newer file) must not retrain every seed.
        prepared=ancient(f"{CACHE}/{{benchmark}}/prepared.pt"),
        reference=reference_run,
    output:
        f"{RESULTS}/{{benchmark}}/{{variant}}/seed{{seed}}/summary.json",
    params:
        settings=lambda w: cfgmod.run_config(config, w.benchmark, w.variant, int(w.seed)),
    log:
        f"{LOGS}/train/{{benchmark}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{LOGS}/train/{{benchmark}}/{{variant}}/seed{{seed}}.benchmark.tsv"
    threads: config["torch_threads"]
    resources:
        gpu_slots=1,
    shell:
        "{EXPERIMENTS} run {wildcards.benchmark} --variant {wildcards.variant} --seed {wildcards.seed} "
        "--threads {threads} --config-json {CONFIG_JSON:q} > {log:q} 2>&1"


rule aggregate:
    input:
        run_summaries,
    output:
        summary=f"{RESULTS}/{{benchmark}}/summary.csv",
        counts=f"{RESULTS}/{{benchmark}}/dendrite_counts.csv",
        stats=f"{RESULTS}/{{benchmark}}/stats.csv",
    log:
        f"{LOGS}/aggregate/{{benchmark}}.log",
    benchmark:
        f"{LOGS}/aggregate/{{benchmark}}.benchmark.tsv"
    shell:
        "{EXPERIMENTS} aggregate {wildcards.benchmark} --config-json {CONFIG_JSON:q} > {log:q} 2>&1"


rule figure:
    input:
        summary=f"{RESULTS}/{{benchmark}}/summary.csv",
    output:
        pdf=f"{FIGURES}/{{benchmark}}_{{metric}}.pdf",
        png=f"{FIGURES}/{{benchmark}}_{{metric}}.png",
    params:
        figure=lambda w: config["benchmarks"][w.benchmark]["figure"],
    log:
        f"{LOGS}/figure/{{benchmark}}_{{metric}}.log",
    benchmark:
        f"{LOGS}/figure/{{benchmark}}_{{metric}}.benchmark.tsv"
    shell:
        "{EXPERIMENTS} figure {wildcards.benchmark} --metric {wildcards.metric} "
        "--config-json {CONFIG_JSON:q} > {log:q} 2>&1"
