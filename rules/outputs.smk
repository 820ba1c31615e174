# aggregate -> the figures and tables each benchmark declares (experiments/<package>/meta.py).

localrules: aggregate, figure, table, paper_comparison, compute_budget


rule aggregate:
    input:
        lambda w: [run_summary(r) for r in grid_runs(w.benchmark)],
    output:
        **{name: f"{RESULTS}/{{benchmark}}/{name}.csv" for name in ("summary", "stats", "dendrite_counts",
                                                                   "improvement", "by_dendrites")},
    log:
        f"{LOGS}/aggregate/{{benchmark}}.log",
    benchmark:
        f"{LOGS}/aggregate/{{benchmark}}.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{EXPERIMENTS} aggregate {wildcards.benchmark} {RESOLVED} " + on_error("{log:q}")


rule figure:
    input:
        lambda w: output_inputs(w.benchmark, w.figure),
    output:
        pdf=f"{FIGURES}/{{benchmark}}_{{figure}}.pdf",
        png=report(f"{FIGURES}/{{benchmark}}_{{figure}}.png", caption="../report/output.rst",
                   category="{benchmark}", labels={"benchmark": "{benchmark}", "figure": "{figure}"}),
    wildcard_constraints:
        figure=alternatives([name for _, name in FIGURES_DECLARED]),
    params:
        caption=lambda w: INFOS[w.benchmark].output(w.figure, "figure").caption,
    log:
        f"{LOGS}/figure/{{benchmark}}_{{figure}}.log",
    benchmark:
        f"{LOGS}/figure/{{benchmark}}_{{figure}}.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{EXPERIMENTS} output {wildcards.benchmark} {wildcards.figure} {RESOLVED} " + on_error("{log:q}")


def table_names(local):
    """Cheap tables are made on the submitting host (rule table); measured ones, such as a timing table, are
    jobs of their own (rule measure), so no other job shares the machine while they measure."""
    return [n for (_, n), o in TABLES_DECLARED.items() if o.local == local]


rule table:
    input:
        lambda w: output_inputs(w.benchmark, w.table),
    output:
        report(f"{RESULTS}/{{benchmark}}/{{table}}.csv", caption="../report/output.rst", category="{benchmark}",
               labels={"benchmark": "{benchmark}", "table": "{table}"}),
    wildcard_constraints:
        table=alternatives(table_names(local=True)),
    params:
        caption=lambda w: INFOS[w.benchmark].output(w.table, "table").caption,
    log:
        f"{LOGS}/table/{{benchmark}}_{{table}}.log",
    benchmark:
        f"{LOGS}/table/{{benchmark}}_{{table}}.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{EXPERIMENTS} output {wildcards.benchmark} {wildcards.table} {RESOLVED} " + on_error("{log:q}")


rule measure:
    input:
        lambda w: output_inputs(w.benchmark, w.table),
    output:
        report(f"{RESULTS}/{{benchmark}}/{{table}}.csv", caption="../report/output.rst", category="{benchmark}",
               labels={"benchmark": "{benchmark}", "table": "{table}"}),
    wildcard_constraints:
        table=alternatives(table_names(local=False)),
    params:
        caption=lambda w: INFOS[w.benchmark].output(w.table, "table").caption,
    log:
        f"{LOGS}/measure/{{benchmark}}_{{table}}.log",
    benchmark:
        f"{LOGS}/measure/{{benchmark}}_{{table}}.benchmark.tsv"
    threads: config["torch_threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1 if config["device"] == "cuda" else 0,
        gpu_slots=1,
    shell:
        "{EXPERIMENTS} output {wildcards.benchmark} {wildcards.table} --threads {threads} {RESOLVED} "
        + on_error("{log:q}")


# The whole paper: our headline numbers beside the paper's, and the protocol's cost, over every benchmark.
rule paper_comparison:
    input:
        [str(p) for b in BENCHMARKS for p in aggregate_paths(config, b).values()],
    output:
        report(f"{RESULTS}/paper_comparison.csv", caption="../report/paper_comparison.rst", category="paper"),
    log:
        f"{LOGS}/suite/paper_comparison.log",
    benchmark:
        f"{LOGS}/suite/paper_comparison.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{EXPERIMENTS} compare {RESOLVED} " + on_error("{log:q}")


rule compute_budget:
    input:
        [str(p) for b in BENCHMARKS for p in aggregate_paths(config, b).values()],
    output:
        report(f"{RESULTS}/compute_budget.csv", caption="../report/compute_budget.rst", category="paper"),
    log:
        f"{LOGS}/suite/compute_budget.log",
    benchmark:
        f"{LOGS}/suite/compute_budget.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{EXPERIMENTS} budget {RESOLVED} " + on_error("{log:q}")
