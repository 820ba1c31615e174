"""Train one run of the grid and write its records to ``<results_dir>/<benchmark>/<variant>/<point>/``.

The folder holds ``config.json`` (the run's settings), ``provenance.json`` (code, packages, CPU kernels,
BLAS, threads and device of every session that trained it), ``epochs.csv``, ``cycles.csv``,
``correlations.csv``, ``run.log``, and, once finished, ``summary.json`` and ``model.pt``. While it trains,
``checkpoint.pt`` holds everything needed to resume: a run interrupted at any point (killed, out of
walltime) resumes from its last finished epoch when started again with the same settings. A finished run
deletes its checkpoint: a finished run is never a resume point, so a run whose ``summary.json`` is deleted
(``snakemake --forcerun train``, ``-R train``) trains again from scratch. A run whose settings changed starts
afresh. Everything is checked (benchmark, variant, seed, factor values, prepared data) before the folder
is created, so bad input leaves nothing behind.

Every run starts from the shared first neuron cycle of its point (``share_first_cycle``): trained once, by
:func:`train_first_cycle`, into ``<results_dir>/<benchmark>/first_cycle/<point>/<key>/`` (the key names the
settings the cycle reads, config.first_cycle_settings), which holds the same records, provenance and
checkpoint as a run's folder, and ``first_cycle.pt`` once the cycle is over. A run then continues from that
file and decides the cycle's end by its own rule, so it ends exactly as if it had trained the cycle itself.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import sys
import traceback
from pathlib import Path

from pb_core.settings import PBSettings

from . import config as cfgmod
from . import widen
from .errors import UserError
from .grid import Run, run_dir
from .registry import EpochContext, get_benchmark, get_info

log = logging.getLogger("experiments")

RUN_FILES = ("epochs.csv", "cycles.csv", "correlations.csv", "summary.json", "model.pt", "checkpoint.pt",
             "provenance.json", "run.log", "finished.json", "first_cycle.pt")
# A run whose validation score never moves further than this from the metric's chance level is flagged.
CHANCE_TOLERANCE = 0.01


class DivergedError(UserError):
    """The training loss became NaN or infinite."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}); delete it and rerun the run it belongs to") from None


def resolve_device(device: str) -> str:
    """The device a run trains on. ``cuda`` means one GPU among those this job may see: the one named by
    ``PB_CUDA_DEVICE`` (an index among the visible GPUs), else, when several are visible, the one with the
    most free memory right now; never GPU 0 by assumption (a scheduler such as SLURM narrows the visible
    GPUs with CUDA_VISIBLE_DEVICES, and several runs may share a machine)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UserError("device is 'cuda' but torch sees no CUDA device; set device: cpu (or auto)")
    count = torch.cuda.device_count()
    named = os.environ.get("PB_CUDA_DEVICE")
    if named is not None:
        if not named.isdigit() or int(named) >= count:
            raise UserError(f"PB_CUDA_DEVICE={named!r} is not one of the {count} visible GPU indices")
        return f"cuda:{int(named)}"
    if count == 1:
        return "cuda:0"
    free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
    return f"cuda:{max(range(count), key=free.__getitem__)}"


def make_gpu_deterministic() -> None:
    """What PyTorch needs for repeatable GPU runs. cuBLAS needs its workspace setting before it starts;
    cuDNN picks deterministic kernels and no benchmarking; other ops use their deterministic versions where
    one exists and warn where none does (PyG's scatter reductions may be such ops): such a run is not
    bit-repeatable on a GPU, and the warning in run.log says which op."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def matched_cycles(results_dir: Path, run: Run, reference: str) -> list[int]:
    """Epochs of each cycle of the reference run (same factors and seed), for the compute-matched baseline.

    Read from its ``epochs.csv``, so a last cycle cut short (max_total_epochs) counts too: the control
    trains exactly as many epochs as the reference, restarting its schedule wherever the reference switched.
    """
    ref_run = run.with_variant(reference)
    ref = run_dir(results_dir, ref_run)
    if not (ref / "summary.json").is_file():
        raise UserError(f"{run.label} (baseline_matched) needs the finished {reference} run in {ref}; "
                        f"run it first: {ref_run.command()}")
    with open(ref / "epochs.csv", newline="") as f:
        cycles = [int(row["cycle"]) for row in csv.DictReader(f)]
    return [cycles.count(c) for c in sorted(set(cycles))]


def width_match(cfg: dict, run: Run, settings: dict, out: Path) -> widen.WidthMatch:
    """The width of a ``wider`` run (experiments/widen.py): the match recorded in its config.json when its
    settings and its reference's parameter count are unchanged, else the search over the real model."""
    import pb_core

    reference = run.with_variant(settings["matched_to"])
    ref = run_dir(cfg["results_dir"], reference) / "summary.json"
    if not ref.is_file():
        raise UserError(f"{run.label} ({widen.VARIANT}) needs the finished {reference.variant} run in {ref.parent}; "
                        f"run it first: {reference.command()}")
    summary = read_json(ref)
    saved = read_json(out / "config.json") if (out / "config.json").is_file() else None
    found = widen.saved_match(saved, settings, summary)
    if found is not None:
        return found
    factor = widen.width_factor_of(get_info(cfg, run.benchmark))
    benchmark, prepared = get_benchmark(cfg, run.benchmark), cfgmod.prepared_path(cfg, run.benchmark)
    match = widen.match(settings, run.factor_dict.get(factor, 1),
                        lambda s: pb_core.count_parameters(benchmark.build(s, prepared, "cpu").model),
                        settings["matched_to"], summary, factor)
    log.info("%s: width %s (x%s) has %d parameters; %s's final network (%d dendrites) has %d", run.label,
             match.width, match.multiplier, match.parameters, reference.variant, match.reference_dendrites,
             match.target_parameters)
    return match


def _finished(out: Path, settings: dict) -> bool:
    saved = out / "config.json"
    return saved.is_file() and (out / "summary.json").is_file() and read_json(saved) == settings


def _checkpoint_is_resumable(path: Path) -> bool:
    """A checkpoint of an unfinished run (a finished run's checkpoint is never a resume point)."""
    import torch

    if not path.is_file():
        return False
    try:
        return not torch.load(path, map_location="cpu", weights_only=False)["state"]["done"]
    except Exception:  # unreadable or foreign: pb_core reports it when it loads the file
        return True


def _start_folder(out: Path, settings: dict) -> None:
    """Make ``out`` hold this run: keep a resumable checkpoint of the same settings, else start clean."""
    saved = out / "config.json"
    same = saved.is_file() and read_json(saved) == settings
    if not (same and _checkpoint_is_resumable(out / "checkpoint.pt")):
        if saved.is_file() and not same:
            log.info("settings of %s changed: starting this run afresh", out)
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    from pb_core.records import write_json

    write_json(saved, settings)


def _progress(label: str):
    """One line per epoch on stderr and in run.log; a live bar when stderr is a terminal."""
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(desc=label, unit="epoch", dynamic_ncols=True)

    def report(row: dict) -> None:
        corr = "" if row["correlation"] is None else f" corr={row['correlation']:.4f}"
        text = (f"epoch {row['epoch']:4d} cycle {row['cycle']:2d} {row['phase']:8s} dendrites={row['dendrites']} "
                f"train={row['train']:.4f} val={row['val']:.4f} test={row['test']:.4f} loss={row['loss']:.4f}"
                f"{corr} ({row['seconds']:.1f}s)")
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(text[11:])
        log.info("%s %s", label, text)
    return report


def _attach_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("experiments", "pb_core"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    return handler


def _record_provenance(out: Path, device: str, threads: int) -> dict:
    """Append this session's provenance to the run's provenance.json (a resumed run may change machine)."""
    from pb_core.records import write_json

    from .provenance import provenance

    path = out / "provenance.json"
    sessions = read_json(path)["sessions"] if path.is_file() else []
    current = provenance(device, threads)
    write_json(path, {"sessions": [*sessions, current]})
    return current


def _checked_train_epoch(exp, controller, run: Run):
    """The benchmark's loop as pb_core calls it: told the phase, and stopped on a non-finite loss."""
    from pb_core import dendritic_layers

    def train_epoch(model, optimizer) -> float:
        state = controller.state
        candidates = {id(p) for _, layer in dendritic_layers(model) for p in layer.candidate_parameters()}
        ctx = EpochContext(phase=state.phase, epoch=state.epoch, cycle=state.cycle, scheduler=controller.scheduler,
                           network_parameters=[p for p in model.parameters() if id(p) not in candidates])
        loss = float(exp.train_epoch(model, optimizer, ctx))
        if not math.isfinite(loss):
            lr = optimizer.param_groups[0]["lr"] if optimizer.param_groups else float("nan")
            raise DivergedError(
                f"{run.label}: the training loss is {loss} in epoch {state.epoch} ({state.phase} phase, learning "
                f"rate {lr:g}): the run diverged. Lower the learning rate (train.lr) and rerun; the run's folder "
                f"keeps its last finished epoch, and a rerun with changed settings starts afresh.")
        return loss
    return train_epoch


def method_settings(settings: dict, exp) -> PBSettings:
    """The run's `pb` keys as pb_core's settings, with what the benchmark decides: its output layer and,
    where it has one, its own optimizer for the dendrite phases."""
    from dataclasses import replace

    method = cfgmod.pb_settings(settings["pb"], baseline_cycles=settings.get("matched_cycles"))
    method = replace(method, placement=replace(method.placement, head=exp.head))
    if exp.candidate_optimizer_factory is not None:
        method = replace(method, candidate_training=replace(method.candidate_training,
                                                            optimizer=exp.candidate_optimizer_factory))
    return method


def _never_left_chance(rows: list[dict], chance: float) -> bool:
    vals = [r["val"] for r in rows if r["phase"] == "neuron"]
    return bool(vals) and all(abs(v - chance) <= CHANCE_TOLERANCE for v in vals)


def _restore_finished(out: Path, settings: dict) -> dict | None:
    """On a retry (attempt > 1): the summary of a run that finished although its job was counted as failed.

    A cluster may kill a job in the seconds after its run finished (SLURM checks limits every 30 s); Snakemake
    then deletes summary.json and retries the job. The run's own copy, finished.json, brings it back instead
    of training it again. (A forced rerun is a first attempt: it always trains from scratch.)"""
    copy = out / "finished.json"
    if not ((out / "config.json").is_file() and copy.is_file() and (out / "model.pt").is_file()):
        return None
    if read_json(out / "config.json") != settings:
        return None
    from pb_core.records import write_json

    summary = read_json(copy)
    write_json(out / "summary.json", summary)
    return summary


def train(cfg: dict, run: Run, threads: int | None = None, attempt: int = 1) -> dict:
    """Train ``run`` (or resume it, or do nothing when it is finished with the same settings); its summary.
    ``attempt`` > 1 is a retry of a failed job (see :func:`_restore_finished`).

    The run starts from the shared first cycle of its point (:func:`train_first_cycle`); when that is
    missing (a run started by hand), this trains it first, in its own folder, where every other variant of
    the point then finds it."""
    results_dir = Path(cfg["results_dir"])
    settings = cfgmod.run_settings(cfg, run)
    if run.variant == "baseline_matched":
        settings["matched_cycles"] = matched_cycles(results_dir, run, settings["matched_to"])
    out = run_dir(results_dir, run)
    if run.variant == widen.VARIANT:
        settings[widen.VARIANT] = width_match(cfg, run, settings, out).as_dict()
    if _finished(out, settings):
        (out / "checkpoint.pt").unlink(missing_ok=True)
        log.info("%s is finished with these settings; nothing to do", out)
        return read_json(out / "summary.json")
    if attempt > 1:
        restored = _restore_finished(out, settings)
        if restored is not None:
            log.info("%s finished in an earlier attempt whose job was counted as failed; its summary is restored",
                     out)
            return restored
    if not cfg["share_first_cycle"]:
        return _train(cfg, run, settings, out, threads, notes=["trains its own first cycle (share_first_cycle: false)"])
    if run.variant == widen.VARIANT and settings[widen.VARIANT]["multiplier"] != 1:
        return _train(cfg, run, settings, out, threads,  # a wider network than the one its point's variants share
                      notes=[f"trains its own first cycle: width {settings[widen.VARIANT]['width']}"])
    # `wider` at multiplier 1 is the original network: it starts from its point's shared cycle as the baseline does
    source = run.with_variant(settings["matched_to"]) if run.variant == widen.VARIANT else run
    first = cfgmod.first_cycle_path(cfg, source)
    notes = []
    if not _first_cycle_finished(first, cfgmod.first_cycle_settings(cfg, source)):
        notes.append(f"its shared first cycle {first} was missing: this command trained it first "
                     f"(the pipeline's first_cycle job does that once for every variant of the point)")
        train_first_cycle(cfg, source, threads)
    if run.variant == "baseline_matched":
        epochs = _first_cycle_epochs(first)
        if settings["matched_cycles"][0] != epochs:  # its reference did not start from this cycle
            notes.append(f"trains its own first cycle: {settings['matched_cycles'][0]} epochs, the shared one {epochs}")
            first = None
    return _train(cfg, run, settings, out, threads, first_cycle=first, notes=notes)


def train_first_cycle(cfg: dict, run: Run, threads: int | None = None) -> Path:
    """Train the first neuron cycle that ``run`` (and every run with the same first-cycle settings) starts
    from, into its own folder (grid.first_cycle_dir); return its file. Nothing to do when it exists."""
    settings = cfgmod.first_cycle_settings(cfg, run)
    path = cfgmod.first_cycle_path(cfg, run)
    if _first_cycle_finished(path, settings):
        log.info("%s is finished with these settings; nothing to do", path)
        return path
    _train(cfg, run.with_variant(settings["variant"]), settings, path.parent, threads, only_first_cycle=True)
    return path


def _first_cycle_finished(path: Path, settings: dict) -> bool:
    saved = path.parent / "config.json"
    return path.is_file() and saved.is_file() and read_json(saved) == settings


def _first_cycle_epochs(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["first_cycle"]["epochs"])


def _train(cfg: dict, run: Run, settings: dict, out: Path, threads: int | None, first_cycle: Path | None = None,
           only_first_cycle: bool = False, notes: list[str] = ()) -> dict | Path:
    """Build the benchmark and the controller in ``out`` and train: the whole run from ``first_cycle`` (or
    from scratch), or only the first cycle."""
    import torch

    import pb_core
    from pb_core.records import write_json

    info = get_info(cfg, run.benchmark)
    if cfg["reproducible_cpu"]:
        from .provenance import after_torch_import
        after_torch_import()  # the switches that exist only once torch is loaded (oneDNN off)
    threads = threads or cfg["torch_threads"]
    torch.set_num_threads(threads)
    device = resolve_device(cfg["device"])
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        make_gpu_deterministic()
    seed_everything(run.seed)
    prepared = cfgmod.prepared_path(cfg, run.benchmark)
    exp = get_benchmark(cfg, run.benchmark).build(widen.built_settings(settings), prepared, device)
    _start_folder(out, settings)
    handler = _attach_log(out)
    label = f"{run.benchmark}/{out.relative_to(Path(cfg['results_dir']) / run.benchmark)}"
    try:
        for note in notes:
            log.info("%s: %s", run.label, note)
        session = _record_provenance(out, device, threads)
        core_variant = "baseline" if only_first_cycle else widen.core_variant(run.variant)
        method = method_settings(settings, exp)
        # A benchmark that steps its scheduler per batch: the controller must not step it per epoch too.
        stepping = {"scheduler_step": lambda scheduler, metric: None} if exp.scheduler_per_batch else {}
        controller = pb_core.CycleController(
            exp.model, core_variant, optimizer_factory=exp.optimizer_factory,
            scheduler_factory=exp.scheduler_factory, mode=info.mode, out_dir=out, on_epoch_end=[_progress(label)],
            summary_extra={"benchmark": run.benchmark, "seed": run.seed, "factors": run.factor_dict,
                           "metric": info.metric, "variant": run.variant, "device": device,
                           "profile": cfg["profile"], **exp.extra,
                           **({widen.VARIANT: settings[widen.VARIANT]} if widen.VARIANT in settings else {})},
            **stepping, **method.keywords())
        log.info("%s: %s on %s, %d parameters, dendrite layers: %s", label, run.variant, device,
                 controller.params_original, controller.layer_names or "none")
        train_epoch = _checked_train_epoch(exp, controller, run)
        if only_first_cycle:
            path = controller.fit_first_cycle(train_epoch, exp.evaluate)
            log.info("%s: the first cycle is trained (%d epochs): %s", label, controller.state.epoch, path)
            return path
        if first_cycle is not None:
            log.info("%s starts from the shared first cycle %s", label, first_cycle)
        controller.fit(train_epoch, exp.evaluate, first_cycle=first_cycle)
        summary = {**controller.summary(), "chance": info.chance,
                   "chance_level": _never_left_chance(controller.state.rows, info.chance), "provenance": session,
                   "first_cycle": None if first_cycle is None else
                   str(Path(first_cycle).parent.relative_to(Path(cfg["results_dir"])))}
        if summary["chance_level"]:
            log.warning("%s: its validation %s never left chance level %g (+-%g): the run learned nothing; "
                        "check the learning rate and the data", run.label, info.metric, info.chance, CHANCE_TOLERANCE)
        write_json(out / "finished.json", summary)  # survives Snakemake deleting summary.json of a failed job
        write_json(out / "summary.json", summary)
        (out / "checkpoint.pt").unlink(missing_ok=True)
        log.info("%s finished: original test %.4f, max test %.4f with %d dendrites (%s)", run.label,
                 summary["original"]["test"], summary["max"]["test"], summary["final_dendrites"],
                 summary["stopped_because"])
        return summary
    except BaseException as exc:
        # The error goes into run.log too, where someone reading the run's folder looks for it.
        detail = str(exc) if isinstance(exc, UserError) else traceback.format_exc()
        log.error("%s failed: %s", label, detail if not isinstance(exc, KeyboardInterrupt) else "interrupted")
        raise
    finally:
        for name in ("experiments", "pb_core"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
