"""EMNIST's declared figures (Figure 6 curve, Figure 7 error reduction) drawn from synthetic records with a
fake output context (the attributes experiments/outputs.py gives a draw function)."""
import types

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon, Rectangle

from experiments.emnist import figures
from experiments.emnist.meta import INFO
from experiments.errors import UserError
from pb_core.records import EPOCH_COLUMNS, write_csv

VARIANTS = ["baseline", "pb", "pb_head", "pb_backbone", "cc_no_perforation", "gd_dendrites", "gd_joint",
            "baseline_matched"]


def fake_ctx(tmp_path, output: str, settings: dict, summary: pd.DataFrame | None = None):
    def run_dir(variant, seed, **factors):
        return tmp_path / "results" / "emnist" / variant / f"seed{seed}"
    return types.SimpleNamespace(
        cfg={}, benchmark="emnist", info=INFO,
        block={"variants": VARIANTS, "train": {"train_score": "eval"}, "outputs": {output: settings},
               "comparisons": {"controls": ["baseline", "baseline_matched"]}},
        output=INFO.output(output), settings=settings, path=tmp_path / "figures" / f"emnist_{output}.pdf",
        profile="test", summary=lambda: summary, stats=lambda: pd.DataFrame(), run_dir=run_dir,
        runs=lambda: [], prepared=lambda: tmp_path / "prepared.pt")


def by_gid(fig, prefix):
    return {a.get_gid(): a for a in fig.findobj(lambda a: (a.get_gid() or "").startswith(prefix))}


def span_x(span):
    """(left, right) of an axvspan (a Rectangle in matplotlib >= 3.9, a Polygon before)."""
    if isinstance(span, Polygon):
        xs = span.get_xy()[:, 0]
        return float(min(xs)), float(max(xs))
    return span.get_x(), span.get_x() + span.get_width()


# ---------------------------------------------------------------------------------------------- Figure 6
def epochs_rows():
    """Cycle 1 neuron (epochs 0-4), cycle 2 dendrite (5-7, scores repeat the best), cycle 3 neuron (8-11)."""
    rows = []
    val = [0.80, 0.83, 0.85, 0.84, 0.845, 0.85, 0.85, 0.85, 0.855, 0.862, 0.858, 0.86]
    test = [0.79, 0.82, 0.851, 0.84, 0.84, 0.851, 0.851, 0.851, 0.853, 0.866, 0.86, 0.859]
    for e in range(12):
        cycle, phase = (1, "neuron") if e < 5 else (2, "dendrite") if e < 8 else (3, "neuron")
        rows.append({"epoch": e, "cycle": cycle, "phase": phase, "dendrites": 0 if e < 8 else 1,
                     "train": 0.8 + 0.01 * e, "val": val[e], "test": test[e], "loss": 1.0, "correlation": None,
                     "lr": 1.0, "params": 1000, "seconds": 1.0})
    return rows


def test_curve_shows_the_chosen_run_with_phases_switches_and_the_papers_values(tmp_path):
    settings = {"variant": "pb", "seed": 3, "paper": {"original_test": 0.8655, "max_test": 0.8713}}
    ctx = fake_ctx(tmp_path, "curve", settings)
    rows = epochs_rows()
    write_csv(ctx.run_dir("pb", 3) / "epochs.csv", rows, list(EPOCH_COLUMNS))
    write_csv(ctx.run_dir("pb", 0) / "epochs.csv", rows[:3], list(EPOCH_COLUMNS))  # not the chosen run
    fig = figures.draw_curve(ctx)
    assert ctx.path.is_file() and ctx.path.with_suffix(".png").is_file()

    curves = by_gid(fig, "curve:")
    assert set(curves) == {"curve:train", "curve:val", "curve:test"}
    for col in ("train", "val", "test"):
        x, y = curves[f"curve:{col}"].get_data()
        assert list(x) == list(range(12))
        assert np.allclose(y, [100 * r[col] for r in rows])
    spans = by_gid(fig, "dendrite_phase:")
    assert list(spans) == ["dendrite_phase:5"]
    assert span_x(spans["dendrite_phase:5"]) == (4.5, 7.5)
    switches = by_gid(fig, "switch:")
    assert sorted(switches) == ["switch:5", "switch:8"]
    assert switches["switch:8"].get_xdata()[0] == 7.5
    best = by_gid(fig, "best_val")["best_val"].get_data()
    assert (best[0][0], best[1][0]) == (9, pytest.approx(86.2))
    paper = by_gid(fig, "paper:")
    assert paper["paper:original_test"].get_ydata()[0] == pytest.approx(86.55)
    assert paper["paper:max_test"].get_ydata()[0] == pytest.approx(87.13)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][2:5] == ["train", "validation", "test"]
    note = by_gid(fig, "note")["note"].get_text()
    # this run: original = test at the first cycle's best validation epoch (2: 85.1%), max = epoch 9 (86.6%)
    assert "85.10% -> 86.60%" in note and "86.55% -> 87.13%" in note and "4.3% of the error" in note


def test_curve_of_a_run_that_does_not_exist_says_which_and_how(tmp_path):
    ctx = fake_ctx(tmp_path, "curve", {"variant": "pb_head", "seed": 6})
    with pytest.raises(UserError, match=r"pb_head/seed6/epochs.csv is missing.*outputs.curve"):
        figures.draw_curve(ctx)


# ---------------------------------------------------------------------------------------------- Figure 7
def summary_table():
    rng = np.random.default_rng(5)
    rows = []
    for variant in VARIANTS:
        for seed in range(7):
            original = 0.86 + 0.005 * rng.standard_normal()
            maximum = original if variant == "baseline" else original + 0.004 * rng.standard_normal() + 0.002
            rows.append({"benchmark": "emnist", "variant": variant, "seed": seed, "original_test": original,
                         "max_test": maximum, "improvement": (maximum - original) / (1 - original)})
    return pd.DataFrame(rows)


def test_error_reduction_candles_summarise_each_variants_seeds(tmp_path):
    table = summary_table()
    order = ["pb", "pb_head", "pb_backbone", "cc_no_perforation", "gd_dendrites", "gd_joint", "baseline_matched"]
    ctx = fake_ctx(tmp_path, "error_reduction", {"variants": order, "paper": {"pb": 0.0431}}, table)
    fig = figures.draw_error_reduction(ctx)
    assert ctx.path.is_file() and ctx.path.with_suffix(".png").is_file()
    ax = fig.axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == order
    assert all(t.get_text().endswith("(n=7)") for t in ax.get_xticklabels())
    assert "box:baseline" not in by_gid(fig, "box:")  # the plain baseline has nothing to reduce
    for i, variant in enumerate(order):
        values = 100 * table.loc[table["variant"] == variant, "improvement"].to_numpy()
        box = by_gid(fig, f"box:{variant}")[f"box:{variant}"]
        assert isinstance(box, Rectangle)
        q1, q3 = np.percentile(values, [25, 75])
        assert box.get_y() == pytest.approx(q1) and box.get_y() + box.get_height() == pytest.approx(q3)
        assert box.get_x() + box.get_width() / 2 == pytest.approx(i)
        wick = by_gid(fig, f"wick:{variant}")[f"wick:{variant}"]
        assert isinstance(wick, Line2D)
        assert sorted(wick.get_ydata()) == pytest.approx([values.min(), values.max()])
        mean = by_gid(fig, f"mean:{variant}")[f"mean:{variant}"]
        assert mean.get_ydata()[0] == pytest.approx(values.mean())
        seeds = by_gid(fig, f"seeds:{variant}")[f"seeds:{variant}"]
        assert isinstance(seeds, PathCollection)
        assert sorted(seeds.get_offsets()[:, 1]) == pytest.approx(sorted(values))
    paper = by_gid(fig, "paper:")
    assert list(paper) == ["paper:pb"] and paper["paper:pb"].get_ydata()[0] == pytest.approx(4.31)
    # The control (same epochs, no dendrites) stands apart: its own colour and a line across at its mean.
    boxes = by_gid(fig, "box:")
    assert boxes["box:baseline_matched"].get_facecolor() != boxes["box:pb"].get_facecolor()
    assert len({boxes[f"box:{v}"].get_facecolor() for v in order[:-1]}) == 1
    control = 100 * table.loc[table["variant"] == "baseline_matched", "improvement"].mean()
    lines = by_gid(fig, "control_mean:")
    assert list(lines) == ["control_mean:baseline_matched"]
    assert list(lines["control_mean:baseline_matched"].get_ydata()) == pytest.approx([control, control])


def test_error_reduction_defaults_to_every_variant_but_the_plain_baseline_and_keeps_empty_slots(tmp_path):
    table = summary_table()
    table = table[table["variant"] != "gd_joint"]
    ctx = fake_ctx(tmp_path, "error_reduction", {}, table)
    fig = figures.draw_error_reduction(ctx)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert [label.split("\n")[0] for label in labels] == VARIANTS[1:]
    assert labels[VARIANTS[1:].index("gd_joint")].endswith("(n=0)")
    assert "box:gd_joint" not in by_gid(fig, "box:")


def test_error_reduction_without_the_improvement_column_is_a_clear_error(tmp_path):
    ctx = fake_ctx(tmp_path, "error_reduction", {}, pd.DataFrame({"variant": ["pb"], "seed": [0]}))
    with pytest.raises(UserError, match="aggregate"):
        figures.draw_error_reduction(ctx)
