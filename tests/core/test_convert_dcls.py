"""Parity of ``dclszoo.convert.from_dcls`` with the reference ``dcls`` 0.1.1 package (the oracle).

Every test runs the real reference layer and the converted dclszoo module on the same input and compares
outputs and gradients. The axis table below is what the reference source computes (``ConstructKernel{1,2,3}d``):
its ``P[j]`` moves along spatial axis ``_AXES[version][ndim][j]``; the gradient tests fail if it is wrong.
"""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
import torch.nn as nn

from dclszoo import DclsConv1d, DclsConv2d, DclsConv3d
from dclszoo.convert import from_dcls

dcls_modules = pytest.importorskip("DCLS.construct.modules", reason="the test extra installs dcls==0.1.1")

_REVERSED = {1: (0,), 2: (1, 0), 3: (2, 1, 0)}
_AXES = {"gauss": _REVERSED, "v1": _REVERSED, "v0": {1: (0,), 2: (0, 1), 3: (0, 2, 1)}}
_OURS = {1: DclsConv1d, 2: DclsConv2d, 3: DclsConv3d}

CASES = [  # (span, version, groups)
    ((5,), "gauss", 1),
    ((4,), "v1", 2),
    ((6,), "v0", 1),
    ((5, 5), "gauss", 1),
    ((4, 4), "gauss", 2),
    ((3, 6), "gauss", 1),
    ((6, 3), "v1", 2),
    ((5, 5), "v1", 1),
    ((3, 6), "v0", 2),
    ((3, 4, 5), "gauss", 1),
    ((4, 3, 3), "v1", 2),
    ((3, 4, 5), "v0", 1),
]


@pytest.fixture(autouse=True)
def _quiet_reference():
    """The reference logs a warning flood at construction; silence it for these tests only."""
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def make_reference(span, version, groups, *, in_c=4, out_c=6, kc=3, padding=1, stride=1, padding_mode="zeros"):
    cls = (dcls_modules.Dcls1d, dcls_modules.Dcls2d, dcls_modules.Dcls3d)[len(span) - 1]
    extra = {"use_implicit_gemm": False} if len(span) == 2 else {}
    return cls(
        in_c, out_c, kc, stride=stride, padding=padding, dilated_kernel_size=span, groups=groups,
        padding_mode=padding_mode, version=version, **extra,
    )


def randomise(ref, span, *, inside_both: bool, seed: int) -> None:
    """Random P (and SIG). ``inside_both``: every tap also inside the span grid along the axis it moves on."""
    g = torch.Generator().manual_seed(seed)
    axes = _AXES[ref.version][len(span)]
    with torch.no_grad():
        ref.weight.copy_(torch.randn(ref.weight.shape, generator=g))
        for j, a in enumerate(axes):
            lo, hi = -(span[j] // 2), span[j] // 2  # the reference's own clamp
            if inside_both:
                hi = min(hi, span[a] - 1 - span[j] // 2)
            ref.P[j].copy_(lo + (hi - lo) * torch.rand(ref.P[j].shape, generator=g))
        if ref.SIG is not None:
            ref.SIG.copy_(torch.rand(ref.SIG.shape, generator=g) * 1.6 - 0.6)  # both signs
        if ref.bias is not None:
            ref.bias.copy_(torch.randn(ref.bias.shape, generator=g))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_both(ref, ours, span, seed=0):
    x = torch.randn((2, ref.in_channels) + tuple(s + 5 for s in span), generator=torch.Generator().manual_seed(seed))
    return ref(x), ours(x), x


@pytest.mark.parametrize("span,version,groups", CASES)
@pytest.mark.parametrize("positions", ["init", "random"])
def test_output_parity(span, version, groups, positions):
    torch.manual_seed(3)
    ref = make_reference(span, version, groups)
    if positions == "random":  # anywhere the reference's clamp allows, including off our grid
        randomise(ref, span, inside_both=False, seed=7)
    ours = from_dcls(ref)
    assert isinstance(ours, _OURS[len(span)])
    assert ours.span == span and ours.groups == groups and ours.in_channels == ref.in_channels
    y_ref, y, _ = run_both(ref, ours, span)
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= 1e-5


@pytest.mark.parametrize("span,version,groups", CASES)
def test_gradient_parity(span, version, groups):
    ref = make_reference(span, version, groups)
    randomise(ref, span, inside_both=True, seed=11)
    ours = from_dcls(ref)
    y_ref, y, _ = run_both(ref, ours, span)
    x = torch.randn((2, ref.in_channels) + tuple(s + 5 for s in span), generator=torch.Generator().manual_seed(0))
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    ref(x_ref).backward(g)
    ours(x_ours).backward(g)
    assert rel_err(x_ours.grad, x_ref.grad) <= 1e-5
    assert rel_err(ours.weight.grad, ref.weight.grad) <= 1e-5
    assert rel_err(ours.bias.grad, ref.bias.grad) <= 1e-5
    for j, a in enumerate(_AXES[version][len(span)]):
        assert rel_err(ours.positions.grad[a], ref.P.grad[j]) <= 1e-4, f"position axis {j} -> {a}"
        if version == "gauss":  # effective std = |SIG| + 0.27, ours = sigma itself
            expected = ref.SIG.grad[j]
            assert rel_err(torch.sign(ref.SIG[j]) * ours.sigma.grad[a], expected) <= 1e-4


@pytest.mark.parametrize("span,version,groups", [((3, 6), "gauss", 2), ((6,), "v1", 1), ((3, 4, 5), "v0", 1)])
def test_state_dict_source(span, version, groups):
    ref = make_reference(span, version, groups, padding=(2,) * len(span), stride=2)
    randomise(ref, span, inside_both=False, seed=5)
    ours = from_dcls(
        {k: v.clone() for k, v in ref.state_dict().items()}, span=span, version=version, groups=groups,
        padding=2, stride=2,
    )
    y_ref, y, _ = run_both(ref, ours, span)
    assert rel_err(y, y_ref) <= 1e-5


def test_state_dict_gauss_version_inferred_from_sig():
    ref = make_reference((5, 5), "gauss", 1)
    randomise(ref, (5, 5), inside_both=False, seed=2)
    ours = from_dcls(ref.state_dict(), span=5, padding=1)
    assert ours.interpolation == "gauss"
    y_ref, y, _ = run_both(ref, ours, (5, 5))
    assert rel_err(y, y_ref) <= 1e-5


@pytest.mark.parametrize("padding_mode", ["reflect", "circular"])
def test_padding_mode_and_stride(padding_mode):
    ref = make_reference((5, 3), "gauss", 1, padding=(2, 1), stride=(2, 1), padding_mode=padding_mode)
    randomise(ref, (5, 3), inside_both=False, seed=4)
    ours = from_dcls(ref)
    y_ref, y, _ = run_both(ref, ours, (5, 3))
    assert rel_err(y, y_ref) <= 1e-5


def test_widened_bounds_survive_training_step_and_deepcopy():
    """Non-square gauss: taps off our grid stay where the reference put them (no silent clamp)."""
    ref = make_reference((3, 6), "gauss", 1)
    randomise(ref, (3, 6), inside_both=False, seed=9)
    ours = from_dcls(ref)
    lo, hi = ours.position_bounds
    assert hi[0] > 1.0  # P[1] reaches rows 0..5 of a 3-row grid: ours must allow it
    before = ours.positions.detach().clone()
    torch.optim.SGD(ours.parameters(), lr=0.0).step()  # fires the global clamp post-hook
    torch.testing.assert_close(ours.positions.detach(), before, rtol=0, atol=0)
    twin = copy.deepcopy(ours)
    y_ref, y, _ = run_both(ref, twin, (3, 6))
    assert rel_err(y, y_ref) <= 1e-5


def test_non_finite_reference_rejected():
    ref = make_reference((5,), "gauss", 1)
    with torch.no_grad():
        ref.P[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        from_dcls(ref)


def test_bad_sources_and_hyper_parameters():
    ref = make_reference((5, 5), "v1", 1)
    sd = ref.state_dict()
    with pytest.raises(ValueError, match="span=None"):
        from_dcls(sd, version="v1")
    with pytest.raises(ValueError, match="version=None"):
        from_dcls(sd, span=5)
    with pytest.raises(ValueError, match="state_dict keys"):
        from_dcls({"layer.weight": sd["weight"], "layer.P": sd["P"]}, span=5, version="v1")
    with pytest.raises(TypeError, match="span"):
        from_dcls(sd, span=(5, 5, 5), version="v1")
    with pytest.raises(ValueError, match="groups"):
        from_dcls(ref, groups=2)
    with pytest.raises(TypeError, match="Dcls1d, Dcls2d or Dcls3d"):
        from_dcls(nn.Conv2d(2, 2, 3))
    maxed = make_reference((5,), "max", 1)
    with pytest.raises(ValueError, match="'max'"):
        from_dcls(maxed)
    with pytest.raises(ValueError, match="SIG"):
        from_dcls({"weight": sd["weight"], "P": sd["P"]}, span=5, version="gauss")
