"""Test-session setup: an offline Hugging Face Hub on 127.0.0.1 and a private HF cache.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_TOKEN`` once, when it is first imported (timm
and transformers import it), so they are set here at module level, before any test module is imported. The
server is bound at import time (port 0) so the endpoint is known; the ``local_hub`` fixture hands it to tests.
Nothing in the test suite can reach any address other than this server.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import LocalHub, start_local_hub  # noqa: E402

if "huggingface_hub" in sys.modules:  # pragma: no cover - would make every Hub test hit the wrong endpoint
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py could point it at the local test Hub; "
        "remove the pytest plugin or import that loads it early."
    )

_HUB = start_local_hub()
_HOME = Path(tempfile.mkdtemp(prefix="dclszoo-hf-home-"))
os.environ.update(
    {
        "HF_ENDPOINT": _HUB.url,
        "HF_HOME": str(_HOME / "hf"),
        "HF_TOKEN": "hf_dclszoo_local_test_token",
        "TORCH_HOME": str(_HOME / "torch"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_XET": "1",
        "DO_NOT_TRACK": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
)
# Triton kernels run in Triton's interpreter on CPU tensors where there is no GPU (CI): the variable is read when a
# kernel is defined (first use of a dclszoo.kernels._*_triton module), so it is set before any test runs.
try:
    import torch as _torch

    _HAS_CUDA = _torch.cuda.is_available()
except Exception:  # noqa: BLE001 - no torch: the suite fails on its own
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def local_hub() -> LocalHub:
    """The session's local Hub (``.url``, ``.repos``, ``.requests``, ``.reset()``)."""
    return _HUB


@pytest.fixture(scope="session")
def triton_device() -> str:
    """Where the Triton kernel tests run: the GPU when there is one, else the CPU (Triton's interpreter)."""
    import triton  # noqa: F401  (the 'all' extra installs it: a missing triton fails these tests, it does not skip)
    return "cuda" if _HAS_CUDA else "cpu"


@pytest.fixture(scope="session")
def hf_home() -> Path:
    """The temporary ``HF_HOME`` of this session (the HF cache lives under ``hf_home / 'hub'``)."""
    return _HOME / "hf"


def pytest_sessionfinish(session, exitstatus) -> None:
    _HUB.close()
    shutil.rmtree(_HOME, ignore_errors=True)
