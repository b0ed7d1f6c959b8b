"""Helpers of the command-line tests: run ``dclszoo`` in a subprocess, hide packages, shared checkpoints.

Every test drives the CLI in a child process (the console script, or ``dclszoo.cli.main`` called by a small
driver for batches of quick calls: one interpreter start instead of one per call). Children run in a temporary
working directory and inherit the session's environment (the offline local Hub of ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT = 300


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def console_script() -> str:
    """The installed ``dclszoo`` console script (next to this interpreter, else on PATH)."""
    here = Path(sys.executable).parent / ("dclszoo.exe" if os.name == "nt" else "dclszoo")
    found = str(here) if here.exists() else shutil.which("dclszoo")
    if found is None:
        pytest.fail("the `dclszoo` console script is not installed; run `pip install -e .` (pyproject "
                    "[project.scripts]) and run the tests again.")
    return found


def _env(hide: tuple[str, ...], tmp: Path, extra: dict | None) -> dict:
    env = dict(os.environ)
    env.pop("DCLSZOO_FINETUNE_MAX_STEPS", None)
    env.pop("DCLSZOO_TRACEBACK", None)
    if hide:
        shadow = tmp / ("hidden-" + "-".join(hide))
        for name in hide:
            pkg = shadow / name
            pkg.mkdir(parents=True, exist_ok=True)
            message = f"No module named {name!r} (hidden by the dclszoo CLI tests)"
            (pkg / "__init__.py").write_text(f"raise ImportError({message!r})\n")
        env["PYTHONPATH"] = os.pathsep.join([str(shadow)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra or {})
    return env


def run_cli(*args: str, cwd: Path, hide: tuple[str, ...] = (), env: dict | None = None) -> Result:
    """``dclszoo ARGS`` (the console script) in ``cwd``; ``hide`` makes those packages fail to import."""
    proc = subprocess.run([console_script(), *args], cwd=cwd, env=_env(hide, cwd, env), capture_output=True,
                          text=True, timeout=TIMEOUT)
    return Result(proc.returncode, proc.stdout, proc.stderr)


_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from dclszoo.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
        results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
    heavy = sorted(m for m in ("timm", "transformers", "accelerate", "sklearn", "matplotlib", "spikingjelly", "nir")
                   if m in sys.modules)
    print("@@RESULTS@@" + json.dumps({"results": results, "heavy": heavy}))
""")


def run_many(argvs: list[list[str]], cwd: Path, hide: tuple[str, ...] = (), env: dict | None = None):
    """Run ``dclszoo.cli.main(argv)`` for each argv in ONE child process; returns ``(results, heavy_modules)``."""
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(argvs)], cwd=cwd, env=_env(hide, cwd, env),
                          capture_output=True, text=True, timeout=TIMEOUT)
    marker = "@@RESULTS@@"
    if proc.returncode != 0 or marker not in proc.stdout:
        raise AssertionError(f"driver failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.split(marker, 1)[1])
    return [Result(**r) for r in data["results"]], data["heavy"]


@pytest.fixture(scope="session")
def cli_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="session")
def dcls_checkpoint(cli_workdir) -> Path:
    """``dclszoo convert test_convnext`` (timm's smallest ConvNeXt): a DCLS checkpoint directory."""
    res = run_cli("convert", "test_convnext", "--out", "convnext-dcls", "--span", "9", "--num-classes", "5",
                  cwd=cli_workdir)
    assert res.rc == 0, res.text
    return cli_workdir / "convnext-dcls"


@pytest.fixture(scope="session")
def delays_checkpoint(cli_workdir) -> tuple[Path, Result]:
    """``dclszoo finetune --recipe delays`` cut to a few steps: a checkpoint with a delay layer."""
    res = run_cli("finetune", "--recipe", "delays", "--max-steps", "3", "--out", "delays", "--no-progress",
                  cwd=cli_workdir)
    assert res.rc == 0, res.text
    return cli_workdir / "delays" / "model", res
