#!/usr/bin/env python
"""How should pb_core train its candidate dendrites? A measured answer on small problems.

Problems where one unit per neuron is too little (each network is deliberately narrow):

* ``spirals``  two interleaved spirals (Lang & Witbrock 1988; the Cascade-Correlation paper's benchmark),
               one turn per arm, 800 points with noise, MLP 2-2-1 (tanh)
* ``parity``   3-bit parity of noisy bits (x in {0,1}^3 + N(0, 0.15^2)), 800 samples, MLP 3-2-1 (tanh)
* ``checker``  a 3x3 checkerboard in the square, 800 points, MLP 2-4-1 (tanh)

Synthetic problems are split 400 / 200 / 200 per seed. Calibration (plain Adam 0.03, 1,500 steps): the
narrow widths reach about 0.62-0.74 test accuracy, widths 3-16 reach 0.83-1.0 (checker: 0.92 at 16).
* ``emnist``   the 9,120 real EMNIST Balanced training images on this machine (``--data-dir``), average-
               pooled to 14x14, split 5,120 / 2,000 / 2,000 per seed; MLP 196-16-47 (ReLU)

Every run: Adam (lr 0.03 synthetic, 0.003 EMNIST), batch 32 (128 EMNIST), validation loss selects,
neuron cycles with patience 8 (at most 40 epochs; EMNIST 6, at most 40), dendrite phases with patience 4
(at most 20; EMNIST 3, at most 20), at most 2 dendrites, all layers wrapped, one CPU thread. (Sized so
that the whole study takes about 40 minutes of one CPU core.)

Stage ``settings``: pb with one candidate-training choice changed at a time from a centre setting, plus
the library's settings before this study (``legacy``), on the three synthetic problems.
Stage ``variants``: baseline (the same number of epochs as pb, one cycle), pb with the chosen defaults,
pb legacy, cc_no_perforation, gd_dendrites, gd_joint, and a wider baseline whose hidden width gives the
parameter count of the final pb network, on all four problems.

Per run it records final train / validation / test accuracy (SPEC's *max*: the epoch of the best
validation), dendrites added and kept, epochs, the dendrite phases' lengths, the committed candidates'
|r| (mean over neurons and layers, as measured when chosen) and their saturation (the share of the
committed dendrites' activations on the training data with g' < 0.01), and seconds.

    python benchmarks/candidate_study.py --stage settings [--seeds 5] [--out benchmarks/out/candidate_study]
    python benchmarks/candidate_study.py --stage variants --default KEY=VALUE ...
    python benchmarks/candidate_study.py --stage report      # tables (markdown) and the figure from the CSVs

Rows are appended to ``<out>/<stage>.csv`` as runs finish; a rerun skips the runs already there.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import pb_core  # noqa: E402
from pb_core.records import atomic_write_bytes, write_csv  # noqa: E402

# ---------------------------------------------------------------------------------------------- problems
SYNTHETIC = ("spirals", "parity", "checker")


def _split(x: torch.Tensor, y: torch.Tensor, sizes: tuple, gen: torch.Generator):
    order = torch.randperm(len(x), generator=gen)
    out, start = [], 0
    for size in sizes:
        idx = order[start:start + size]
        out.append((x[idx], y[idx]))
        start += size
    return out


def make_problem(name: str, seed: int, data_dir: Path):
    """(train, val, test) as (x, y) pairs, the number of classes (1: binary), and the MLP's widths."""
    gen = torch.Generator().manual_seed(1000 + seed)
    if name == "spirals":  # one turn per arm
        n = 400
        t = torch.rand(n, generator=gen) * 2 * math.pi + 0.5
        r = t / (2 * math.pi)
        arms = []
        for sign in (1.0, -1.0):
            pts = torch.stack([sign * r * torch.cos(t), sign * r * torch.sin(t)], 1)
            arms.append(pts + 0.02 * torch.randn(n, 2, generator=gen))
        x = torch.cat(arms) * 2
        y = torch.cat([torch.zeros(n), torch.ones(n)])
        return _split(x, y, (400, 200, 200), gen), 1, (2, 2)
    if name == "parity":
        bits = torch.randint(0, 2, (800, 3), generator=gen).float()
        x = bits + 0.15 * torch.randn(bits.shape, generator=gen)
        y = bits.sum(1) % 2
        return _split(x, y, (400, 200, 200), gen), 1, (3, 2)
    if name == "checker":
        x = torch.rand(800, 2, generator=gen)
        y = ((x * 3).floor().sum(1) % 2).float()
        return _split(x * 2 - 1, y, (400, 200, 200), gen), 1, (2, 4)
    if name == "emnist":
        import numpy as np

        path = data_dir / "emnist_balanced" / "emnist_balanced_labels_and_partial_images.npz"
        if not path.exists():
            raise SystemExit(f"{path} not found: pass --data-dir pointing at the shared data folder")
        with np.load(path) as d:
            images = torch.from_numpy(d["x_train_103680_to_112799"]).float() / 255.0
            labels = torch.from_numpy(d["y_train_103680_to_112799"].astype("int64"))
        x = F.avg_pool2d(images.unsqueeze(1), 2).flatten(1)  # 14x14
        x = (x - x.mean()) / x.std()
        return _split(x, labels, (5120, 2000, 2000), gen), 47, (196, 16)
    raise ValueError(name)


class MLP(nn.Module):
    def __init__(self, inputs: int, hidden: int, outputs: int, act: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(inputs, hidden), nn.Linear(hidden, outputs)
        self.act = torch.tanh if act == "tanh" else torch.relu

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def mlp_params(inputs: int, hidden: int, outputs: int) -> int:
    return inputs * hidden + hidden + hidden * outputs + outputs


PROTOCOL = {  # per problem kind: network lr, batch, neuron (patience, max), dendrite (patience, max), max K
    "synthetic": dict(lr=0.03, batch=32, passes=1, neuron=(8, 40), dendrite=(4, 20), max_dendrites=2, act="tanh"),
    "emnist": dict(lr=0.003, batch=128, passes=1, neuron=(6, 40), dendrite=(3, 20), max_dendrites=2, act="relu"),
}

# ---------------------------------------------------------------------------------------------- settings
LEGACY = dict(candidate_init="layer", candidate_objective="covariance", candidate_optimizer=None, candidates=1,
              candidate_snapshot="epoch_end", candidate_selection="correlation", dendrite_noise_alpha=None)
CENTRE = dict(candidate_init="normal", candidate_objective="correlation", candidate_optimizer="x5", candidates=4,
              candidate_snapshot="measured", candidate_selection="correlation", dendrite_noise_alpha=0.05)
# one choice changed at a time (key: value different from the centre)
ONE_FACTOR = {
    "centre": {},
    "init=layer": {"candidate_init": "layer"},
    "objective=covariance": {"candidate_objective": "covariance"},
    "optimizer=network": {"candidate_optimizer": None},
    "candidates=1": {"candidates": 1},
    "snapshot=epoch_end": {"candidate_snapshot": "epoch_end"},
    "selection=covariance": {"candidate_selection": "covariance"},
    "criterion=thresholds": {"dendrite_noise_alpha": None},
}


def candidate_optimizer(choice, lr: float):
    """None: the network's optimizer (Adam at the network's lr); "x5"/"x25": Adam at 5x / 25x that lr."""
    if choice is None:
        return None
    return {"name": "adam", "lr": lr * float(choice[1:])}


# ---------------------------------------------------------------------------------------------- one run
def run(problem: str, variant: str, seed: int, settings: dict, data_dir: Path, hidden: int | None = None,
        fixed_epochs: int | None = None) -> dict:
    (train, val, test), classes, (inputs, width) = make_problem(problem, seed, data_dir)
    proto = PROTOCOL["emnist" if problem == "emnist" else "synthetic"]
    hidden = hidden or width
    outputs = 1 if classes == 1 else classes
    torch.manual_seed(seed)
    model = MLP(inputs, hidden, outputs, proto["act"])
    gen = torch.Generator().manual_seed(seed)
    lossf = (lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(-1), y)) if classes == 1 else F.cross_entropy

    def accuracy(m, x, y):
        out = m(x)
        pred = (out.squeeze(-1) > 0).float() if classes == 1 else out.argmax(1)
        return (pred == y).float().mean().item()

    def train_epoch(m, opt):
        x, y = train
        total = 0.0
        order = torch.cat([torch.randperm(len(x), generator=gen) for _ in range(proto["passes"])])
        for idx in order.split(proto["batch"]):
            opt.zero_grad()
            loss = lossf(m(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        return total / len(order)

    def evaluate(m):  # validation loss selects (accuracy on a few hundred points moves in coarse steps)
        return pb_core.Scores(accuracy(m, *train), -lossf(m(val[0]), val[1]).item(), accuracy(m, *test))

    s = dict(settings)
    opt_choice = s.pop("candidate_optimizer", None)
    core_variant = "baseline" if variant in ("baseline", "wider") else variant
    kwargs = dict(optimizer_factory=lambda p: torch.optim.Adam(p, lr=proto["lr"]), mode="max")
    if core_variant == "baseline":
        kwargs["neuron_switch"] = pb_core.SwitchPolicy(fixed_epochs=fixed_epochs) if fixed_epochs else \
            pb_core.SwitchPolicy(patience=proto["neuron"][0], max_epochs=proto["neuron"][1])
    else:
        if core_variant == "gd_dendrites":
            s["candidates"] = 1
        kwargs.update(s, candidate_optimizer=candidate_optimizer(opt_choice, proto["lr"]),
                      neuron_switch=pb_core.SwitchPolicy(patience=proto["neuron"][0], max_epochs=proto["neuron"][1]),
                      dendrite_switch=pb_core.SwitchPolicy(patience=proto["dendrite"][0],
                                                           max_epochs=proto["dendrite"][1]),
                      max_dendrites=proto["max_dendrites"])
    ctl = pb_core.CycleController(model, core_variant, **kwargs)

    # What each commit chose: |r| as measured, and the committed dendrite's saturation on the training data.
    commits = []
    layer_inputs = {}

    def capture():
        hooks = [lay.register_forward_pre_hook(lambda mod, args, name=name: layer_inputs.__setitem__(name, args[0]))
                 for name, lay in ctl.layers.items()]
        was = model.training
        model.eval()
        with torch.no_grad():
            model(train[0])
        model.train(was)
        for h in hooks:
            h.remove()

    for name, layer in ctl.layers.items():
        def commit(layer=layer, name=name, original=layer.commit_candidates):
            if name == next(iter(ctl.layers)):
                capture()  # the network is frozen during the phase; u = 0 keeps later layers' inputs too
            info = original()
            with torch.no_grad():
                a = layer._dendrite_activations((layer_inputs[name],)).select(layer.stack_dim, -1)
            commits.append({"layer": name, "r": info["mean_abs_correlation"],
                            "saturated": float(((a * (1 - a)) < 0.01).float().mean())})
            return info
        layer.commit_candidates = commit

    start = time.perf_counter()
    summary = ctl.fit(train_epoch, evaluate)
    seconds = time.perf_counter() - start
    rows = ctl.state.cycle_rows
    dphases = [c["epochs"] for c in rows if c["phase"] == "dendrite"]
    rs = [c["r"] for c in commits if c["r"] is not None]
    return {"problem": problem, "variant": variant, "seed": seed,
            "train": summary["max"]["train"], "val": summary["max"]["val"], "test": summary["max"]["test"],
            "original_test": summary["original"]["test"], "dendrites_added": summary["dendrites_added"],
            "final_dendrites": summary["final_dendrites"], "params": summary["params_final"],
            "epochs": summary["epochs"], "dendrite_phase_epochs": json.dumps(dphases),
            "mean_dendrite_phase": statistics.mean(dphases) if dphases else None,
            "phases_at_cap": sum(e >= proto["dendrite"][1] for e in dphases),
            "commit_r": statistics.mean(rs) if rs else None,
            "saturated": statistics.mean([c["saturated"] for c in commits]) if commits else None,
            "seconds": seconds, "stopped_because": summary["stopped_because"]}


# ---------------------------------------------------------------------------------------------- stages
COLUMNS = ["problem", "variant", "setting", "seed", "train", "val", "test", "original_test", "dendrites_added",
           "final_dendrites", "params", "epochs", "dendrite_phase_epochs", "mean_dendrite_phase", "phases_at_cap",
           "commit_r", "saturated", "seconds", "stopped_because"]


def _load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _append(path: Path, rows: list[dict], row: dict) -> None:
    rows.append({k: row.get(k) for k in COLUMNS})
    write_csv(path, rows, COLUMNS)


def _done(rows, **key) -> dict | None:
    for r in rows:
        if all(str(r[k]) == str(v) for k, v in key.items()):
            return r
    return None


def stage_settings(args) -> None:
    path = args.out / "settings.csv"
    rows = _load(path)
    jobs = [(p, s, seed) for seed in range(args.seeds) for p in args.problems if p in SYNTHETIC
            for s in [*ONE_FACTOR, "legacy"]]
    for i, (problem, setting, seed) in enumerate(jobs):
        if _done(rows, problem=problem, setting=setting, seed=seed):
            continue
        settings = LEGACY if setting == "legacy" else {**CENTRE, **ONE_FACTOR[setting]}
        row = run(problem, "pb", seed, settings, args.data_dir)
        _append(path, rows, {**row, "setting": setting})
        print(f"[{i + 1}/{len(jobs)}] {problem} {setting} seed {seed}: test {row['test']:.3f} "
              f"K {row['final_dendrites']}/{row['dendrites_added']} epochs {row['epochs']} "
              f"|r| {row['commit_r']} sat {row['saturated']} {row['seconds']:.1f}s", flush=True)


def parse_default(items: list[str]) -> dict:
    settings = dict(CENTRE)
    for item in items:
        key, _, value = item.partition("=")
        if key not in settings:
            raise SystemExit(f"--default {item}: unknown key {key}; keys: {sorted(settings)}")
        settings[key] = None if value in ("None", "none", "network") else (
            int(value) if value.isdigit() else (float(value) if value.replace(".", "", 1).isdigit() else value))
    return settings


def stage_variants(args) -> None:
    path = args.out / "variants.csv"
    rows = _load(path)
    default = parse_default(args.default or [])
    (args.out / "default.json").write_text(json.dumps(default, indent=1))
    for seed in range(args.seeds):
        for problem in args.problems:
            def go(variant, setting, settings, **kw):
                if _done(rows, problem=problem, variant=variant, setting=setting, seed=seed):
                    return _done(rows, problem=problem, variant=variant, setting=setting, seed=seed)
                row = run(problem, variant, seed, settings, args.data_dir, **kw)
                _append(path, rows, {**row, "setting": setting})
                print(f"{problem} {variant}/{setting} seed {seed}: test {row['test']:.3f} train {row['train']:.3f} "
                      f"K {row['final_dendrites']} params {row['params']} epochs {row['epochs']} "
                      f"|r| {row['commit_r']} sat {row['saturated']} {row['seconds']:.1f}s", flush=True)
                return rows[-1]

            earlier = _load(args.out / "settings.csv")
            for name, settings in [("default", default), ("legacy", LEGACY)]:
                same = [k for k in [*ONE_FACTOR, "legacy"]
                        if (LEGACY if k == "legacy" else {**CENTRE, **ONE_FACTOR[k]}) == settings]
                hit = same and _done(earlier, problem=problem, setting=same[0], seed=seed)
                if hit and not _done(rows, problem=problem, variant="pb", setting=name, seed=seed):
                    _append(path, rows, {**hit, "variant": "pb", "setting": name})
            pb = go("pb", "default", default)
            go("pb", "legacy", LEGACY)
            go("cc_no_perforation", "default", default)
            go("gd_dendrites", "default", default)
            go("gd_joint", "default", default)
            epochs = int(pb["epochs"])
            go("baseline", "same_epochs", {}, fixed_epochs=epochs)
            _, classes, (inputs, width) = make_problem(problem, seed, args.data_dir)
            outputs = 1 if classes == 1 else classes
            target = int(pb["params"])
            hidden = min(range(1, 64 * width), key=lambda h: abs(mlp_params(inputs, h, outputs) - target))
            go("wider", f"h{hidden}", {}, hidden=hidden, fixed_epochs=epochs)


# ---------------------------------------------------------------------------------------------- report
def _f(values, digits=3):
    vals = [float(v) for v in values if v not in ("", None)]
    if not vals:
        return "-"
    mean = statistics.mean(vals)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(vals):.{digits}f}" if len(vals) > 1 else "")


def _table(rows: list[dict], key: str, order: list[str]) -> str:
    head = ("| problem | " + key + " | test acc | train acc | dendrites kept/added | params | epochs | "
            "dendrite phase (epochs) | at cap | committed \\|r\\| | saturated | s/run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1 - head.count("\\|"))]
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    for problem in problems:
        for name in order:
            sel = [r for r in rows if r["problem"] == problem and r[key] == name]
            if not sel:
                continue
            kept = _f([r["final_dendrites"] for r in sel], 1)
            added = _f([r["dendrites_added"] for r in sel], 1).split(" ")[0]
            at_cap = sum(int(r["phases_at_cap"] or 0) for r in sel)
            phases = sum(len(json.loads(r["dendrite_phase_epochs"])) for r in sel)
            lines.append(f"| {problem} | {name} | {_f([r['test'] for r in sel])} | {_f([r['train'] for r in sel])} | "
                         f"{kept} / {added} | {_f([r['params'] for r in sel], 0).split(' ')[0]} | "
                         f"{_f([r['epochs'] for r in sel], 0)} | {_f([r['mean_dendrite_phase'] for r in sel], 1)} | "
                         f"{at_cap}/{phases} | {_f([r['commit_r'] for r in sel])} | {_f([r['saturated'] for r in sel])} | "
                         f"{_f([r['seconds'] for r in sel], 1).split(' ')[0]} |")
    return "\n".join(lines)


def stage_report(args) -> None:
    settings = _load(args.out / "settings.csv")
    variants = _load(args.out / "variants.csv")
    out = []
    if settings:
        out.append("### Candidate-training settings (pb, one choice changed from the centre at a time)\n")
        out.append(_table(settings, "setting", [*ONE_FACTOR, "legacy"]))
    if variants:
        for r in variants:
            r["run"] = f"{r['variant']} ({r['setting']})" if r["variant"] in ("pb", "wider") else r["variant"]
        order = list(dict.fromkeys(["baseline", "pb (default)", "pb (legacy)", "cc_no_perforation", "gd_dendrites",
                                    "gd_joint", *[r["run"] for r in variants if r["variant"] == "wider"]]))
        out.append("\n### Variants\n")
        out.append(_table(variants, "run", order))
    text = "\n".join(out) + "\n"
    atomic_write_bytes(args.out / "tables.md", text.encode())
    print(text)
    if variants:
        figure(variants, args.out / "variants.png")


def figure(rows: list[dict], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(problems), figsize=(4.2 * len(problems), 3.6), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        sel = [r for r in rows if r["problem"] == problem]
        runs = list(dict.fromkeys(r["run"] if r["variant"] != "wider" else "wider" for r in sel))
        for i, name in enumerate(runs):
            vals = [float(r["test"]) for r in sel if (r["run"] if r["variant"] != "wider" else "wider") == name]
            ax.scatter([i] * len(vals), vals, s=14, alpha=0.7)
            ax.plot([i - 0.3, i + 0.3], [statistics.mean(vals)] * 2, color="k")
        ax.set_xticks(range(len(runs)), runs, rotation=60, ha="right", fontsize=8)
        ax.set_title(problem)
        ax.set_ylabel("test accuracy (at best validation)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=["settings", "variants", "report"], required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--problems", nargs="+", default=[*SYNTHETIC, "emnist"])
    ap.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "candidate_study")
    ap.add_argument("--default", nargs="*", help="the chosen defaults as KEY=VALUE over the centre setting")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    {"settings": stage_settings, "variants": stage_variants, "report": stage_report}[args.stage](args)


if __name__ == "__main__":
    main()
