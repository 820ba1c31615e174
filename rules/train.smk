# first_cycle: one job per shared first neuron cycle, i.e. per (benchmark, factor values, seed) and the settings
# that cycle reads (the key: config.first_cycle_key); every variant of the point starts from it.
# train: one job per run of the grid (benchmark, variant, factor values, seed), continuing from its first cycle.


def train_resources(key):
    return lambda wildcards: config["benchmarks"][wildcards.benchmark]["resources"][key]


def first_cycle_file(run):
    return str(cfgmod.first_cycle_path(config, run))


# (benchmark, point, key) -> a run that starts from that first cycle (the job trains the cycle as that run reads it)
FIRST_CYCLE_RUNS = {}
for _benchmark in BENCHMARKS:
    for _run in grid_runs(_benchmark):
        if _run.variant != widen.VARIANT:  # a wider network trains its own first cycle (or starts from its reference's)
            FIRST_CYCLE_RUNS.setdefault((_benchmark, _run.point, cfgmod.first_cycle_key(config, _run)), _run)


def first_cycle_run(wildcards):
    try:
        return FIRST_CYCLE_RUNS[(wildcards.benchmark, wildcards.point, wildcards.key)]
    except KeyError:
        raise ValueError(f"no run of the grid starts from the first cycle {wildcards.benchmark}/"
                         f"{wildcards.point}/{wildcards.key} (its settings changed?)") from None


rule first_cycle:
    input:
        prepared=lambda w: ancient(prepared_file(w.benchmark)),
    output:
        f"{RESULTS}/{{benchmark}}/first_cycle/{{point}}/{{key}}/first_cycle.pt",
    params:
        settings=lambda w: cfgmod.first_cycle_settings(config, first_cycle_run(w)),
        variant=lambda w: first_cycle_run(w).variant,
    log:
        f"{LOGS}/first_cycle/{{benchmark}}/{{point}}/{{key}}.log",
    benchmark:
        f"{LOGS}/first_cycle/{{benchmark}}/{{point}}/{{key}}.benchmark.tsv"
    threads: config["torch_threads"]
    retries: config["train_retries"]  # a killed cycle resumes from its checkpoint
    resources:
        mem_mb=train_resources("mem_mb"),
        runtime=train_resources("runtime_min"),
        gpu=1 if config["device"] == "cuda" else 0,
        gpu_slots=1,
    shell:
        "{EXPERIMENTS} run {wildcards.benchmark} --variant {params.variant} --point {wildcards.point} "
        "--first-cycle-only --threads {threads} {RESOLVED} " + on_error("{log:q}")


def train_inputs(wildcards):
    run = wildcard_run(wildcards)
    # ancient: preparing again (same settings, newer file) must not retrain every run. The first cycle is not
    # ancient: training it again (--forcerun first_cycle) retrains every run that starts from it.
    inputs = {"prepared": ancient(prepared_file(run.benchmark))}
    if config["share_first_cycle"]:
        # wider: its reference's shared cycle, which it starts from when the match is the original network
        inputs["first_cycle"] = first_cycle_file(run.with_variant(config["benchmarks"][run.benchmark]["matched_to"])
                                                 if run.variant == widen.VARIANT else run)
    if run.variant in ("baseline_matched", widen.VARIANT):  # trains as long / as wide as the run it is matched to
        matched_to = config["benchmarks"][run.benchmark]["matched_to"]
        inputs["reference"] = run_summary(run.with_variant(matched_to))
    return inputs


rule train:
    input:
        unpack(train_inputs),
    output:
        f"{RESULTS}/{{benchmark}}/{{variant}}/{{point}}/summary.json",
    params:
        settings=lambda w: cfgmod.run_settings(config, wildcard_run(w)),
    log:
        f"{LOGS}/train/{{benchmark}}/{{variant}}/{{point}}.log",
    benchmark:
        f"{LOGS}/train/{{benchmark}}/{{variant}}/{{point}}.benchmark.tsv"
    threads: config["torch_threads"]
    retries: config["train_retries"]  # a killed run (e.g. at its walltime) resumes from its checkpoint
    resources:
        mem_mb=train_resources("mem_mb"),
        runtime=train_resources("runtime_min"),
        gpu=1 if config["device"] == "cuda" else 0,  # Snakemake's SLURM executor turns gpu=1 into --gpus=1
        gpu_slots=1,  # --resources gpu_slots=N packs at most N runs onto one machine's GPU
        attempt=lambda wildcards, attempt: attempt,  # a retry keeps a run finished in a job counted as failed
    shell:
        "{EXPERIMENTS} run {wildcards.benchmark} --variant {wildcards.variant} --point {wildcards.point} "
        "--threads {threads} --attempt {resources.attempt} {RESOLVED} " + on_error("{log:q}")
