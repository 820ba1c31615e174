"""The quick profile's Tox21 settings on real molecules, every variant: a run that starts from the shared first
cycle ends with the records, scores and network of the same run trained on its own (share_first_cycle: false),
and the cycle is trained once for all of them."""
import json

import pandas as pd
import pytest
import torch

from experiments import config as cfgmod
from experiments import runner
from experiments.grid import make_run, run_dir

VARIANTS = ["baseline", "pb", "pb_head", "pb_backbone", "cc_no_perforation", "gd_dendrites", "gd_joint",
            "baseline_matched"]


@pytest.mark.slow
def test_quick_profile_runs_from_the_shared_first_cycle_equal_unforked_runs(tmp_path, real_data_dir, monkeypatch):
    if not (real_data_dir / "tox21" / "tox21.csv.gz").is_file():
        pytest.skip("real Tox21 not found")
    from experiments.pipeline import prepare

    def profile(name, share):
        return cfgmod.load_config([cfgmod.CONFIG_DIR / "quick.yaml"], [
            f"data_dir={real_data_dir}", f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / name}",
            "download=false", f"share_first_cycle={str(share).lower()}", "benchmarks.tox21.data.limit=240",
            f"benchmarks.tox21.variants=[{', '.join(VARIANTS)}]"])

    shared, own = profile("shared", True), profile("own", False)
    prepare(shared, "tox21")
    cycles = []
    original = runner._train
    monkeypatch.setattr(runner, "_train", lambda *a, **k: (cycles.append(a[1].label) if k.get("only_first_cycle")
                                                            else None) or original(*a, **k))
    for variant in VARIANTS:
        forked, unforked = (runner.train(c, make_run(c, "tox21", variant, 1)) for c in (shared, own))
        folders = [run_dir(c["results_dir"], make_run(c, "tox21", variant, 1)) for c in (shared, own)]
        for name in ("epochs.csv", "cycles.csv", "correlations.csv"):
            a, b = (pd.read_csv(f / name).drop(columns=["seconds"], errors="ignore") for f in folders)
            pd.testing.assert_frame_equal(a, b, check_exact=True, obj=f"{variant} {name}")
        for key in ("original", "max", "final_dendrites", "params_final", "epochs", "cycles", "stopped_because"):
            assert forked[key] == unforked[key], (variant, key)
        a, b = (torch.load(f / "model.pt", weights_only=False)["state"] for f in folders)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k])), variant
        assert forked["first_cycle"] and unforked["first_cycle"] is None
    assert cycles == ["tox21/baseline/seed1"]  # one first cycle, trained when the first variant needed it
    first = pd.read_csv(cfgmod.first_cycle_path(shared, make_run(shared, "tox21", "pb", 1)).parent / "epochs.csv")
    pb = json.loads((run_dir(shared["results_dir"], make_run(shared, "tox21", "pb", 1)) / "summary.json").read_text())
    assert 1 < len(first) < pb["epochs"]


def test_the_budget_counts_the_shared_first_cycle_once_per_seed(tmp_path):
    """Paper protocol (config/paper.yaml): Tox21's baseline, i.e. the first cycle, is 160 neuron epochs; pb's
    160 + 4.56 * 130. With the cycle shared, pb's row counts only the epochs after it, the baseline's row
    nothing, and one first_cycle row per seed counts the 160 epochs at the first cycles' own seconds."""
    from experiments.budget import compute_budget
    from tests.test_aggregate import write_run

    root = tmp_path / "results"
    cfg = cfgmod.load_config(overrides=[f"results_dir={root}", "benchmarks.tox21.seeds=2",
                                        "benchmarks.tox21.variants=[baseline, pb]"])
    for seed in (0, 1):
        write_run(root, "tox21", "pb", seed, 0.78, 0.80, dendrites=1)  # 1.0 s per epoch
        write_run(root, "tox21", "baseline", seed, 0.78, 0.78)
        folder = cfgmod.first_cycle_path(cfg, make_run(cfg, "tox21", "pb", seed)).parent
        folder.mkdir(parents=True)
        pd.DataFrame({"epoch": range(5), "cycle": 0, "phase": "neuron", "seconds": 2.0}).to_csv(
            folder / "epochs.csv", index=False)
        (folder / "first_cycle.pt").write_bytes(b"")
    budget = compute_budget(cfg)
    rows = budget[budget.benchmark == "tox21"].set_index("variant")
    seeds = 50  # the paper protocol's Tox21 seeds
    assert rows.loc["first_cycle", "runs"] == seeds and rows.loc["first_cycle", "neuron_epochs"] == 160
    assert rows.loc["first_cycle", "s_per_neuron_epoch"] == 2.0
    assert rows.loc["first_cycle", "hours"] == pytest.approx(seeds * 160 * 2.0 / 3600)
    assert rows.loc["pb", "neuron_epochs"] == pytest.approx(4.56 * 130)  # after the first cycle only
    assert rows.loc["pb", "hours"] == pytest.approx(seeds * (4.56 * 130 + 5.56 * 300) * 1.0 / 3600)
    assert rows.loc["baseline", "hours"] == 0
    total = budget[budget.kind == "total"].iloc[0]
    assert total.hours == pytest.approx(budget[budget.kind == "runs"].hours.sum())
    assert total.runs == budget[(budget.kind == "runs") & (budget.variant != "first_cycle")].runs.sum()
    # Not shared: every run counts its own first cycle, as before.
    unshared = compute_budget({**cfg, "share_first_cycle": False})
    assert "first_cycle" not in set(unshared.variant)


def test_the_savings_script_counts_each_cycle_once_per_run_that_started_from_it(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("first_cycle_savings", cfgmod.CONFIG_DIR.parent / "benchmarks" /
                                                  "first_cycle_savings.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cycle = tmp_path / "tox21" / "first_cycle" / "seed0" / "abc"
    cycle.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1], "seconds": [2.0, 3.0]}).to_csv(cycle / "epochs.csv", index=False)
    for variant, first in (("baseline", "tox21/first_cycle/seed0/abc"), ("pb", "tox21/first_cycle/seed0/abc"),
                           ("wider", None)):
        (tmp_path / "tox21" / variant / "seed0").mkdir(parents=True)
        (tmp_path / "tox21" / variant / "seed0" / "summary.json").write_text(json.dumps({"first_cycle": first}))
    (row,) = script.savings(tmp_path)
    assert (row["seconds"], row["runs"], row["saved_seconds"]) == (5.0, 2, 5.0)
