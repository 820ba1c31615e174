"""Running the real Snakefile on a tiny profile in a scratch folder: what every benchmark's end-to-end test does.

The user's data folder is a folder of links to the real files: if the pipeline ever deleted or rewrote an
input, only the link would go, and the tests that compare checksums would see it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, timeout: int = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
    """Snakemake in ``workdir`` with its profile ``workdir/tiny.yaml``; ``args`` as on the command line."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([*SNAKEMAKE, "-d", str(workdir), "--configfile", str(workdir / "tiny.yaml"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def link_user_data(work: Path, real_data_dir: Path, names: list[str]) -> Path:
    """``work/userdata`` holding a link to each real file (paths relative to the shared data folder); the
    test is skipped when one of them is not on this machine."""
    missing = [name for name in names if not (real_data_dir / name).is_file()]
    if missing:
        pytest.skip(f"{real_data_dir} lacks {missing}")
    user = work / "userdata"
    for name in names:
        (user / name).parent.mkdir(parents=True, exist_ok=True)
        (user / name).symlink_to(real_data_dir / name)
    return user


def write_profile(work: Path, profile: dict) -> None:
    (work / "tiny.yaml").write_text(yaml.safe_dump(profile))


def run_tiny_profile(work: Path, profile: dict, targets: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """Write the profile and build the targets on 2 cores; a failure shows the end of Snakemake's output."""
    write_profile(work, profile)
    run = snakemake(work, "--cores", "2", "--", *targets, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return run
