"""benchmarks/share_first_cycle_cost.sh measures what it says: its two sides are the same workflow, one with the
shared first cycle and one where every run trains its own, in folders of their own."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "share_first_cycle_cost.sh"


def _jobs(log: str) -> dict[str, int]:
    table = log[log.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="/usr/bin/time is not installed")
def test_the_two_sides_plan_the_same_runs_and_only_one_shares_its_first_cycles(real_data_dir, tmp_path):
    snakemake = Path(sys.executable).with_name("snakemake")
    env = {**os.environ, "SNAKEMAKE": str(snakemake), "SNAKEMAKE_ARGS": "-n"}
    done = subprocess.run(["bash", str(SCRIPT), str(real_data_dir), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    shared, unshared = (_jobs((tmp_path / f"{name}.log").read_text()) for name in ("shared", "unshared"))
    assert shared["first_cycle"] > 0 and "first_cycle" not in unshared
    assert shared["train"] == unshared["train"] and shared["prepare"] == unshared["prepare"] > 0
    for name in ("shared", "unshared"):  # each side in its own folders, nothing of the other's
        log = (tmp_path / f"{name}.log").read_text()
        assert f"results/quick_{name}/" in log and f"data/cache_quick_{name}/" in log
        other = "unshared" if name == "shared" else "shared"
        assert f"results/quick_{other}/" not in log
    assert re.search(r"^shared .* missing$", done.stdout, re.M) and re.search(r"^unshared ", done.stdout, re.M)
