"""Configuration: the schema catches wrong keys and values; run settings isolate one seed's changes."""
import pytest
import yaml

from experiments import config as cfgmod
from experiments.errors import ConfigError


def test_shipped_profiles_are_valid():
    base = cfgmod.load_config()
    quick = cfgmod.load_config([cfgmod.CONFIG_DIR / "quick.yaml"])
    assert cfgmod.seeds(base, "tox21") == list(range(50))
    assert cfgmod.seeds(quick, "tox21") == [0, 1]
    assert quick["benchmarks"]["tox21"]["pb"]["neuron_patience"] < base["benchmarks"]["tox21"]["pb"]["neuron_patience"]


def test_misspelt_key_is_an_error_naming_its_path(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump({"benchmarks": {"tox21": {"pb": {"patience": 3}}}}))
    with pytest.raises(ConfigError) as err:
        cfgmod.load_config([profile])
    assert "benchmarks.tox21.pb" in str(err.value) and "'patience'" in str(err.value)


def test_wrong_value_type_is_an_error():
    with pytest.raises(ConfigError, match="benchmarks.tox21.train.lr"):
        cfgmod.load_config(overrides=["benchmarks.tox21.train.lr=fast"])
    with pytest.raises(ConfigError, match="device"):
        cfgmod.load_config(overrides=["device=tpu"])


def test_missing_profile_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cfgmod.load_config([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match="key.path=value"):
        cfgmod.parse_override("no-equals-sign")


def test_override_parses_yaml_values():
    cfg = cfgmod.load_config(overrides=["benchmarks.tox21.seeds=[3, 5]", "benchmarks.tox21.limit=null"])
    assert cfgmod.seeds(cfg, "tox21") == [3, 5]
    assert cfg["benchmarks"]["tox21"]["limit"] is None


def test_seed_override_changes_only_that_seed():
    cfg = cfgmod.load_config(overrides=["benchmarks.tox21.seed_overrides={7: {pb: {candidates: 3}}}"])
    seven = cfgmod.run_config(cfg, "tox21", "pb", 7)
    eight = cfgmod.run_config(cfg, "tox21", "pb", 8)
    plain = cfgmod.run_config(cfgmod.load_config(), "tox21", "pb", 8)
    assert seven["pb"]["candidates"] == 3
    assert eight == plain  # other seeds' settings (and so their results) are untouched
    assert "seeds" not in seven and "figure" not in seven  # suite-level keys do not trigger reruns


def test_seed_override_is_validated():
    cfg = cfgmod.load_config(overrides=["benchmarks.tox21.seed_overrides={7: {pb: {candidates: 0}}}"])
    with pytest.raises(ConfigError, match="seed_overrides.7"):
        cfgmod.run_config(cfg, "tox21", "pb", 7)


def test_unconfigured_variant_and_benchmark():
    cfg = cfgmod.load_config()
    with pytest.raises(ConfigError, match="not configured"):
        cfgmod.run_config(cfg, "tox21", "gd_joint", 0)
    with pytest.raises(ConfigError, match="emnist"):
        cfgmod.run_config(cfg, "emnist", "pb", 0)
