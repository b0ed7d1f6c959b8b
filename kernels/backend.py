"""The one place where every op picks its backend: ``triton``, ``c``, ``numba`` or ``torch``.

Ops and the backends they have (preference order of the automatic choice):

============  ==================================  =====================================================
op            backends                            automatic choice
============  ==================================  =====================================================
construct     triton, c, numba, torch             triton for CUDA tensors; on CPU c (AVX-512 build) or
              (the dense DCLS kernel)             numba for float32 1-D/2-D; torch for everything else
dwconv        triton, torch                       triton for CUDA depthwise, stride 1, zero padding;
              (depthwise conv with that kernel)   torch (``F.conv``, cuDNN on GPU) for everything else
delay         triton, numba, torch                triton for CUDA tensors, numba for float32 CPU
              (sparse synaptic delays)            tensors, torch for everything else
============  ==================================  =====================================================

The request comes from the op's ``backend=`` argument, else from the environment variable ``DCLSZOO_BACKEND``:

- ``auto`` (or unset): the automatic choice above; it never raises, it falls back.
- one name, e.g. ``DCLSZOO_BACKEND=triton``: every op that has that backend uses it (``c`` and ``numba`` name
  CPU kernels that only some ops have; the others choose automatically).
- ``op=name`` pairs, e.g. ``DCLSZOO_BACKEND=construct=numba,delay=torch``: per op; the op must have that backend.

An explicitly requested backend that cannot run for the given tensors raises, and the message says why (not
installed, not built, wrong device or dtype, a case the kernels do not cover) and what to set instead.

Triton on CPU tensors: with ``TRITON_INTERPRET=1`` set **before** the first Triton kernel is used, Triton runs
the same kernels on CPU tensors through its interpreter (slow; for tests and users without a GPU). The
automatic choice never takes Triton for CPU tensors.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Callable, Iterable

__all__ = ["ENV", "BACKENDS", "OPS", "for_op", "requested", "resolve", "triton_available", "triton_runs_on"]

ENV = "DCLSZOO_BACKEND"
BACKENDS = ("triton", "c", "numba", "torch")
OPS = {
    "construct": ("triton", "c", "numba", "torch"),
    "dwconv": ("triton", "torch"),
    "delay": ("triton", "numba", "torch"),
}

Check = Callable[[bool], "str | None"]
"""``check(auto)`` returns why a backend cannot run (a phrase), or None when it can; ``auto`` is True for the
automatic choice (which is stricter: e.g. it never sends CPU tensors to Triton)."""


@functools.lru_cache(maxsize=8)  # keyed by the variable's value: a change still takes effect
def _parse(value: str) -> tuple[str | None, dict[str, str]]:
    """``DCLSZOO_BACKEND``'s value as (one name for all ops, {op: name})."""
    value = value.strip().lower()
    if not value:
        return None, {}
    if "=" not in value:
        if value != "auto" and value not in BACKENDS:
            raise ValueError(
                f"{ENV}={value!r} is not one of the backends: expected auto or one of {', '.join(BACKENDS)}, or op=name "
                f"pairs such as construct=numba,delay=torch (ops: {', '.join(OPS)})."
            )
        return value, {}
    pairs = {}
    for item in value.split(","):
        op, sep, name = (s.strip() for s in item.partition("="))
        if not sep or op not in OPS or (name != "auto" and name not in OPS[op]):
            raise ValueError(
                f"{ENV}={value!r}: {item.strip()!r} is not op=backend with op in {tuple(OPS)} and a backend that op "
                f"has ({_op_table()})."
            )
        pairs[op] = name
    return None, pairs


def _op_table() -> str:
    return "; ".join(o + ": " + ", ".join(b) for o, b in OPS.items())


def requested(op: str, backend: str | None = None) -> str | None:
    """The backend explicitly requested for ``op`` (argument first, then ``$DCLSZOO_BACKEND``), None for auto.

    Raises:
        ValueError: If the argument or the variable names no backend, or names one that ``op`` does not have.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}: expected one of {tuple(OPS)}.")
    if backend is not None:
        name = str(backend).strip().lower()
        if name == "auto":
            return None
        if name not in OPS[op]:
            raise ValueError(
                f"backend={backend!r} is not one of the {op} op's backends: {', '.join(OPS[op])} (or 'auto')."
            )
        return name
    common, pairs = _parse(os.environ.get(ENV, ""))
    name = pairs.get(op, common)
    if name is None or name == "auto":
        return None
    if name not in OPS[op]:  # a single name that this op does not have: choose automatically
        return None
    return name


def for_op(op: str, backend: str | None) -> str | None:
    """A per-call request given to a function that runs several ops, as ``op`` sees it: the name if ``op`` has
    that backend, else None (automatic), as for a single name in ``$DCLSZOO_BACKEND``."""
    if backend is None:
        return None
    name = str(backend).strip().lower()
    return name if name in OPS[op] else None


def resolve(op: str, checks: Iterable[tuple[str, Check]], backend: str | None = None) -> str:
    """Pick ``op``'s backend: the explicit request if it can run (else raise), or the first that can.

    Args:
        op: One of :data:`OPS`.
        checks: ``(backend, check)`` in the order of preference of the automatic choice; ``torch`` may be left
            out (it always runs and comes last).
        backend: The per-call request (``None``: ``$DCLSZOO_BACKEND``).

    Raises:
        ValueError: If the request names no backend of ``op``, or the requested backend cannot run these
            tensors (the message says why and what to set instead).
        ImportError: If the requested backend is not installed or not built here.
    """
    want = requested(op, backend)
    table = dict(checks)
    if want is None:
        for name, check in table.items():
            if check(True) is None:
                return name
        return "torch"
    if want == "torch":
        return "torch"
    why = table[want](False) if want in table else "it is not offered for these arguments"
    if why is None:
        return want
    others = ", ".join(b for b in OPS[op] if b != want)
    message = (
        f"the {op!r} op cannot use the requested {want!r} backend: {why}. Request another ({others} or auto) with "
        f"the backend= argument or {ENV}."
    )
    if why.startswith("not installed") or why.startswith("not built"):
        raise ImportError(message)
    raise ValueError(message)


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # found without importing it


def triton_available() -> bool:
    """Whether triton is installed (it is imported only when a Triton kernel is first used)."""
    return _TRITON_INSTALLED


def triton_interpreted() -> bool:
    """Whether Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), hence on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``): Triton block sizes."""
    return 1 << max(0, (int(n) - 1).bit_length())


LARGE_GPU_SMS = 132
"""SMs of an H100 / H200: what work splits aim at where there is no GPU to ask (Triton's interpreter), so that the
tests take the same split paths as a large GPU."""


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device) -> int:
    """Programs that keep every SM of ``device`` busy (4 per SM), below which the Triton launchers split work;
    for a CPU tensor (Triton's interpreter) those of a :data:`LARGE_GPU_SMS`-SM GPU."""
    if getattr(device, "type", None) != "cuda":
        return 4 * LARGE_GPU_SMS
    import torch

    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def plain_tensors(*tensors) -> bool:
    """Eager call on ordinary tensors (or None): a custom op's dispatcher can be skipped (not when compiling or
    tracing)."""
    import torch

    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    return all(t is None or type(t) is torch.Tensor for t in tensors)


def triton_runs_on(*tensors, auto: bool = False) -> str | None:
    """Why the Triton kernels cannot take these tensors (None if they can).

    CUDA tensors need triton installed; CPU tensors need ``TRITON_INTERPRET=1`` as well, and the automatic
    choice (``auto=True``) never sends CPU tensors to Triton.
    """
    devices = {t.device.type for t in tensors if t is not None}
    if auto and devices != {"cuda"}:
        return f"the tensors are on {sorted(devices)} (the automatic choice takes Triton for CUDA tensors only)"
    if not triton_available():
        return "not installed: pip install 'dclszoo[triton]' (or triton)"
    if devices - {"cuda", "cpu"}:
        return f"the tensors are on {sorted(devices)} (Triton runs on CUDA, or on CPU in its interpreter)"
    if "cpu" in devices and not triton_interpreted():
        return ("the tensors are on the CPU and TRITON_INTERPRET=1 is not set (set it before the first Triton "
                "kernel is used to run the kernels in Triton's interpreter)")
    return None
