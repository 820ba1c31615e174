"""The evidence profile (config/evidence.yaml) trains what its comments and docs/evidence.md promise: the data as
it is on this machine, converged cycles, and every variant on the same seeds, for all four benchmarks."""
from pathlib import Path

import pytest

from experiments import config as cfgmod
from experiments import grid

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["baseline", "pb", "baseline_matched", "wider"]


@pytest.fixture(scope="module")
def cfg():
    return cfgmod.load_config([ROOT / "config" / "evidence.yaml"], ["data_dir=../shared/data"])


@pytest.fixture(scope="module")
def runs(cfg):
    return {b: grid.grid(cfg, b) for b in ("tox21", "emnist", "physionet", "csi300")}


def test_the_data_is_the_data_the_profile_states(cfg):
    block = lambda name: cfgmod.benchmark_block(cfg, name)  # noqa: E731
    assert block("physionet")["data"]["sets"] == ["a", "b"]  # 8,000 records, not the paper's set A alone
    assert block("emnist")["data"]["source"] == "partial_npz"
    csi300 = block("csi300")["data"]
    assert (csi300["source"], csi300["concepts"], csi300["market_value_source"]) == (
        "daily_csv", "return_clusters", "bundle")
    assert block("tox21")["data"].get("limit") is None


def test_every_variant_runs_on_the_same_three_or_more_seeds(runs):
    for benchmark, planned in runs.items():
        by_variant = {}
        for run in planned:
            by_variant.setdefault(run.variant, set()).add((run.factors, run.seed))
        assert sorted(by_variant) == sorted(VARIANTS), benchmark
        points = by_variant["baseline"]
        assert len({seed for _, seed in points}) >= 3, benchmark
        assert all(p == points for p in by_variant.values()), benchmark


def test_every_neuron_cycle_ends_by_its_patience(cfg, runs):
    for benchmark, planned in runs.items():
        for run in planned:
            if run.variant == "baseline_matched":  # no cycle rule of its own: it repeats its pb run's cycles
                continue
            pb = cfgmod.run_settings(cfg, run)["pb"]
            assert pb["fixed_cycle_epochs"] is None and pb["max_cycle_epochs"] is None, run.label
            assert pb["max_total_epochs"] is None, run.label


def test_the_parts_of_each_benchmark_cover_its_seeds_once(runs):
    """Each file in config/evidence_parts/ plans a subset of the profile's runs, and the parts of a benchmark
    together plan every one of its runs exactly once (no seed forgotten, none run twice in two sessions)."""
    planned_by_parts = {}
    for part in sorted((ROOT / "config" / "evidence_parts").glob("*.yaml")):
        part_cfg = cfgmod.load_config([ROOT / "config" / "evidence.yaml", part], ["data_dir=../shared/data"])
        for benchmark in cfgmod.load_yaml_text(part.read_text())["benchmarks"]:
            labels = [run.label for run in grid.grid(part_cfg, benchmark)]
            assert set(labels) <= {run.label for run in runs[benchmark]}, part.name
            planned_by_parts.setdefault(benchmark, []).extend(labels)
    for benchmark, planned in runs.items():
        assert sorted(planned_by_parts.get(benchmark, [])) == sorted(run.label for run in planned), benchmark
