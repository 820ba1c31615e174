"""Tests for experiments/plotting.py: files written atomically, and the candle geometry."""
import csv
import os

import numpy as np
import pandas as pd
import pytest

from experiments.plotting import CANDLE_OFFSET, candlestick_figure, epoch_curves_figure


def _runs_table(values_by_variant):
    """{variant: (original_scores, max_scores)} -> rows like aggregate.load_summaries."""
    rows = []
    for variant, (orig, best) in values_by_variant.items():
        for seed, (o, m) in enumerate(zip(orig, best)):
            rows.append({"benchmark": "tox21", "variant": variant, "seed": seed, "metric": "auc",
                         "original_test": o, "max_test": m})
    return pd.DataFrame(rows)


def _artists(fig, prefix):
    ax = fig.axes[0]
    return {a.get_gid(): a for a in list(ax.patches) + list(ax.lines)
            if a.get_gid() and a.get_gid().startswith(prefix)}


def _box_y(rect):
    return rect.get_y(), rect.get_y() + rect.get_height()


PB_ORIG = [0.76, 0.78, 0.79, 0.80, 0.83]
PB_MAX = [0.79, 0.80, 0.84, 0.82, 0.88]
BASE = [0.75, 0.77, 0.78, 0.81, 0.79]


def test_candles_geometry_and_files(tmp_path):
    df = _runs_table({"baseline": (BASE, BASE), "pb": (PB_ORIG, PB_MAX)})
    out = tmp_path / "figs" / "tox21_candles.pdf"
    fig = candlestick_figure(df, out, "test ROC-AUC",
                             paper_means={"baseline (paper)": 0.789, "pb (paper)": 0.822},
                             variants_order=["baseline", "pb"])
    for path in (out, out.with_suffix(".png")):
        assert path.is_file() and path.stat().st_size > 1000
    assert out.read_bytes()[:4] == b"%PDF"
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out.parent)) == ["tox21_candles.pdf", "tox21_candles.png"]

    boxes, wicks, means = _artists(fig, "box:"), _artists(fig, "wick:"), _artists(fig, "mean:")
    assert set(boxes) == {"box:baseline:original", "box:baseline:max", "box:pb:original", "box:pb:max"}
    for variant, xi, data in [("pb", 1, {"original": PB_ORIG, "max": PB_MAX}),
                              ("baseline", 0, {"original": BASE, "max": BASE})]:
        for kind, dx in (("original", -CANDLE_OFFSET), ("max", CANDLE_OFFSET)):
            values = np.array(data[kind])
            q1, q3 = np.percentile(values, [25, 75])
            rect = boxes[f"box:{variant}:{kind}"]
            assert _box_y(rect) == pytest.approx((q1, q3))
            assert rect.get_x() + rect.get_width() / 2 == pytest.approx(xi + dx)
            wick = wicks[f"wick:{variant}:{kind}"]
            assert tuple(wick.get_ydata()) == pytest.approx((values.min(), values.max()))
            assert tuple(wick.get_xdata()) == pytest.approx((xi + dx, xi + dx))
            assert means[f"mean:{variant}:{kind}"].get_ydata()[0] == pytest.approx(values.mean())
    # Hand check of one candle: pb max quartiles of [0.79, 0.80, 0.82, 0.84, 0.88].
    assert _box_y(boxes["box:pb:max"]) == pytest.approx((0.80, 0.84))

    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline\n(n=5)", "pb\n(n=5)"]
    paper = _artists(fig, "paper:")
    assert {k: v.get_ydata()[0] for k, v in paper.items()} == {
        "paper:baseline (paper)": 0.789, "paper:pb (paper)": 0.822}
    assert all(line.get_linestyle() == "--" for line in paper.values())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "mean" in legend and "box Q1-Q3, wick min-max" in legend
    assert "pb (paper): 0.822" in legend
    lo, hi = ax.get_ylim()
    assert lo <= min(PB_ORIG + BASE) and hi >= max(PB_MAX)


def test_candles_one_seed_and_missing_variant(tmp_path):
    df = _runs_table({"pb": ([0.8], [0.85])})
    out = tmp_path / "one.pdf"
    fig = candlestick_figure(df, out, "AUC", None, variants_order=["baseline", "pb", "pb_head"])
    assert out.is_file() and out.with_suffix(".png").is_file()
    boxes = _artists(fig, "box:")
    assert set(boxes) == {"box:pb:original", "box:pb:max"}
    assert _box_y(boxes["box:pb:max"]) == pytest.approx((0.85, 0.85))
    assert tuple(_artists(fig, "wick:")["wick:pb:original"].get_ydata()) == pytest.approx((0.8, 0.8))
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["baseline\n(n=0)", "pb\n(n=1)", "pb_head\n(n=0)"]
    # pb is drawn in its slot (index 1), not shifted to 0 by the missing baseline.
    assert boxes["box:pb:max"].get_x() + boxes["box:pb:max"].get_width() / 2 == pytest.approx(
        1 + CANDLE_OFFSET)


def test_candles_unlisted_variant_is_appended(tmp_path):
    df = _runs_table({"pb": ([0.8, 0.7], [0.85, 0.8]), "gd_dendrites": ([0.8, 0.6], [0.8, 0.7])})
    fig = candlestick_figure(df, tmp_path / "c.pdf", "AUC", variants_order=["pb"])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["pb\n(n=2)", "gd_dendrites\n(n=2)"]


def test_shared_first_cycle_is_one_candle_with_seed_points_and_pairs(tmp_path):
    """Variants of a seed share their first cycle: one grey candle, then a max candle per variant; each
    seed is a dot, and a line joins one seed's dots across the candles."""
    orig = [0.70, 0.72, 0.74]
    df = _runs_table({"baseline": (orig, orig), "pb": (orig, [0.75, 0.71, 0.80]),
                      "baseline_matched": (orig, [0.76, 0.74, 0.79])})
    fig = candlestick_figure(df, tmp_path / "s.pdf", "AUC", variants_order=["baseline", "pb", "baseline_matched"],
                             note="profile: quick; 3 seeds")
    ax = fig.axes[0]
    boxes = _artists(fig, "box:")
    assert set(boxes) == {"box:first_cycle:original", "box:baseline:max", "box:pb:max", "box:baseline_matched:max"}
    assert _box_y(boxes["box:first_cycle:original"]) == pytest.approx(tuple(np.percentile(orig, [25, 75])))
    centres = {k: r.get_x() + r.get_width() / 2 for k, r in boxes.items()}
    assert centres == pytest.approx({"box:first_cycle:original": 0, "box:baseline:max": 1, "box:pb:max": 2,
                                     "box:baseline_matched:max": 3})
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "first cycle\n(all, n=3)", "baseline\n(n=3)", "pb\n(n=3)", "baseline_matched\n(n=3)"]
    seeds = _artists(fig, "seeds:")
    assert sorted(seeds["seeds:pb:max"].get_ydata()) == pytest.approx(sorted([0.75, 0.71, 0.80]))
    pairs = _artists(fig, "pair:")
    assert len(pairs) == 3  # one line per seed, through the shared original and the three max candles
    line = pairs["pair:1"]
    assert list(line.get_ydata()) == pytest.approx([0.72, 0.72, 0.71, 0.74])
    notes = [t for t in ax.texts if t.get_gid() == "note"]
    assert notes and notes[0].get_text() == "profile: quick; 3 seeds"


def test_without_a_shared_first_cycle_a_seed_line_joins_only_its_max_scores(tmp_path):
    """A variant with its own first cycle (wider) puts an original beside each max candle; the seed line
    must join the max scores the statistics pair, never zigzag through the originals."""
    orig, wide = [0.70, 0.72], [0.66, 0.69]
    df = _runs_table({"baseline": (orig, orig), "pb": (orig, [0.75, 0.71]), "wider": (wide, [0.78, 0.73])})
    fig = candlestick_figure(df, tmp_path / "w.pdf", "AUC", variants_order=["baseline", "pb", "wider"])
    assert "box:wider:original" in _artists(fig, "box:")  # not the shared layout
    pairs = _artists(fig, "pair:")
    assert set(pairs) == {"pair:0", "pair:1"}
    assert list(pairs["pair:1"].get_ydata()) == pytest.approx([0.72, 0.71, 0.73])
    assert list(pairs["pair:1"].get_xdata()) == sorted(pairs["pair:1"].get_xdata())
    assert len(_artists(fig, "seeds:")) == 6  # every run is still a dot


def test_no_seed_points_for_many_seeds(tmp_path):
    rng = np.random.default_rng(0)
    orig = list(rng.uniform(0.6, 0.7, 40))
    df = _runs_table({"baseline": (orig, orig), "pb": (orig, list(np.array(orig) + 0.01))})
    fig = candlestick_figure(df, tmp_path / "m.pdf", "AUC")
    assert not _artists(fig, "seeds:") and not _artists(fig, "pair:")


def _write_epochs(path):
    """5 neuron epochs, 3 dendrite epochs, 4 neuron epochs with 1 dendrite, 2 dendrite epochs."""
    phases = [("neuron", 0, 0)] * 5 + [("dendrite", 1, 0)] * 3 + [("neuron", 2, 1)] * 4 + \
             [("dendrite", 3, 1)] * 2
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "cycle", "phase", "dendrites", "train", "val", "test", "loss",
                    "correlation", "lr", "params", "seconds"])
        for e, (phase, cycle, d) in enumerate(phases):
            val = 0.7 + 0.01 * e if e < 12 else 0.75
            w.writerow([e, cycle, phase, d, 0.8 + 0.005 * e, val, val - 0.02, 0.5,
                        0.2 if phase == "dendrite" else "", 1e-3, 100 * (1 + d), 1.5])
    return path


def test_epoch_curves(tmp_path):
    csv_path = _write_epochs(tmp_path / "epochs.csv")
    out = tmp_path / "fig6.pdf"
    fig = epoch_curves_figure(csv_path, out, metric_label="accuracy")
    assert out.stat().st_size > 1000 and out.with_suffix(".png").stat().st_size > 1000
    assert sorted(os.listdir(tmp_path)) == ["epochs.csv", "fig6.pdf", "fig6.png"]
    ax = fig.axes[0]
    spans = [p for p in ax.patches if (p.get_gid() or "").startswith("dendrite_phase")]
    xs = sorted((p.get_x(), p.get_x() + p.get_width()) for p in spans)
    assert xs == [(4.5, 7.5), (11.5, 13.5)]
    added = _artists(fig, "dendrite_added:")
    assert list(added) == ["dendrite_added:8"]
    assert added["dendrite_added:8"].get_xdata()[0] == pytest.approx(7.5)
    curves = _artists(fig, "curve:")
    assert set(curves) == {"curve:train", "curve:val", "curve:test"}
    assert len(curves["curve:val"].get_xdata()) == 14
    best = _artists(fig, "best_val")["best_val"]
    assert best.get_xdata()[0] == 11


def test_epoch_curves_bad_csv(tmp_path):
    bad = tmp_path / "epochs.csv"
    bad.write_text("epoch,train\n0,0.5\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        epoch_curves_figure(bad, tmp_path / "x.pdf")
