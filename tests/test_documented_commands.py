"""Every command that README.md, docs/*.md and benchmarks/README.md show works as written (tests/documented_commands.py
says how each kind is checked); a broken one is caught by the same checks."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import _shared_data_dir
from documented_commands import (CURVE_YAML, REPO, SUBSTITUTIONS, UNCHECKED, Documented, check_experiments,
                                 check_pytest, check_shell, checks_for, documented_commands, extract, run_worker,
                                 scratch_workdir, snakemake_problem)

SAMPLE = """Intro with `snakemake --cores 1
all` wrapped over two lines and `--set device=cuda`, a fragment.

```bash
.venv/bin/snakemake --cores 2 -- a.pdf   # the comment goes
python3.11 -m venv .venv && .venv/bin/pip install -e .
```

    python benchmarks/packing.py --parallel 1 \\
        2 --device cuda

```
configuration  s/epoch
python is a word here, not a command
```
"""

# Broken on purpose: each must be caught by the check its kind gets (the first is what the README once said).
BROKEN = {
    "snakemake --cores 2 --configfile config/quick.yaml --config data_dir=../shared/data all":
        r"Unparsable value: 'all'",
    "snakemake --cores 16 --resources gpu_slots=4 --config device=cuda all": r"Unparsable value: 'all'",
    "snakemake --profile profiles/local-gpu --resources gpu_slots=4 all": r"dictionary update sequence|resource",
    "snakemake --cores 2 --configfile config/quick.yaml --config data_dir=../shared/data -- figures/quick/tox21_aux.pdf":
        r"MissingRuleException|No rule to produce",
    # -d moves the working folder, so ../shared/data is looked up beside it, is missing, and would be downloaded.
    "snakemake -s Snakefile -d SCRATCH/elsewhere/q --configfile config/quick.yaml --config data_dir=../shared/data --cores 2 "
    "-- figures/quick/physionet_params_auc.pdf": r"plans downloads",
    "python -m experiments run tox21 --variant pb --seed 7 --factor width=2": r"no configured factor",
    "python -m experiments run tox21 --variant pb --seed 7 --set benchmarks.tox21.train.epochs=3": r"'epochs' was unexpected",
    "python -m experiments output tox21 auroc": r"declares no output 'auroc'",
    "python -m experiments grid tox21 --configfile config/quik.yaml": r"does not exist",
    "python -m experiments run tox21 --variant pb --seeds 7": r"unrecognized arguments: --seeds",
    "python benchmarks/tox21_epoch_times.py --data-dir ../shared/data --repeat-count 3": r"unrecognized arguments|ambiguous|expected",
    "python -m pytest -m slurmm tests/test_slurm.py": r"marker 'slurmm' is not declared",
    "python -m pytest tests/test_slurmm.py": r"does not exist",
    "bash benchmarks/gpu_prepar.sh ../shared/data": r"does not exist",
}


def test_extraction_finds_code_lines_inline_spans_and_joined_continuations():
    found = [(c.line, c.text) for c in extract(SAMPLE)]
    assert found == [
        (1, "snakemake --cores 1 all"),
        (5, ".venv/bin/snakemake --cores 2 -- a.pdf"),
        (6, "python3.11 -m venv .venv"),
        (6, ".venv/bin/pip install -e ."),
        (9, "python benchmarks/packing.py --parallel 1 2 --device cuda"),
    ]


def test_every_documented_command_is_checked_or_listed_with_its_reason():
    commands = documented_commands()
    assert any(c.doc == "README.md" and c.text.startswith(".venv/bin/snakemake") for c in commands)
    assert {c.doc for c in commands} >= {"README.md", "benchmarks/README.md", "docs/tox21.md"}
    problems = [f"{c} {why}" for c in commands if isinstance(why := checks_for(c), str)
                and not why.startswith("UNCHECKED")]
    assert not problems, "\n".join(problems)
    texts = {c.text for c in commands}
    stale = [k for k in SUBSTITUTIONS if k not in texts]
    stale += [p for p, _ in UNCHECKED if not any(re.fullmatch(p, t) for t in texts)]
    assert not stale, f"entries for commands no document shows any more: {stale}"


def _checks(kind: str, scratch: Path) -> list:
    return [check for c in documented_commands() if not isinstance(cs := checks_for(c, str(scratch)), str)
            for check in cs if check.kind == kind]


def _broken(kind: str, scratch: Path) -> list:
    out = []
    for text, expected in BROKEN.items():
        for check in checks_for(Documented("BROKEN", 0, text), str(scratch)):
            if check.kind == kind:
                out.append((check, expected))
    return out


@pytest.mark.slow
def test_python_m_experiments_commands(tmp_path, monkeypatch):
    (tmp_path / "curve.yaml").write_text(CURVE_YAML)
    monkeypatch.chdir(REPO)  # documented commands run from the repository root
    checks = _checks("experiments", tmp_path)
    assert len(checks) >= 8
    results = {argv: check_experiments(argv) for argv in dict.fromkeys(c.argv for c in checks)}
    problems = [f"{c}\n    {results[c.argv]}" for c in checks if results[c.argv]]
    assert not problems, "\n".join(problems)
    for check, expected in _broken("experiments", tmp_path):
        why = check_experiments(check.argv)
        assert why and re.search(expected, why), (str(check), why)


def test_pytest_commands():
    checks = _checks("pytest", Path("/nonexistent"))
    assert checks
    problems = [f"{c}: {why}" for c in checks if (why := check_pytest(c.argv))]
    assert not problems, "\n".join(problems)
    for check, expected in _broken("pytest", Path("/nonexistent")):
        why = check_pytest(check.argv)
        assert why and re.search(expected, why), (str(check), why)


def test_shell_script_commands():
    checks = _checks("shell", Path("/nonexistent"))
    assert {c.argv[0] for c in checks} >= {"benchmarks/gpu_prepare.sh", "benchmarks/share_first_cycle_cost.sh"}
    problems = [f"{c}: {why}" for c in checks if (why := check_shell(c.argv))]
    assert not problems, "\n".join(problems)
    for check, expected in _broken("shell", Path("/nonexistent")):
        why = check_shell(check.argv)
        assert why and re.search(expected, why), (str(check), why)


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """One worker process: every documented Snakemake command dry-run (commands that differ only in their
    targets share a run), every benchmark script's options parsed, the broken ones beside them."""
    scratch = tmp_path_factory.mktemp("documented")
    data = _shared_data_dir()
    data = data if data.is_dir() else None
    workdir = scratch_workdir(scratch, data)
    snakemake = _checks("snakemake", scratch) + [c for c, _ in _broken("snakemake", scratch)]
    scripts = _checks("script", scratch) + [c for c, _ in _broken("script", scratch)]
    runnable = [c for c in snakemake if data is not None or not c.needs_shared_data]
    jobs = [["documented", list(c.argv)] for c in runnable if c.documented.doc != "BROKEN"]
    jobs += [[f"broken {i}", list(c.argv)] for i, c in enumerate(runnable) if c.documented.doc == "BROKEN"]
    results = run_worker({"workdir": str(workdir), "snakemake": jobs, "scripts": [list(a) for a in dict.fromkeys(c.argv for c in scripts)]})
    return {"data": data, "snakemake": snakemake, "scripts": scripts, "results": results, "scratch": scratch}


def _snakemake_problems(dry_runs, shared_data: bool) -> list[str]:
    checks = [c for c in _checks("snakemake", dry_runs["scratch"]) if c.needs_shared_data == shared_data]
    assert checks
    return [f"{c}\n    {why}" for c in checks
            if (why := snakemake_problem(c.argv, dry_runs["results"]["snakemake"][f"documented {shlex.join(c.argv)}"]))]


@pytest.mark.slow
def test_snakemake_commands_dry_run(dry_runs):
    problems = _snakemake_problems(dry_runs, shared_data=False)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_snakemake_commands_on_the_shared_data_dry_run(dry_runs, real_data_dir):
    problems = _snakemake_problems(dry_runs, shared_data=True)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_broken_snakemake_commands_are_caught(dry_runs, real_data_dir):
    runs = {key.split(" ", 2)[2]: result for key, result in dry_runs["results"]["snakemake"].items()
            if key.startswith("broken ")}
    for check, expected in _broken("snakemake", dry_runs["scratch"]):
        why = snakemake_problem(check.argv, runs[shlex.join(check.argv)])
        assert why and re.search(expected, why), (str(check), why)


@pytest.mark.slow
def test_benchmark_scripts_accept_their_documented_options(dry_runs):
    results = dry_runs["results"]["scripts"]
    problems = [f"{c}\n    {results[shlex.join(c.argv)][1][-800:]}" for c in _checks("script", dry_runs["scratch"])
                if results[shlex.join(c.argv)][0] != 0]
    assert not problems, "\n".join(problems)
    for check, expected in _broken("script", dry_runs["scratch"]):
        code, output = results[shlex.join(check.argv)]
        assert code != 0 and re.search(expected, output), (str(check), output[-800:])


def _without_quiet(command: str) -> str:
    return " ".join(word for word in command.split() if word != "-q")


def test_ci_runs_the_readme_install_and_test_commands():
    """.ci/run installs and tests exactly as the README says (it may add -q): each README install and test
    command is one of its commands."""
    readme = [c.text for c in extract((REPO / "README.md").read_text())]
    ci = {_without_quiet(part) for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#") for part in re.split(r"\s&&\s", line)}
    wanted = [t for t in readme if t.startswith(("python3.11 -m venv", ".venv/bin/pip install", ".venv/bin/python -m pytest"))]
    assert len(wanted) >= 3
    missing = [t for t in wanted if _without_quiet(t) not in ci]
    assert not missing, f".ci/run does not run these README commands: {missing}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_documents_resolve():
    from documented_commands import documentation_files

    problems = []
    for doc in documentation_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                problems.append(f"{doc.relative_to(REPO)}: {target} does not exist")
            elif anchor and anchor not in {_anchor(h) for h in re.findall(r"^#+ (.*)$", linked.read_text(), re.M)}:
                problems.append(f"{doc.relative_to(REPO)}: {target} names no heading of {path or 'itself'}")
    assert not problems, "\n".join(problems)
