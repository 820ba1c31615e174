"""EMNIST Balanced data: read it (NIST's files through torchvision, or the partial copy), split the official
test set, and turn batches of images into network inputs (with the training-time augmentation).

Orientation. NIST's files store every image transposed (rows are the character's columns); torchvision's
``EMNIST`` returns them as stored. :func:`read_nist` transposes them back, so every image this package
hands on is upright, like the partial copy's (tests/test_emnist_data.py checks both on real images).

Labels are torchvision's class indices 0..46 of ``EMNIST.classes_split_dict["balanced"]``: the digits, the
upper-case letters, then a b d e f g h n q r t (the lower-case letters whose shapes differ from their capitals).

Augmentation (training only, never at evaluation). The paper's run is, as far as the authors' published
code shows (PerforatedAI/PerforatedAI-Examples, ``otherExamples/mnist/mnist_PAI.py``, its EMNIST branch), the
torchvision chain ``CenterCrop(26), Resize(28), RandomRotation(10), RandomAffine(5)``: a fixed zoom by 28/26
and two successive uniform rotations (+-10 then +-5 degrees) about the centre, then the MNIST example's
normalisation (mean 0.1307, std 0.3081) at training and at evaluation. :func:`random_affine` applies the same
geometry to a whole batch in one ``grid_sample`` (bilinear; torchvision rotates each PIL image with
nearest-neighbour interpolation), so it costs next to nothing on a GPU. Rotations about one centre compose
by adding their angles, so the angle is the sum of one uniform draw per configured range.
"""
from __future__ import annotations

import gzip
import logging
import math
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..download import ensure_file, file_digest
from ..errors import DataError
from .meta import (ARCHIVE, ARCHIVE_MD5, ARCHIVE_URL, PARTIAL_NPZ, PARTIAL_SHA256, RAW_FOLDER,
                   TORCHVISION_ROOT)

log = logging.getLogger(__name__)

SPLIT = "balanced"
IMAGE_SIZE = 28
OFFICIAL_SIZES = {"train": 112_800, "test": 18_800}
# NIST's file names (inside the archive: gzip/<name>.gz; torchvision keeps them extracted in EMNIST/raw/).
NIST_FILES = {(part, kind): f"emnist-{SPLIT}-{part}-{kind}-ubyte"
              for part in ("train", "test") for kind in ("images-idx3", "labels-idx1")}
# The partial copy's arrays: where its images sit among the official indices.
PARTIAL_TRAIN_START, PARTIAL_TEST_START = 103_680, 18_496


# torchvision's EMNIST.classes_split_dict["balanced"], written out so that reading the partial copy needs no
# torchvision import (tests/test_emnist_data.py checks that the two agree).
BALANCED_CLASSES = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt")


def balanced_classes() -> list[str]:
    """The 47 characters of EMNIST Balanced in label order, as torchvision defines them."""
    return list(BALANCED_CLASSES)


# ---------------------------------------------------------------------------------------------- reading
def read_nist(data_dir: Path, work_dir: Path, download: bool) -> dict:
    """The balanced split from NIST's files below ``data_dir`` (torchvision's layout), images upright.

    Uses torchvision's extracted files in ``<data_dir>/emnist/EMNIST/raw/`` when all four are there;
    otherwise NIST's archive ``gzip.zip`` in that folder (downloaded first when missing and ``download``),
    whose four balanced members are extracted into a temporary folder below ``work_dir`` for torchvision to
    read, and removed afterwards: the data folder is never written except by a download.
    """
    data_dir = Path(data_dir)
    raw = data_dir / RAW_FOLDER
    if all((raw / name).is_file() for name in NIST_FILES.values()):
        log.info("emnist: reading torchvision's extracted files in %s", raw)
        return _read_torchvision_root(data_dir / TORCHVISION_ROOT, raw)
    archive = data_dir / ARCHIVE
    if not archive.exists() and not download:
        raise DataError(f"{archive} is missing and downloading is switched off (download: false); download "
                        f"NIST's EMNIST archive by hand from {ARCHIVE_URL} (md5 {ARCHIVE_MD5}) and put it at "
                        f"{archive}, or put torchvision's extracted files "
                        f"{', '.join(sorted(NIST_FILES.values()))} into {raw}/, or allow downloading "
                        f"(download: true)")
    archive = ensure_file(data_dir, ARCHIVE, ARCHIVE_URL, md5=ARCHIVE_MD5, download=download)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".emnist-extract-") as tmp:
        _extract_balanced(archive, Path(tmp) / "EMNIST" / "raw")
        return _read_torchvision_root(Path(tmp), archive)


def _extract_balanced(archive: Path, out: Path) -> None:
    """Gunzip the archive's four balanced members ``gzip/<name>.gz`` into ``out/<name>``."""
    out.mkdir(parents=True, exist_ok=True)
    fix = f"delete {archive} and re-run (it is downloaded again), or download it by hand from {ARCHIVE_URL}"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = set(zf.namelist())
            for name in NIST_FILES.values():
                member = f"gzip/{name}.gz"
                if member not in members:
                    raise DataError(f"{archive} is not NIST's EMNIST archive: it has no member {member}; {fix}")
                with zf.open(member) as packed, gzip.open(packed) as stream, open(out / name, "wb") as dst:
                    shutil.copyfileobj(stream, dst, 1 << 20)
    except (zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise DataError(f"cannot read {archive} ({type(exc).__name__}: {exc}); the file is corrupt or "
                        f"truncated: {fix}") from None


def _read_torchvision_root(root: Path, shown: Path) -> dict:
    """Both parts through ``torchvision.datasets.EMNIST(root, split="balanced")``, transposed upright."""
    from torchvision.datasets import EMNIST
    out = {}
    for part in ("train", "test"):
        try:
            ds = EMNIST(str(root), split=SPLIT, train=part == "train", download=False)
        except (RuntimeError, AssertionError, ValueError, TypeError, OSError) as exc:
            # torchvision asserts on a malformed IDX header and fails in .view() on a truncated body.
            raise DataError(f"cannot read the EMNIST {part} files from {shown} ({type(exc).__name__}: {exc}); "
                            f"they are not NIST's IDX files or are truncated: delete them and re-run, or "
                            f"download NIST's archive by hand from {ARCHIVE_URL}") from None
        images, labels = ds.data, ds.targets
        _check_part(images, labels, part, shown)
        if len(images) != OFFICIAL_SIZES[part]:
            log.warning("emnist: %s has %d %s images, not the official %d", shown, len(images), part,
                        OFFICIAL_SIZES[part])
        out[f"{part}_images"] = images.transpose(1, 2).contiguous()  # NIST stores each image transposed
        out[f"{part}_labels"] = labels.to(torch.int64)
        out[f"{part}_index"] = torch.arange(len(images), dtype=torch.int64)
    out["classes"] = balanced_classes()
    return out


def _check_part(images: torch.Tensor, labels: torch.Tensor, part: str, where) -> None:
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{where}: the {part} images are {tuple(images.shape)} {images.dtype}, not N x 28 x 28 "
                        f"uint8; these are not EMNIST's files")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} {part} images but {len(labels)} labels; a file is truncated "
                        f"or from another split: replace the EMNIST files")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(balanced_classes())):
        raise DataError(f"{where}: {part} labels outside 0..46 (found {int(labels.min())}..{int(labels.max())}); "
                        f"these are not the files of the balanced split")


def read_partial(data_dir: Path) -> dict:
    """The real images of the partial copy (already upright) with their labels and official indices."""
    path = Path(data_dir) / PARTIAL_NPZ
    if not path.is_file():
        raise DataError(f"{path} is missing: it is the partial EMNIST copy of the project's shared data "
                        f"(../shared/data/{PARTIAL_NPZ}), which has no public URL. Point data_dir at a folder "
                        f"that holds it, or use data.source: nist (NIST's full archive)")
    digest = file_digest(path, "sha256")
    if digest != PARTIAL_SHA256:
        raise DataError(f"{path} is not the expected partial EMNIST copy (sha256 {digest}, expected "
                        f"{PARTIAL_SHA256}); replace it with the shared data's copy")
    train_key, test_key = f"x_train_{PARTIAL_TRAIN_START}_to_112799", f"x_test_{PARTIAL_TEST_START}_to_18799"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    out = {}
    for part, key, start in (("train", train_key, PARTIAL_TRAIN_START), ("test", test_key, PARTIAL_TEST_START)):
        images = torch.from_numpy(arrays[key])
        index = torch.arange(start, start + len(images), dtype=torch.int64)
        labels = torch.from_numpy(arrays[f"y_{part}"].astype(np.int64))[index]
        _check_part(images, labels, part, path)
        out[f"{part}_images"], out[f"{part}_labels"], out[f"{part}_index"] = images, labels, index
    classes = [chr(int(c)) for c in arrays["mapping"]]
    if classes != balanced_classes():
        raise DataError(f"{path}: its label mapping {''.join(classes)} is not torchvision's balanced classes "
                        f"{''.join(balanced_classes())}")
    out["classes"] = classes
    return out


def limit_images(parts: dict, limit: dict | None) -> dict:
    """``parts`` with only the first ``limit["train"]`` training and ``limit["test"]`` official test images
    (with their labels and indices); ``limit`` None keeps everything. A limit beyond a part's size keeps the
    whole part. For tiny test profiles: the first images of EMNIST's files are in no particular class order."""
    if limit is None:
        return parts
    out = dict(parts)
    for part in ("train", "test"):
        n = int(limit[part])
        if n < (2 if part == "test" else 1):
            raise ValueError(f"data.limit.{part} must be at least {2 if part == 'test' else 1}, got {n}")
        for kind in ("images", "labels", "index"):
            out[f"{part}_{kind}"] = parts[f"{part}_{kind}"][:n].clone()
    return out


# ---------------------------------------------------------------------------------------------- split
def split_official_test(n: int, seed: int, val_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of the official test set's ``n`` images into (validation, test) positions.

    One permutation from ``numpy.random.default_rng(seed)``; the first ``floor(val_fraction * n)`` validate,
    the rest test. Disjoint, covering, the same on every machine for the same seed.
    """
    if n < 2:
        raise DataError(f"cannot split {n} test image(s) into validation and test")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n).astype(np.int64))
    n_val = min(max(int(math.floor(val_fraction * n + 1e-9)), 1), n - 1)
    return perm[:n_val], perm[n_val:]


# ---------------------------------------------------------------------------------------------- inputs
def random_affine(images: torch.Tensor, rotations=(10.0, 5.0), zoom: float = 1.0,
                  translate: float = 0.0) -> torch.Tensor:
    """Per-image random geometry for a batch (B, 1, H, W) of intensities in [0, 1] (background 0).

    Each image is magnified by ``zoom`` about its centre, rotated by the sum of one uniform draw from
    [-r, r] degrees per ``r`` in ``rotations``, then shifted by up to ``translate`` of its size along each
    axis; what comes in from outside is background. The draws use torch's global CPU generator (the run's
    seed makes them reproducible on any device).
    """
    b = images.shape[0]
    angle = torch.zeros(b, dtype=torch.float64)
    for r in rotations:
        angle += (torch.rand(b, dtype=torch.float64) * 2 - 1) * math.radians(r)
    shift = (torch.rand(b, 2, dtype=torch.float64) * 2 - 1) * (2 * translate)  # [-1, 1] spans the image
    # affine_grid maps output coordinates to input ones: the inverse of shift(rotate(zoom(.))).
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    inverse = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (B, 2, 2)
    offset = -(inverse @ shift.unsqueeze(2))                                               # (B, 2, 1)
    theta = torch.cat([inverse, offset], 2).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class InputPipeline:
    """uint8 images (N, 28, 28) -> normalised float inputs (B, 1, 28, 28), augmented only when asked.

    ``augment``: ``{"rotations": [deg, ...], "center_crop": px or None, "translate": fraction}``
    (center_crop c: the paper's CenterCrop(c) + Resize(28), a zoom by 28 / c).
    """

    def __init__(self, mean: float, std: float, augment: dict | None):
        self.mean, self.std = float(mean), float(std)
        self.augment = augment

    def __call__(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        x = images.unsqueeze(1).float().div_(255.0)
        if augment and self.augment:
            crop = self.augment.get("center_crop")
            x = random_affine(x, self.augment.get("rotations", ()), IMAGE_SIZE / crop if crop else 1.0,
                              self.augment.get("translate", 0.0))
        return x.sub_(self.mean).div_(self.std)
