"""What the paper protocol costs: ``results/compute_budget.csv``.

For every group of runs of the paper profile's grid (benchmark, variant, factor values), the seconds per
neuron-phase and per dendrite-phase epoch measured in the runs done (the median over their ``epochs.csv``,
in whatever profile and on whatever device they ran: the row says which), times the epochs one run needs
under the paper protocol (``paper_protocol_epochs`` in config/paper.yaml: measured where a paper-protocol run
exists, assumed otherwise), times the number of seeds. Then one row per declared figure (its benchmark's
runs) and the total. An estimate, labelled as one: it is only as good as the epochs it assumes.

Every variant of a seed starts from one shared first neuron cycle (``share_first_cycle``), so that cycle is
counted once per (benchmark, factor values, seed), in a row of its own (variant ``first_cycle``), and each
variant's row counts only its epochs after it. The first cycle is the baseline's run (its protocol epochs are
the baseline's neuron epochs), so the baseline's own row is zero. Seconds per epoch of a variant are
measured on its epochs after the first cycle (all of them for a run that has none), those of the first cycle
in the first-cycle folders.
"""
from __future__ import annotations

import ast
import operator
from pathlib import Path

import pandas as pd

from pb_core.records import FIRST_CYCLE_FILE

from . import config as cfgmod
from .grid import FIRST_CYCLE, Run, format_value, grid, run_dir
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


def _measured(folder: Path, first_cycle: bool = False) -> dict | None:
    """Median seconds per neuron and per dendrite epoch of one finished run, on its epochs after the first
    cycle when it has any (None if it is not finished); ``first_cycle``: of a shared first cycle's folder."""
    path = folder / "epochs.csv"
    done = folder / (FIRST_CYCLE_FILE if first_cycle else "summary.json")
    if not done.is_file() or not path.is_file():
        return None
    ep = pd.read_csv(path)
    later = ep[ep["cycle"] != ep["cycle"].min()] if len(ep) else ep
    if len(later):
        ep = later
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
        first_cycles: set[Path] = set()
        for run in grid(cfg, benchmark):
            m = _measured(run_dir(cfg["results_dir"], run))
            if m is not None:
                measured.setdefault((run.variant, run.factors), []).append(m)
            first = cfgmod.first_cycle_path(cfg, run).parent
            if first not in first_cycles:  # each shared first cycle once
                first_cycles.add(first)
                m = _measured(first, first_cycle=True)
                if m is not None:
                    measured.setdefault((FIRST_CYCLE, run.factors), []).append(m)
        shared = cfg["share_first_cycle"]  # how this pipeline trains the paper protocol
        # The baseline is the first cycle: its protocol epochs are the cycle's.
        first_epochs = epochs(spec.get("baseline", spec.get("default"))["neuron"], {"max_dendrites": 0})
        groups: dict[tuple, list[Run]] = {}
        for run in grid(paper, benchmark):
            groups.setdefault((run.variant, run.factors), []).append(run)
        if shared:  # one first cycle per (factor values, seed) that some variant is configured at
            for (variant, factors), runs in list(groups.items()):
                cycles = groups.setdefault((FIRST_CYCLE, factors), [])
                cycles += [r for r in runs if r.seed not in {c.seed for c in cycles}]
        total = 0.0
        for (variant, factors), runs in groups.items():
            if variant == FIRST_CYCLE:
                n_ep, d_ep = first_epochs, 0.0
            else:
                settings = cfgmod.run_settings(paper, runs[0])
                per_variant = spec.get(variant, spec.get("default"))
                n_ep = epochs(per_variant["neuron"], {"max_dendrites": settings["pb"].get("max_dendrites") or 0})
                d_ep = epochs(per_variant["dendrite"], {"max_dendrites": settings["pb"].get("max_dendrites") or 0})
                if shared:
                    n_ep = max(n_ep - first_epochs, 0.0)
            found = measured.get((variant, factors))
            note = "the first neuron cycle every variant of a seed starts from" if variant == FIRST_CYCLE else ""
            if not found:  # the same variant at other factor values, as a stand-in (said so)
                others = [(f, m) for (v, f), m in measured.items() if v == variant]
                if others:
                    f, found = others[0]
                    note = (note + "; " if note else "") + f"seconds measured at {_factor_text(f) or 'no factors'}"
            row = {"benchmark": benchmark, "kind": "runs", "variant": variant, "factors": _factor_text(factors),
                   "runs": len(runs), "neuron_epochs": n_ep, "dendrite_epochs": d_ep, "note": note}
            if n_ep == 0 and d_ep == 0:  # the baseline with a shared first cycle: nothing of its own
                row.update(hours=0.0, measured_runs=len(found or []),
                           note="its epochs are the shared first cycle's (row first_cycle)")
            elif found:
                frame = pd.DataFrame(found)
                s_n, s_d = (_median(frame[f"s_per_{phase}_epoch"]) for phase in ("neuron", "dendrite"))
                measured_d = s_d
                s_d = 0.0 if d_ep == 0 else s_d
                hours = len(runs) * (n_ep * s_n + d_ep * (s_d if pd.notna(s_d) else s_n)) / 3600
                if d_ep and pd.isna(measured_d):
                    row["note"] = (row["note"] + "; " if row["note"] else "") + \
                        "no dendrite epoch measured: neuron seconds used"
                row.update(s_per_neuron_epoch=s_n, s_per_dendrite_epoch=s_d, hours=hours,
                           device=frame["device"].iloc[0], measured_runs=len(found))
                total += hours
            else:
                row.update(measured_runs=0, note=(note + "; " if note else "") +
                           "no run of this variant measured in this profile")
            rows.append(row)
        for output in get_info(cfg, benchmark).outputs:
            if output.kind == "figure":
                rows.append({"benchmark": benchmark, "kind": f"figure {benchmark}_{output.name}", "hours": total,
                             "note": "every run of the benchmark (figures of one benchmark share their runs)"})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    run_rows = frame[frame["kind"] == "runs"]
    total = {"benchmark": "all", "kind": "total", "hours": run_rows["hours"].sum(min_count=1),
             "runs": run_rows[run_rows["variant"] != FIRST_CYCLE]["runs"].sum(),
             "note": f"profile {cfg['profile']}'s measurements; device-hours on the devices named per row"}
    return pd.concat([frame, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)
