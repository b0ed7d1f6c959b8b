"""The README works as written: its three quickstarts run (offline, in a fresh process each, in a scratch
directory), and its test command is the one ``.ci/run`` runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _python_block(heading: str) -> str:
    """The first ```python block after the line ``heading``."""
    start = README.index(f"\n{heading}\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no python block after {heading!r}"
    return match.group(1)


def _bash_block_after(text: str) -> list[str]:
    start = README.index(text)
    match = re.compile(r"```bash\n(.*?)```", re.S).search(README, start)
    assert match is not None
    return [line for line in match.group(1).splitlines() if line.strip()]


@pytest.mark.parametrize("heading, needs", [
    ("### timm", "timm"),
    ("### transformers audio", "transformers"),
    ("### SpikingJelly: learnable synaptic delays", "spikingjelly"),
])
def test_quickstart_runs(heading, needs, tmp_path):
    pytest.importorskip(needs)
    code = _python_block(heading)
    assert 8 <= len(code.splitlines()) <= 16, "a quickstart is about ten lines"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, f"{heading}:\n{res.stdout}\n{res.stderr}"
    assert "replaced" in res.stdout  # each quickstart prints its PatchReport


def test_the_two_commands():
    main_job = _bash_block_after("## The two commands")
    tests = _bash_block_after("Tests (what `.ci/run` runs")
    assert main_job == ['pip install -e ".[all,test]" && dclszoo finetune']
    assert len(tests) == 1 and tests[0].startswith('pip install -e ".[all,test]" && pytest')
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests[0] in ci.splitlines(), ".ci/run must run the README's test command as written"
    assert "dcls_and_delays.png" in README and (ROOT / "docs" / "figures" / "dcls_and_delays.png").is_file()
