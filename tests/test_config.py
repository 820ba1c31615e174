"""Configuration: the schemas catch wrong keys and values before anything runs; a run's settings hold only
what it reads, so one seed's, one factor value's or one variant's change reruns nothing else."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import config as cfgmod
from experiments.__main__ import main
from experiments.errors import ConfigError
from experiments.grid import make_run, seeds


def test_shipped_profiles_are_valid_and_write_to_their_own_folders():
    base = cfgmod.load_config()
    quick = cfgmod.load_config([cfgmod.CONFIG_DIR / "quick.yaml"])
    assert seeds(base, "tox21") == list(range(50))
    assert seeds(quick, "tox21") == [0, 1]
    assert quick["benchmarks"]["tox21"]["pb"]["neuron_patience"] < base["benchmarks"]["tox21"]["pb"]["neuron_patience"]
    for key in ("results_dir", "figures_dir", "logs_dir"):  # quick and paper runs never overwrite each other
        assert quick[key] != base[key]
    assert (base["profile"], quick["profile"]) == ("paper", "quick")


def test_misspelt_key_is_an_error_naming_its_path(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump({"benchmarks": {"tox21": {"pb": {"patience": 3}}}}))
    with pytest.raises(ConfigError) as err:
        cfgmod.load_config([profile])
    assert "benchmarks.tox21.pb" in str(err.value) and "'patience'" in str(err.value)


def test_package_keys_are_checked_by_the_package_schema():
    with pytest.raises(ConfigError, match=r"benchmarks\.tox21\.model.*'hidden'"):
        cfgmod.load_config(overrides=["benchmarks.tox21.model.hidden=3"])
    with pytest.raises(ConfigError, match="benchmarks.tox21.data.tasks"):
        cfgmod.load_config(overrides=["benchmarks.tox21.data.tasks=[]"])


def test_wrong_value_type_is_an_error():
    with pytest.raises(ConfigError, match="benchmarks.tox21.train.lr"):
        cfgmod.load_config(overrides=["benchmarks.tox21.train.lr=fast"])
    with pytest.raises(ConfigError, match="device"):
        cfgmod.load_config(overrides=["device=tpu"])


def test_numbers_in_exponent_form_are_numbers(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; users and YAML 1.2 mean 0.001.
    cfg = cfgmod.load_config(overrides=["benchmarks.tox21.train.lr=1e-3", "benchmarks.tox21.train.weight_decay=2E-5"])
    assert cfg["benchmarks"]["tox21"]["train"]["lr"] == 0.001
    assert cfg["benchmarks"]["tox21"]["train"]["weight_decay"] == 2e-5
    profile = tmp_path / "p.yaml"
    profile.write_text("benchmarks:\n  tox21:\n    train:\n      lr: 5e-4\n")
    assert cfgmod.load_config([profile])["benchmarks"]["tox21"]["train"]["lr"] == 0.0005
    # A configuration read by another YAML 1.1 loader (Snakemake's) is normalised the same way.
    raw = cfgmod.load_config()
    raw["benchmarks"]["tox21"]["train"]["lr"] = "1e-3"
    assert cfgmod.validate(raw)["benchmarks"]["tox21"]["train"]["lr"] == 0.001
    # ... but a word stays a word, and is an error where a number belongs.
    with pytest.raises(ConfigError, match="train.lr"):
        cfgmod.load_config(overrides=["benchmarks.tox21.train.lr=e-3"])


def test_snakemake_config_words_true_false_null_are_yaml_scalars():
    # `snakemake --config share_first_cycle=false` hands the workflow the string "false".
    raw = cfgmod.load_config()
    raw["share_first_cycle"] = "false"
    raw["download"] = "true"
    raw["benchmarks"]["tox21"]["pb"]["max_total_epochs"] = "null"
    cfg = cfgmod.validate(raw)
    assert cfg["share_first_cycle"] is False and cfg["download"] is True
    assert cfg["benchmarks"]["tox21"]["pb"]["max_total_epochs"] is None
    raw = cfgmod.load_config()
    raw["share_first_cycle"] = "no"  # not a YAML 1.2 boolean: still refused, by name
    with pytest.raises(ConfigError, match="share_first_cycle"):
        cfgmod.validate(raw)


def test_missing_profile_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cfgmod.load_config([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match="key.path=value"):
        cfgmod.parse_override("no-equals-sign")


def test_override_parses_yaml_values():
    cfg = cfgmod.load_config(overrides=["benchmarks.tox21.seeds=[3, 5]", "benchmarks.tox21.data.limit=null"])
    assert seeds(cfg, "tox21") == [3, 5]
    assert cfg["benchmarks"]["tox21"]["data"]["limit"] is None


def test_benchmark_names_cannot_hold_underscores():
    # figures/<benchmark>_<figure>.pdf must split in exactly one way
    with pytest.raises(ConfigError, match="benchmarks"):
        cfgmod.load_config(overrides=["benchmarks.tox_21={}"])


def _settings(cfg, variant, seed, **factors):
    return cfgmod.run_settings(cfg, make_run(cfg, "tox21", variant, seed, factors))


def test_seed_override_changes_only_that_seed():
    cfg = cfgmod.load_config(overrides=["benchmarks.tox21.seed_overrides={7: {pb: {candidates: 3}}}"])
    seven = _settings(cfg, "pb", 7)
    eight = _settings(cfg, "pb", 8)
    plain = _settings(cfgmod.load_config(), "pb", 8)
    assert seven["pb"]["candidates"] == 3
    assert eight == plain  # other seeds' settings (and so their results) are untouched
    assert not {"seeds", "outputs", "comparisons", "resources"} & set(seven)  # suite-level keys trigger nothing


def test_overrides_are_validated_when_the_configuration_loads():
    with pytest.raises(ConfigError, match="seed_overrides.7.pb"):
        cfgmod.load_config(overrides=["benchmarks.tox21.seed_overrides={7: {pb: {candidates: 0}}}"])
    with pytest.raises(ConfigError, match="seed_overrides.7.model"):
        cfgmod.load_config(overrides=["benchmarks.tox21.seed_overrides={7: {model: {hidden: 3}}}"])


def test_a_run_holds_only_the_keys_its_variant_reads():
    cfg = cfgmod.load_config()
    changed = cfgmod.load_config(overrides=["benchmarks.tox21.pb.candidates=4",
                                            "benchmarks.tox21.pb.dendrite_patience=7"])
    for variant in ("baseline", "baseline_matched"):
        assert _settings(cfg, variant, 0) == _settings(changed, variant, 0)
    assert _settings(cfg, "pb", 0) != _settings(changed, "pb", 0)
    assert "candidates" not in _settings(cfg, "baseline", 0)["pb"]
    assert _settings(cfg, "baseline_matched", 0)["pb"] == {}
    # gd_joint has no dendrite phase: its settings do not hold the dendrite phase's keys either.
    joint = cfgmod.load_config(overrides=["benchmarks.tox21.variants=[pb, gd_joint]"])
    assert not {"candidates", "dendrite_patience"} & set(_settings(joint, "gd_joint", 0)["pb"])
    every_key = set(yaml.safe_load(cfgmod.SCHEMA_PATH.read_text())["$defs"]["pb"]["properties"])
    used = set(cfgmod.pb_keys_used("pb")) | set(cfgmod.pb_keys_used("gd_dendrites"))
    assert every_key == used  # no pb key is silently dropped from every run


def test_factors_multiply_the_grid_and_factor_overrides_apply():
    from experiments.grid import grid

    cfg = cfgmod.load_config(overrides=[
        "benchmarks.tox21.seeds=2", "benchmarks.tox21.factors={width: [0.5, 1.0, 2]}",
        "benchmarks.tox21.factor_overrides={width: {2: {variants: [baseline]}, 0.5: {pb: {max_dendrites: 3}}}}"])
    runs = grid(cfg, "tox21")
    assert {r.point for r in runs} == {f"width{w}-seed{s}" for w in ("0.5", "1", "2") for s in (0, 1)}
    assert sorted({r.variant for r in runs if r.factor_dict["width"] == 2}) == ["baseline"]
    assert len(runs) == 2 * 3 + 2 * 3 + 2
    assert _settings(cfg, "pb", 0, width=0.5)["pb"]["max_dendrites"] == 3
    assert _settings(cfg, "pb", 0, width=1)["pb"]["max_dendrites"] == 16
    assert _settings(cfg, "pb", 0, width=0.5)["factors"] == {"width": 0.5}


@pytest.mark.parametrize("variant, seed, factors, message", [
    ("pb", -1, {}, "non-negative integer"),
    ("pb", "3", {}, "non-negative integer"),
    ("pb", 1.5, {}, "non-negative integer"),
    ("gd_joint", 0, {}, "not configured"),
    ("nonsense", 0, {}, "not configured"),
    ("pb", 0, {"depth": 2}, "no configured factor"),
])
def test_bad_runs_are_errors(variant, seed, factors, message):
    with pytest.raises(ConfigError, match=message):
        make_run(cfgmod.load_config(), "tox21", variant, seed, factors)


def test_bad_factor_values_are_errors():
    cfg = cfgmod.load_config(overrides=["benchmarks.tox21.factors={width: [0.5, 1]}"])
    for value, message in ((3, "not in the configured values"), ("wide", "takes numbers"), (-1, "must be > 0")):
        with pytest.raises(ConfigError, match=message):
            make_run(cfg, "tox21", "pb", 0, {"width": value})
    with pytest.raises(ConfigError, match="need a value"):
        make_run(cfg, "tox21", "pb", 0, {})
    with pytest.raises(ConfigError, match="must be > 0"):
        cfgmod.load_config(overrides=["benchmarks.tox21.factors={width: [0, 1]}"])
    with pytest.raises(ConfigError, match="not factors of package"):
        cfgmod.load_config(overrides=["benchmarks.tox21.factors={depth: [1, 2]}"])


def test_unknown_benchmark_is_an_error():
    with pytest.raises(ConfigError, match="unknown benchmark 'mnist'"):
        make_run(cfgmod.load_config(), "mnist", "pb", 0)


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "non-negative integer"),
    (["--seed", "0", "--factor", "width=2"], "no configured factor"),
    (["--point", "seedX"], "is not a run of tox21"),
])
def test_cli_rejects_bad_runs_before_writing_anything(tmp_path, capsys, args, message):
    code = main(["run", "tox21", "--variant", "pb", *args, "--set", f"results_dir={tmp_path / 'results'}"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_cli_unknown_variant_and_benchmark(tmp_path, capsys):
    assert main(["run", "tox21", "--variant", "pbb", "--seed", "0", "--set", f"results_dir={tmp_path}"]) == 2
    assert "'pbb' is not configured" in capsys.readouterr().err
    assert main(["prepare", "mnist"]) == 2
    assert "unknown benchmark 'mnist'" in capsys.readouterr().err


def test_a_second_molecule_data_set_is_a_config_block(tmp_path):
    """Another MoleculeNet-style CSV needs a block with package: tox21, not a copied package."""
    base = cfgmod.load_config()
    block = json.loads(json.dumps(base["benchmarks"]["tox21"]))
    block["data"].update(file="clintox/clintox.csv.gz", url=None, md5=None, tasks=["FDA_APPROVED", "CT_TOX"])
    profile = tmp_path / "clintox.yaml"
    profile.write_text(yaml.safe_dump({"benchmarks": {"clintox": block}}))
    cfg = cfgmod.load_config([profile])
    settings = cfgmod.run_settings(cfg, make_run(cfg, "clintox", "pb", 0))
    assert settings["package"] == "tox21" and settings["data"]["tasks"] == ["FDA_APPROVED", "CT_TOX"]
    assert cfgmod.prepared_path(cfg, "clintox") != cfgmod.prepared_path(cfg, "tox21")


def test_pb_core_needs_only_torch(tmp_path):
    """Import pb_core and train a dendrite with the suite's other packages hidden."""
    hide = ["experiments", "pandas", "scipy", "sklearn", "matplotlib", "torch_geometric", "rdkit", "qlib",
            "snakemake", "jsonschema", "yaml", "tqdm", "numpy"]
    code = f"""
import sys
from pathlib import Path
for name in {hide!r}:
    sys.modules[name] = None  # "import name" now fails as if it were not installed
import torch
import pb_core
model = torch.nn.Sequential(torch.nn.Linear(2, 1))
x = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]]); y = torch.tensor([[0.], [1.], [1.], [0.]])
def train_epoch(m, opt):
    opt.zero_grad(); loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y); loss.backward(); opt.step()
    return loss.item()
def evaluate(m):
    acc = ((m(x) > 0).float() == y).float().mean().item(); return pb_core.Scores(acc, acc, acc)
c = pb_core.CycleController(model, 'pb', optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.1),
                            phase_end=pb_core.PhaseEnd(neuron=pb_core.SwitchPolicy(patience=2, max_epochs=5)),
                            run_end=pb_core.RunEnd(max_dendrites=1),
                            out_dir={str(tmp_path / 'run')!r})
print(c.fit(train_epoch, evaluate)['epochs'] > 0, sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in {hide!r}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "[]"]


def test_reading_the_configuration_skips_jsonschemas_slow_optional_format_checker():
    """Every job reads the configuration: rfc3987_syntax (2.6 s to build its grammar) must not load with it, and
    validation still reports a bad value."""
    code = ("import sys; from experiments import config as c; cfg = c.load_config(); "
            "print('rfc3987_syntax' in sys.modules and sys.modules['rfc3987_syntax'] is not None)\n"
            "try:\n    c.load_config(overrides=['torch_threads=zero'])\nexcept Exception as e:\n    print('refused', e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, check=True).stdout
    assert out.splitlines()[0] == "False"
    assert "refused" in out and "torch_threads" in out
