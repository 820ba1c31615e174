# Perforated Backpropagation suite: download -> prepare -> train each seed -> aggregate -> figure.
#
#   snakemake --cores 1 figures/tox21_auc.pdf                                  # paper protocol (50 seeds)
#   snakemake --cores 2 --configfile config/quick.yaml figures/tox21_auc.pdf   # quick profile
#   snakemake --cores 16 --resources gpu_slots=4 ...                           # 4 seeds share one GPU
#
# Wildcards: benchmark, variant, seed. Each rule has a log: and a benchmark: file under logs/.
# A run is recomputed only when its own settings change (`params: settings` is the run's whole
# configuration, seed_overrides included); everything it produced stays put otherwise.
from experiments import config as cfgmod
from experiments.registry import get_benchmark

configfile: "config/config.yaml"
cfgmod.validate(config, "Snakemake configuration (config/config.yaml + --configfile/--config)")

DATA = config["data_dir"]
CACHE = config["cache_dir"]
RESULTS = config["results_dir"]
FIGURES = config["figures_dir"]
LOGS = config["logs_dir"]

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
    log:
        f"{LOGS}/download/{{benchmark}}_{{filename}}.log",
    benchmark:
        f"{LOGS}/download/{{benchmark}}_{{filename}}.benchmark.tsv"
    script:
        "workflow/scripts/download.py"


rule prepare:
    input:
        raw_files,
    output:
        f"{CACHE}/{{benchmark}}/prepared.pt",
    log:
        f"{LOGS}/prepare/{{benchmark}}.log",
    benchmark:
        f"{LOGS}/prepare/{{benchmark}}.benchmark.tsv"
    script:
        "workflow/scripts/prepare.py"


rule train:
    input:
        prepared=f"{CACHE}/{{benchmark}}/prepared.pt",
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
    script:
        "workflow/scripts/train.py"


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
    script:
        "workflow/scripts/aggregate.py"


rule figure:
    input:
        summary=f"{RESULTS}/{{benchmark}}/summary.csv",
    output:
        pdf=f"{FIGURES}/{{benchmark}}_{{metric}}.pdf",
        png=f"{FIGURES}/{{benchmark}}_{{metric}}.png",
    log:
        f"{LOGS}/figure/{{benchmark}}_{{metric}}.log",
    benchmark:
        f"{LOGS}/figure/{{benchmark}}_{{metric}}.benchmark.tsv"
    script:
        "workflow/scripts/figure.py"
