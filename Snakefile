# Perforated Backpropagation suite: download -> prepare -> train each run -> aggregate -> figures and tables.
#
#   snakemake --cores 1 figures/tox21_auc.pdf                                      # paper protocol
#   snakemake --cores 2 --configfile config/quick.yaml -- figures/quick/tox21_auc.pdf   # quick profile
#   snakemake --cores 1 all                                                         # every benchmark's outputs
#   snakemake --cores 16 --resources gpu_slots=4 --config device=cuda -- all        # 4 runs share one GPU
#   snakemake --report report.html                                                  # figures with captions
#
# Wildcards: benchmark (a configured name: lower-case letters and digits), variant, point (the run's factor
# values and seed, e.g. seed3 or width0.125-seed3), figure and table (the names the benchmark declares in its
# experiments/<package>/meta.py). The targets come from those declarations: a new figure needs no new rule.
#
# What reruns, and what never does:
# * A run reruns only when its own settings change (params `settings`: what the run reads, nothing else; a
#   pb-only key never retrains a baseline). Rules are shell commands of `python -m experiments`, so editing
#   the package's code never silently retrains 50 seeds; after a fix that changes results, ask for it with
#   --forcerun train (or -R train): a finished run is then trained again from its first cycle;
#   --forcerun first_cycle train: from scratch.
# * Every variant of a seed starts from one shared first neuron cycle (rule first_cycle, in its own folder
#   results/<benchmark>/first_cycle/<point>/<key>/; `baseline` is that cycle and its end): forcing one variant
#   never retrains the cycle, and a retrained cycle retrains every run that starts from it.
# * Raw data is never a rule's output once it exists: the download rules only match files missing from
#   data_dir when the workflow is parsed, so a user's own copy (even with --forceall) is never touched.
# * Parsing reads only light metadata (experiments/<package>/meta.py): no torch, RDKit, PyG or qlib import.
from experiments import config as cfgmod

for _path in cfgmod.default_config_files():
    workflow.configfile(str(_path))  # each benchmark's defaults; --configfile/--config are merged on top
cfgmod.validate(config, "Snakemake configuration (config/*.yaml + --configfile/--config)")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/outputs.smk"


onsuccess:
    # Snakemake can report success without having planned some requested files (experiments.pipeline.
    # unmade_targets says when); that must be an error, never a silent success.
    from experiments.pipeline import unmade_targets, unmade_targets_message

    _dag = workflow.dag
    _partial = _dag.untilrules or _dag.untilfiles or _dag.omitrules or _dag.omitfiles  # --until, --omit-from
    _unmade = [] if _partial else unmade_targets(_dag.targetjobs, _dag.jobs)
    if _unmade:
        raise SystemExit(unmade_targets_message(_unmade))


rule all:
    input:
        ALL_OUTPUTS,
        f"{RESULTS}/paper_comparison.csv",
        f"{RESULTS}/compute_budget.csv",
    default_target: True
