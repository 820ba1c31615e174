"""The parameter-matched `wider` control: the width search, the match record, which benchmarks can be widened."""
import json

import pytest

import pb_core
from experiments import widen
from experiments.emnist.model import MnistNet
from experiments.errors import ConfigError, UserError
from experiments.registry import package_info, packages


def mnist_by_hand(width: float) -> int:
    """The MNIST CNN's parameters at ``width``, by hand (tests/test_emnist_model.py checks the formula)."""
    c1, c2, h = (max(1, round(n * width)) for n in (32, 64, 128))
    return (9 * c1 + c1) + (9 * c1 * c2 + c2) + (144 * c2 * h + h) + (h * 47 + 47)


def real_mnist(width: float) -> int:
    return pb_core.count_parameters(MnistNet(width=width))


def test_search_finds_the_closest_multiplier_of_the_real_model():
    target = 2_409_581  # the MNIST CNN with one dendrite on every layer (docs/emnist.md)
    multiplier, count = widen.match_width(real_mnist, target)
    assert count == real_mnist(multiplier) == mnist_by_hand(multiplier)
    # No multiplier on the search grid from 1 to 3 comes closer (brute force over the hand formula).
    best = min(abs(mnist_by_hand(k / widen.RESOLUTION) - target) for k in range(1000, 3001))
    assert abs(count - target) == best
    assert 1.3 < multiplier < 1.5  # fc1 grows with width^2: about sqrt(2)
    assert abs(count - target) / target < 0.01


@pytest.mark.parametrize("target", [10, 1_204_655])
def test_a_target_at_or_below_the_original_is_the_original_network(target):
    assert widen.match_width(real_mnist, target) == (1.0, 1_204_655)


def test_step_function_ties_and_sides_by_hand():
    # counts 100 per whole multiplier step: 1.000-1.999 -> 100, 2.000-2.999 -> 200, ...
    step = lambda m: 100 * int(m)  # noqa: E731
    for target, count in [(240, 200), (260, 300), (250, 200), (300, 300), (201, 200)]:  # a tie keeps 200
        multiplier, got = widen.match_width(step, target)
        assert got == count == step(multiplier), target
    assert widen.match_width(step, 260) == (3.0, 300)  # the first multiplier that reaches the target
    assert widen.match_width(step, 240) == (2.999, 200)  # the last one below it
    linear = lambda m: round(1000 * m)  # noqa: E731
    assert widen.match_width(linear, 2345) == (2.345, 2345)


def test_a_count_that_is_not_monotone_is_an_error_not_a_wrong_match():
    wobbly = lambda m: 50 if 2.5 <= m < 2.75 else round(100 * m)  # noqa: E731  (the bisection visits 2.5)
    with pytest.raises(ValueError, match="not monotone"):
        widen.match_width(wobbly, 300)


def test_a_target_beyond_the_widest_network_is_a_clear_error():
    with pytest.raises(UserError, match="too large to match"):
        widen.match_width(lambda m: round(10 * m), 10_000)


def settings_count(settings):
    return real_mnist(settings["factors"]["width"])


def test_match_widens_from_the_runs_own_width_and_records_everything():
    settings = {"factors": {"width": 0.5}, "model": {}}
    reference = {"params_final": real_mnist(1.0), "final_dendrites": 2}
    m = widen.match(settings, 0.5, settings_count, "pb", reference)
    assert m.base_width == 0.5 and m.width == pytest.approx(0.5 * m.multiplier)
    assert m.parameters == real_mnist(m.width) and m.target_parameters == real_mnist(1.0)
    # Half the width, about doubled, is the width-1 network exactly: the first multiplier that builds it (sizes
    # are rounded, so 0.5 x 1.993 already gives 32, 64 and 128).
    assert m.parameters == m.target_parameters and m.multiplier == 1.993
    assert [p.shape for p in MnistNet(width=m.width).parameters()] == [p.shape for p in MnistNet().parameters()]
    record = m.as_dict()
    assert record["relative_error"] == 0 and record["reference_dendrites"] == 2 and record["matched_to"] == "pb"
    assert settings == {"factors": {"width": 0.5}, "model": {}}  # the run's own settings are not changed


def test_widened_settings_change_only_the_width():
    settings = {"factors": {"width": 1, "other": "x"}, "model": {"hidden_dim": 32}}
    wide = widen.widened_settings(settings, 2.5)
    assert wide == {"factors": {"width": 2.5, "other": "x"}, "model": {"hidden_dim": 32}}
    wide["model"]["hidden_dim"] = 0
    assert settings["model"]["hidden_dim"] == 32


def test_a_saved_match_is_reused_only_for_the_same_settings_and_target():
    settings = {"factors": {}, "model": {"a": 1}}
    reference = {"params_final": 2_000_000, "final_dendrites": 1}
    m = widen.match(settings, 1, settings_count, "pb", reference)
    saved = {**settings, widen.VARIANT: m.as_dict()}
    assert widen.saved_match(saved, settings, reference) == m
    assert widen.saved_match(saved, {**settings, "model": {"a": 2}}, reference) is None
    assert widen.saved_match(saved, settings, {**reference, "params_final": 2_000_001}) is None
    assert widen.saved_match(None, settings, reference) is None
    assert widen.saved_match({**settings, widen.VARIANT: {"width": 1}}, settings, reference) is None


def test_a_reference_summary_without_its_counts_is_a_user_error():
    with pytest.raises(UserError, match="params_final"):
        widen.reference_target({"final_dendrites": 1})


def test_every_benchmark_of_the_suite_declares_how_to_widen_it():
    for package in packages():
        assert widen.width_factor_of(package_info(package)) == widen.WIDTH_FACTOR


def test_a_package_without_a_width_factor_cannot_be_widened():
    from dataclasses import replace

    narrow = replace(package_info("tox21"), package="narrow", factors=())
    with pytest.raises(ConfigError, match="declares no factor 'width'"):
        widen.width_factor_of(narrow)
    with pytest.raises(ConfigError, match=r"benchmarks\.narrow: "):
        widen.check_configurable(narrow, "benchmarks.narrow")


# ---------------------------------------------------------------------------------------------- the runner
@pytest.fixture
def emnist_cfg(tmp_path):
    """The real EMNIST benchmark on a small synthetic prepared cache: variants baseline, pb and wider."""
    import torch

    from experiments import config as cfgmod
    from experiments.emnist import data
    from experiments.emnist.benchmark import CACHE_FORMAT
    from pb_core.records import atomic_torch_save

    cfg = cfgmod.load_config(overrides=[
        f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}", "benchmarks.emnist.seeds=1",
        "benchmarks.emnist.variants=[baseline, pb, wider]", "benchmarks.emnist.train.augment=null",
        "benchmarks.emnist.pb.neuron_patience=1", "benchmarks.emnist.pb.max_total_epochs=3"])
    gen = torch.Generator().manual_seed(1)
    block = cfg["benchmarks"]["emnist"]
    atomic_torch_save({"format": CACHE_FORMAT, "settings": {"package": "emnist", "data": block["data"]},
                       "train_images": torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=gen),
                       "train_labels": torch.randint(0, 47, (64,), generator=gen), "train_index": torch.arange(64),
                       "test_images": torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=gen),
                       "test_labels": torch.randint(0, 47, (40,), generator=gen), "test_index": torch.arange(40),
                       "classes": data.balanced_classes()}, cfgmod.prepared_path(cfg, "emnist"))
    return cfg


def fake_reference(cfg, params: int, dendrites: int) -> None:
    """A finished pb run's summary.json as far as wider reads it (its final network's size)."""
    from experiments.grid import make_run, run_dir

    folder = run_dir(cfg["results_dir"], make_run(cfg, "emnist", "pb", 0))
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"params_final": params, "final_dendrites": dendrites}))


def test_wider_trains_the_matched_network_and_records_the_match(emnist_cfg, monkeypatch):
    from experiments import runner
    from experiments.grid import make_run, run_dir

    fake_reference(emnist_cfg, 2_409_581, 1)
    run = make_run(emnist_cfg, "emnist", "wider", 0)
    summary = runner.train(emnist_cfg, run)
    record = summary["wider"]
    assert record["target_parameters"] == 2_409_581 and record["reference_dendrites"] == 1
    assert summary["params_final"] == summary["params_original"] == record["parameters"] == real_mnist(record["width"])
    assert abs(record["relative_error"]) < 0.01 and record["multiplier"] > 1 and summary["final_dendrites"] == 0
    folder = run_dir(emnist_cfg["results_dir"], run)
    assert json.loads((folder / "config.json").read_text())["wider"] == record
    assert summary["factors"] == {} and summary["width"] == record["width"]  # its grid point stays the original's
    assert "trains its own first cycle" in (folder / "run.log").read_text()
    # Run again: finished with the same settings, and the match is read back, not searched again.
    monkeypatch.setattr(widen, "match", lambda *a, **k: pytest.fail("searched again"))
    assert runner.train(emnist_cfg, run) == summary


def test_wider_matched_to_the_original_network_is_the_baseline_from_the_shared_cycle(emnist_cfg):
    import pandas as pd

    from experiments import runner
    from experiments.grid import make_run, run_dir

    fake_reference(emnist_cfg, 1_204_655, 0)  # pb kept no dendrite
    base = runner.train(emnist_cfg, make_run(emnist_cfg, "emnist", "baseline", 0))
    wide = runner.train(emnist_cfg, make_run(emnist_cfg, "emnist", "wider", 0))
    assert wide["wider"]["multiplier"] == 1 and wide["params_final"] == base["params_final"] == 1_204_655
    assert wide["max"] == base["max"] and wide["original"] == base["original"]
    folders = [run_dir(emnist_cfg["results_dir"], make_run(emnist_cfg, "emnist", v, 0)) for v in ("baseline", "wider")]
    a, b = (pd.read_csv(f / "epochs.csv").drop(columns=["seconds"]) for f in folders)
    pd.testing.assert_frame_equal(a, b)
    assert "starts from the shared first cycle" in (folders[1] / "run.log").read_text()


def test_wider_without_its_finished_reference_says_which_run_to_train_first(emnist_cfg):
    from experiments import runner
    from experiments.grid import make_run

    with pytest.raises(UserError, match=r"needs the finished pb run .*python -m experiments run emnist --variant pb"):
        runner.train(emnist_cfg, make_run(emnist_cfg, "emnist", "wider", 0))


def test_a_block_with_wider_needs_its_reference_among_the_variants():
    from experiments import config as cfgmod

    with pytest.raises(ConfigError, match=r"benchmarks.tox21.matched_to: wider matches the parameters of 'pb'"):
        cfgmod.load_config(overrides=["benchmarks.tox21.variants=[baseline, wider]"])
    cfg = cfgmod.load_config(overrides=["benchmarks.tox21.variants=[baseline, pb, wider]"])
    from experiments.grid import make_run
    settings = cfgmod.run_settings(cfg, make_run(cfg, "tox21", "wider", 0))
    assert settings["matched_to"] == "pb" and set(settings["pb"]) <= set(cfgmod.NEURON_PB_KEYS)
