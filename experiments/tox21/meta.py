"""What the pipeline needs to know of the tox21 package without importing it (no torch, RDKit or PyG).

The package trains TrimNet on any MoleculeNet-style classification CSV; Tox21 is the paper's data set
(config/benchmarks/tox21.yaml). Another such data set is another block under ``benchmarks:`` with
``package: tox21`` and its own ``data:`` (file, url, checksums, columns, tasks).
"""
from pathlib import PurePosixPath

from ..config import digest
from ..registry import BenchmarkInfo, Factor, Output, RawFile


def raw_files(block: dict) -> list[RawFile]:
    data = block["data"]
    return [RawFile(data["file"], data["url"], sha256=data["sha256"], md5=data["md5"])]


def prepared_path(block: dict) -> str:
    # One cache per data settings: two data sets (or two limits) never overwrite each other's cache.
    stem = PurePosixPath(block["data"]["file"]).name.split(".")[0]
    return f"tox21/{stem}-{digest(block['data'])}.pt"


INFO = BenchmarkInfo(
    package="tox21",
    metric="auc",
    metric_label="test ROC-AUC (mean over tasks)",
    chance=0.5,
    raw_files=raw_files,
    prepared_path=prepared_path,
    prepare_keys=("data",),
    factors=(Factor("width", exclusive_minimum=0,
                    description="TrimNet's hidden size is model.hidden_dim x width (a wider baseline is the "
                                "parameter-matched control)"),),
    outputs=(
        Output("auc", "figure", "experiments.outputs:original_vs_max",
               caption="Test ROC-AUC of the first neuron cycle (original, shared by every variant of a seed) and "
                       "at the best validation epoch of each run (max), over seeds: the paper's Figure 8."),
    ),
    description="MoleculeNet Tox21 (12 binary tasks) with TrimNet",
)
