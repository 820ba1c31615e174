"""The commands the documentation shows, found and checked the way a reader would run them.

Where they are found: README.md, docs/*.md and benchmarks/README.md: every line of a ```bash block, every
line of any other code block (fenced or indented) that starts with a command this suite ships, and every
inline `code span` that starts with one (a span may wrap over lines, as in the prose).

How a command is checked, without training anything or writing into the repository:

* ``snakemake ...``: a dry run (``-n``) of exactly that command line, in a scratch folder that holds links to
  the Snakefile, rules/, config/ and profiles/ and a ``../shared/data`` link to the real data, so a
  documented ``--config data_dir=../shared/data`` reads the real data and every result, log and ``.snakemake``
  folder lands in the scratch folder. Commands that differ only in their targets (as Snakemake's own argument
  parser splits them) share one dry run with all their targets. A command that points data_dir at the shared
  data must plan no download (that data is all there).
* ``python -m experiments ...``: the command line parsed by the suite's own parser, then what the command
  checks before it does any work: the configuration (every --configfile and --set), the benchmark, and for
  ``run`` the run itself (variant, seed, factors), for ``output`` the declared output, for ``grid`` the grid.
* ``python benchmarks/<script>.py ...``: the script's own argument parser, stopped right after it parsed the
  documented options.
* ``pytest`` commands: the test files they name exist and every ``-m`` marker is declared.
* ``bash benchmarks/<script>.sh ...``: the script exists and ``bash -n`` parses it (a script that measures for
  an hour has a test of its own that runs it in its dry-run mode).

Anything else (a download with curl, activating the environment) must be listed in ``UNCHECKED`` with the
reason, and a command with a placeholder must have an entry in ``SUBSTITUTIONS``: nothing is skipped silently.
Run as a script, this module is the worker that runs the Snakemake and script checks in one process (each
command's parsing and planning is what ``snakemake``'s console entry point, ``snakemake.cli.main``, does).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def documentation_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]


# A line of a code block other than ```bash (those may also hold output) is a command when it starts like one.
COMMAND_LINE = re.compile(r"(nohup )?(nice -n \d+ )?(/usr/bin/time -v )?(\.venv/bin/)?"
                          r"(snakemake\b|python[\d.]* (-m |\S+\.py\b)|pytest\b|pip install\b|bash benchmarks/)")
INLINE_COMMAND = re.compile(r"(nohup )?(nice -n \d+ )?(snakemake \S|python -m \S+ \S|python benchmarks/|pytest \S|\.venv/bin/|"
                            r"bash benchmarks/)")
PLACEHOLDER = re.compile(r"\[|\]|\.\.\.|<[^>]*>|\bRUN\b|\b[a-z]+\|[a-z|]+\b")


@dataclass(frozen=True)
class Documented:
    doc: str   # path relative to the repository
    line: int
    text: str  # as written, continuation lines joined, the trailing comment removed

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def _strip_comment(text: str) -> str:
    """The command without a trailing `# comment` (a `#` outside quotes that starts a word)."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=False)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: keep the text as it is, the check will complain
        return " ".join(text.split())
    if not tokens:
        return ""
    cut = text.find(" #")
    while cut != -1:  # the first " #" whose left part still holds every token is the comment
        if " ".join(shlex.split(text[:cut])) == " ".join(tokens):
            return " ".join(text[:cut].split())
        cut = text.find(" #", cut + 1)
    return " ".join(text.split())


def extract(text: str, doc: str = "<text>") -> list[Documented]:
    """Every command of one markdown text (see the module's docstring for which lines count)."""
    found: list[Documented] = []
    lines = text.splitlines()
    prose: list[str] = []  # the text outside code blocks, code lines blanked (inline spans are searched here)
    fence: str | None = None
    pending: tuple[int, str] | None = None  # a line continued with a trailing backslash
    all_lines = False
    previous_blank = True
    for number, line in enumerate(lines, 1):
        opening = re.match(r"\s*```(\S*)", line)
        if opening:
            fence = None if fence is not None else opening.group(1)
            all_lines = fence in ("bash", "sh", "shell", "console")
            prose.append("")
            previous_blank = False
            continue
        indented = fence is None and line.startswith("    ") and (previous_blank or pending is not None)
        if fence is None and not indented:
            prose.append(line)
            previous_blank = not line.strip()
            continue
        prose.append("")
        code = line.strip().removeprefix("$ ")
        if pending is not None:
            start, head = pending
            code, number = head + " " + code, start
            pending = None
        if code.endswith("\\"):
            pending = (number, code[:-1].rstrip())
            continue
        if not code or code.startswith("#") or fence == "python":
            continue
        if all_lines or COMMAND_LINE.match(code):
            for part in re.split(r"\s&&\s", code):  # `a && b` is two commands
                found.append(Documented(doc, number, _strip_comment(part)))
    body = "\n".join(prose)
    for match in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)*)`", body):
        span = " ".join(match.group(1).split())
        if INLINE_COMMAND.match(span):
            found.append(Documented(doc, body.count("\n", 0, match.start()) + 1, span))
    return sorted(found, key=lambda d: d.line)


def documented_commands() -> list[Documented]:
    return [c for path in documentation_files()
            for c in extract(path.read_text(), str(path.relative_to(REPO)))]


# A documented command with a placeholder -> the concrete commands that stand for it (each is checked).
SCRATCH = "SCRATCH"  # replaced by the scratch folder of the check
SUBSTITUTIONS: dict[str, list[str]] = {
    # "RUN" is a finished paper-protocol baseline run's folder; the check parses the options only.
    "python benchmarks/paper_cost_estimate.py --first-cycle-from RUN/epochs.csv":
        ["python benchmarks/paper_cost_estimate.py --first-cycle-from results/tox21/baseline/seed0/epochs.csv"],
    # [optional] options: with and without them.
    "python benchmarks/pb_profile.py [--stat min]":
        ["python benchmarks/pb_profile.py", "python benchmarks/pb_profile.py --stat min"],
    "nice -n 10 python benchmarks/pb_overhead.py --threads 1 --clock cpu --repeats 3 --batches 4 --warmup 2 "
    "--max-k 2 --no-memory [--perforatedai] [--snapshot epoch_end]":
        ["python benchmarks/pb_overhead.py --threads 1 --clock cpu --repeats 3 --batches 4 --warmup 2 --max-k 2 "
         "--no-memory",
         "python benchmarks/pb_overhead.py --threads 1 --clock cpu --repeats 3 --batches 4 --warmup 2 --max-k 2 "
         "--no-memory --perforatedai --snapshot epoch_end"],
    # curve.yaml is the profile the same paragraph of docs/physionet.md spells out (CURVE_YAML below).
    "python -m experiments run physionet --configfile curve.yaml --variant baseline --factor width=0.125 --seed 0 "
    "[--set benchmarks.physionet.train.lr=1e-3]":
        ["python -m experiments run physionet --configfile SCRATCH/curve.yaml --variant baseline --factor "
         "width=0.125 --seed 0",
         "python -m experiments run physionet --configfile SCRATCH/curve.yaml --variant baseline --factor "
         "width=0.125 --seed 0 --set benchmarks.physionet.train.lr=1e-3"],
    # "[a]" is a YAML list here, not an optional part: the command is concrete as it stands.
    "python -m experiments prepare physionetext --configfile config/physionetext.yaml --set data_dir=../shared/data "
    "--set 'benchmarks.physionetext.data.sets=[a]' --set benchmarks.physionetext.data.test_set=b":
        ["python -m experiments prepare physionetext --configfile config/physionetext.yaml --set "
         "data_dir=../shared/data --set 'benchmarks.physionetext.data.sets=[a]' --set "
         "benchmarks.physionetext.data.test_set=b"],
}
CURVE_YAML = """benchmarks:
  physionet:
    factors: {width: [0.125]}
    factor_overrides: {width: {0.125: {variants: [baseline]}}}
    pb: {fixed_cycle_epochs: 12}
"""

# Documented commands that are not run by this check, each with the reason (a pattern that no longer
# matches any documented command is an error, so the list cannot go stale).
UNCHECKED: list[tuple[str, str]] = [
    (r"python3\.11 -m venv \.venv", "the install command: .ci/run runs it as written (test_ci_runs_the_readme)"),
    (r"\.venv/bin/pip install -e \.", "the install command: .ci/run runs it as written (test_ci_runs_the_readme)"),
    (r"source \.venv/bin/activate", "activates the environment the install command made"),
    (r"python -m qlib\.cli\.data qlib_data .*", "downloads qlib's CN bundle: needs a network"),
    (r"curl -LO https://github\.com/Wentao-Xu/HIST/.*", "downloads HIST's side files: needs a network"),
    (r"cd data/csi300", "a folder that exists once the download above has run"),
    (r"echo .* csi300_stock_index\.npy\"? \| sha256sum -c", "checks a file that only the download above brings"),
]


@dataclass(frozen=True)
class Check:
    """One concrete command to check: kind is snakemake, experiments, script or pytest; argv without the
    program (for a script: the script's path first)."""
    documented: Documented
    kind: str
    argv: tuple[str, ...]

    @property
    def needs_shared_data(self) -> bool:
        return any("../shared/data" in a for a in self.argv)

    def __str__(self) -> str:
        return f"{self.documented.doc}:{self.documented.line}: {self.kind} {shlex.join(self.argv)}"


def _program_and_args(text: str) -> list[str]:
    """The command's program and arguments: without `nohup`, `nice -n N`, `/usr/bin/time -v`, `.venv/bin/`,
    and without the shell's redirections and a trailing `&` (where its output goes is not the command's)."""
    argv = shlex.split(text)
    for i, word in enumerate(argv):
        if word in ("&", "|", "<") or re.fullmatch(r"\d?>>?(&\d)?", word) or re.match(r"\d?>", word):
            argv = argv[:i]
            break
    while argv[:1] in (["nice"], ["nohup"]):
        argv = argv[3:] if argv[:2] == ["nice", "-n"] else argv[1:]
    if argv[:2] == ["/usr/bin/time", "-v"]:
        argv = argv[2:]
    if argv:
        argv[0] = argv[0].removeprefix(".venv/bin/")
    return argv


def checks_for(documented: Documented, scratch: str = SCRATCH) -> list[Check] | str:
    """The checks of one documented command, or why it is not checked (a string starting with 'UNCHECKED'
    for listed commands, anything else is a problem to fix)."""
    texts = SUBSTITUTIONS.get(documented.text)
    if texts is None:
        for pattern, reason in UNCHECKED:
            if re.fullmatch(pattern, documented.text):
                return f"UNCHECKED: {reason}"
        if PLACEHOLDER.search(documented.text):
            return "has a placeholder: add the concrete commands it stands for to SUBSTITUTIONS"
        texts = [documented.text]
    checks = []
    for text in texts:
        argv = _program_and_args(text.replace(SCRATCH, scratch))
        if argv[:1] == ["snakemake"]:
            checks.append(Check(documented, "snakemake", tuple(argv[1:])))
        elif argv[:3] == ["python", "-m", "experiments"]:
            checks.append(Check(documented, "experiments", tuple(argv[3:])))
        elif argv[:1] == ["python"] and len(argv) > 1 and re.fullmatch(r"benchmarks/\w+\.py", argv[1]):
            checks.append(Check(documented, "script", tuple(argv[1:])))
        elif argv[:1] == ["bash"] and len(argv) > 1 and re.fullmatch(r"benchmarks/\w+\.sh", argv[1]):
            checks.append(Check(documented, "shell", tuple(argv[1:])))
        elif argv[:3] == ["python", "-m", "pytest"] or argv[:1] == ["pytest"]:
            checks.append(Check(documented, "pytest", tuple(argv[3:] if argv[0] == "python" else argv[1:])))
        else:
            return "is no command this check knows: check it here, or list it in UNCHECKED with the reason"
    return checks


# --- python -m experiments: the suite's parser and the checks each command makes before it works --------------

def check_experiments(argv: tuple[str, ...]) -> str | None:
    """None when the command would start its work; else what it would stop with. Run from the repository."""
    from experiments import __main__ as cli
    from experiments import config as cfgmod
    from experiments.errors import UserError

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = cli.build_parser().parse_args(list(argv))
    except SystemExit:
        return errors.getvalue().strip()
    try:
        cfg = cli._config(args)
        if hasattr(args, "benchmark"):
            cfgmod.benchmark_block(cfg, args.benchmark)
        if args.command == "run":
            cli._run(cfg, args)
        elif args.command == "output":
            from experiments.registry import get_info
            get_info(cfg, args.benchmark).output(args.name)
        elif args.command == "grid":
            from experiments.grid import grid
            list(grid(cfg, args.benchmark))
    except UserError as exc:
        return f"error: {exc}"
    return None


def check_pytest(argv: tuple[str, ...]) -> str | None:
    import tomllib

    declared = {m.split(":")[0] for m in
                tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]}
    problems = []
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "-m":
            markers = set(re.findall(r"\w+", rest.pop(0))) - {"not", "and", "or"}
            problems += [f"marker {m!r} is not declared in pyproject.toml" for m in sorted(markers - declared)]
        elif not arg.startswith("-") and not (REPO / arg.split("::")[0]).exists():
            problems.append(f"{arg} does not exist")
    return "; ".join(problems) or None


def check_shell(argv: tuple[str, ...]) -> str | None:
    script = REPO / argv[0]
    if not script.is_file():
        return f"{argv[0]} does not exist"
    parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    return f"bash -n {argv[0]}: {parsed.stderr.strip()}" if parsed.returncode else None


# --- Snakemake and the benchmark scripts: one worker process -----------------------------------------------

def scratch_workdir(scratch: Path, real_data_dir: Path | None) -> Path:
    """scratch/work with links to what a command run from the repository root reads, and scratch/shared/data
    -> the real data, so that `../shared/data` seen from scratch/work is the real data."""
    work = scratch / "work"
    work.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "rules", "config", "profiles"):
        (work / name).symlink_to(REPO / name)
    if real_data_dir is not None:
        (scratch / "shared").mkdir(exist_ok=True)
        (scratch / "shared" / "data").symlink_to(real_data_dir)
    return work


def snakemake_groups(argvs: list[tuple[str, tuple[str, ...]]]) -> tuple[dict[tuple, list[str]], dict[tuple, tuple | str]]:
    """Commands (tag, argv) of one tag that differ only in their targets (as Snakemake's own parser splits them)
    -> one dry run: {(tag, *options, marker): union of targets}, and for each command its group's key (or its
    parse error)."""
    from snakemake.cli import get_argument_parser

    parser = get_argument_parser()
    groups: dict[tuple, list[str]] = {}
    member: dict[tuple, tuple | str] = {}
    for tag, argv in argvs:
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                targets = list(parser.parse_args(list(argv)).targets or [])
        except (SystemExit, ValueError) as exc:  # Snakemake parses some values (--resources) in its parser
            member[(tag, argv)] = errors.getvalue().strip() or f"snakemake's argument parser rejected it: {exc!r}"
            continue
        options = list(argv)
        if targets and options[-len(targets):] == targets:
            options = options[:-len(targets)]
            if options[-1:] == ["--"]:
                options = options[:-1]
        elif targets:  # targets between options: dry-run this command on its own
            options, targets = list(argv), []
        key = (tag, *options, "<targets>" if targets else "<no targets>")
        groups.setdefault(key, [])
        groups[key] += [t for t in targets if t not in groups[key]]
        member[(tag, argv)] = key
    return groups, member


class _Parsed(Exception):
    """Raised right after a script's argument parser accepted the command line: nothing else runs."""


def _run_quietly(function) -> tuple[int, str]:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            function()
            code = 0
        except _Parsed:
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception as exc:  # a crash is a failed check, with its message
            code = 1
            output.write(f"{type(exc).__name__}: {exc}")
    return code, output.getvalue()


def _script(argv: list[str]):
    def run():
        sys.argv = list(argv)
        runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    return run


def worker(jobs: dict) -> dict:
    """Run the dry runs and script parses of `jobs` ({"workdir", "snakemake": [[tag, argv]], "scripts": [argv]});
    Snakemake commands share a dry run only with commands of the same tag."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed()

    results: dict = {"snakemake": {}, "scripts": {}}
    os.chdir(REPO)
    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        sys.path.insert(0, str(REPO / "benchmarks"))
        for argv in jobs["scripts"]:
            results["scripts"][shlex.join(argv)] = _run_quietly(_script(argv))
    finally:
        argparse.ArgumentParser.parse_args = original
    import snakemake.cli

    argvs = [(tag, tuple(a)) for tag, a in jobs["snakemake"]]
    groups, member = snakemake_groups(argvs)
    dry: dict[tuple, tuple[int, str, list[str]]] = {}
    for key, targets in groups.items():
        options = list(key[1:-1])
        command = ["-n", *options, *(["--", *targets] if targets else [])]
        os.chdir(jobs["workdir"])
        sys.argv = ["snakemake", *command]  # what Snakemake's log shows as the command
        code, output = _run_quietly(lambda: snakemake.cli.main(command))
        dry[key] = (code, output, command)
    for tag, argv in argvs:
        key = member[(tag, argv)]
        results["snakemake"][f"{tag} {shlex.join(argv)}"] = (2, key, []) if isinstance(key, str) else dry[key]
    return results


def run_worker(jobs: dict, timeout: int = 900) -> dict:
    """The worker in a fresh Python (its imports and argument-parser patch stay out of the test process)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__], input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def snakemake_problem(argv: tuple[str, ...], result: tuple[int, str, list[str]]) -> str | None:
    """Why a documented Snakemake command does not work as written (None: it plans its jobs)."""
    code, output, command = result
    if code != 0:
        # A report needs the workflow's outputs: on a fresh folder it stops at the first missing one, after
        # Snakemake has read the command line, the configuration and the whole workflow.
        if "--report" in argv and re.search(r"marked for report but does not exist", output):
            return None
        return f"dry run `snakemake {shlex.join(command)}` failed:\n{output[-1500:]}"
    if any("data_dir=../shared/data" in a for a in argv) and re.search(r"^rule download_", output, re.M):
        return ("points data_dir at the shared data, yet the dry run plans downloads (is data_dir resolved "
                f"from another folder, e.g. -d?):\n{output[-1500:]}")
    return None


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.stdin.read()))))
