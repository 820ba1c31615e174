"""Where a result came from (code, packages, CPU kernels, threads, device) and how to pin the CPU's numerics.

Why both live here: on the CPU, PyTorch picks its numeric kernels from the machine it runs on. ATen's
own kernels (reductions, softmax, LayerNorm, exp/log, optimizers' foreach ops) come in a ``default``,
an ``avx2`` and an ``avx512`` build; MKL (matrix products) and oneDNN (convolutions, the LSTM) dispatch
on the instruction set too. Each choice sums in a different order or rounds once (FMA) instead of twice,
so the same commit, seed and settings give bit-identical results on one machine and different ones on
another (Tox21 seed 0: test AUC 0.742 on an AMD EPYC, 0.724 on an AVX-512 Intel Xeon). So every run
records :func:`provenance`, and :func:`reproducible_cpu_env` with :func:`after_torch_import` are the
settings that make CPU results agree across machines (measured by ``benchmarks/cpu_reproducibility.py``).

Use, in this order (the environment variables only take effect before torch is loaded)::

    from experiments import provenance
    provenance.apply_reproducible_cpu()   # before anything imports torch
    import torch
    provenance.after_torch_import()       # the switches that exist only once torch is loaded

This module never imports torch (or numpy, pandas, ...) at import time.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("experiments")

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Environment variables that change which numeric kernels run (or how many threads run them).
NUMERIC_ENV_VARS = (
    "MKL_CBWR",                 # MKL's conditional numerical reproducibility branch
    "MKL_ENABLE_INSTRUCTIONS",  # the highest instruction set MKL may dispatch to
    "ONEDNN_MAX_CPU_ISA",       # the same for oneDNN (mkldnn) ...
    "DNNL_MAX_CPU_ISA",         # ... under its older name
    "ATEN_CPU_CAPABILITY",      # which build of ATen's own kernels: default, avx2, avx512
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MKL_DYNAMIC",
    "CUBLAS_WORKSPACE_CONFIG",  # cuBLAS determinism on the GPU
    "CUDA_VISIBLE_DEVICES",     # which GPUs the job may see (set by a scheduler such as SLURM)
    "PB_CUDA_DEVICE",           # the suite's own choice among them (experiments.runner.resolve_device)
)

#: Import name -> distribution name of the packages whose versions a run records.
PACKAGES = {
    "torch": "torch",
    "numpy": "numpy",
    "torch_geometric": "torch_geometric",
    "rdkit": "rdkit",
    "pandas": "pandas",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "qlib": "pyqlib",
    "torchvision": "torchvision",
}

#: The environment, set before torch loads, of reproducible CPU numerics. Measured by
#: benchmarks/cpu_reproducibility.py (machines emulated by capping each kernel library's instruction
#: set): without MKL_CBWR no workload agreed across machines; without ATEN_CPU_CAPABILITY=default the
#: MLP and the CNN did not (Adam, softmax and reductions have AVX2/AVX-512 builds). COMPATIBLE is MKL's
#: SSE2 branch, the only one Intel documents as giving the same results on non-Intel CPUs (its AVX2
#: branch falls back to the machine's own dispatch there). ATen's default build is compiled once for
#: baseline x86-64: no vector width or FMA choice left to the machine.
_REPRODUCIBLE_CPU_ENV = {
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "default",
}


# --------------------------------------------------------------------------------------------------
# Reproducible CPU numerics
# --------------------------------------------------------------------------------------------------

def reproducible_cpu_env() -> dict[str, str]:
    """The environment variables that, with :func:`after_torch_import`, make CPU results bit-identical
    across machines (a copy).

    They pin MKL and ATen to code that every x86-64 CPU runs alike. Identical results also need the
    same torch build, the same thread count (``torch_threads``: TrimNet's results change between 1 and
    2 threads even so) and the same data; they cost speed (see docs/reproducibility.md).
    """
    return dict(_REPRODUCIBLE_CPU_ENV)


def apply_reproducible_cpu(environ: dict | None = None) -> dict[str, str]:
    """Set :func:`reproducible_cpu_env` in this process's environment, or in ``environ`` (e.g. the
    environment a job will be started with); returns what changed.

    For this process it must run before torch is imported: MKL and ATen read these variables once,
    when they load. If torch is already loaded and any variable differs from the wanted value, a
    RuntimeError says so and nothing is changed (with the values already in place it is a no-op).
    A variable the user set to another value is replaced, with a warning.
    """
    own = environ is None
    environ = os.environ if own else environ
    wanted = reproducible_cpu_env()
    changed = {k: v for k, v in wanted.items() if environ.get(k) != v}
    if changed and own and "torch" in sys.modules:
        raise RuntimeError(
            "reproducible_cpu must be applied before torch is imported (MKL and ATen read "
            f"{', '.join(sorted(changed))} only when torch loads). Call "
            "experiments.provenance.apply_reproducible_cpu() first thing in the program, or start it with "
            + " ".join(f"{k}={v}" for k, v in wanted.items()) + " in its environment.")
    for key, value in changed.items():
        if environ.get(key) is not None:
            log.warning("reproducible_cpu: replacing %s=%s with %s", key, environ[key], value)
        environ[key] = value
    return changed


def after_torch_import() -> None:
    """The rest of reproducible CPU numerics, once torch is loaded: oneDNN (mkldnn) off.

    oneDNN runs the CPU's convolutions and LSTMs (TrimNet's Set2Set readout) with kernels chosen for
    the machine, and promises identical results only "on a given platform". Turned off, torch runs
    those layers with its own code on MKL and ATen, which the environment above pins (measured: no
    oneDNN primitive runs then). Capping oneDNN with ONEDNN_MAX_CPU_ISA=SSE41 instead also agreed
    across the emulated machines, but oneDNN, unlike MKL, has no mode that promises the same results
    on different hardware, so it is switched off rather than trusted.

    Raises RuntimeError if torch runs other than the portable ATen kernels: the sign that torch was
    imported before :func:`apply_reproducible_cpu`, too late for the environment to take effect.
    """
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability.upper() != _REPRODUCIBLE_CPU_ENV["ATEN_CPU_CAPABILITY"].upper():
        raise RuntimeError(
            f"reproducible_cpu is on but torch runs its {capability} kernels instead of the portable "
            "default ones: torch was imported before experiments.provenance.apply_reproducible_cpu()")
    torch.backends.mkldnn.enabled = False


def reproducible_cpu_active(environ: dict | None = None) -> bool:
    """Whether this process runs with reproducible CPU numerics: :func:`reproducible_cpu_env` in the
    environment and, once torch is loaded, its default kernels and oneDNN off."""
    environ = os.environ if environ is None else environ
    if any(environ.get(k) != v for k, v in _REPRODUCIBLE_CPU_ENV.items()):
        return False
    torch = sys.modules.get("torch")
    if torch is None:
        return True
    return (torch.backends.cpu.get_cpu_capability().upper() == _REPRODUCIBLE_CPU_ENV["ATEN_CPU_CAPABILITY"].upper()
            and not torch.backends.mkldnn.enabled)


# --------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------

def code_version(repo: Path | str | None = None) -> dict:
    """``{"repo", "commit", "dirty", "changed", "reason"}`` of the git checkout at ``repo``.

    ``dirty`` counts modified, staged, deleted and untracked (not ignored) files under ``repo``, since
    any of them can change what runs; ``changed`` lists up to 20 of them (paths relative to the
    checkout's top). ``repo`` may be a tracked folder of a larger checkout. When it is not under
    version control, git is missing or fails, ``commit`` and ``dirty`` are None and ``reason`` says why
    (never an exception).
    """
    repo = Path(repo) if repo is not None else REPO_ROOT
    info = {"repo": str(repo), "commit": None, "dirty": None, "changed": [], "reason": None}

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                               f"git {' '.join(args)} exited with {done.returncode}")
        return done.stdout

    try:
        top = Path(git("rev-parse", "--show-toplevel").strip()).resolve()
        if top != repo.resolve() and not git("ls-files").strip():
            # An untracked or ignored folder inside some checkout (e.g. the suite installed into a
            # .venv inside it) would report that checkout's commit: not this code's version.
            raise RuntimeError(f"{repo} holds no file tracked by the git checkout around it ({top})")
        info["commit"] = git("rev-parse", "HEAD").strip()
        # Only this folder's changes count (the suite may be one folder of a larger checkout).
        changed = [line[3:] for line in git("status", "--porcelain", "--", ".").splitlines() if line.strip()]
        info["dirty"] = bool(changed)
        info["changed"] = changed[:20]
    except FileNotFoundError:
        info["reason"] = "git is not installed"
    except subprocess.TimeoutExpired:
        info["reason"] = "git did not answer within 30 s"
    except (RuntimeError, OSError) as exc:
        info["reason"] = f"not a git checkout: {exc}"
    if info["reason"] is not None:
        info["commit"], info["dirty"], info["changed"] = None, None, []
    return info


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`PACKAGES` (None when absent), read from package metadata so that
    nothing heavy is imported; torch's own version string (with its build tag, e.g. ``+cu130``) when
    torch is already loaded."""
    versions = {}
    for module, dist in PACKAGES.items():
        try:
            versions[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[module] = None
    torch = sys.modules.get("torch")
    if torch is not None:
        versions["torch"] = torch.__version__
    return versions


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _first(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1).strip() if match else None


def torch_build(torch) -> dict:
    """BLAS, LAPACK, MKL, oneDNN and the parallel backend as ``torch.__config__`` reports them."""
    config = torch.__config__.show()
    parallel = torch.__config__.parallel_info()
    return {
        "torch_git": getattr(torch.version, "git_version", None),
        "blas": _first(r"BLAS_INFO=([^,\s]+)", config),
        "lapack": _first(r"LAPACK_INFO=([^,\s]+)", config),
        "mkl": _first(r"Math Kernel Library Version ([^\n]+?)(?: for Intel| -|\n|$)", config),
        "onednn": _first(r"MKL-DNN (v[\d.]+)", config) or _first(r"oneDNN (v[\d.]+)", config),
        "parallel_backend": _first(r"ATen parallel backend: ([^\n]+)", parallel),
        "mkl_available": bool(torch.backends.mkl.is_available()),
        "mkldnn_enabled": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
    }


def device_info(torch, device: str) -> dict:
    """The device, and on CUDA the GPU's name and the CUDA, cuDNN versions and determinism switches."""
    info = {"type": device, "gpu": None, "cuda": None, "cudnn": None, "cudnn_deterministic": None,
            "cudnn_benchmark": None, "tf32_matmul": None}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        info.update(gpu=torch.cuda.get_device_name(index), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
                    cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
                    tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32))
    return info


def provenance(device: str, threads: int, *, repo: Path | str | None = None) -> dict:
    """Everything that decides whether another machine can reproduce this run's numbers (JSON-ready).

    ``device`` and ``threads`` are what the run asked for ("cpu" / "cuda", torch's intra-op threads);
    the record also holds what torch actually uses. Imports torch (a training process has it loaded).
    """
    import torch

    return {
        "code": code_version(repo),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine()},
        "packages": package_versions(),
        "cpu": {"model": cpu_model(), "logical_cpus": os.cpu_count(),
                "torch_capability": torch.backends.cpu.get_cpu_capability()},
        "torch_build": torch_build(torch),
        "threads": {"requested": threads, "torch": torch.get_num_threads(),
                    "interop": torch.get_num_interop_threads()},
        "device": device_info(torch, device),
        "env": {name: os.environ.get(name) for name in NUMERIC_ENV_VARS},
        "reproducible_cpu": reproducible_cpu_active(),
    }


#: Columns of :func:`provenance_row`, in order. ``device`` and ``threads`` hold what torch used; where
#: a summary has its own ``device`` column the two agree (both are the resolved device).
PROVENANCE_COLUMNS = [
    "code_version", "python", *PACKAGES, "cpu_model", "cpu_capability", "blas", "mkl", "onednn",
    "threads", "device", "gpu", "cuda", "cudnn", "numeric_env", "reproducible_cpu",
]


def provenance_row(prov: dict) -> dict[str, str]:
    """:func:`provenance` flattened to strings for one CSV row (keys :data:`PROVENANCE_COLUMNS`).

    ``code_version`` is the commit, with ``-dirty`` when the work tree had changes, or ``unknown (why)``;
    ``numeric_env`` lists the set :data:`NUMERIC_ENV_VARS` as ``NAME=value`` joined by ``;``.
    """
    code = prov["code"]
    if code["commit"] is None:
        version = f"unknown ({code['reason']})"
    else:
        version = code["commit"] + ("-dirty" if code["dirty"] else "")
    build, dev, threads = prov["torch_build"], prov["device"], prov["threads"]
    return {
        "code_version": version,
        "python": prov["python"]["version"],
        **{name: prov["packages"].get(name) or "" for name in PACKAGES},
        "cpu_model": prov["cpu"]["model"],
        "cpu_capability": prov["cpu"]["torch_capability"],
        "blas": build["blas"] or "",
        "mkl": build["mkl"] or "",
        "onednn": build["onednn"] or "",
        "threads": str(threads["torch"]),
        "device": dev["type"],
        "gpu": dev["gpu"] or "",
        "cuda": dev["cuda"] or "",
        "cudnn": "" if dev["cudnn"] is None else str(dev["cudnn"]),
        "numeric_env": ";".join(f"{k}={v}" for k, v in prov["env"].items() if v is not None),
        "reproducible_cpu": str(bool(prov["reproducible_cpu"])).lower(),
    }
