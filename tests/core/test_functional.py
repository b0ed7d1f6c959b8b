"""The lean kernel-construction op ``dclszoo.functional.dcls_kernel`` against its plain-formula twin.

The oracle is ``dclszoo.reference.dcls_kernel_reference``, which materialises the full per-tap grid exactly as
the DCLS formula is written; gradients of the twin come from ordinary autograd through that formula.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dclszoo.functional as fn
from dclszoo.functional import dcls_kernel
from dclszoo.reference import dcls_kernel_reference

INTERPOLATIONS = ("gauss", "bilinear")


def _bounds(span):
    return [(-(s // 2), s - 1 - s // 2) for s in span]


def _taps(o, i, k, span, dtype=torch.float64, seed=0, outside=0.0, sigma_shape="full", grad=True):
    """Random weight / positions (anywhere in the span, optionally ``outside`` beyond it) / sigma."""
    gen = torch.Generator().manual_seed(seed)
    ndim = len(span)
    w = torch.randn(o, i, k, generator=gen, dtype=dtype)
    lo = torch.tensor([b[0] - outside for b in _bounds(span)], dtype=dtype).view(ndim, 1, 1, 1)
    hi = torch.tensor([b[1] + outside for b in _bounds(span)], dtype=dtype).view(ndim, 1, 1, 1)
    p = lo + (hi - lo) * torch.rand(ndim, o, i, k, generator=gen, dtype=dtype)
    full = (ndim, o, i, k)
    shape = {"full": full, "axis": (ndim, 1, 1, 1), "scalar": (), "tap": (1, 1, 1, k), "out": (1, o, 1, 1)}
    s = 0.4 + 1.6 * torch.rand(shape[sigma_shape], generator=gen, dtype=dtype)
    if grad:
        for t in (w, p, s):
            t.requires_grad_(True)
    return w, p, s


def _avoid_integers(p: torch.Tensor, margin: float = 1e-2) -> torch.Tensor:
    """Move positions off integers (bilinear is only piecewise smooth: finite differences need a margin)."""
    with torch.no_grad():
        frac = p - torch.floor(p)
        p.add_(torch.where(frac < margin, margin, 0.0)).sub_(torch.where(frac > 1 - margin, margin, 0.0))
    return p


def _both(w, p, s, span, interpolation, g=None):
    """Kernel and (weight, positions, sigma) gradients of the op and of the twin for the same upstream grad."""
    results = []
    for op in (dcls_kernel, dcls_kernel_reference):
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in (w, p, s)]
        sig = leaves[2] if interpolation == "gauss" else None
        k = op(leaves[0], leaves[1], sig, span, interpolation)
        if g is None:
            g = torch.randn(k.shape, generator=torch.Generator().manual_seed(1), dtype=k.dtype)
        k.backward(g)
        grads = [None if t.grad is None else t.grad for t in leaves]
        results.append((k.detach(), grads))
    return results


def _assert_close(actual, expected, atol, rtol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        err = (actual - expected).abs()
        idx = tuple(int(j) for j in torch.nonzero(err == err.max())[0])
        raise AssertionError(
            f"{what}: max abs error {err.max().item():.3e} at {idx} "
            f"(got {actual[idx].item():.6g}, expected {expected[idx].item():.6g}; atol={atol}, rtol={rtol})"
        )


def _compare(w, p, s, span, interpolation, atol, rtol):
    (k, grads), (k_ref, grads_ref) = _both(w, p, s, span, interpolation)
    _assert_close(k, k_ref, atol, rtol, "kernel")
    names = ("weight", "positions", "sigma") if interpolation == "gauss" else ("weight", "positions")
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert g is not None, f"no gradient for {name}"
        _assert_close(g, g_ref, atol, rtol, f"grad {name}")


# ------------------------------------------------------------------------------------------------ gradcheck
GRADCHECK_CASES = [
    # (O, I/g, kc, span)
    (3, 2, 2, (5,)),
    (2, 3, 3, (4,)),  # even span
    (4, 1, 2, (5, 3)),  # depthwise-like, non-square
    (2, 3, 2, (4, 6)),  # I/g != O, even spans
    (2, 2, 2, (3, 4, 2)),
    (1, 2, 3, (3, 3, 3)),
]


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("o, i, k, span", GRADCHECK_CASES)
def test_gradcheck(o, i, k, span, interpolation):
    w, p, s = _taps(o, i, k, span, seed=o + 10 * len(span))
    if interpolation == "bilinear":
        _avoid_integers(p)
        inputs = (w, p)
        func = lambda w_, p_: dcls_kernel(w_, p_, None, span, "bilinear")  # noqa: E731
    else:
        inputs = (w, p, s)
        func = lambda w_, p_, s_: dcls_kernel(w_, p_, s_, span, "gauss")  # noqa: E731
    assert torch.autograd.gradcheck(func, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("sigma_shape", ["scalar", "axis", "tap", "out"])
def test_gradcheck_broadcast_sigma(sigma_shape):
    span = (5, 4)
    w, p, s = _taps(3, 2, 2, span, sigma_shape=sigma_shape)
    assert torch.autograd.gradcheck(
        lambda w_, p_, s_: dcls_kernel(w_, p_, s_, span, "gauss"), (w, p, s), eps=1e-6, atol=1e-6, rtol=1e-5
    )


# ------------------------------------------------------------------------------------------------ op vs twin
TOLERANCES = [(torch.float32, 2e-5, 1e-4), (torch.float64, 1e-10, 1e-9)]
ODD_SHAPES = [
    (7, 3, 5, (11,)),
    (1, 1, 1, (1,)),
    (5, 1, 13, (9, 7)),
    (6, 5, 3, (6, 13)),
    (3, 2, 4, (5, 6, 7)),
    (2, 3, 1, (1, 5, 2)),
]


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("o, i, k, span", ODD_SHAPES)
def test_matches_twin(o, i, k, span, interpolation, dtype, atol, rtol):
    w, p, s = _taps(o, i, k, span, dtype=dtype, seed=sum(span) + o)
    _compare(w, p, s, span, interpolation, atol, rtol)


@pytest.mark.parametrize("sigma_shape", ["scalar", "axis", "tap", "out", "full"])
def test_sigma_broadcast_shapes(sigma_shape):
    w, p, s = _taps(4, 3, 5, (7, 6), sigma_shape=sigma_shape)
    (_, grads), (_, grads_ref) = _both(w, p, s, (7, 6), "gauss")
    assert grads[2].shape == s.shape
    _compare(w, p, s, (7, 6), "gauss", 1e-10, 1e-9)


def test_python_float_sigma_matches_tensor_sigma():
    w, p, _ = _taps(3, 2, 4, (5, 5), grad=False)
    expected = dcls_kernel_reference(w, p, torch.tensor(0.7, dtype=w.dtype), (5, 5), "gauss")
    _assert_close(dcls_kernel(w, p, 0.7, (5, 5), "gauss"), expected, 1e-12, 1e-10, "kernel")


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("span", [(9,), (7, 5), (4, 5, 3)])
def test_positions_outside_span(span, interpolation):
    """Taps partly or wholly outside the span contribute only their in-span part, as in the formula."""
    w, p, s = _taps(4, 3, 6, span, seed=3, outside=2.5)
    if interpolation == "bilinear":
        _avoid_integers(p)
    _compare(w, p, s, span, interpolation, 1e-10, 1e-9)


def test_bilinear_integer_positions_have_gradient():
    """The floor form gives a non-zero position gradient at integer positions (incl. the span border)."""
    span = (5, 5)
    w = torch.ones(1, 1, 2, dtype=torch.float64)
    p = torch.tensor([[[[0.0, 2.0]]], [[[1.0, -2.0]]]], dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dcls_kernel(w, p, None, span, "bilinear").backward(g)
    p_ref = p.detach().clone().requires_grad_(True)
    dcls_kernel_reference(w, p_ref, None, span, "bilinear").backward(g)
    _assert_close(p.grad, p_ref.grad, 1e-12, 1e-10, "grad positions")
    assert (p.grad.abs() > 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    w, p, s = _taps(4, 3, 5, (7, 7), dtype=torch.float32, grad=False)
    k = dcls_kernel(w.to(dtype), p.to(dtype), s.to(dtype), (7, 7), "gauss")
    assert k.dtype == dtype
    expected = dcls_kernel_reference(w.to(dtype).float(), p.to(dtype).float(), s.to(dtype).float(), (7, 7))
    _assert_close(k.float(), expected, 1e-2, 1e-2, "kernel")


def test_only_some_inputs_require_grad():
    w, p, s = _taps(3, 2, 4, (5, 4))
    w.requires_grad_(False)
    s.requires_grad_(False)
    k = dcls_kernel(w, p, s, (5, 4), "gauss")
    k.sum().backward()
    p_ref = p.detach().clone().requires_grad_(True)
    dcls_kernel_reference(w, p_ref, s, (5, 4), "gauss").sum().backward()
    _assert_close(p.grad, p_ref.grad, 1e-10, 1e-9, "grad positions")
    assert w.grad is None and s.grad is None


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("span", [(9,), (7, 5), (4, 5, 3)])
@pytest.mark.parametrize("sigma_shape", ["full", "axis"])
def test_fused_clamp_and_sigma_floor(span, interpolation, sigma_shape):
    """``position_bounds`` / ``sigma_floor`` equal a straight-through clamp and ``|sigma|`` floor done outside."""
    w, p, s = _taps(4, 3, 5, span, seed=11, outside=2.0, sigma_shape=sigma_shape)
    if interpolation == "bilinear":
        _avoid_integers(p)
    with torch.no_grad():  # negative and below-floor sigmas too
        s.mul_(torch.where(torch.rand(s.shape, generator=torch.Generator().manual_seed(2)) < 0.3, -1.0, 1.0))
        s.view(-1)[:1] = 0.05
    lo = [-(x // 2) + 0.5 for x in span]
    hi = [x - 1 - x // 2 - 0.25 for x in span]
    floor = 0.3
    g = torch.randn((4, 3) + span, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    leaves = [t.detach().clone().requires_grad_(True) for t in (w, p, s)]
    sig = leaves[2] if interpolation == "gauss" else None
    k = dcls_kernel(leaves[0], leaves[1], sig, span, interpolation, position_bounds=(lo, hi), sigma_floor=floor)
    k.backward(g)

    ref = [t.detach().clone().requires_grad_(True) for t in (w, p, s)]
    clamped = torch.stack([ref[1][d].clamp(lo[d], hi[d]) for d in range(len(span))])
    p_eff = ref[1] + (clamped - ref[1]).detach()
    s_eff = ref[2].abs().clamp_min(floor) if interpolation == "gauss" else None
    k_ref = dcls_kernel_reference(ref[0], p_eff, s_eff, span, interpolation)
    k_ref.backward(g)

    _assert_close(k.detach(), k_ref.detach(), 1e-10, 1e-9, "kernel")
    n = 3 if interpolation == "gauss" else 2
    for name, a, b in list(zip(("weight", "positions", "sigma"), leaves, ref))[:n]:
        _assert_close(a.grad, b.grad, 1e-10, 1e-9, f"grad {name}")


def test_bad_fused_arguments():
    w, p, s = _taps(2, 2, 3, (5, 5), grad=False)
    with pytest.raises(ValueError, match="position_bounds"):
        dcls_kernel(w, p, s, (5, 5), position_bounds=([-2.0], [2.0]))
    with pytest.raises(ValueError, match="sigma_floor"):
        dcls_kernel(w, p, s, (5, 5), sigma_floor=-1.0)


# ------------------------------------------------------------------------------------------------ chunking
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("span", [(13,), (6, 7), (3, 4, 5)])
@pytest.mark.parametrize("sigma_shape", ["full", "axis"])
def test_chunking_gives_identical_results(span, interpolation, sigma_shape, monkeypatch):
    monkeypatch.setenv("DCLSZOO_BACKEND", "torch")  # the chunking is the torch path's (float32 -> numba)
    w, p, s = _taps(9, 7, 5, span, dtype=torch.float32, seed=5, sigma_shape=sigma_shape)
    (k1, g1), _ = _both(w, p, s, span, interpolation)
    monkeypatch.setattr(fn, "_MIN_CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(fn, "_MEMORY_ENVELOPE", 0.0)
    monkeypatch.setattr(fn, "_CHUNK_FRACTION", 1e-9)  # one (out, in) row per chunk
    (k2, g2), (k_ref, g_ref) = _both(w, p, s, span, interpolation)
    # Equal up to float rounding: BLAS reductions may order sums differently for different chunk sizes.
    _assert_close(k2, k1, 1e-6, 1e-6, "kernel (chunked)")
    _assert_close(k2, k_ref, 2e-5, 1e-4, "kernel (chunked) vs twin")
    for name, a, b, r in zip(("weight", "positions", "sigma"), g1, g2, g_ref):
        if a is None:
            continue
        _assert_close(b, a, 1e-6, 1e-5, f"grad {name} (chunked)")
        _assert_close(b, r, 2e-5, 1e-4, f"grad {name} (chunked) vs twin")


# ------------------------------------------------------------------------------------------------ properties
@st.composite
def configurations(draw):
    ndim = draw(st.integers(1, 3))
    span = tuple(draw(st.integers(1, 9 if ndim < 3 else 5)) for _ in range(ndim))
    o = draw(st.integers(1, 6))
    i = draw(st.integers(1, 5))
    k = draw(st.integers(1, 7))
    interpolation = draw(st.sampled_from(INTERPOLATIONS))
    sigma_shape = draw(st.sampled_from(["full", "axis", "scalar"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return ndim, span, o, i, k, interpolation, sigma_shape, seed


@settings(max_examples=150, deadline=None)
@given(configurations())
def test_property_op_matches_twin(config):
    ndim, span, o, i, k, interpolation, sigma_shape, seed = config
    w, p, s = _taps(o, i, k, span, seed=seed, sigma_shape=sigma_shape)
    _compare(w, p, s, span, interpolation, 1e-10, 1e-9)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_arguments_are_reported():
    w, p, s = _taps(2, 2, 3, (5, 5), grad=False)
    with pytest.raises(ValueError, match="interpolation"):
        dcls_kernel(w, p, s, (5, 5), "cubic")
    with pytest.raises(ValueError, match="positions"):
        dcls_kernel(w, p[:1], s, (5, 5), "gauss")
    with pytest.raises(ValueError, match="span"):
        dcls_kernel(w, p, s, (5,), "gauss")
    with pytest.raises(ValueError, match="span"):
        dcls_kernel(w, p, s, (0, 5), "gauss")
    with pytest.raises(ValueError, match="sigma"):
        dcls_kernel(w, p, None, (5, 5), "gauss")
    with pytest.raises(ValueError, match="weight"):
        dcls_kernel(w[0], p, s, (5, 5), "gauss")


def test_hand_computed_1d_case():
    """Sanity of the oracle itself on a hand-computed 1-D case (two taps, unit sigma)."""
    w = torch.tensor([[[2.0, -1.0]]], dtype=torch.float64)
    p = torch.tensor([[[[0.0, 1.5]]]], dtype=torch.float64)
    x = torch.arange(5, dtype=torch.float64) - 2
    expected = torch.zeros(5, dtype=torch.float64)
    for wk, pk in ((2.0, 0.0), (-1.0, 1.5)):
        phi = torch.exp(-0.5 * (x - pk) ** 2)
        expected += wk * phi / (phi.sum() + 1e-7)
    _assert_close(dcls_kernel_reference(w, p, 1.0, (5,), "gauss")[0, 0], expected, 1e-14, 1e-12, "oracle")
    _assert_close(dcls_kernel(w, p, 1.0, (5,), "gauss")[0, 0], expected, 1e-14, 1e-12, "op")
    assert math.isclose(float(expected.sum()), 1.0, rel_tol=1e-6)
