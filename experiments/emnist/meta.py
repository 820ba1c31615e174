"""EMNIST Balanced with the PyTorch MNIST example CNN (paper Figures 6 and 7): the light description.

No torch or torchvision import here (the Snakefile reads this module). Where the data comes from is the
block's ``data.source``:

* ``nist`` (the paper's data): NIST's EMNIST archive ``gzip.zip`` in the layout torchvision's ``EMNIST``
  uses, ``<data_dir>/emnist/EMNIST/raw/gzip.zip``. A folder that already holds torchvision's extracted
  files (``emnist-balanced-{train,test}-{images-idx3,labels-idx1}-ubyte`` beside it, which is what
  ``torchvision.datasets.EMNIST(root=<data_dir>/emnist, split="balanced", download=True)`` leaves) is used
  as it is, without the archive.
* ``partial_npz``: the real images of the partial copy
  ``<data_dir>/emnist_balanced/emnist_balanced_labels_and_partial_images.npz`` (9,120 training and 304
  test images, already upright; see ../shared/data/README.md), so the whole chain runs where the full set
  cannot be had. It has no public URL: it is never downloaded.
"""
from __future__ import annotations

from ..config import digest
from ..errors import DataError
from ..registry import BenchmarkInfo, Factor, Output, RawFile

# torchvision.datasets.EMNIST.url and .md5 (torchvision 0.29; tests/test_emnist_data.py checks they agree).
ARCHIVE_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
ARCHIVE_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"
# torchvision's root below data_dir: it reads <root>/EMNIST/raw/<file>.
TORCHVISION_ROOT = "emnist"
RAW_FOLDER = f"{TORCHVISION_ROOT}/EMNIST/raw"
ARCHIVE = f"{RAW_FOLDER}/gzip.zip"
PARTIAL_NPZ = "emnist_balanced/emnist_balanced_labels_and_partial_images.npz"
PARTIAL_SHA256 = "406f6e5b4926b6e72aa8ceb7510b7b73f2dbf92dc90c1893b4dfbf14b3be5647"
SOURCES = ("nist", "partial_npz")


def source_of(block: dict) -> str:
    source = block.get("data", {}).get("source", "nist")
    if source not in SOURCES:
        # The package schema rejects this first; this guards direct callers.
        raise ValueError(f"emnist data.source must be one of {SOURCES}, got {source!r}")
    return source


def raw_files(block: dict) -> list[RawFile]:
    if source_of(block) == "partial_npz":
        return [RawFile(PARTIAL_NPZ, sha256=PARTIAL_SHA256, fetcher="experiments.emnist.meta:partial_copy_missing")]
    return [RawFile(ARCHIVE, ARCHIVE_URL, md5=ARCHIVE_MD5)]


def partial_copy_missing(raw_file: RawFile, data_dir) -> None:
    """The partial copy has no public source: say where it comes from instead of downloading."""
    raise DataError(f"{data_dir}/{raw_file.name} is missing; it is the partial EMNIST copy of the project's "
                    f"shared data (../shared/data/{PARTIAL_NPZ}) and has no public URL. Point data_dir at a "
                    f"folder that holds it, or use data.source: nist (NIST's full archive, downloaded from "
                    f"{ARCHIVE_URL})")


def prepared_path(block: dict) -> str:
    # One cache per data settings: the full set and the partial copy never overwrite each other's cache.
    return f"emnist/{source_of(block)}-{digest(block['data'])}.pt"


INFO = BenchmarkInfo(
    package="emnist",
    metric="accuracy",
    chance=1 / 47,
    raw_files=raw_files,
    prepared_path=prepared_path,
    prepare_keys=("data",),
    factors=(Factor("width", exclusive_minimum=0,
                    description="multiplies the CNN's conv channels (32, 64) and fc1's hidden units (128), rounded; "
                                "1 = the MNIST example's network (the parameter-matched `wider` control widens "
                                "through it)"),),
    outputs=(
        Output("curve", "figure", "experiments.emnist.figures:draw_curve",
               caption="Figure 6: train, validation and test accuracy per epoch of one run; dendrite phases "
                       "shaded, switches marked, the paper's run (86.55% -> 87.13% test) noted",
               needs=("runs",)),
        Output("error_reduction", "figure", "experiments.emnist.figures:draw_error_reduction",
               caption="Figure 7: test error reduction from the original (first neuron cycle) to the max "
                       "(best validation epoch) network per variant; candle min/Q1/Q3/max, mean marked, "
                       "one point per seed",
               needs=("aggregate",)),
    ),
    metric_label="accuracy",
    description="EMNIST Balanced (47 classes) with the PyTorch MNIST example CNN; the paper's ablation study",
)
