"""What every ``dclszoo`` command shares: the error type, optional-dependency checks, printing, example inputs.

Nothing heavy is imported here at module level: each command imports its zoo (timm, transformers, matplotlib,
scikit-learn, accelerate) when it runs, through :func:`require`, which turns a missing package into a
:class:`CliError` naming the ``pip install`` command.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

__all__ = ["CliError", "require", "EXTRAS", "info", "warn", "format_table", "example_input", "count_params",
           "dclszoo_modules", "model_output"]

EXTRAS = {
    "timm": "timm",
    "transformers": "audio",
    "accelerate": "finetune",
    "sklearn": "finetune",
    "tqdm": "finetune",
    "matplotlib": "plot",
    "spikingjelly": "snn",
    "nir": "nir",
}
"""Import name -> the dclszoo extra that installs it."""


class CliError(Exception):
    """A failure the command explains in one message (exit code 1, no traceback)."""


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`CliError` naming the extra that provides it.

    Args:
        module: Import name (``"matplotlib"``, ``"sklearn"`` ...).
        what: What needs it, for the message (``"dclszoo inspect's plots"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0])
        fix = f'pip install "dclszoo[{extra}]"' if extra else f"pip install {module.split('.')[0]}"
        raise CliError(f"{what} needs {module.split('.')[0]}, which is not installed ({exc}). Install it with: "
                       f"{fix}") from None


def info(*parts: Any) -> None:
    """A line of progress for the user (stdout, flushed: the tests and pipes see it in order)."""
    print(*parts, flush=True)


def warn(message: str) -> None:
    print(f"dclszoo: warning: {message}", file=sys.stderr, flush=True)


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table, columns left-aligned (numbers right-aligned)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%"))
    except ValueError:
        return text in ("-", "")
    return True


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def example_input(model, image_size: int = 64):
    """A small random input for ``model``, or None when its input format is unknown.

    Image models (a first ``Conv2d``): ``[1, C, image_size, image_size]``. transformers audio models taking
    ``input_values``: one second of 16 kHz audio ``[1, 16000]``. Returns ``(args, kwargs)``.
    """
    import torch
    import torch.nn as nn

    main_input = getattr(model, "main_input_name", None)
    if main_input == "input_values":
        return (), {"input_values": torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))}
    if main_input is not None and main_input != "pixel_values":
        return None
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or getattr(m, "_ndim", None) == 2:
            c = m.in_channels
            return (torch.randn(1, c, image_size, image_size, generator=torch.Generator().manual_seed(0)),), {}
        if isinstance(m, (nn.Conv1d, nn.Conv3d, nn.Linear)):
            return None
    return None


def dclszoo_modules(model) -> tuple[list, list]:
    """``([(fqn, DclsConvNd)], [(fqn, delay synapse)])`` of ``model``."""
    from .modules import DclsConvNd
    from .modules._delay_base import DelayedSynapse

    named = list(model.named_modules())
    return ([(f, m) for f, m in named if isinstance(m, DclsConvNd)],
            [(f, m) for f, m in named if isinstance(m, DelayedSynapse)])


def model_output(model, sample):
    """``model``'s main output on ``sample = (args, kwargs)`` without gradients: ``.logits`` of a transformers
    output, the first element of a tuple, else the output itself."""
    import torch

    with torch.no_grad():
        y = model(*sample[0], **sample[1])
    y = getattr(y, "logits", y)
    return y[0] if isinstance(y, (tuple, list)) else y
