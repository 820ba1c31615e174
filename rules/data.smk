# download -> prepare. A raw file (or folder) is a download target only when it is missing from data_dir at
# parse time, so no rule, not even under --forceall, can delete or rewrite a user's copy.

RAW = {raw.name: (b, raw) for b in BENCHMARKS for raw in INFOS[b].raw_files(config["benchmarks"][b])}
MISSING_FILES = [n for n, (_, raw) in RAW.items() if not raw.is_dir and not (Path(DATA) / n).exists()]
MISSING_DIRS = [n for n, (_, raw) in RAW.items() if raw.is_dir and not (Path(DATA) / n).exists()]
PREPARED = {prepared_file(b): b for b in BENCHMARKS}

localrules: download_file, download_dir


def raw_inputs(benchmark):
    return [f"{DATA}/{raw.name}" for raw in INFOS[benchmark].raw_files(config["benchmarks"][benchmark])]


rule download_file:
    output:
        f"{DATA}/{{raw}}",
    wildcard_constraints:
        raw=alternatives(MISSING_FILES),
    params:
        benchmark=lambda w: RAW[w.raw][0],
    log:
        f"{LOGS}/download/{{raw}}.log",
    benchmark:
        f"{LOGS}/download/{{raw}}.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=120,
    shell:
        "{EXPERIMENTS} download {params.benchmark} --file {wildcards.raw:q} {RESOLVED} " + on_error("{log:q}")


rule download_dir:
    output:
        directory(f"{DATA}/{{rawdir}}"),
    wildcard_constraints:
        rawdir=alternatives(MISSING_DIRS),
    params:
        benchmark=lambda w: RAW[w.rawdir][0],
    log:
        f"{LOGS}/download/{{rawdir}}.log",
    benchmark:
        f"{LOGS}/download/{{rawdir}}.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    shell:
        "{EXPERIMENTS} download {params.benchmark} --file {wildcards.rawdir:q} {RESOLVED} " + on_error("{log:q}")


rule prepare:
    input:
        lambda w: raw_inputs(PREPARED[f"{CACHE}/{w.prepared}"]),
    output:
        f"{CACHE}/{{prepared}}",
    wildcard_constraints:
        prepared=alternatives([str(Path(p).relative_to(CACHE)) for p in PREPARED]),
    params:
        benchmark=lambda w: PREPARED[f"{CACHE}/{w.prepared}"],
        settings=lambda w: cfgmod.prepare_settings(config, PREPARED[f"{CACHE}/{w.prepared}"]),
    log:
        f"{LOGS}/prepare/{{prepared}}.log",
    benchmark:
        f"{LOGS}/prepare/{{prepared}}.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "{EXPERIMENTS} prepare {params.benchmark} {RESOLVED} " + on_error("{log:q}")
