"""Shared fixtures: where the real data sets live (never copied into the repository)."""
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    return Path(os.environ.get("PB_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real data sets (`../shared/data` beside the clone, or $PB_SHARED_DATA)."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path}; set PB_SHARED_DATA to a folder like ../shared/data")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global RNG state and one CPU thread (CI has two cores)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: skipped where torch sees none (CI, the developers' machines);
    benchmarks/gpu_check.py runs them on a GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker cuda): run benchmarks/gpu_check.py on a GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
