"""Configuration: YAML files merged in order, checked against ``config/schema.yaml``.

The same functions serve the Snakefile and the command line, so a seed run by hand and a seed run by
the pipeline see exactly the same settings (``run_config``).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "config"
DEFAULT_CONFIG = CONFIG_DIR / "config.yaml"
SCHEMA_PATH = CONFIG_DIR / "schema.yaml"

# Keys of a benchmark block that describe the experiment as a whole, not one run.
_SUITE_KEYS = ("seeds", "variants", "seed_overrides", "figure")


def deep_merge(base: dict, update: dict) -> dict:
    """Merge ``update`` into a copy of ``base``; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _normalise(cfg: dict) -> dict:
    # YAML reads `7:` as an int key; JSON (and the schema) know only string keys.
    for block in cfg.get("benchmarks", {}).values():
        if isinstance(block, dict) and isinstance(block.get("seed_overrides"), dict):
            block["seed_overrides"] = {str(k): v for k, v in block["seed_overrides"].items()}
    return cfg


def validate(cfg: dict, source: str = "configuration") -> dict:
    """Raise ConfigError listing every problem (by key path) when ``cfg`` does not fit the schema."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_normalise(cfg)), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for err in errors:
            where = ".".join(map(str, err.absolute_path)) or "(top level)"
            lines.append(f"  {where}: {err.message}")
        raise ConfigError(f"{source} does not fit {SCHEMA_PATH.relative_to(REPO_ROOT)}:\n" + "\n".join(lines)
                          + "\nFix the keys above (see config/config.yaml for every key with a comment).")
    return cfg


def parse_override(text: str) -> dict:
    """``benchmarks.tox21.seeds=3`` -> nested dict; the value is read as YAML (numbers, lists, null)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. benchmarks.tox21.seeds=3")
    nested: dict = yaml.safe_load(value) if value else None
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def load_config(paths: list[str | Path] | None = None, overrides: list[str] = ()) -> dict:
    """The default config, then each file in ``paths``, then ``key=value`` overrides; validated."""
    cfg: dict = {}
    for path in [DEFAULT_CONFIG, *(paths or [])]:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; profiles live in {CONFIG_DIR}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
        cfg = deep_merge(cfg, data)
    for text in overrides:
        cfg = deep_merge(cfg, parse_override(text))
    return validate(cfg, "configuration " + " + ".join(str(p) for p in [DEFAULT_CONFIG, *(paths or [])]))


def benchmark_block(cfg: dict, benchmark: str) -> dict:
    try:
        return cfg["benchmarks"][benchmark]
    except KeyError:
        raise ConfigError(f"benchmark {benchmark!r} has no block under 'benchmarks' in the configuration; "
                          f"configured: {sorted(cfg.get('benchmarks', {}))}") from None


def seeds(cfg: dict, benchmark: str) -> list[int]:
    value = benchmark_block(cfg, benchmark)["seeds"]
    return list(range(value)) if isinstance(value, int) else list(value)


def run_config(cfg: dict, benchmark: str, variant: str, seed: int) -> dict:
    """Everything that determines one run's result, and nothing else (paths and device are not in it).

    A run whose ``run_config`` changes is recomputed; one whose does not is left alone.
    """
    block = benchmark_block(cfg, benchmark)
    if variant not in block["variants"]:
        raise ConfigError(f"variant {variant!r} is not configured for {benchmark}; "
                          f"benchmarks.{benchmark}.variants is {block['variants']}")
    settings = {k: v for k, v in block.items() if k not in _SUITE_KEYS}
    override = block.get("seed_overrides", {}).get(str(seed))
    if override:
        settings = deep_merge(settings, override)
        trial = copy.deepcopy(cfg)
        trial["benchmarks"][benchmark] = deep_merge(block, override)
        validate(trial, f"benchmarks.{benchmark}.seed_overrides.{seed}")
    return {"benchmark": benchmark, "variant": variant, "seed": int(seed), **settings}


def rerun_command(benchmark: str, variant: str, seed) -> str:
    """The command that trains (or resumes) one run by hand."""
    return f"python -m experiments run {benchmark} --variant {variant} --seed {seed}"


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
