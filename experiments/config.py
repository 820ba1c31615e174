"""Configuration: YAML files merged in order, checked against ``config/schema.yaml`` and each benchmark
package's ``config/schema/<package>.yaml``.

The same functions serve the Snakefile and the command line, so a run trained by hand and a run trained by
the pipeline see exactly the same settings (:func:`run_settings`). Nothing here imports torch.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from pathlib import Path

# jsonschema loads every optional format checker it finds when it is imported; rfc3987_syntax builds its
# grammar then, 2.6 s in every job that reads the configuration. The schemas check no "format", so it is
# kept out (an import of it raises ImportError, which jsonschema expects of an absent checker).
sys.modules.setdefault("rfc3987_syntax", None)
import jsonschema  # noqa: E402
import yaml  # noqa: E402

from pb_core.records import FIRST_CYCLE_FILE
from pb_core.settings import CandidateTraining, PBSettings, PhaseEnd, Placement, RunEnd, SwitchPolicy
from pb_core.variants import get_variant

from . import widen
from .errors import ConfigError
from .grid import Run, factor_values, first_cycle_dir, format_value
from .registry import get_info, package_of

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "config"
DEFAULT_CONFIG = CONFIG_DIR / "config.yaml"
BENCHMARK_CONFIG_DIR = CONFIG_DIR / "benchmarks"
SCHEMA_PATH = CONFIG_DIR / "schema.yaml"
PACKAGE_SCHEMA_DIR = CONFIG_DIR / "schema"

# A benchmark block's keys that describe a run (and so may trigger its retraining); the others describe the
# experiment as a whole (which seeds, variants, comparisons, figures, cluster resources).
RUN_KEYS = ("data", "model", "train", "pb")
PACKAGE_KEYS = ("data", "model", "train", "outputs")

# Which `pb` keys each kind of variant uses: a run's settings hold only these, so changing, say,
# pb.candidates retrains the covariance variants and leaves every baseline alone.
NEURON_PB_KEYS = ("neuron_patience", "rel_threshold", "abs_threshold", "fixed_cycle_epochs", "max_cycle_epochs",
                  "max_total_epochs")
DENDRITE_PB_KEYS = ("max_dendrites", "activation", "layers", "stop_on_no_improvement", "candidate_init",
                    "candidate_init_std")
DENDRITE_PHASE_PB_KEYS = ("dendrite_patience", "cap_dendrite_phase", "max_dendrite_epochs", "candidate_optimizer")
COVARIANCE_PB_KEYS = ("candidates", "dendrite_improvement", "dendrite_noise_alpha", "candidate_objective",
                      "candidate_snapshot", "candidate_selection")


# `pb` keys of candidate training -> their CandidateTraining field.
CANDIDATE_FIELDS = {"candidate_init": "init", "candidate_init_std": "init_std", "candidate_objective": "objective",
                    "candidate_snapshot": "snapshot", "candidate_selection": "selection",
                    "candidate_optimizer": "optimizer"}


def pb_settings(pb: dict, baseline_cycles: list[int] | None = None) -> PBSettings:
    """pb_core's settings (one frozen, self-checking group per job) from a `pb` block of the configuration.

    The block's keys are the user's (config/config.yaml documents them). A key it lacks (a run's settings hold
    only the keys its variant reads, see :func:`pb_keys_used`) keeps the value runs have always had for it:
    patience 1 and thresholds 0 for a neuron cycle, the dendrite phase's rule the neuron one's, and pb_core's
    defaults for the rest. ``baseline_cycles``: a compute-matched control's cycle lengths.
    """
    def switch(patience, cap=None):
        caps = [c for c in (pb.get("max_cycle_epochs"), cap) if c is not None]
        return SwitchPolicy(patience=patience, fixed_epochs=pb.get("fixed_cycle_epochs"),
                            max_epochs=min(caps) if caps else None, rel_threshold=pb.get("rel_threshold", 0.0),
                            abs_threshold=pb.get("abs_threshold", 0.0))

    dendrite_cap = pb.get("max_dendrite_epochs")
    # No dendrite rule of its own (no dendrite_patience and no cap): the dendrite phase follows the neuron one.
    dendrite = (switch(pb.get("dendrite_patience", pb.get("neuron_patience", 1)), dendrite_cap)
                if "dendrite_patience" in pb or dendrite_cap is not None else None)

    noise = {"noise_alpha": pb["dendrite_noise_alpha"]} if "dendrite_noise_alpha" in pb else {}
    return PBSettings(
        placement=Placement(layers=pb.get("layers"), activation=pb.get("activation", "sigmoid")),
        candidate_training=CandidateTraining(count=pb.get("candidates"),
                                             **{f: pb[k] for k, f in CANDIDATE_FIELDS.items() if k in pb}),
        phase_end=PhaseEnd(neuron=switch(pb.get("neuron_patience", 1)),
                           dendrite=dendrite,
                           cap_dendrite_phase=pb.get("cap_dendrite_phase", False),
                           improvement=pb.get("dendrite_improvement", "neuron"), **noise),
        run_end=RunEnd(max_dendrites=pb.get("max_dendrites"),
                       stop_on_no_improvement=pb.get("stop_on_no_improvement", True),
                       max_total_epochs=pb.get("max_total_epochs"), baseline_cycles=baseline_cycles))


def pb_defaults(cfg: dict) -> PBSettings:
    """The configuration's ``pb_defaults`` as the settings every benchmark's `pb` block starts from."""
    return pb_settings(cfg["pb_defaults"])


def pb_keys_used(variant: str) -> tuple[str, ...]:
    """The `pb` keys a variant's training reads (``baseline_matched`` copies its schedule: none; ``wider`` is a
    plain network trained as the baseline: a neuron cycle's)."""
    if variant == "baseline_matched":
        return ()
    if variant == widen.VARIANT:
        return NEURON_PB_KEYS
    v = get_variant(variant)
    keys = NEURON_PB_KEYS
    if v.has_dendrites:
        keys += DENDRITE_PB_KEYS
    if v.has_dendrite_phase:
        keys += DENDRITE_PHASE_PB_KEYS
    if v.learning == "covariance":
        keys += COVARIANCE_PB_KEYS
    return keys


# ---------------------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``1e-3`` (no dot) is a string; YAML 1.2 and every user read it as 0.001."""


_EXPONENT_FLOAT = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(f"^{_EXPONENT_FLOAT.pattern}$"),
                              list("-+0123456789."))


def load_yaml_text(text: str):
    return yaml.load(text, Loader=_Loader)


# Mappings that are one value (an optimizer spec: {lr_scale: 5} and {name: sgd, lr: 0.1} must not blend).
ATOMIC_KEYS = ("candidate_optimizer",)


def deep_merge(base: dict, update: dict) -> dict:
    """Merge ``update`` into a copy of ``base``; nested dicts merge (but those under ``ATOMIC_KEYS``), everything
    else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ATOMIC_KEYS:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_YAML_WORDS = {"true": True, "false": False, "null": None}


def _yaml_scalar_strings(obj):
    """Strings that YAML 1.2 reads as a number, a boolean or null, as those: Snakemake reads --configfile with
    its own YAML loader, which may leave "1e-3" a string, and ``--config share_first_cycle=false`` gives the
    string "false" (in a YAML file the same text is a boolean)."""
    if isinstance(obj, dict):
        return {k: _yaml_scalar_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_yaml_scalar_strings(v) for v in obj]
    if isinstance(obj, str) and _EXPONENT_FLOAT.fullmatch(obj.strip()):
        return float(obj.replace("_", ""))
    if isinstance(obj, str) and obj.strip() in _YAML_WORDS:
        return _YAML_WORDS[obj.strip()]
    return obj


def normalise(cfg: dict) -> dict:
    """The canonical form of a configuration (modified in place and returned): YAML 1.2 scalars, every
    benchmark's ``pb`` completed from ``pb_defaults``, and the keys of ``seed_overrides`` and
    ``factor_overrides`` as strings (JSON and the schema know only those)."""
    cfg.update(_yaml_scalar_strings(cfg))
    defaults = cfg.get("pb_defaults") if isinstance(cfg.get("pb_defaults"), dict) else {}
    for block in cfg.get("benchmarks", {}).values():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("pb", {}), dict):  # a block's pb overrides single keys of pb_defaults
            block["pb"] = deep_merge(defaults, block.get("pb", {}))
        if isinstance(block.get("seed_overrides"), dict):
            block["seed_overrides"] = {str(k): v for k, v in block["seed_overrides"].items()}
        if isinstance(block.get("factor_overrides"), dict):
            block["factor_overrides"] = {
                name: ({format_value(k): v for k, v in values.items()} if isinstance(values, dict) else values)
                for name, values in block["factor_overrides"].items()}
    return cfg


# ---------------------------------------------------------------------------------------------- validation
def _schema_errors(schema: dict, instance, prefix: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    return [f"  {'.'.join([prefix, *map(str, e.absolute_path)]).strip('.') or '(top level)'}: {e.message}"
            for e in errors]


def _load_schema(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _package_schema(package: str) -> dict:
    path = PACKAGE_SCHEMA_DIR / f"{package}.yaml"
    if not path.is_file():
        raise ConfigError(f"benchmark package {package!r} has no schema {path.relative_to(REPO_ROOT)}; "
                          "every package checks its data/model/train/outputs keys there")
    return _load_schema(path)


def _block_errors(name: str, block: dict, pb_schema: dict) -> list[str]:
    """Problems of one benchmark block beyond the common schema: its package's keys, factors, overrides."""
    where = f"benchmarks.{name}"
    try:
        info = get_info({"benchmarks": {name: block}}, name)
    except ConfigError as exc:
        return [f"  {where}.package: {exc}"]
    package_schema = _package_schema(info.package)
    problems = _schema_errors(package_schema, {k: block[k] for k in PACKAGE_KEYS if k in block}, where)
    problems += _pb_errors(block["pb"], f"{where}.pb")
    try:
        values = factor_values({"benchmarks": {name: block}}, name)
    except ConfigError as exc:
        return problems + [f"  {where}.factors: {exc}"]
    for factor, overrides in block["factor_overrides"].items():
        if factor not in values:
            problems.append(f"  {where}.factor_overrides.{factor}: not a configured factor ({sorted(values)})")
            continue
        for value, override in overrides.items():
            # An override of a value that is not configured applies to no run (a profile may narrow the
            # values, e.g. the quick profile's two widths); its content is still checked.
            problems += _override_errors(block, override, f"{where}.factor_overrides.{factor}.{value}",
                                         package_schema, pb_schema)
    for seed, override in block["seed_overrides"].items():
        if not seed.isdigit():
            problems.append(f"  {where}.seed_overrides.{seed}: keys are seeds (non-negative integers)")
        problems += _override_errors(block, override, f"{where}.seed_overrides.{seed}", package_schema, pb_schema)
    if "baseline_matched" in block["variants"] and block["matched_to"] not in block["variants"]:
        problems.append(f"  {where}.matched_to: baseline_matched copies the schedule of {block['matched_to']!r}, "
                        f"which is not among the variants {block['variants']}")
    if widen.VARIANT in block["variants"]:
        if block["matched_to"] not in block["variants"]:
            problems.append(f"  {where}.matched_to: {widen.VARIANT} matches the parameters of {block['matched_to']!r}, "
                            f"which is not among the variants {block['variants']}")
        try:
            widen.check_configurable(info, f"{where}.variants")
        except ConfigError as exc:
            problems.append(f"  {exc}")
    if block["matched_to"] in ("baseline", "baseline_matched"):
        problems.append(f"  {where}.matched_to: must be a variant with dendrites, not {block['matched_to']!r}")
    return problems


def _pb_errors(pb: dict, where: str) -> list[str]:
    """What pb_core's settings refuse in a `pb` block that fits the schema (e.g. a run that would never end)."""
    try:
        pb_settings(pb)
    except ValueError as exc:
        return [f"  {where}: {exc}"]
    return []


def _override_errors(block: dict, override: dict, where: str, package_schema: dict, pb_schema: dict) -> list[str]:
    """An override must leave a valid block: check the merged run-level keys."""
    merged = deep_merge({k: block[k] for k in ("model", "train", "pb")},
                        {k: v for k, v in override.items() if k in ("model", "train", "pb")})
    problems = _schema_errors(pb_schema, merged["pb"], f"{where}.pb")
    if not problems:
        problems = _pb_errors(merged["pb"], f"{where}.pb")
    problems += _schema_errors({**package_schema, "required": []},
                               {k: merged[k] for k in ("model", "train")}, where)
    return problems


def validate(cfg: dict, source: str = "configuration") -> dict:
    """Raise ConfigError listing every problem (by key path) when ``cfg`` does not fit the schemas."""
    normalise(cfg)
    schema = _load_schema(SCHEMA_PATH)
    problems = _schema_errors(schema, cfg, "")
    if not problems:
        problems += _pb_errors(cfg["pb_defaults"], "pb_defaults")
        pb_schema = {**schema["$defs"]["pb"], "$defs": schema["$defs"]}
        for name, block in cfg["benchmarks"].items():
            problems += _block_errors(name, block, pb_schema)
    if problems:
        raise ConfigError(f"{source} does not fit {SCHEMA_PATH.relative_to(REPO_ROOT)} (and "
                          f"{PACKAGE_SCHEMA_DIR.relative_to(REPO_ROOT)}/<package>.yaml):\n" + "\n".join(problems)
                          + "\nFix the keys above (config/config.yaml and config/benchmarks/*.yaml comment every key).")
    return cfg


# ---------------------------------------------------------------------------------------------- loading
def default_config_files() -> list[Path]:
    """config/config.yaml, config/paper.yaml, then every config/benchmarks/*.yaml in name order."""
    return [DEFAULT_CONFIG, CONFIG_DIR / "paper.yaml", *sorted(BENCHMARK_CONFIG_DIR.glob("*.yaml"))]


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; profiles live in {CONFIG_DIR}")
    try:
        data = load_yaml_text(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict:
    """``benchmarks.tox21.seeds=3`` -> nested dict; the value is read as YAML 1.2 (numbers, lists, null)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. benchmarks.tox21.seeds=3")
    try:
        nested = load_yaml_text(value) if value else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def load_config(paths: list[str | Path] | None = None, overrides: list[str] = ()) -> dict:
    """The default files, then each file in ``paths``, then ``key=value`` overrides; validated."""
    files = [*default_config_files(), *(paths or [])]
    cfg: dict = {}
    for path in files:
        cfg = deep_merge(cfg, read_config_file(path))
    for text in overrides:
        cfg = deep_merge(cfg, parse_override(text))
    sources = " + ".join(str(Path(p)) for p in [DEFAULT_CONFIG, *(paths or [])])
    return validate(cfg, f"configuration {sources}{' + --set' if overrides else ''}")


def read_config_json(path: str | Path) -> dict:
    """A whole configuration as the Snakefile writes it for its jobs (already merged); validated."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration file {path} ({exc})") from None
    return validate(cfg, str(path))


# ---------------------------------------------------------------------------------------------- runs
def benchmark_block(cfg: dict, benchmark: str) -> dict:
    try:
        return cfg["benchmarks"][benchmark]
    except KeyError:
        raise ConfigError(f"unknown benchmark {benchmark!r}: no block under 'benchmarks' in the configuration; "
                          f"configured: {sorted(cfg.get('benchmarks', {}))}") from None


def run_settings(cfg: dict, run: Run) -> dict:
    """Everything that determines one run's result, and nothing else (paths, device, seeds list, figures and
    the keys its variant does not read are not in it). A run whose settings change is recomputed; one whose
    settings do not change is left alone."""
    block = benchmark_block(cfg, run.benchmark)
    settings = {k: copy.deepcopy(block[k]) for k in RUN_KEYS}
    for name, value in run.factors:
        override = block["factor_overrides"].get(name, {}).get(format_value(value), {})
        settings = deep_merge(settings, {k: v for k, v in override.items() if k in RUN_KEYS})
    settings = deep_merge(settings, block["seed_overrides"].get(str(run.seed), {}))
    settings["pb"] = {k: settings["pb"][k] for k in pb_keys_used(run.variant) if k in settings["pb"]}
    out = {"benchmark": run.benchmark, "package": package_of(cfg, run.benchmark), "variant": run.variant,
           "seed": run.seed, "factors": run.factor_dict, **settings}
    if cfg["reproducible_cpu"]:  # other kernels, other numbers: never resumed or reused across the switch
        out["reproducible_cpu"] = True
    if run.variant in ("baseline_matched", widen.VARIANT):
        out["matched_to"] = block["matched_to"]
    return out


def first_cycle_settings(cfg: dict, run: Run) -> dict:
    """What the run's first neuron cycle reads, and nothing else: two runs share one first cycle (trained once,
    in its own folder, see :func:`first_cycle_path`) exactly when these are equal.

    That is the run's settings with the `pb` keys of a neuron cycle only. Every pb_core variant trains the
    plain network in its first cycle (its wrapped layers have no dendrite yet and compute exactly as the
    plain ones), so its variant there is ``baseline``; a variant the runner defines trains its own network
    (its name stays, so a widened network, say, gets a first cycle of its own). ``baseline_matched``'s first
    cycle is its reference's, cut to the same length (the runner checks the length before it forks).
    """
    source = run.with_variant(benchmark_block(cfg, run.benchmark)["matched_to"]) \
        if run.variant == "baseline_matched" else run
    settings = run_settings(cfg, source)
    settings["pb"] = {k: v for k, v in settings["pb"].items() if k in NEURON_PB_KEYS}
    try:
        get_variant(source.variant)
        settings["variant"] = "baseline"
    except ValueError:
        pass
    return settings


def first_cycle_key(cfg: dict, run: Run) -> str:
    return digest(first_cycle_settings(cfg, run), 10)


def first_cycle_path(cfg: dict, run: Run) -> Path:
    """The file of the shared first cycle that ``run`` starts from."""
    return first_cycle_dir(cfg["results_dir"], run, first_cycle_key(cfg, run)) / FIRST_CYCLE_FILE


def prepare_settings(cfg: dict, benchmark: str) -> dict:
    """What a benchmark's prepare step depends on: its package and the block keys it declares."""
    block = benchmark_block(cfg, benchmark)
    info = get_info(cfg, benchmark)
    return {"package": info.package, **{k: block[k] for k in info.prepare_keys}}


def prepared_path(cfg: dict, benchmark: str) -> Path:
    return Path(cfg["cache_dir"]) / get_info(cfg, benchmark).prepared_path(benchmark_block(cfg, benchmark))


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def digest(obj, length: int = 12) -> str:
    """A short stable hash of JSON-able settings (for file names that must change when settings do)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]
