"""Fixtures of the training tests: accelerate's process-wide state reset around each test, the example on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps one AcceleratorState / GradientState per process: start and leave each test clean."""
    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    def reset():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    yield reset
    reset()


@pytest.fixture
def example(monkeypatch):
    """The example script ``examples/finetune_accelerate.py`` as a module."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import finetune_accelerate

    yield finetune_accelerate
    sys.modules.pop("finetune_accelerate", None)
