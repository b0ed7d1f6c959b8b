"""Sparse delay op: numba fast path and pure-torch twin vs a naive per-synapse loop (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from dclszoo.kernels import delay as delay_mod
from dclszoo.kernels.delay import sparse_delay, sparse_delay_reference

BACKENDS = ["torch"] + (["numba"] if delay_mod.numba_available() else [])


def naive_delay(x, coeff, offsets):
    """One synapse tap at a time, straight from the formula (autograd gives the gradients)."""
    steps = x.shape[0]
    n_out, n_in, n_taps = coeff.shape
    cols = []
    for o in range(n_out):
        acc = torch.zeros(x.shape[:2], dtype=x.dtype)
        for i in range(n_in):
            for j in range(n_taps):
                d = int(offsets[o, i, j])
                if d < steps:
                    shifted = torch.cat([torch.zeros(d, x.shape[1], dtype=x.dtype), x[: steps - d, :, i]])
                    acc = acc + coeff[o, i, j] * shifted
        cols.append(acc)
    return torch.stack(cols, dim=-1)


def _run(fn, x, coeff, offsets, grad_y):
    x = x.detach().requires_grad_(True)
    coeff = coeff.detach().requires_grad_(True)
    y = fn(x, coeff, offsets)
    gx, gc = torch.autograd.grad(y, (x, coeff), grad_y)
    return y.detach(), gx, gc


def _assert_close(got, want, what):
    for name, a, b in zip(("y", "grad_x", "grad_coeff"), got, want):
        assert a.shape == b.shape, f"{what} {name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        err = (a - b).abs()
        tol = 1e-5 + 1e-5 * b.abs()
        if not bool((err <= tol).all()):
            idx = tuple(int(v) for v in (err - tol).flatten().argmax().unravel_index(err.shape))
            pytest.fail(f"{what} {name}: max abs err {err.max().item():.3g} at {idx}: got {a[idx]}, want {b[idx]}")


def _case(steps, batch, n_in, n_out, n_taps, max_off, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, n_in, generator=g)
    coeff = torch.randn(n_out, n_in, n_taps, generator=g)
    offsets = torch.randint(0, max_off + 1, (n_out, n_in, n_taps), generator=g)
    grad_y = torch.randn(steps, batch, n_out, generator=g)
    return x, coeff, offsets, grad_y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "steps,batch,n_in,n_out,n_taps,max_off",
    [
        (7, 3, 5, 4, 1, 9),  # J = 1, some offsets >= T
        (11, 2, 13, 9, 3, 6),  # J = 3, odd sizes, more outputs than one block
        (5, 1, 3, 17, 2, 4),  # batch 1
        (1, 4, 6, 3, 3, 2),  # a single time step
    ],
)
def test_matches_naive_loop(backend, steps, batch, n_in, n_out, n_taps, max_off):
    x, coeff, offsets, grad_y = _case(steps, batch, n_in, n_out, n_taps, max_off, seed=steps * 31 + n_out)
    want = _run(naive_delay, x, coeff, offsets, grad_y)
    got = _run(lambda *a: sparse_delay(*a, backend=backend), x, coeff, offsets, grad_y)
    _assert_close(got, want, f"backend={backend}")


def test_twin_matches_naive_loop():
    x, coeff, offsets, grad_y = _case(9, 3, 7, 5, 3, 12, seed=3)
    _assert_close(_run(sparse_delay_reference, x, coeff, offsets, grad_y), _run(naive_delay, x, coeff, offsets, grad_y), "twin")


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_offsets_is_a_linear_layer(backend):
    x, coeff, _, grad_y = _case(6, 4, 8, 5, 1, 0, seed=1)
    offsets = torch.zeros(coeff.shape, dtype=torch.long)
    want = torch.nn.functional.linear(x, coeff[..., 0])
    got = sparse_delay(x, coeff, offsets, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_offsets_beyond_sequence_contribute_nothing(backend):
    x, coeff, _, grad_y = _case(5, 2, 4, 3, 2, 0, seed=2)
    offsets = torch.full(coeff.shape, 5, dtype=torch.long)
    offsets[0, 0, 0] = 100
    xr, cr = x.clone().requires_grad_(True), coeff.clone().requires_grad_(True)
    y = sparse_delay(xr, cr, offsets, backend=backend)
    assert torch.equal(y, torch.zeros_like(y))
    gx, gc = torch.autograd.grad(y, (xr, cr), grad_y)
    assert torch.equal(gx, torch.zeros_like(gx)) and torch.equal(gc, torch.zeros_like(gc))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    x, coeff, offsets, grad_y = _case(8, 3, 6, 5, 2, 7, seed=4)
    x_nc = x.transpose(0, 1).contiguous().transpose(0, 1)  # [T, B, I] view with batch-major strides
    coeff_nc = coeff.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    offsets_nc = offsets.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not (x_nc.is_contiguous() or coeff_nc.is_contiguous() or offsets_nc.is_contiguous())
    got = _run(lambda *a: sparse_delay(*a, backend=backend), x_nc, coeff_nc, offsets_nc, grad_y)
    _assert_close(got, _run(naive_delay, x, coeff, offsets, grad_y), f"backend={backend} non-contiguous")


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_of_coeff_only(backend):
    x, coeff, offsets, grad_y = _case(6, 2, 5, 4, 2, 5, seed=5)
    c1, c2 = coeff.clone().requires_grad_(True), coeff.clone().requires_grad_(True)
    (gc,) = torch.autograd.grad(sparse_delay(x, c1, offsets, backend=backend), (c1,), grad_y)
    (want,) = torch.autograd.grad(naive_delay(x, c2, offsets), (c2,), grad_y)
    torch.testing.assert_close(gc, want, atol=1e-5, rtol=1e-5)


def test_automatic_choice_keeps_float64_exact():
    x, coeff, offsets, grad_y = _case(6, 2, 5, 4, 2, 5, seed=6)
    x, coeff = x.double(), coeff.double()
    got = _run(sparse_delay, x, coeff, offsets, grad_y.double())
    want = _run(naive_delay, x, coeff, offsets, grad_y.double())
    for a, b in zip(got, want):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "x_shape,c_shape,off,match,exc",
    [
        ((4, 2), (3, 5, 1), None, "time-major", ValueError),
        ((4, 2, 5), (3, 5), None, r"\[O, I, J\]", ValueError),
        ((4, 2, 5), (3, 6, 1), None, "input channels", ValueError),
        ((4, 2, 5), (3, 5, 1), torch.zeros(3, 5, 2, dtype=torch.long), "shape of coeff", ValueError),
        ((4, 2, 5), (3, 5, 1), -torch.ones(3, 5, 1, dtype=torch.long), ">= 0", ValueError),
        ((4, 2, 5), (3, 5, 1), torch.full((3, 5, 1), 1.5), "integer tensor", TypeError),
    ],
)
@pytest.mark.parametrize("fn", [sparse_delay, sparse_delay_reference])
def test_bad_input(fn, x_shape, c_shape, off, match, exc):
    x, coeff = torch.randn(x_shape), torch.randn(c_shape)
    offsets = off if off is not None else torch.zeros(c_shape, dtype=torch.long)
    with pytest.raises(exc, match=match):
        fn(x, coeff, offsets)


def test_dtype_mismatch_and_bad_backend():
    x, coeff = torch.randn(3, 2, 4), torch.randn(2, 4, 1, dtype=torch.float64)
    offsets = torch.zeros(2, 4, 1, dtype=torch.long)
    with pytest.raises(TypeError, match="same dtype"):
        sparse_delay(x, coeff, offsets)
    with pytest.raises(ValueError, match="not one of"):
        sparse_delay(x, coeff.float(), offsets, backend="cuda-magic")


def test_env_var_forces_backend(monkeypatch):
    x, coeff, offsets, _ = _case(4, 2, 3, 2, 1, 2, seed=7)
    monkeypatch.setenv(delay_mod.ENV_BACKEND, "torch")
    assert delay_mod._select_backend(x, None) == "torch"
    monkeypatch.setenv(delay_mod.ENV_BACKEND, "numba")
    if delay_mod.numba_available():
        assert delay_mod._select_backend(x, None) == "numba"
        with pytest.raises(ValueError, match="float32 CPU"):
            delay_mod._select_backend(x.double(), None)
    else:
        with pytest.raises(ImportError, match="numba is not installed"):
            delay_mod._select_backend(x, None)


def test_explicit_numba_without_numba_raises(monkeypatch):
    monkeypatch.setattr(delay_mod, "numba_available", lambda: False)
    x = torch.randn(3, 2, 4)
    with pytest.raises(ImportError, match="pip install"):
        delay_mod._select_backend(x, "numba")
    assert delay_mod._select_backend(x, None) == "torch"  # automatic choice falls back
