"""Molecule data: read a MoleculeNet-style classification CSV, featurise it once (cached), split it, weight
its classes. Tox21 is the default table (:data:`TOX21`); another data set of the same kind is a
:class:`MoleculeTable` built from its configuration block (``data:`` in config/benchmarks/<name>.yaml).

* :func:`load_csv` reads the CSV (task columns, an id column, a SMILES column; an empty cell is a missing
  label) and checks its layout.
* :func:`featurise` turns every SMILES into a graph (:mod:`.features`) once and caches the list in a
  torch file, so the 50 seeds of an experiment never featurise again. The cache records the source
  file's sha256, the featuriser version and ``limit``; if any differs, it is recomputed.
* :func:`split_indices` is the seeded random 80/10/10 split (SPEC section 3), one per seed.
* :func:`class_weights` gives TrimNet's per-task class weights for the weighted cross-entropy.
"""
from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from pb_core.records import atomic_torch_save

from ..download import file_digest
from ..errors import DataError
from . import features  # called as features.smiles_to_data so tests can replace it

log = logging.getLogger(__name__)

TASKS = [
    "NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD", "NR-PPAR-gamma",
    "SR-ARE", "SR-ATAD5", "SR-HSE", "SR-MMP", "SR-p53",
]
ID_COLUMN, SMILES_COLUMN = "mol_id", "smiles"
# Where the canonical file comes from (the download rule uses the same URL); quoted in error messages.
SOURCE_URL = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/tox21.csv.gz"
CACHE_FORMAT = 2


@dataclass(frozen=True)
class MoleculeTable:
    """The layout of a MoleculeNet-style classification CSV: which columns hold what, and where it comes from.

    ``benchmark`` is the configured benchmark's name (for the commands quoted in error messages).
    """
    tasks: tuple[str, ...]
    smiles_column: str = SMILES_COLUMN
    id_column: str | None = ID_COLUMN
    url: str | None = SOURCE_URL
    benchmark: str = "tox21"

    @classmethod
    def from_config(cls, data: dict, benchmark: str) -> "MoleculeTable":
        return cls(tuple(data["tasks"]), data["smiles_column"], data["id_column"], data["url"], benchmark)


TOX21 = MoleculeTable(tuple(TASKS))


def _fix(path: Path, table: MoleculeTable = TOX21) -> str:
    by_hand = f", or download it by hand from {table.url} into {path.parent}/" if table.url else ""
    return f"delete {path} and re-run `python -m experiments download {table.benchmark}`{by_hand}"


def load_csv(path: Path, table: MoleculeTable = TOX21) -> pd.DataFrame:
    """The molecule table: the task columns (float, NaN = missing), the id and the SMILES column.

    Raises :class:`DataError` naming the file and the fix when it is missing, unreadable (truncated
    or corrupt gzip, not a CSV), empty, lacks a required column, or has labels other than 0/1/empty.
    """
    path = Path(path)
    tasks = list(table.tasks)
    if not path.is_file():
        by_hand = f", or download it by hand from {table.url} into {path.parent}/" if table.url else ""
        raise DataError(f"{path} does not exist; get it with `python -m experiments download "
                        f"{table.benchmark}`{by_hand}")
    try:
        df = pd.read_csv(path, compression="infer")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        # gzip.BadGzipFile is an OSError; a truncated gzip stream ends in EOFError.
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}; the file is corrupt or "
                        f"truncated: {_fix(path)}") from None
    required = [*tasks, *([table.id_column] if table.id_column else []), table.smiles_column]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path} does not have the configured layout: columns {missing} are missing "
                        f"(found {list(df.columns)}); fix the data block of {table.benchmark} in the "
                        f"configuration, or {_fix(path, table)}")
    if len(df) == 0:
        raise DataError(f"{path} has a header but no molecules; {_fix(path, table)}")
    for task in tasks:
        values = pd.to_numeric(df[task], errors="coerce")
        bad = df[task].notna() & ~values.isin([0, 1])
        if bad.any():
            first = df.loc[bad, task].iloc[0]
            raise DataError(f"{path}: column {task} has {int(bad.sum())} values other than 0, 1 or empty "
                            f"(e.g. {first!r}); {_fix(path, table)}")
        df[task] = values.astype(np.float64)
    return df


def featurise(csv_path: Path, cache_path: Path, limit: int | None = None, table: MoleculeTable = TOX21,
              settings: dict | None = None) -> tuple[list, dict]:
    """Graphs of the first ``limit`` (default: all) molecules, featurised once and cached.

    Returns ``(graphs, stats)``: ``graphs`` in file order, molecules whose SMILES RDKit cannot
    parse left out (so ``graphs[i]`` is not necessarily row ``i``; each graph keeps ``mol_id``);
    ``stats`` = ``{"rows", "graphs", "skipped", "skipped_molecules" [(row, mol_id, smiles)],
    "no_bonds", "seconds", "source_sha256", "featuriser_version", "limit", "from_cache"}``.

    The cache (``cache_path``, a dict saved with :func:`torch.save` whose ``"graphs"`` key holds the
    list) is reused when it was made from a file with the same sha256, by the same featuriser
    version, with the same ``limit`` and table layout; otherwise (or when it cannot be read) it is
    recomputed and replaced atomically (a temporary file in the same folder, then :func:`os.replace`).
    ``settings`` (the prepare step's configuration) is recorded in the cache for :func:`check_cache`.
    """
    csv_path, cache_path = Path(csv_path), Path(cache_path)
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of molecules or None, got {limit}")
    if not csv_path.is_file():
        load_csv(csv_path, table)  # raises the DataError with the fix
    source_sha = file_digest(csv_path, "sha256")
    cached = _load_cache(cache_path, source_sha, limit, table)
    if cached is not None and cached.get("settings") != settings:
        cached = dict(cached, settings=settings)  # same graphs, recorded under the current settings
        atomic_torch_save(cached, cache_path)
    if cached is not None:
        stats = dict(cached["stats"], from_cache=True)
        log.info("tox21: loaded %d graphs from %s (%d SMILES skipped when it was made)",
                 len(cached["graphs"]), cache_path, stats["skipped"])
        return cached["graphs"], stats

    df = load_csv(csv_path, table)
    if limit is not None:
        df = df.iloc[:limit]
    start = time.perf_counter()
    labels = df[list(table.tasks)].to_numpy(dtype=np.float64)
    ids = df[table.id_column] if table.id_column else pd.Series([None] * len(df))
    graphs, skipped = [], []
    for row, (mol_id, smiles) in enumerate(zip(ids, df[table.smiles_column])):
        mol_id = None if pd.isna(mol_id) else str(mol_id)
        data = features.smiles_to_data(smiles, labels[row], mol_id=mol_id, num_tasks=len(table.tasks))
        if data is None:
            skipped.append((row, mol_id, smiles))
        else:
            graphs.append(data)
    seconds = time.perf_counter() - start
    if not graphs:
        raise DataError(f"none of the {len(df)} SMILES in {csv_path} could be parsed by RDKit; "
                        f"{_fix(csv_path, table)}")
    stats = {
        "rows": len(df), "graphs": len(graphs), "skipped": len(skipped), "skipped_molecules": skipped,
        "no_bonds": sum(int(g.edge_index.shape[1] == 0) for g in graphs), "seconds": seconds,
        "source_sha256": source_sha, "featuriser_version": features.FEATURISER_VERSION, "limit": limit,
        "from_cache": False,
    }
    if skipped:
        # Long SMILES are cut: one of Tox21's unparseable ones is 400 characters of aluminium salts.
        shown = ", ".join(f"row {r} ({m}): {_short(s)!r}" for r, m, s in skipped[:10])
        log.warning("%s: skipped %d of %d SMILES that RDKit cannot parse: %s%s", table.benchmark, len(skipped),
                    len(df), shown, " ..." if len(skipped) > 10 else "")
    log.info("%s: featurised %d molecules in %.1f s (%d without bonds); cache: %s",
             table.benchmark, len(graphs), seconds, stats["no_bonds"], cache_path)
    atomic_torch_save({"format": CACHE_FORMAT, "featuriser_version": features.FEATURISER_VERSION,
                       "source_sha256": source_sha, "source": str(csv_path), "limit": limit,
                       "layout": _layout(table), "tasks": list(table.tasks), "settings": settings,
                       "stats": stats, "graphs": graphs}, cache_path)
    return graphs, stats


def _layout(table: MoleculeTable) -> dict:
    return {"tasks": list(table.tasks), "smiles_column": table.smiles_column, "id_column": table.id_column}


def check_cache(cache_path: Path, expected: dict, benchmark: str) -> dict:
    """The prepared cache, if this featuriser made it from exactly the prepare settings ``expected``; else a
    :class:`StaleCacheError` naming the prepare command. Never rewrites anything (training jobs call it)."""
    from ..registry import load_prepared_cache, stale_cache_error

    # weights_only=False: the cache holds PyG Data objects, and it is a file this code wrote.
    cached = load_prepared_cache(cache_path, benchmark, CACHE_FORMAT, expected, weights_only=False)
    if cached.get("featuriser_version") != features.FEATURISER_VERSION:
        raise stale_cache_error(Path(cache_path), benchmark, f"it was made by featuriser version "
                                f"{cached.get('featuriser_version')}, this code is {features.FEATURISER_VERSION}")
    return cached


def _short(smiles, width: int = 60) -> str:
    text = str(smiles)
    return text if len(text) <= width else text[:width - 3] + "..."


def _load_cache(cache_path: Path, source_sha: str, limit: int | None, table: MoleculeTable) -> dict | None:
    if not cache_path.is_file():
        return None
    try:
        # weights_only=False: the cache holds PyG Data objects, and it is a file this code wrote.
        cached = torch.load(cache_path, weights_only=False)
    except Exception as exc:  # a truncated or foreign file: it is derived data, so just rebuild it
        log.warning("tox21: cannot read cache %s (%s: %s); featurising again", cache_path,
                    type(exc).__name__, exc)
        return None
    if not isinstance(cached, dict) or "graphs" not in cached:
        log.warning("tox21: %s is not a feature cache of this suite; featurising again", cache_path)
        return None
    why = []
    if cached.get("format") != CACHE_FORMAT:
        why.append("cache format")
    if cached.get("featuriser_version") != features.FEATURISER_VERSION:
        why.append(f"featuriser version {cached.get('featuriser_version')} != {features.FEATURISER_VERSION}")
    if cached.get("source_sha256") != source_sha:
        why.append("source file changed (sha256 differs)")
    if cached.get("limit") != limit:
        why.append(f"limit {cached.get('limit')} != {limit}")
    if cached.get("layout") != _layout(table):
        why.append("table layout (tasks or columns) changed")
    if why:
        log.info("tox21: cache %s is stale (%s); featurising again", cache_path, "; ".join(why))
        return None
    return cached


def split_indices(n: int, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random train/validation/test split of ``range(n)`` (int64 arrays, disjoint, covering).

    One permutation from ``numpy.random.default_rng(seed)``; the first ``floor(f_train * n)``
    indices train, the next ``floor(f_val * n)`` validate, the rest test (TrimNet's own rule:
    ``int(0.8 * len)``, ``int(0.1 * len)``, remainder). Same seed, same split, on every machine.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if n <= 0:
        raise ValueError(f"cannot split {n} items")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    # The small epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    n_train = int(math.floor(fractions[0] * n + 1e-9))
    n_val = int(math.floor(fractions[1] * n + 1e-9))
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def _labels_and_mask(dataset_or_labels) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset_or_labels, tuple) and len(dataset_or_labels) == 2:
        y, mask = (torch.as_tensor(np.asarray(t)) for t in dataset_or_labels)
        return y.double(), mask.bool()
    if isinstance(dataset_or_labels, (torch.Tensor, np.ndarray)):
        y = torch.as_tensor(dataset_or_labels).double()  # NaN marks a missing label
        return torch.nan_to_num(y, nan=0.0), ~torch.isnan(y)
    graphs = list(dataset_or_labels)
    return (torch.cat([g.y.view(1, -1) for g in graphs]).double(),
            torch.cat([g.y_mask.view(1, -1) for g in graphs]).bool())


def class_weights(dataset_or_labels, train_idx=None) -> torch.Tensor:
    """TrimNet's class weights, shape (tasks, 2) float32: column 0 for negatives, 1 for positives.

    For task ``t`` with ``n_neg`` negative and ``n_pos`` positive labels (missing labels not
    counted): ``w[t] = [(n_neg + n_pos) / n_neg, (n_neg + n_pos) / n_pos]``, i.e. each class weighted
    by the inverse of its frequency among the task's labelled molecules. This is the formula of
    ``load_dataset_random`` in TrimNet's ``trimnet_drug/source/dataset.py`` (the loader its ``run.py``
    uses for tox21), passed to ``torch.nn.CrossEntropyLoss(weight=w[t])`` in ``trainer.py``.

    One deliberate difference: TrimNet counts over the whole data set (so validation and test labels
    leak into the weights); here only the rows in ``train_idx`` are counted. Pass ``train_idx=None``
    to count every row, as TrimNet does.

    ``dataset_or_labels``: a sequence of graphs with ``y`` and ``y_mask``; an (n, tasks) array or
    tensor with NaN for missing labels; or a tuple ``(y, mask)``.

    A class absent from the training rows of a task (possible only on tiny subsets) gets weight 0,
    with a warning: it has no training example to weight, and 0 keeps the loss finite.
    """
    y, mask = _labels_and_mask(dataset_or_labels)
    if train_idx is not None:
        idx = torch.as_tensor(np.asarray(train_idx), dtype=torch.long)
        y, mask = y[idx], mask[idx]
    pos = ((y == 1) & mask).sum(0).double()
    neg = ((y == 0) & mask).sum(0).double()
    counts = torch.stack([neg, pos], dim=1)
    total = counts.sum(1, keepdim=True)
    weights = torch.where(counts > 0, total / counts.clamp(min=1), torch.zeros_like(counts))
    empty = (counts == 0).nonzero().tolist()
    if empty:
        log.warning("class_weights: %d (task, class) pairs have no training label and get weight 0: %s",
                    len(empty), [(t, "positive" if c else "negative") for t, c in empty])
    return weights.float()
