"""Run records: per-epoch and per-cycle rows, the run summary (SPEC section 2), atomic writes.

Files a run writes into its folder (the contract the aggregation code reads):

* ``epochs.csv``: epoch, cycle, phase, dendrites, train, val, test, loss, correlation, lr, params, seconds
* ``cycles.csv``: cycle, phase, dendrites, params, epochs, best_epoch, val, test
* ``correlations.csv``: epoch, cycle, layer, correlation (dendrite phases: mean over the layer's
  neurons of the best candidate's |Pearson r| with the neuron's error, over that epoch)
* ``summary.json``: see :func:`summarize`
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

EPOCH_COLUMNS = ["epoch", "cycle", "phase", "dendrites", "train", "val", "test", "loss", "correlation",
                 "lr", "params", "seconds"]
CYCLE_COLUMNS = ["cycle", "phase", "dendrites", "params", "epochs", "best_epoch", "val", "test"]
CORRELATION_COLUMNS = ["epoch", "cycle", "layer", "correlation"]
# What CycleController.fit_first_cycle writes into its out_dir: a first neuron cycle that runs start from.
FIRST_CYCLE_FILE = "first_cycle.pt"


def _default_file_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` gives under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The bytes go to a temporary file in the same folder (so the final rename stays on one file system),
    are flushed to disk, and replace ``path`` with :func:`os.replace`; on any error the temporary file
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _default_file_mode())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path: Path) -> None:
    """:func:`torch.save` ``obj`` to ``path`` atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _csv_value(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return value


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def summarize(epoch_rows: list[dict], mode: str = "max") -> dict:
    """The *original* and *max* scores of a run, exactly as SPEC section 2 defines them.

    original: the first neuron cycle (no dendrites): its best validation epoch and the test score of
    that same epoch. max: the epoch with the best validation score over the whole run (earliest on
    ties) and its test score. Only neuron-phase epochs and gradient dendrite epochs change the network;
    covariance dendrite epochs repeat the reloaded best and never win a tie.
    """
    if not epoch_rows:
        raise ValueError("no epochs recorded")

    def best_of(rows):
        best = None
        for row in rows:
            if best is None or _better(row["val"], best["val"], mode):
                best = row
        return best

    first_cycle = epoch_rows[0]["cycle"]
    original = best_of([r for r in epoch_rows if r["cycle"] == first_cycle])
    maximum = best_of(epoch_rows)
    keys = ("epoch", "cycle", "dendrites", "params", "train", "val", "test")
    return {"original": {k: original[k] for k in keys}, "max": {k: maximum[k] for k in keys}}
