"""What the paper protocol costs: ``results/compute_budget.csv``.

For every group of runs of the paper profile's grid (benchmark, variant, factor values), the seconds per
neuron-phase and per dendrite-phase epoch measured in the runs done (the median over their ``epochs.csv``,
in whatever profile and on whatever device they ran: the row says which), times the epochs one run needs
under the paper protocol (``paper_protocol_epochs`` in config/paper.yaml: measured where a paper-protocol run
exists, assumed otherwise), times the number of seeds. Then one row per declared figure (its benchmark's
runs) and the total. An estimate, labelled as one: it is only as good as the epochs it assumes.
"""
from __future__ import annotations

import ast
import operator
from pathlib import Path

import pandas as pd

from . import config as cfgmod
from .grid import Run, format_value, grid, run_dir
from .registry import get_info

COLUMNS = ["benchmark", "kind", "variant", "factors", "runs", "neuron_epochs", "dendrite_epochs",
           "s_per_neuron_epoch", "s_per_dendrite_epoch", "hours", "device", "measured_runs", "note"]
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def epochs(expression, variables: dict) -> float:
    """A number, or an arithmetic expression (+ - * /) in the given variables (config/paper.yaml)."""
    if isinstance(expression, (int, float)):
        return float(expression)

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in variables:
            return float(variables[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"paper_protocol_epochs: {expression!r} is not arithmetic in {sorted(variables)}")
    return value(ast.parse(str(expression), mode="eval").body)


def _measured(folder: Path) -> dict | None:
    """Median seconds per neuron and per dendrite epoch of one finished run (None if it has none)."""
    path = folder / "epochs.csv"
    if not (folder / "summary.json").is_file() or not path.is_file():
        return None
    ep = pd.read_csv(path)
    out = {f"s_per_{phase}_epoch": _median(ep.loc[ep["phase"] == phase, "seconds"]) for phase in ("neuron", "dendrite")}
    prov = folder / "provenance.json"
    out["device"] = ""
    if prov.is_file():
        import json

        session = json.loads(prov.read_text())["sessions"][-1]
        device = session.get("device", {})
        out["device"] = device.get("gpu") or f"{device.get('type', '?')}: {session.get('cpu', {}).get('model', '?')}, " \
                                              f"{session.get('threads', {}).get('torch', '?')} thread(s)"
    return out


def _median(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.median()) if len(values) else float("nan")


def _factor_text(factors) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in factors)


def compute_budget(cfg: dict) -> pd.DataFrame:
    """The paper profile's cost from this profile's runs (see the module docstring)."""
    paper = cfgmod.load_config()  # the paper protocol's grid and settings
    rows = []
    for benchmark in cfg["benchmarks"]:
        if benchmark not in paper["benchmarks"] or benchmark not in cfg["paper_protocol_epochs"]:
            continue
        spec = cfg["paper_protocol_epochs"][benchmark]
        measured: dict[tuple, list[dict]] = {}
        for run in grid(cfg, benchmark):
            m = _measured(run_dir(cfg["results_dir"], run))
            if m is not None:
                measured.setdefault((run.variant, run.factors), []).append(m)
        groups: dict[tuple, list[Run]] = {}
        for run in grid(paper, benchmark):
            groups.setdefault((run.variant, run.factors), []).append(run)
        total = 0.0
        for (variant, factors), runs in groups.items():
            settings = cfgmod.run_settings(paper, runs[0])
            per_variant = spec.get(variant, spec.get("default"))
            n_ep = epochs(per_variant["neuron"], {"max_dendrites": settings["pb"].get("max_dendrites") or 0})
            d_ep = epochs(per_variant["dendrite"], {"max_dendrites": settings["pb"].get("max_dendrites") or 0})
            found = measured.get((variant, factors))
            note = ""
            if not found:  # the same variant at other factor values, as a stand-in (said so)
                others = [(f, m) for (v, f), m in measured.items() if v == variant]
                if others:
                    f, found = others[0]
                    note = f"seconds measured at {_factor_text(f) or 'no factors'}"
            row = {"benchmark": benchmark, "kind": "runs", "variant": variant, "factors": _factor_text(factors),
                   "runs": len(runs), "neuron_epochs": n_ep, "dendrite_epochs": d_ep, "note": note}
            if found:
                frame = pd.DataFrame(found)
                s_n, s_d = (_median(frame[f"s_per_{phase}_epoch"]) for phase in ("neuron", "dendrite"))
                measured_d = s_d
                s_d = 0.0 if d_ep == 0 else s_d
                hours = len(runs) * (n_ep * s_n + d_ep * (s_d if pd.notna(s_d) else s_n)) / 3600
                if d_ep and pd.isna(measured_d):
                    row["note"] = (note + "; " if note else "") + "no dendrite epoch measured: neuron seconds used"
                row.update(s_per_neuron_epoch=s_n, s_per_dendrite_epoch=s_d, hours=hours,
                           device=frame["device"].iloc[0], measured_runs=len(found))
                total += hours
            else:
                row.update(measured_runs=0, note="no run of this variant measured in this profile")
            rows.append(row)
        for output in get_info(cfg, benchmark).outputs:
            if output.kind == "figure":
                rows.append({"benchmark": benchmark, "kind": f"figure {benchmark}_{output.name}", "hours": total,
                             "note": "every run of the benchmark (figures of one benchmark share their runs)"})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    run_rows = frame[frame["kind"] == "runs"]
    total = {"benchmark": "all", "kind": "total", "hours": run_rows["hours"].sum(min_count=1),
             "runs": run_rows["runs"].sum(), "note": f"profile {cfg['profile']}'s measurements; device-hours on the "
                                                      "devices named per row"}
    return pd.concat([frame, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)
