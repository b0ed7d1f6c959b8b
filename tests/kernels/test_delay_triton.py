"""Triton backend of the sparse delay op against the float64 twin and the numba kernels (values and gradients),
and ``DelayedLinear`` run on it end to end. On a machine without a GPU the kernels run in Triton's interpreter
(``TRITON_INTERPRET=1``, set by conftest), so shapes stay small."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dclszoo import DelayedLinear
from dclszoo.kernels import backend as kbackend
from dclszoo.kernels import delay as delay_mod
from dclszoo.kernels.delay import sparse_delay, sparse_delay_reference


def _case(steps, batch, n_in, n_out, taps, offsets, seed, device, dtype=torch.float32):
    """Inputs, coefficients, upstream gradient and offsets: ``offsets`` is ``("random", max)`` (independent
    taps in ``[0, max]``) or ``("consecutive", max)`` (taps ``base + j``, base in ``[0, max]``, as the narrow
    Gaussian phase produces) or a given tensor."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, n_in, generator=g)
    coeff = torch.randn(n_out, n_in, taps, generator=g)
    grad_y = torch.randn(steps, batch, n_out, generator=g)
    if isinstance(offsets, torch.Tensor):
        off = offsets
    elif offsets[0] == "random":
        off = torch.randint(0, offsets[1] + 1, (n_out, n_in, taps), generator=g)
    else:
        base = torch.randint(0, offsets[1] + 1, (n_out, n_in, 1), generator=g)
        off = base + torch.arange(taps)
    to = dict(device=device)
    return x.to(dtype=dtype, **to), coeff.to(dtype=dtype, **to), off.to(**to), grad_y.to(dtype=dtype, **to)


def _run(fn, x, coeff, offsets, grad_y):
    x = x.detach().requires_grad_(True)
    coeff = coeff.detach().requires_grad_(True)
    y = fn(x, coeff, offsets)
    gx, gc = torch.autograd.grad(y, (x, coeff), grad_y)
    return y.detach(), gx, gc


def _reference64(x, coeff, offsets, grad_y):
    """The float64 twin on the same (rounded) inputs, on the CPU."""
    args = (x.double().cpu(), coeff.double().cpu(), offsets.cpu(), grad_y.double().cpu())
    return _run(sparse_delay_reference, *args)


def _assert_close(got, want, what, rtol, atol_scale):
    """Elementwise ``|got - want| <= rtol * |want| + atol_scale * max|want|``; names the worst entry."""
    for name, a, b in zip(("y", "grad_x", "grad_coeff"), got, want):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        assert a.shape == b.shape, f"{what} {name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        err = (a - b).abs()
        tol = rtol * b.abs() + atol_scale * max(b.abs().max().item(), 1e-30)
        if not bool((err <= tol).all()):
            idx = tuple(int(v) for v in torch.unravel_index((err - tol).flatten().argmax(), err.shape))
            pytest.fail(f"{what} {name}: max abs err {err.max().item():.3g} at {idx}: got {a[idx]}, want {b[idx]}")


def _triton(*args):
    return sparse_delay(*args, backend="triton")


CASES = [
    # steps, batch, n_in, n_out, taps, offsets
    (7, 3, 5, 9, 1, ("random", 9)),  # integer delays, odd sizes, some offsets >= T
    (7, 3, 5, 9, 4, ("consecutive", 7)),  # narrow-Gaussian taps, some windows past T
    (11, 2, 13, 17, 6, ("consecutive", 8)),  # six taps, more than one block of inputs and outputs
    (5, 1, 3, 4, 3, ("random", 4)),  # batch 1
    (1, 4, 6, 3, 2, ("random", 2)),  # a single time step
]


@pytest.mark.parametrize("steps,batch,n_in,n_out,taps,offsets", CASES)
def test_matches_float64_twin_and_numba(triton_device, steps, batch, n_in, n_out, taps, offsets):
    x, coeff, off, grad_y = _case(steps, batch, n_in, n_out, taps, offsets, steps * 7 + taps, triton_device)
    got = _run(_triton, x, coeff, off, grad_y)
    for t in got:
        assert t.device.type == triton_device and t.dtype == torch.float32
    _assert_close(got, _reference64(x, coeff, off, grad_y), "triton vs float64 twin", 1e-5, 1e-6)
    if delay_mod.numba_available():
        numba = _run(lambda *a: sparse_delay(*a, backend="numba"), x.cpu(), coeff.cpu(), off.cpu(), grad_y.cpu())
        _assert_close(got, numba, "triton vs numba", 1e-5, 1e-6)


def test_offsets_at_the_edges(triton_device):
    """Offsets 0 (no delay), T-1 (only the first step reaches the last), T and far beyond (nothing)."""
    steps = 6
    off = torch.tensor([0, steps - 1, steps, steps + 3, 2**40]).view(5, 1, 1).expand(5, 4, 1).contiguous()
    x, coeff, off, grad_y = _case(steps, 3, 4, 5, 1, off, 11, triton_device)
    y, gx, gc = got = _run(_triton, x, coeff, off, grad_y)
    _assert_close(got, _reference64(x, coeff, off, grad_y), "edge offsets", 1e-5, 1e-6)
    torch.testing.assert_close(y[:, :, 0], x @ coeff[0, :, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[-1, :, 1], x[0] @ coeff[1, :, 0], rtol=1e-5, atol=1e-5)
    assert torch.equal(y[:-1, :, 1], torch.zeros_like(y[:-1, :, 1]))
    assert torch.equal(y[:, :, 2:], torch.zeros_like(y[:, :, 2:]))
    assert torch.equal(gc[2:], torch.zeros_like(gc[2:]))


def test_gradients_alone_and_together(triton_device):
    """The backward kernel computes the input and coefficient gradients in one pass; asked for one of them it
    gives the same values as for both, and nothing for the other."""
    from dclszoo.kernels import _delay_triton

    x, coeff, off, grad_y = _case(9, 2, 5, 3, 3, ("random", 6), 5, triton_device)
    want = _reference64(x, coeff, off, grad_y)
    gx, gc = _delay_triton.delay_backward(grad_y, x, coeff, off, need_x=False)
    assert gx is None
    _assert_close((want[0], want[1], gc), want, "coefficient gradient alone", 1e-5, 1e-6)
    gx, gc = _delay_triton.delay_backward(grad_y, x, coeff, off, need_coeff=False)
    assert gc is None
    _assert_close((want[0], gx, want[2]), want, "input gradient alone", 1e-5, 1e-6)


def test_bfloat16_accumulates_in_float32(triton_device):
    """bf16 in and out; the only error left is the final rounding of a float32 sum (64 inputs x 2 taps): at
    most one bf16 ulp (the interpreter truncates, the GPU rounds to nearest). Summing in bf16 would be off by
    up to 40% here."""
    x, coeff, off, grad_y = _case(6, 3, 64, 5, 2, ("consecutive", 4), 9, triton_device, torch.bfloat16)
    got = _run(_triton, x, coeff, off, grad_y)
    for t in got:
        assert t.dtype == torch.bfloat16
    _assert_close(got, _reference64(x, coeff, off, grad_y), "bf16 vs float32-exact", 2**-7, 1e-3)


def test_float64_stays_float64(triton_device):
    x, coeff, off, grad_y = _case(5, 2, 4, 3, 2, ("random", 6), 3, triton_device, torch.float64)
    got = _run(_triton, x, coeff, off, grad_y)
    assert got[0].dtype == torch.float64
    _assert_close(got, _reference64(x, coeff, off, grad_y), "float64", 1e-12, 1e-13)


def test_non_contiguous_inputs_and_partial_gradients(triton_device):
    x, coeff, off, grad_y = _case(8, 3, 6, 5, 2, ("random", 7), 4, triton_device)
    x_nc = x.transpose(0, 1).contiguous().transpose(0, 1)
    coeff_nc = coeff.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    off_nc = off.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    gy_nc = grad_y.transpose(0, 1).contiguous().transpose(0, 1)
    assert not (x_nc.is_contiguous() or coeff_nc.is_contiguous() or off_nc.is_contiguous())
    want = _reference64(x, coeff, off, grad_y)
    _assert_close(_run(_triton, x_nc, coeff_nc, off_nc, gy_nc), want, "non-contiguous", 1e-5, 1e-6)
    c = coeff.clone().requires_grad_(True)
    (gc,) = torch.autograd.grad(_triton(x, c, off), (c,), grad_y)
    torch.testing.assert_close(gc.double().cpu(), want[2], rtol=1e-5, atol=1e-5)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(_triton(xr, coeff, off), (xr,), grad_y)
    torch.testing.assert_close(gx.double().cpu(), want[1], rtol=1e-5, atol=1e-5)


def test_strictly_causal(triton_device):
    x, coeff, off, _ = _case(10, 2, 4, 3, 3, ("consecutive", 5), 6, triton_device)
    y = _triton(x, coeff, off)
    for t0 in (0, 4, 9):
        x2 = x.clone()
        x2[t0] += 10 * torch.randn_like(x2[t0])
        y2 = _triton(x2, coeff, off)
        assert torch.equal(y[:t0], y2[:t0]), f"perturbing t={t0} changed an earlier output"
        assert not torch.equal(y[t0:], y2[t0:])


# ----------------------------------------------------------------------------------------------- banded taps
def _banded(steps, batch, n_in, n_out, groups, band, max_start, seed, device, dtype=torch.float32):
    """A case whose ``groups`` runs of ``band`` taps per synapse are consecutive offsets from a start in
    ``[0, max_start]``; the start of synapse (0, 0) is pinned to 0 and of (1, 0) to ``steps - 1``."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, max_start + 1, (n_out, n_in, groups, 1), generator=g)
    start[0, 0], start[min(1, n_out - 1), 0] = 0, steps - 1
    off = (start + torch.arange(band)).reshape(n_out, n_in, groups * band)
    return _case(steps, batch, n_in, n_out, groups * band, off, seed, device, dtype)


def _banded_triton(band):
    return lambda *a: sparse_delay(*a, backend="triton", band=band)


BANDED = [
    # steps, batch, n_in, n_out, groups, band, max_start (interpreter tiles: R = 3 steps, 4 lanes, 4 columns)
    (7, 3, 5, 9, 1, 4, 7),  # odd sizes, windows running past T
    (11, 2, 13, 17, 1, 6, 8),  # six taps (sigma 0.5), several tiles of steps and columns
    (10, 9, 4, 6, 2, 3, 12),  # two runs per synapse (kernel_count 2), 3 lane tiles, starts far beyond T
    (1, 4, 3, 2, 1, 2, 2),  # a single time step
    (6, 1, 3, 5, 1, 2, 3),  # batch 1
]


@pytest.mark.parametrize("steps,batch,n_in,n_out,groups,band,max_start", BANDED)
def test_banded_matches_float64_twin(triton_device, steps, batch, n_in, n_out, groups, band, max_start):
    """The banded kernels (one load per input step for a run of taps) against the float64 twin, which takes
    the same offsets as independent taps."""
    x, coeff, off, grad_y = _banded(steps, batch, n_in, n_out, groups, band, max_start, steps + band, triton_device)
    got = _run(_banded_triton(band), x, coeff, off, grad_y)
    _assert_close(got, _reference64(x, coeff, off, grad_y), "banded triton vs float64 twin", 1e-5, 1e-6)


def test_banded_shares_are_the_same_sum(triton_device):
    """Splitting the runs into shares (float32 partial outputs added after the kernel; the coefficient gradient
    added atomically) gives the one-program result, with and without the other gradient."""
    from dclszoo.kernels import _delay_triton as kt

    x, coeff, off, grad_y = _banded(10, 5, 13, 6, 2, 3, 9, 1, triton_device)
    want = _reference64(x, coeff, off, grad_y)
    for k in (2, 3, 100):
        y = kt.delay_forward(x, coeff, off, 3, shares=k)
        gx, gc = kt.delay_backward(grad_y, x, coeff, off, 3, shares=k)
        _assert_close((y, gx, gc), want, f"shares {k}", 1e-5, 1e-6)
        _, gc = kt.delay_backward(grad_y, x, coeff, off, 3, need_x=False, shares=k)
        _assert_close((y, gx, gc), want, f"shares {k}, coefficient gradient alone", 1e-5, 1e-6)


@pytest.mark.parametrize("steps", [7, 37])
@pytest.mark.parametrize("rows,columns", [(32, 16), (16, 8)])
def test_gpu_tile_sizes(triton_device, monkeypatch, steps, rows, columns):
    """The GPU configurations' tiles (R steps, BN columns, up to 32 lanes), which the interpreter's single small
    configuration does not use: T below R and not a multiple of it, a batch of 5 in 8 lanes, two column tiles."""
    from dclszoo.kernels import _delay_triton as kt

    if triton_device == "cpu":  # the interpreter: run these tile sizes instead of its own configuration
        jit = kt._tap_kernel.fn

        class _Fixed:
            def __getitem__(self, grid):
                return lambda *a, **k: jit[grid](*a, R=rows, BN=columns, num_warps=4, **k)

        monkeypatch.setattr(kt, "_tap_kernel", _Fixed())
        monkeypatch.setattr(kt, "_MAX_R", 32)
        monkeypatch.setattr(kt, "_MAX_LANES", 32)
    x, coeff, off, grad_y = _banded(steps, 5, 6, 20, 1, 6, steps + 3, steps, triton_device)
    got = _run(_banded_triton(6), x, coeff, off, grad_y)
    _assert_close(got, _reference64(x, coeff, off, grad_y), f"R={rows}, BN={columns}", 1e-5, 1e-6)


def test_banded_strictly_causal_and_bfloat16(triton_device):
    x, coeff, off, grad_y = _banded(10, 3, 4, 3, 1, 6, 5, 6, triton_device)
    y = _banded_triton(6)(x, coeff, off)
    for t0 in (0, 4, 9):
        x2 = x.clone()
        x2[t0] += 10 * torch.randn_like(x2[t0])
        y2 = _banded_triton(6)(x2, coeff, off)
        assert torch.equal(y[:t0], y2[:t0]), f"perturbing t={t0} changed an earlier output"
        assert not torch.equal(y[t0:], y2[t0:])
    xb, cb, gb = x.bfloat16(), coeff.bfloat16(), grad_y.bfloat16()
    got = _run(_banded_triton(6), xb, cb, off, gb)
    assert all(t.dtype == torch.bfloat16 for t in got)
    _assert_close(got, _reference64(xb, cb, off, gb), "banded bf16 vs float32-exact", 2**-7, 1e-3)


def test_band_argument_is_checked(triton_device):
    x, coeff, off, _ = _case(5, 2, 3, 4, 4, ("random", 5), 2, triton_device)
    with pytest.raises(ValueError, match="band=3: expected an int >= 1 dividing the 4 taps"):
        sparse_delay(x, coeff, off, band=3)
    with pytest.raises(ValueError, match="not 2 consecutive offsets"):
        sparse_delay(x, coeff, off.clone().fill_(1), band=2)
    # the same offsets as independent taps are fine, and consecutive runs pass the check
    run = (torch.arange(2) + torch.tensor([0, 3]).view(2, 1)).flatten().expand(4, 3, 4).contiguous().to(off.device)
    sparse_delay(x, coeff, run, band=2)
    sparse_delay(x, coeff, off.clone().fill_(1), band=1)


# ----------------------------------------------------------------------------------------------- module
@pytest.mark.parametrize("sigma", [0.0, 0.5, 12.0])
@pytest.mark.parametrize("batch_first", [False, True])
def test_delayed_linear_triton_vs_torch(triton_device, monkeypatch, sigma, batch_first):
    """All gradients (input, weight, delays, bias) agree between ``DCLSZOO_BACKEND=triton`` and ``torch``: integer
    and narrow phases on the sparse delay kernels, the wide phase (sigma 12 of 25) on the dense path, whose time
    kernel the Triton construction builds."""
    torch.manual_seed(int(sigma * 10) + batch_first)
    m = DelayedLinear(5, 4, 25, sigma=sigma, batch_first=batch_first).to(triton_device)  # J = 6 at sigma 0.5
    assert m.use_sparse() == (sigma < 1)
    assert m.taps_per_delay() == {0.0: 1, 0.5: 6, 12.0: 144}[sigma]
    g = torch.Generator().manual_seed(3)
    shape = (2, 30, 5) if batch_first else (30, 2, 5)
    x0 = torch.randn(shape, generator=g).to(triton_device)
    gy = torch.randn(shape[:-1] + (4,), generator=g).to(triton_device)
    results = {}
    for name in ("triton", "torch"):
        monkeypatch.setenv(kbackend.ENV, name)
        m.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        y = m(x)
        y.backward(gy)
        grads = [x.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in
                            (m.weight, m.delays, m.bias)]
        results[name] = (y.detach(), *grads)
    names = ("y", "grad_x", "grad_weight", "grad_delays", "grad_bias")
    for name, a, b in zip(names, results["triton"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda s, n=name: f"{n}: {s}")
    if sigma:
        assert results["torch"][3].abs().sum() > 0  # the delays do learn in the Gaussian phase


def test_delayed_linear_streaming_equals_multistep_on_triton(triton_device, monkeypatch):
    monkeypatch.setenv(kbackend.ENV, "delay=triton")
    torch.manual_seed(7)
    m = DelayedLinear(6, 5, 7, sigma=0.0).to(triton_device)
    x = torch.randn(15, 3, 6).to(triton_device)
    y_multi = m(x)
    m.step_mode = "s"
    y_stream = torch.stack([m(x[t]) for t in range(x.shape[0])])
    torch.testing.assert_close(y_stream, y_multi, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- selection
def test_backend_selection(triton_device, monkeypatch):
    x = torch.randn(3, 2, 4, device=triton_device)
    monkeypatch.setenv(kbackend.ENV, "triton")
    assert delay_mod._select_backend(x, None) == "triton"
    monkeypatch.setenv(kbackend.ENV, "auto")
    want = "triton" if triton_device == "cuda" else ("numba" if delay_mod.numba_available() else "torch")
    assert delay_mod._select_backend(x, None) == want  # the automatic choice never sends CPU tensors to Triton


def test_explicit_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, coeff = torch.randn(3, 2, 4), torch.randn(2, 4, 1)
    offsets = torch.zeros(2, 4, 1, dtype=torch.long)
    assert "TRITON_INTERPRET" in kbackend.triton_runs_on(x)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        sparse_delay(x, coeff, offsets, backend="triton")
    monkeypatch.setenv(kbackend.ENV, "delay=triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        sparse_delay(x, coeff, offsets)


def test_import_does_not_load_triton():
    code = ("import sys, torch, dclszoo, dclszoo.kernels.delay\n"
            "m = dclszoo.DelayedLinear(3, 2, 5, sigma=0.0)\n"
            "m(torch.randn(4, 2, 3)).sum().backward()\n"
            "print('triton' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != kbackend.ENV}  # the automatic choice, CPU tensors
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_custom_ops_for_torch_compile(triton_device):
    """The kernel calls are opaque custom ops with fake implementations: opcheck, then a compiled call of the
    autograd Function (``sparse_delay`` itself breaks the graph: its argument check reads ``offsets.min()``)."""
    from dclszoo.kernels import _delay_triton

    for offsets, band in ((("random", 5), 1), (("consecutive", 5), 2)):
        x, coeff, off, grad_y = _case(5, 2, 3, 4, 2, offsets, 8, triton_device)
        torch.library.opcheck(_delay_triton._forward_op, (x, coeff, off, band))
        torch.library.opcheck(_delay_triton._backward_op, (grad_y, x, coeff, off, band, True, True))
        torch._dynamo.reset()
        compiled = torch.compile(_delay_triton.SparseDelayTriton.apply, backend="aot_eager", fullgraph=True)
        got = _run(lambda *a: compiled(*a, band), x, coeff, off, grad_y)
        _assert_close(got, _reference64(x, coeff, off, grad_y), f"compiled, band {band}", 1e-5, 1e-6)
