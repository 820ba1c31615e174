"""The compute estimate of the paper profile counts phases and epochs as the cycle controller runs them."""
import importlib.util
import sys

import pytest

from conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("paper_cost_estimate", REPO_ROOT / "benchmarks" / "paper_cost_estimate.py")
estimate = importlib.util.module_from_spec(spec)
sys.modules["paper_cost_estimate"] = estimate
spec.loader.exec_module(estimate)


def test_line_through_recovers_a_line_and_fits_noise_by_least_squares():
    assert estimate.line_through([2.0, 5.0, 8.0]) == pytest.approx((2.0, 3.0))
    assert estimate.line_through([1.0, 3.0, 2.0]) == pytest.approx((1.5, 0.5))
    assert estimate.line_through([4.0]) == (4.0, 0.0)


def test_a_run_ending_with_k_dendrites_has_k_plus_2_neuron_cycles_and_k_plus_1_dendrite_phases():
    neuron = lambda k: 10.0 + k  # noqa: E731
    dendrite = lambda k: 100.0 + k  # noqa: E731
    seconds, epochs = estimate.run_cost(1, neuron, dendrite, first=7, later=3, dendrite=2)
    # cycle 0 (7 epochs, 0 dendrites); dendrite phase with 0 in place, cycle with 1; phase with 1, cycle with 2
    assert epochs == 7 + (2 + 3) + (2 + 3)
    assert seconds == pytest.approx(7 * 10 + 2 * 100 + 3 * 11 + 2 * 101 + 3 * 12)


def test_first_cycle_is_read_from_a_runs_epochs_csv(tmp_path, capsys):
    rows = ["epoch,cycle,phase,dendrites,val"] + [f"{e},0,neuron,0,0.5" for e in range(5)]
    rows += ["5,1,dendrite,0,", "6,1,neuron,1,0.6"]
    (tmp_path / "epochs.csv").write_text("\n".join(rows) + "\n")
    assert estimate.first_cycle_epochs(tmp_path / "epochs.csv") == 5
    assert "lower bound" in capsys.readouterr().err  # no summary.json: the run may still be in cycle 0
    (tmp_path / "summary.json").write_text("{}")
    assert estimate.first_cycle_epochs(tmp_path / "epochs.csv") == 5
    assert capsys.readouterr().err == ""


def test_an_epochs_csv_without_a_first_cycle_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "epochs.csv").write_text("epoch,cycle,phase\n")
    with pytest.raises(SystemExit, match="epochs.csv"):
        estimate.first_cycle_epochs(tmp_path / "epochs.csv")
