"""Run provenance is what it claims to be, and the reproducible-CPU settings make results agree across
emulated machines (while, on an AVX-512 x86 machine like this one, results without them do not)."""
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO_ROOT
from experiments import provenance as prov

spec = importlib.util.spec_from_file_location("cpu_reproducibility", REPO_ROOT / "benchmarks" / "cpu_reproducibility.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["cpu_reproducibility"] = bench
spec.loader.exec_module(bench)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                           "-c", "commit.gpgsign=false", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    (path / "train.py").write_text("print('v1')\n")
    (path / ".gitignore").write_text("results/\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "first")
    return path


@needs_git
def test_code_version_is_the_checkouts_head_and_dirty_follows_the_work_tree(repo):
    clean = prov.code_version(repo)
    assert clean["commit"] == git(repo, "rev-parse", "HEAD") and len(clean["commit"]) == 40
    assert clean["dirty"] is False and clean["changed"] == [] and clean["reason"] is None

    (repo / "results").mkdir()
    (repo / "results" / "out.csv").write_text("ignored output\n")
    assert prov.code_version(repo)["dirty"] is False  # git-ignored outputs are not code

    (repo / "train.py").write_text("print('v2')\n")
    edited = prov.code_version(repo)
    assert edited["dirty"] is True and edited["changed"] == ["train.py"]
    assert edited["commit"] == clean["commit"]

    git(repo, "commit", "-q", "-am", "second")
    (repo / "new_module.py").write_text("x = 1\n")  # an untracked file can change what runs
    after = prov.code_version(repo)
    assert after["commit"] == git(repo, "rev-parse", "HEAD") != clean["commit"]
    assert after["dirty"] is True and after["changed"] == ["new_module.py"]


@needs_git
def test_a_tracked_subfolder_reports_the_commit_and_only_its_own_changes(repo):
    (repo / "suite").mkdir()
    (repo / "suite" / "a.py").write_text("a = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "suite")
    (repo / "train.py").write_text("changed outside the suite\n")
    info = prov.code_version(repo / "suite")
    assert info["commit"] == git(repo, "rev-parse", "HEAD") and info["dirty"] is False
    (repo / "suite" / "a.py").write_text("a = 2\n")
    assert prov.code_version(repo / "suite")["changed"] == ["suite/a.py"]


@needs_git
def test_no_checkout_or_an_ignored_copy_gives_none_with_a_reason_not_an_exception(tmp_path, repo):
    bare = tmp_path / "plain_folder"
    bare.mkdir()
    info = prov.code_version(bare)
    assert info["commit"] is None and info["dirty"] is None
    assert info["reason"].startswith("not a git checkout")

    ignored = repo / "results" / "installed_copy"  # e.g. the suite installed into an ignored .venv
    ignored.mkdir(parents=True)
    (ignored / "x.py").write_text("x = 1\n")
    info = prov.code_version(ignored)
    assert info["commit"] is None and "no file tracked" in info["reason"]
    assert prov.provenance_row({**prov.provenance("cpu", 1), "code": info})["code_version"].startswith("unknown (")


@needs_git
def test_missing_git_is_a_reason_too(monkeypatch, repo):
    monkeypatch.setenv("PATH", "/nonexistent")
    info = prov.code_version(repo)
    assert info["commit"] is None and info["reason"] == "git is not installed"


def test_package_versions_come_from_metadata_and_torch_from_the_loaded_module(monkeypatch):
    monkeypatch.setitem(prov.PACKAGES, "not_a_package", "surely-not-installed-pkg-0x1")
    versions = prov.package_versions()
    assert versions["numpy"] == importlib.metadata.version("numpy")
    assert versions["sklearn"] == importlib.metadata.version("scikit-learn")
    assert versions["torch"] == torch.__version__
    assert versions["not_a_package"] is None


def test_package_versions_do_not_import_the_packages():
    code = ("import sys; from experiments import provenance as p; v = p.package_versions(); "
            "heavy = [m for m in ('torch', 'numpy', 'pandas', 'rdkit', 'torch_geometric', 'qlib', 'scipy', "
            "'sklearn', 'torchvision') if m in sys.modules]; print(heavy, v['numpy'] is not None)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "True"]


@needs_git
def test_provenance_reports_what_torch_uses_and_the_numeric_environment(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    torch.set_num_threads(1)
    record = prov.provenance("cpu", 1)
    assert record["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == {"requested": 1, "torch": 1, "interop": torch.get_num_interop_threads()}
    assert record["env"]["MKL_CBWR"] == "COMPATIBLE" and record["env"]["ONEDNN_MAX_CPU_ISA"] is None
    if (REPO_ROOT / ".git").exists():  # a clone (an unpacked archive has no commit to report)
        assert record["code"]["commit"] == git(REPO_ROOT, "rev-parse", "HEAD")
    assert record["device"]["type"] == "cpu" and record["device"]["gpu"] is None
    assert record["torch_build"]["mkldnn_enabled"] == torch.backends.mkldnn.enabled

    row = prov.provenance_row(record)
    assert list(row) == prov.PROVENANCE_COLUMNS
    assert all(isinstance(v, str) for v in row.values())
    assert row["code_version"] == record["code"]["commit"] + ("-dirty" if record["code"]["dirty"] else "")
    assert row["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert row["threads"] == "1" and row["torch"] == torch.__version__
    assert "MKL_CBWR=COMPATIBLE" in row["numeric_env"].split(";")
    assert row["reproducible_cpu"] == "false"


def test_build_fields_are_parsed_from_torchs_own_report():
    show = ("PyTorch built with:\n  - Intel(R) oneAPI Math Kernel Library Version 2099.1-Product Build 1 for Intel(R) 64\n"
            "  - Intel(R) MKL-DNN v9.8.7 (Git Hash abc)\n  - Build settings: BLAS_INFO=open, LAPACK_INFO=open, X=1\n")
    fake = SimpleNamespace(
        __config__=SimpleNamespace(show=lambda: show, parallel_info=lambda: "ATen parallel backend: native thread pool\n"),
        version=SimpleNamespace(git_version="deadbeef"),
        backends=SimpleNamespace(mkl=SimpleNamespace(is_available=lambda: False),
                                 mkldnn=SimpleNamespace(is_available=lambda: True, enabled=False)),
        are_deterministic_algorithms_enabled=lambda: True)
    assert prov.torch_build(fake) == {
        "torch_git": "deadbeef", "blas": "open", "lapack": "open", "mkl": "2099.1-Product Build 1",
        "onednn": "v9.8.7", "parallel_backend": "native thread pool", "mkl_available": False,
        "mkldnn_enabled": False, "deterministic_algorithms": True}
    real = prov.torch_build(torch)  # this build's BLAS is the one torch names in its build settings
    assert f"BLAS_INFO={real['blas']}," in torch.__config__.show()


def test_cuda_device_fields_name_the_gpu_the_run_asked_for():
    # No GPU here: a stand-in with torch's CUDA query functions (the real one answers the same calls).
    names = {0: "GPU zero", 1: "NVIDIA H200"}
    fake = SimpleNamespace(
        device=torch.device, version=SimpleNamespace(cuda="13.0"),
        cuda=SimpleNamespace(is_available=lambda: True, get_device_name=lambda i: names[i]),
        backends=SimpleNamespace(cudnn=SimpleNamespace(version=lambda: 92400, deterministic=True, benchmark=False),
                                 cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=False))))
    info = prov.device_info(fake, "cuda:1")
    assert info == {"type": "cuda:1", "gpu": "NVIDIA H200", "cuda": "13.0", "cudnn": 92400,
                    "cudnn_deterministic": True, "cudnn_benchmark": False, "tf32_matmul": False}
    assert prov.device_info(fake, "cuda")["gpu"] == "GPU zero"
    assert prov.device_info(fake, "cpu")["gpu"] is None


def test_reproducible_env_refuses_once_torch_is_loaded_unless_already_in_place(monkeypatch):
    assert "torch" in sys.modules  # conftest imports it
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    with pytest.raises(RuntimeError, match="before torch is imported"):
        prov.apply_reproducible_cpu()
    assert os.environ["MKL_CBWR"] == "AUTO"  # nothing changed
    for key, value in prov.reproducible_cpu_env().items():
        monkeypatch.setenv(key, value)
    assert prov.apply_reproducible_cpu() == {}
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        with pytest.raises(RuntimeError, match="imported before"):
            prov.after_torch_import()


def test_a_jobs_environment_can_be_prepared_while_torch_is_loaded():
    job = {"MKL_CBWR": "AVX2", "PATH": "/bin"}
    changed = prov.apply_reproducible_cpu(job)
    assert job == {**prov.reproducible_cpu_env(), "PATH": "/bin"} and changed == prov.reproducible_cpu_env()


def test_apply_before_torch_pins_the_kernels_torch_then_uses():
    code = ("import os, sys; from experiments import provenance as p; changed = p.apply_reproducible_cpu(); "
            "import torch; p.after_torch_import(); "
            "print(torch.backends.cpu.get_cpu_capability(), torch.backends.mkldnn.enabled, "
            "p.reproducible_cpu_active(), sorted(changed) == sorted(p.reproducible_cpu_env()))")
    env = bench.child_env({}, {})
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["DEFAULT", "False", "True", "True"]


# Two "machines" on this one: as it is, and with every kernel library capped at AVX2 (what a machine
# without AVX-512, e.g. an AMD EPYC before Zen 4, runs). The workloads touch all three libraries: MKL
# (Linear), ATen's vector kernels (softmax, Adam, reductions), oneDNN (Conv2d, LSTM) -- each of them
# alone changed some of these results in benchmarks/cpu_reproducibility.py.
WORKLOADS = ["mlp", "cnn", "lstm"]
AVX2_MACHINE = bench.MACHINES["avx2"][0]


def records(*settings) -> list:
    """For each (machine environment, fix environment, after-import switches): the workloads' hashes
    {workload: (params sha256, losses sha256)} and torch's CPU capability, workers run side by side."""
    def one(setting):
        out = bench.run_worker(WORKLOADS, *setting, steps=3)
        hashes = {name: (rec["params_sha256"], rec["losses_sha256"]) for name, rec in out["workloads"].items()}
        return hashes, out["provenance"]["cpu_capability"]
    with ThreadPoolExecutor(len(settings)) as pool:
        return list(pool.map(one, settings))


def test_reproducible_cpu_gives_bitwise_identical_training_under_different_kernel_settings():
    fix, after = {}, {"after_torch_import": True}
    prov.apply_reproducible_cpu(fix)  # what the workers' environment gets on top of the machine's
    (native, cap_native), (avx2, cap_avx2) = records(({}, fix, after), (AVX2_MACHINE, fix, after))
    assert cap_native == cap_avx2 == "DEFAULT"
    assert set(native) == set(WORKLOADS)
    assert native == avx2


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or
                    torch.backends.cpu.get_cpu_capability() != "AVX512",
                    reason="needs an AVX-512 x86 CPU to emulate a second machine by capping it at AVX2")
def test_without_it_the_same_training_differs_between_the_two_settings():
    (native, cap_native), (avx2, cap_avx2) = records(({}, {}, {}), (AVX2_MACHINE, {}, {}))
    assert (cap_native, cap_avx2) == ("AVX512", "AVX2")
    assert all(native[w] != avx2[w] for w in WORKLOADS)
