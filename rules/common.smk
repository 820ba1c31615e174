# Shared definitions: folders, the resolved configuration the jobs read, the grid and the declared outputs.
import re
import shlex
import sys
from pathlib import Path

from experiments import grid as gridmod
from experiments import widen
from experiments.outputs import output_path
from experiments.pipeline import aggregate_paths
from experiments.registry import get_info
from pb_core.records import atomic_write_text

DATA = config["data_dir"]
CACHE = config["cache_dir"]
RESULTS = config["results_dir"]
FIGURES = config["figures_dir"]
LOGS = config["logs_dir"]
BENCHMARKS = sorted(config["benchmarks"])
INFOS = {b: get_info(config, b) for b in BENCHMARKS}
EXPERIMENTS = f"{shlex.quote(sys.executable)} -m experiments"

# Every job reads the whole resolved configuration from one file (named by its content, so a job never
# reads a configuration other than the one it was planned with), never from a long command line.
CONFIG_FILE = Path(LOGS) / "config" / f"{cfgmod.digest(config)}.json"
if not CONFIG_FILE.is_file():
    atomic_write_text(CONFIG_FILE, cfgmod.canonical_json(config) + "\n")
RESOLVED = f"--resolved-config {shlex.quote(str(CONFIG_FILE))}"


def on_error(log):
    """Shell tail of a step: on failure, show the step's own last lines (its error) on the console."""
    return f"> {log} 2>&1 || (echo '--- last lines of {log}:' >&2; tail -n 25 {log} >&2; exit 1)"


def alternatives(names):
    """A wildcard regex matching exactly these strings ("(?!)" matches nothing)."""
    return "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True)) or "(?!)"


def grid_runs(benchmark):
    return gridmod.grid(config, benchmark)


def run_summary(run):
    return str(gridmod.run_dir(RESULTS, run) / "summary.json")


def wildcard_run(wildcards):
    factors, seed = gridmod.parse_point(config, wildcards.benchmark, wildcards.point)
    return gridmod.make_run(config, wildcards.benchmark, wildcards.variant, seed, dict(factors))


def prepared_file(benchmark):
    return str(cfgmod.prepared_path(config, benchmark))


def declared(kind):
    return {(b, o.name): o for b in BENCHMARKS for o in INFOS[b].outputs if o.kind == kind}


FIGURES_DECLARED = declared("figure")
TABLES_DECLARED = declared("table")
ALL_OUTPUTS = [str(output_path(config, b, o)) for (b, _), o in {**FIGURES_DECLARED, **TABLES_DECLARED}.items()]


def output_inputs(benchmark, name):
    """What a declared output needs first (its `needs` and `after`), as files."""
    info = INFOS[benchmark]
    out = info.output(name)
    files = []
    if "aggregate" in out.needs:
        files += [str(p) for p in aggregate_paths(config, benchmark).values()]
    if "runs" in out.needs:
        files += [run_summary(r) for r in grid_runs(benchmark)]
    if "prepared" in out.needs:
        files.append(prepared_file(benchmark))
    files += [str(output_path(config, benchmark, info.output(a))) for a in out.after]
    return files


wildcard_constraints:
    benchmark=alternatives(BENCHMARKS),
    variant="[a-z_]+",
    point="[A-Za-z0-9_.=+-]*seed[0-9]+",
    key="[0-9a-f]+",
