# train: one job per run of the grid (benchmark, variant, factor values, seed).


def train_inputs(wildcards):
    run = wildcard_run(wildcards)
    # ancient: preparing again (same settings, newer file) must not retrain every run.
    inputs = {"prepared": ancient(prepared_file(run.benchmark))}
    if run.variant == "baseline_matched":  # trains as long as the run it is matched to
        matched_to = config["benchmarks"][run.benchmark]["matched_to"]
        inputs["reference"] = run_summary(run.with_variant(matched_to))
    return inputs


def train_resources(key):
    return lambda wildcards: config["benchmarks"][wildcards.benchmark]["resources"][key]


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
