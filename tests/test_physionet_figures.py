"""PhysioNet's declared outputs with a fake output context (types.SimpleNamespace) and synthetic runs.

* Figure 10 (params_auc): one line per width through its dendrite counts at the mean parameters and mean
  test AUC, Student-t 95% intervals; the compute-matched baseline at its best-validation cycle;
* Figure 11 (auc_by_arch): one candle per width and dendrite count with the seeds' quartiles and extremes;
* Table 2: ``table2`` joins the measured rows with the paper's and adds each width's total; ``timing``
  measures every neuron and dendrite cycle of each width's schedule (on a synthetic prepared set);
* a run without cycles.csv is an error that names it.
"""
import io
import math
import tarfile
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.patches import Rectangle
from scipy import stats

from experiments import config as cfgmod
from experiments.errors import UserError
from experiments.physionet import figures
from experiments.physionet.benchmark import BENCHMARK
from experiments.physionet.data import VARIABLES

CYCLES_HEADER = "cycle,phase,dendrites,params,epochs,best_epoch,val,test\n"


def write_run(folder, cycles):
    """cycles: [(phase, dendrites, params, val, test)]"""
    folder.mkdir(parents=True)
    lines = [f"{i},{phase},{d},{p},5,{5 * i},{val},{test}" for i, (phase, d, p, val, test) in enumerate(cycles)]
    (folder / "cycles.csv").write_text(CYCLES_HEADER + "\n".join(lines) + "\n")


@pytest.fixture
def runs(tmp_path):
    """pb at width 0.125 (3 seeds, 0-2 dendrites), baseline at width 1 (3 seeds), matched at 0.125."""
    rng = np.random.default_rng(0)
    out, truth = [], []
    for seed in range(3):
        cycles = []
        for d in range(3):
            test = 0.7 + 0.03 * d + rng.normal(0, 0.01)
            cycles.append(("neuron", d, 1000 * (d + 1) + seed, 0.7 + 0.02 * d, test))
            truth.append(("pb", 0.125, d, 1000 * (d + 1) + seed, test))
            if d < 2:
                cycles.append(("dendrite", d, 1000 * (d + 1) + seed, 0.7 + 0.02 * d, test))
        write_run(tmp_path / f"pb/width0.125-seed{seed}", cycles)
        out.append(("pb", {"width": 0.125}, seed, tmp_path / f"pb/width0.125-seed{seed}"))
        base = 0.75 + rng.normal(0, 0.01)
        write_run(tmp_path / f"baseline/width1-seed{seed}", [("neuron", 0, 9000, 0.8, base)])
        out.append(("baseline", {"width": 1}, seed, tmp_path / f"baseline/width1-seed{seed}"))
        truth.append(("baseline", 1.0, 0, 9000, base))
        # matched: the second cycle has the best validation score; its test score is the run's max
        matched = [("neuron", 0, 1000, 0.70, 0.60), ("neuron", 0, 1000, 0.75, 0.71 + 0.01 * seed),
                   ("neuron", 0, 1000, 0.74, 0.90)]
        write_run(tmp_path / f"baseline_matched/width0.125-seed{seed}", matched)
        out.append(("baseline_matched", {"width": 0.125}, seed, tmp_path / f"baseline_matched/width0.125-seed{seed}"))
    return out, pd.DataFrame(truth, columns=["variant", "width", "dendrites", "params", "test"])


def ctx_for(tmp_path, runs, name, settings=None):
    suffix = ".pdf" if name in ("params_auc", "auc_by_arch") else ".csv"
    return SimpleNamespace(runs=lambda: runs, path=tmp_path / "out" / f"physionet_{name}{suffix}", profile="test",
                           settings=settings or {}, note=lambda: "profile: test; 3 seeds", benchmark="physionet")


def test_params_auc_draws_mean_lines_with_t_intervals(tmp_path, runs):
    run_list, truth = runs
    ctx = ctx_for(tmp_path, run_list, "params_auc")
    fig = figures.params_auc(ctx)
    assert ctx.path.is_file() and ctx.path.with_suffix(".png").is_file()
    ax = fig.axes[0]
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    pb = truth[truth["variant"] == "pb"].groupby("dendrites")
    line = lines["line:pb:0.125"]
    assert np.allclose(line.get_xdata(), pb["params"].mean())
    assert np.allclose(line.get_ydata(), pb["test"].mean())
    # The interval: Student-t 95% of the mean over the 3 seeds, drawn as vertical bars.
    half = stats.t.ppf(0.975, 2) * pb["test"].std(ddof=1) / math.sqrt(3)
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    spans = sorted(round(float(seg[1][1] - seg[0][1]) / 2, 9) for c in bars for seg in c.get_segments())
    for h in half:
        assert round(float(h), 9) in spans
    assert lines["line:baseline:1"].get_ydata() == pytest.approx([truth[truth["variant"] == "baseline"]["test"].mean()])
    # The compute-matched baseline: each run's best-validation cycle (test 0.71, 0.72, 0.73), not its last.
    assert lines["line:baseline_matched:0.125"].get_ydata() == pytest.approx([0.72])
    assert ax.get_xscale() == "log"


def test_params_auc_never_shows_auc_outside_0_1():
    """Two seeds far apart: the t-interval (t = 12.7 with one degree of freedom) reaches past 0 and 1; the
    axis stops at the AUC's range (and says so), but still holds every mean."""
    cycles = pd.DataFrame([("pb", 0.125, s, 0, 0, 1000, 0.5, t) for s, t in ((0, 0.45), (1, 0.65))],
                          columns=figures.CYCLE_COLUMNS)
    pts = figures.points(cycles)
    assert pts["ci95"].iloc[0] > 0.5  # 12.7 * 0.1414 / sqrt(2)
    fig = figures.params_auc_figure(pts, note="profile: test")
    lo, hi = fig.axes[0].get_ylim()
    assert -0.05 < lo < 0 and 1 < hi < 1.05
    assert any("cut at the AUC's range" in t.get_text() for t in fig.texts)
    narrow = figures.points(cycles.assign(test=[0.70, 0.71]))
    lo, hi = figures.params_auc_figure(narrow).axes[0].get_ylim()
    half = narrow["ci95"].iloc[0]
    assert lo == pytest.approx(0.705 - half - 0.03 * 2 * half) and hi == pytest.approx(0.705 + half + 0.03 * 2 * half)


def test_auc_by_arch_candles_hold_the_seed_quartiles(tmp_path, runs):
    run_list, truth = runs
    fig = figures.auc_by_arch(ctx_for(tmp_path, run_list, "auc_by_arch"))
    ax = fig.axes[0]
    boxes = {p.get_gid(): p for p in ax.patches if isinstance(p, Rectangle) and p.get_gid()}
    assert set(boxes) == {"box:pb:0.125:0", "box:pb:0.125:1", "box:pb:0.125:2", "box:baseline_matched:0.125:0",
                          "box:baseline:1:0"}
    for d in range(3):
        values = truth[(truth["variant"] == "pb") & (truth["dendrites"] == d)]["test"].to_numpy()
        q1, q3 = np.percentile(values, [25, 75])
        box = boxes[f"box:pb:0.125:{d}"]
        assert box.get_y() == pytest.approx(q1) and box.get_height() == pytest.approx(q3 - q1)
        wick = next(l for l in ax.get_lines() if l.get_gid() == f"wick:pb:0.125:{d}")
        assert list(wick.get_ydata()) == pytest.approx([values.min(), values.max()])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0].startswith("w=0.125\n0d") and labels[-1].startswith("w=1\n0d")


def test_missing_run_is_an_error_naming_it(tmp_path):
    ghost = [("pb", {"width": 0.125}, 4, tmp_path / "pb/width0.125-seed4")]
    with pytest.raises(UserError, match="width0.125-seed4/cycles.csv does not exist"):
        figures.params_auc(ctx_for(tmp_path, ghost, "params_auc"))


def test_table2_joins_the_paper_and_adds_totals(tmp_path):
    measured = pd.DataFrame([
        {"width": 0.125, "phase": "neuron", "dendrites": 0, "params": 27289, "seconds_per_epoch": 4.0,
         "epochs_per_cycle": 250, "seconds_per_cycle": 1000.0, "width_total_seconds": 3500.0, "device": "cpu"},
        {"width": 0.125, "phase": "dendrite", "dendrites": 0, "params": 27289, "seconds_per_epoch": 6.0,
         "epochs_per_cycle": 250, "seconds_per_cycle": 1500.0, "width_total_seconds": 3500.0, "device": "cpu"},
        {"width": 0.125, "phase": "neuron", "dendrites": 1, "params": 60000, "seconds_per_epoch": 4.0,
         "epochs_per_cycle": 250, "seconds_per_cycle": 1000.0, "width_total_seconds": 3500.0, "device": "cpu"},
        {"width": 1.0, "phase": "neuron", "dendrites": 0, "params": 1193861, "seconds_per_epoch": 7.0,
         "epochs_per_cycle": 250, "seconds_per_cycle": 1750.0, "width_total_seconds": 1750.0, "device": "cpu"},
    ])
    (tmp_path / "out").mkdir()
    measured.to_csv(tmp_path / "out" / "timing.csv", index=False)
    settings = {"paper_device": "one RTX 2080",
                "paper": [{"width": 0.125, "phase": "neuron", "dendrites": 0, "seconds_per_epoch": 5.15},
                          {"width": 0.125, "phase": "dendrite", "dendrites": 0, "seconds_per_epoch": 9.43}],
                "paper_totals": [{"width": 1, "seconds": 1782}]}
    ctx = ctx_for(tmp_path, [], "table2", settings)
    figures.table2(ctx)
    table = pd.read_csv(ctx.path)
    assert list(table.columns) == figures.TABLE2_COLUMNS
    first = table.iloc[0]
    assert (first["phase"], first["paper_seconds_per_epoch"], first["seconds_per_epoch"]) == ("neuron", 5.15, 4.0)
    assert table.iloc[1]["paper_seconds_per_epoch"] == 9.43 and np.isnan(table.iloc[2]["paper_seconds_per_epoch"])
    totals = table[table["phase"] == "total"]
    assert totals["seconds_per_cycle"].tolist() == [3500.0, 1750.0]
    assert totals["paper_total_seconds"].fillna(0).tolist() == [0, 1782]
    assert "one RTX 2080" in ctx.path.with_suffix(".md").read_text()


def synthetic_set(folder, records=48, seed=0):
    """A set-a.tar.gz of ``records`` random records in the challenge's format, and its Outcomes-a.txt."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    outcomes = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for r in range(records):
            rid = 200000 + r
            lines = ["Time,Parameter,Value", f"00:00,RecordID,{rid}", "00:00,Age,60", "00:00,Gender,1",
                     "00:00,Height,170", "00:00,ICUType,2", "00:00,Weight,80"]
            for minute in sorted(rng.choice(48 * 60, size=int(rng.integers(3, 30)), replace=False)):
                for name in rng.choice(VARIABLES[5:], size=2, replace=False):
                    lines.append(f"{minute // 60:02d}:{minute % 60:02d},{name},{rng.normal(50, 10):.2f}")
            data = ("\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(f"set-a/{rid}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            outcomes.append(f"{rid},10,5,8,-1,{int(r % 4 == 0)}")
    (folder / "set-a.tar.gz").write_bytes(buf.getvalue())
    (folder / "Outcomes-a.txt").write_text("\n".join(outcomes) + "\n")


def test_timing_measures_every_cycle_of_each_widths_schedule(tmp_path):
    synthetic_set(tmp_path / "data" / "physionet2012")
    cfg = cfgmod.load_config()
    cfg.update(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"),
               results_dir=str(tmp_path / "results"), device="cpu")
    block = cfg["benchmarks"]["physionet"]
    block["factors"] = {"width": [0.125, 0.25]}
    block["factor_overrides"] = {"width": {"0.125": {"variants": ["pb"], "pb": {"max_dendrites": 1}},
                                           "0.25": {"variants": ["baseline"]}}}
    block["pb"]["fixed_cycle_epochs"] = 3
    block["train"]["batch_size"] = 8
    prepared = BENCHMARK.prepare(block, tmp_path / "data", tmp_path / "cache", download=False)
    ctx = SimpleNamespace(cfg=cfg, benchmark="physionet", prepared=lambda: prepared, threads=1,
                          path=tmp_path / "results" / "physionet" / "timing.csv",
                          settings={"train_batches": 1, "eval_batches": 1, "warmup_batches": 0,
                                    "cpu_inference_inputs": 3})
    figures.timing(ctx)
    table = pd.read_csv(ctx.path)
    assert [(r.width, r.phase, r.dendrites) for r in table.itertuples()] == [
        (0.125, "neuron", 0), (0.125, "dendrite", 0), (0.125, "neuron", 1), (0.25, "neuron", 0)]
    assert table.loc[2, "params"] > 2 * table.loc[0, "params"]  # one dendrite: a copy of every layer
    assert (table["seconds_per_epoch"] > 0).all() and (table["cpu_inputs_per_second"].iloc[[0, 2, 3]] > 0).all()
    assert np.isnan(table.loc[1, "eval_seconds_per_epoch"]) or table.loc[1, "eval_seconds_per_epoch"] == 0
    assert np.allclose(table["seconds_per_cycle"], 3 * table["seconds_per_epoch"])
    width_0125 = table[table["width"] == 0.125]
    assert np.allclose(width_0125["width_total_seconds"], width_0125["seconds_per_cycle"].sum())
    # 30 training records (48 -> 38 -> 30) in 4 batches of 8: one batch timed and scaled, as the note says.
    assert (table["train_batches_timed"] == 1).all() and table["train_batches"].iloc[0] > 1
    assert "scaled from 1 of" in table.loc[0, "note"] and "no CUDA device" in table.loc[0, "note"]
    assert table["gpu_inputs_per_second"].isna().all()
    assert ((table["cpu_share"] > 0) & (table["cpu_share"] <= 1.5)).all()


def test_same_width_variants_get_their_own_labels_and_markers():
    """The evidence profile's variants share one width factor: a baseline (pb's first cycle), pb and a wider
    run must not be drawn as three anonymous "w=0.125 0d" candles or three identical markers."""
    rows = [{"variant": v, "width": 0.125, "seed": s, "cycle": c, "dendrites": d, "params": p, "val": 0.8,
             "test": 0.8 + 0.01 * s}
            for s in (0, 1)
            for v, c, d, p in [("baseline", 0, 0, 100), ("pb", 0, 0, 100), ("pb", 2, 1, 200), ("wider", 0, 0, 199)]]
    cycles = pd.DataFrame(rows, columns=figures.CYCLE_COLUMNS)
    labels = [t.get_text() for t in figures.auc_by_arch_figure(cycles).axes[0].get_xticklabels()]
    assert len(set(labels)) == len(labels) == 4
    assert [l.split("\n(n=")[0] for l in labels] == ["w=0.125\n0d\nbaseline", "w=0.125\n0d", "w=0.125\n1d",
                                                    "w=0.125\nwidened"]
    ax = figures.params_auc_figure(figures.points(cycles)).axes[0]
    markers = {line.get_gid().split(":")[1]: line.get_marker() for line in ax.get_lines()
               if (line.get_gid() or "").startswith("line:")}
    assert len(set(markers.values())) == 3, markers
