"""The README's example of adding dendrites to a plain PyTorch model runs as written and does what it says."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def example_code() -> str:
    text = README.read_text()
    match = re.search(r"## Add dendrites to your own model\n\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its '## Add dendrites to your own model' example"
    return match.group(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_readme_example_solves_xor_with_dendrites(seed, capsys):
    import torch

    code = example_code()
    assert len(code.strip().splitlines()) <= 20  # the README promises a short example
    torch.manual_seed(seed)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    summary = namespace["summary"]
    assert summary["original"]["test"] <= 0.75 < summary["max"]["test"] == 1.0
    assert summary["final_dendrites"] >= 1
    assert "-> 1.0 with" in capsys.readouterr().out
