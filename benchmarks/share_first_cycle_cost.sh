#!/usr/bin/env bash
# The quick profile's whole workflow (`all`) with and without the shared first cycle, measured side by side: the
# same machine, the same day and the same load, each on one core, each in its own results, figures, logs and
# cache folders (so each prepares its own data and trains every one of its runs). About 1.5 hours.
#
#     bash benchmarks/share_first_cycle_cost.sh [DATA_DIR] [OUT]   # default ../shared/data, benchmarks/out/share_cost
#
# Prints, per side: jobs, wall time, user + system CPU seconds (/usr/bin/time -v) and the paper-protocol total of
# its compute_budget.csv. SNAKEMAKE (default: snakemake on PATH) names the Snakemake to run; SNAKEMAKE_ARGS adds
# arguments to both sides (SNAKEMAKE_ARGS=-n: the two plans only, in OUT/shared.log and OUT/unshared.log).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
out="${2:-benchmarks/out/share_cost}"
snakemake="${SNAKEMAKE:-snakemake}"
[ -d "$data" ] || { echo "no data folder $data: pass the folder that holds tox21/, emnist_balanced/, ..." >&2; exit 2; }
command -v "$snakemake" > /dev/null || { echo "no $snakemake on PATH: activate the environment or set SNAKEMAKE" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing (Debian: apt install time)" >&2; exit 2; }
mkdir -p "$out"

side() {  # name share_first_cycle
    local name="$1" share="$2"
    # shellcheck disable=SC2086  # SNAKEMAKE_ARGS is a list of words
    /usr/bin/time -v -o "$out/$name.time" "$snakemake" ${SNAKEMAKE_ARGS:-} --cores 1 --configfile config/quick.yaml --config \
        data_dir="$data" share_first_cycle="$share" results_dir="results/quick_$name" \
        figures_dir="figures/quick_$name" logs_dir="logs/quick_$name" cache_dir="data/cache_quick_$name" \
        -- all > "$out/$name.log" 2>&1
}

side shared true & shared_pid=$!
side unshared false & unshared_pid=$!
status=0
wait "$shared_pid" || status=$?
wait "$unshared_pid" || status=$?

python3 - "$out" <<'EOF'
import csv, re, sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"{'side':<10} {'jobs':>5} {'wall':>10} {'CPU s (user + system)':>24} {'paper-protocol budget':>24}")
for name in ("shared", "unshared"):
    timing = (out / f"{name}.time").read_text()
    field = lambda label: re.search(rf"{label}: (.+)", timing).group(1).strip()  # noqa: E731
    user, system = float(field(r"User time \(seconds\)")), float(field(r"System time \(seconds\)"))
    jobs = re.findall(r"(\d+) of (\d+) steps \(100%\) done", (out / f"{name}.log").read_text())
    budget = Path(f"results/quick_{name}/compute_budget.csv")
    total = "missing"
    if budget.is_file():
        rows = [r for r in csv.DictReader(budget.open()) if r["kind"] == "total"]
        total = f"{float(rows[0]['hours']):,.0f} device-hours" if rows else "no total row"
    print(f"{name:<10} {jobs[-1][1] if jobs else '?':>5} {field('Elapsed .wall clock. time .h:mm:ss or m:ss.'):>10} "
          f"{user + system:>12,.0f} ({user:,.0f} + {system:,.0f}) {total:>24}")
EOF
exit "$status"
