"""The one backend resolver (``dclszoo.kernels.backend``): parsing ``DCLSZOO_BACKEND``, strict explicit requests,
falling back automatically, and the reasons it gives."""

from __future__ import annotations

import pytest
import torch

from dclszoo.functional import dcls_kernel
from dclszoo.kernels import backend as kb
from dclszoo.kernels import construct, delay, dwconv


def test_unset_and_auto_choose_automatically(monkeypatch):
    monkeypatch.delenv(kb.ENV, raising=False)
    assert kb.requested("construct") is None
    monkeypatch.setenv(kb.ENV, "auto")
    assert kb.requested("delay") is None
    assert kb.resolve("dwconv", (("triton", lambda auto: "no"),)) == "torch"


def test_one_name_applies_to_ops_that_have_it(monkeypatch):
    monkeypatch.setenv(kb.ENV, "numba")
    assert kb.requested("construct") == "numba"
    assert kb.requested("delay") == "numba"
    assert kb.requested("dwconv") is None  # no numba convolution: automatic
    monkeypatch.setenv(kb.ENV, "c")
    assert kb.requested("delay") is None and kb.requested("construct") == "c"


def test_pairs_per_op(monkeypatch):
    monkeypatch.setenv(kb.ENV, "construct=numba, delay=torch")
    assert kb.requested("construct") == "numba"
    assert kb.requested("delay") == "torch"
    assert kb.requested("dwconv") is None


@pytest.mark.parametrize("value, match", [
    ("cuda", "not one of the backends"),
    ("dwconv=numba", "not op=backend"),
    ("conv=triton", "not op=backend"),
    ("construct", "not one of the backends"),
])
def test_bad_values_name_the_value_and_the_choices(value, match, monkeypatch):
    monkeypatch.setenv(kb.ENV, value)
    with pytest.raises(ValueError, match=match) as info:
        kb.requested("construct")
    assert repr(value.strip().lower()) in str(info.value) or value.split(",")[0] in str(info.value)


def test_bad_argument():
    with pytest.raises(ValueError, match="not one of the dwconv op's backends"):
        kb.requested("dwconv", "numba")
    assert kb.requested("dwconv", "AUTO") is None
    assert kb.for_op("dwconv", "numba") is None and kb.for_op("construct", "numba") == "numba"


def test_explicit_request_that_cannot_run_raises_with_reason():
    checks = (("triton", lambda auto: "not installed: pip install triton"), ("numba", lambda auto: "x is float64"))
    with pytest.raises(ImportError, match="pip install triton"):
        kb.resolve("delay", checks, "triton")
    with pytest.raises(ValueError, match="float64.*numba, torch or auto|float64"):
        kb.resolve("delay", checks, "numba")
    assert kb.resolve("delay", checks, None) == "torch"  # automatic: falls back


def test_automatic_choice_never_sends_cpu_tensors_to_triton():
    t = torch.zeros(3)
    assert kb.triton_runs_on(t, auto=True) is not None
    w, p = torch.zeros(2, 3, 1), torch.zeros(1, 2, 3, 1)
    assert construct.select_backend(w, p, None, (3,)) != "triton"
    assert delay._select_backend(torch.zeros(3, 2, 4), None) != "triton"
    assert dwconv.select_backend(torch.zeros(1, 2, 5, 5), (2, 1, 3, 3), 2, (1, 1), (1, 1)) == "torch"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    why = kb.triton_runs_on(torch.zeros(3))
    assert why is not None and "TRITON_INTERPRET=1" in why
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dcls_kernel(torch.zeros(2, 3, 1), torch.zeros(1, 2, 3, 1), None, (3,), "bilinear", backend="triton")


def test_triton_without_triton_is_an_import_error(monkeypatch):
    monkeypatch.setattr(kb, "_TRITON_INSTALLED", False)
    with pytest.raises(ImportError, match="pip install 'dclszoo\\[triton\\]'"):
        construct.select_backend(torch.zeros(2, 3, 1), torch.zeros(1, 2, 3, 1), None, (3,), backend="triton")


def test_cases_the_triton_kernels_do_not_cover(triton_device):
    w, p = torch.zeros(2, 3, 1, device=triton_device), torch.zeros(3, 2, 3, 1, device=triton_device)
    with pytest.raises(ValueError, match="1-D and 2-D"):
        construct.select_backend(w, p, None, (3, 3, 3), backend="triton")
    x = torch.zeros(1, 4, 8, 8, device=triton_device)
    for kwargs, match in (
        (dict(kernel_shape=(4, 1, 3, 3), groups=4, stride=(2, 2), dilation=(1, 1)), "stride"),
        (dict(kernel_shape=(4, 2, 3, 3), groups=2, stride=(1, 1), dilation=(1, 1)), "not depthwise"),
        (dict(kernel_shape=(4, 1, 3, 3), groups=4, stride=(1, 1), dilation=(1, 1), padding_mode="reflect"), "zeros"),
    ):
        with pytest.raises(ValueError, match=match):
            dwconv.select_backend(x, backend="triton", **kwargs)
    with pytest.raises(ValueError, match="float64"):
        dwconv.select_backend(x.double(), (4, 1, 3, 3), 4, (1, 1), (1, 1), backend="triton")


def test_import_dclszoo_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, dclszoo, dclszoo.functional, dclszoo.kernels.dwconv; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
