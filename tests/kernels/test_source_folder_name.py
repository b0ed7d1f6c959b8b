"""Run from the source root, ``import kernels`` must not pick up dclszoo's ``kernels/`` folder in place of the installed
top-level package of that name (Hugging Face's, which transformers imports), nor fail silently."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_kernels_from_the_source_root():
    out = subprocess.run([sys.executable, "-c", "import kernels; print(kernels.__file__)"], cwd=ROOT,
                         capture_output=True, text=True)
    installed = importlib.util.find_spec("kernels") is not None and not str(
        Path(importlib.util.find_spec("kernels").origin).resolve()).startswith(str(ROOT / "kernels"))
    if installed:
        assert out.returncode == 0, out.stderr
        assert not Path(out.stdout.strip()).resolve().is_relative_to(ROOT / "kernels"), out.stdout
    else:
        assert out.returncode != 0 and "dclszoo.kernels" in out.stderr, out.stderr


def test_dclszoo_kernels_is_still_ours():
    out = subprocess.run([sys.executable, "-c", "import dclszoo.kernels as k; print(k.__file__)"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).resolve() == (ROOT / "kernels" / "__init__.py").resolve()
