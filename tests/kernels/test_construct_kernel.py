"""The fused kernels of the DCLS kernel construction (``dclszoo.kernels.construct``: Triton, numba, and C where it is
built) against the plain formula.

The oracle is ``dclszoo.reference.dcls_kernel_reference`` in float64 with ordinary autograd; the fused clamp and
sigma floor are checked against the same formula applied to ``p + (clamp(p) - p).detach()`` (straight-through)
and ``|sigma|.clamp_min(floor)``. The kernels run in float32, hence the tolerances. Every case runs on the Triton
kernels (on the CPU in Triton's interpreter where there is no GPU: tests/conftest.py sets ``TRITON_INTERPRET=1``), on
the numba kernels and, where they take it (Gaussian, sigma of the full shape), on the C kernels of this CPU.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dclszoo.functional import dcls_kernel
from dclszoo.kernels import _construct_c, construct
from dclszoo.reference import dcls_kernel_reference

pytestmark = pytest.mark.skipif(not construct.numba_available(), reason="numba is not installed")

SIGMA_SHAPES = ("full", "axis", "scalar", "tap", "out", "in")


def _bounds(span):
    return tuple(-(s // 2) for s in span), tuple(s - 1 - s // 2 for s in span)


def _sigma_shape(kind, ndim, o, i, k):
    return {"full": (ndim, o, i, k), "axis": (ndim, 1, 1, 1), "scalar": (), "tap": (1, 1, 1, k),
            "out": (1, o, 1, 1), "in": (ndim, 1, i, 1)}[kind]


def _taps(o, i, k, span, *, seed, sigma_kind="full", outside=0.0, sigma_range=(0.4, 2.0), negative_sigma=False):
    """float64 weight / positions (inside the span, or up to ``outside`` beyond it) / sigma."""
    gen = torch.Generator().manual_seed(seed)
    ndim = len(span)
    w = torch.randn(o, i, k, generator=gen, dtype=torch.float64)
    lo, hi = (torch.tensor(b, dtype=torch.float64).view(ndim, 1, 1, 1) for b in _bounds(span))
    p = (lo - outside) + (hi - lo + 2 * outside) * torch.rand(ndim, o, i, k, generator=gen, dtype=torch.float64)
    a, b = sigma_range
    s = a + (b - a) * torch.rand(_sigma_shape(sigma_kind, ndim, o, i, k), generator=gen, dtype=torch.float64)
    if negative_sigma:
        s = s * torch.where(torch.rand(s.shape, generator=gen) < 0.5, -1.0, 1.0).to(s.dtype)
    return w, p, s


def _device(backend):
    """Where a backend's case runs: Triton on the GPU when there is one (else on the CPU, interpreted)."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _run(op, w, p, s, span, interpolation, g, device="cpu", **fused):
    leaves = [t.detach().clone().to(device).requires_grad_(True) for t in (w, p, s)]
    sig = leaves[2] if interpolation == "gauss" else None
    k = op(leaves[0], leaves[1], sig, span, interpolation, **fused)
    k.backward(g.to(device, k.dtype))
    return k.detach().cpu(), [None if leaf.grad is None else leaf.grad.cpu() for leaf in leaves]


def _reference(w, p, s, span, interpolation, bounds=None, sigma_floor=None):
    def op(w_, p_, s_, span_, interp_):
        if bounds is not None:
            lo, hi = (torch.tensor(b, dtype=p_.dtype).view(-1, 1, 1, 1) for b in bounds)
            p_ = p_ + (torch.maximum(torch.minimum(p_, hi), lo) - p_).detach()
        if sigma_floor is not None and s_ is not None:
            s_ = s_.abs().clamp_min(sigma_floor)
        return dcls_kernel_reference(w_, p_, s_, span_, interp_)

    return op


def _close(actual, expected, what, rtol=2e-4, atol=2e-5):
    actual = actual.double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual - expected).abs()
    bound = atol * scale + rtol * expected.abs()
    if not bool((err <= bound).all()):
        idx = tuple(int(j) for j in torch.nonzero(err - bound == (err - bound).max())[0])
        raise AssertionError(
            f"{what}: error {err[idx].item():.3e} at {idx} (got {actual[idx].item():.7g}, "
            f"expected {expected[idx].item():.7g}; scale {scale:.3g})"
        )


def _fast_backends(s, interpolation, positions):
    """The fused backends that take these tensors: Triton and numba always, and each C variant this CPU runs where
    the case is the C kernels' own (Gaussian, sigma of the full shape)."""
    c_case = interpolation == "gauss" and tuple(s.shape) == tuple(positions.shape) and len(positions) <= 2
    return [("triton", None), ("numba", None)] + ([("c", v) for v in _construct_c.runnable_variants()] if c_case
                                                  else [])


def _check(w, p, s, span, interpolation, seed=1, bounds=None, sigma_floor=None, monkeypatch=None):
    """Values and all gradients of each fused path (float32, forced) against the float64 formula."""
    g = torch.randn((w.shape[0], w.shape[1]) + tuple(span), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    k_ref, grads_ref = _run(_reference(w, p, s, span, interpolation, bounds, sigma_floor), w, p, s, span,
                            interpolation, g)
    names = ("weight", "positions", "sigma") if interpolation == "gauss" else ("weight", "positions")
    fused = {"position_bounds": bounds, "sigma_floor": sigma_floor}
    for backend, variant in _fast_backends(s, interpolation, p):
        monkeypatch.setenv(construct.ENV_BACKEND, backend)  # raises rather than falling back
        with _construct_c.variant(variant) if variant else contextlib.nullcontext():
            k, grads = _run(dcls_kernel, w.float(), p.float(), s.float(), span, interpolation, g,
                            device=_device(backend), **fused)
        what = variant or backend
        assert k.dtype == torch.float32
        _close(k, k_ref, f"kernel ({what})")
        for name, got, want in zip(names, grads, grads_ref):
            assert got is not None, f"no gradient for {name} ({what})"
            _close(got, want, f"grad {name} ({what})")


# ------------------------------------------------------------------------------------------ fixed cases
CASES = [
    # (O, I/g, kc, span): odd shapes; row counts below, at and across the 16-row blocks; spans below 16 cells
    (3, 2, 3, (5,)),
    (17, 1, 4, (9,)),  # depthwise-like, 17 rows (a full block + 1)
    (4, 9, 1, (25,)),  # one tap, long span (delays)
    (16, 2, 3, (4, 6)),  # even, non-square
    (5, 7, 2, (7, 3)),  # non-square, 35 rows
    (33, 1, 5, (5, 5)),  # depthwise-like
    (2, 3, 2, (1, 4)),  # an axis of size 1
    (16, 3, 16, (3, 3)),  # 16 taps: the widest rows loaded and stored through 16 x 16 transposes
    (2, 17, 17, (3,)),  # 17 taps: gathered and scattered lane by lane
    (37, 11, 5, (3, 4)),  # 407 rows: several blocks per thread chunk (rows spilling into the next block), a partial one
]


@pytest.mark.parametrize("interpolation", ["gauss", "bilinear"])
@pytest.mark.parametrize("o, i, k, span", CASES)
def test_matches_formula(o, i, k, span, interpolation, monkeypatch):
    w, p, s = _taps(o, i, k, span, seed=o * 100 + k)
    _check(w, p, s, span, interpolation, monkeypatch=monkeypatch)


@pytest.mark.parametrize("sigma_range", [(0.1, 0.35), (0.3, 4.0)])
@pytest.mark.parametrize("span", [(25,), (7, 7), (6, 9)])
def test_narrow_and_wide_gaussians(sigma_range, span, monkeypatch):
    """Narrow Gaussians far from the span's middle (profile values that underflow, blocks where the profile
    recurrence is not safe and one exp per point is used) and wide ones (values near 1 all over the span)."""
    w, p, s = _taps(40, 3, 2, span, seed=5, sigma_range=sigma_range)
    _check(w, p, s, span, "gauss", monkeypatch=monkeypatch)


@pytest.mark.parametrize("sigma_kind", SIGMA_SHAPES)
@pytest.mark.parametrize("span", [(7,), (5, 6)])
def test_broadcast_sigma(sigma_kind, span, monkeypatch):
    w, p, s = _taps(9, 3, 3, span, seed=7, sigma_kind=sigma_kind)
    _check(w, p, s, span, "gauss", monkeypatch=monkeypatch)


@pytest.mark.parametrize("interpolation", ["gauss", "bilinear"])
@pytest.mark.parametrize("span", [(9,), (6, 5)])
def test_fused_clamp_and_sigma_floor(span, interpolation, monkeypatch):
    """Positions up to 2 cells outside the span are clamped (identity gradient); |sigma| is floored at 0.5 with
    sigmas of both signs on either side of the floor."""
    w, p, s = _taps(18, 2, 3, span, seed=11, outside=2.0, sigma_range=(0.3, 1.5), negative_sigma=True)
    _check(w, p, s, span, interpolation, bounds=_bounds(span), sigma_floor=0.5, monkeypatch=monkeypatch)


@pytest.mark.parametrize("span", [(7,), (5, 4)])
def test_bilinear_integer_and_border_positions(span, monkeypatch):
    """Integer positions, both borders and beyond them (unclamped): values and the floor-form gradients."""
    w, p, _ = _taps(20, 1, 4, span, seed=3)
    lo, hi = _bounds(span)
    gen = torch.Generator().manual_seed(4)
    for d in range(len(span)):
        choices = torch.tensor([lo[d], hi[d], 0.0, lo[d] + 1.0, hi[d] + 0.5, lo[d] - 0.25], dtype=p.dtype)
        p[d] = choices[torch.randint(len(choices), p[d].shape, generator=gen)]
    _check(w, p, torch.ones(()), span, "bilinear", monkeypatch=monkeypatch)


def test_gauss_positions_at_and_beyond_borders(monkeypatch):
    w, p, s = _taps(16, 2, 2, (6, 7), seed=5, outside=3.0)
    p[0, :4] = _bounds((6, 7))[1][0]
    p[1, 4:8] = _bounds((6, 7))[0][1]
    _check(w, p, s, (6, 7), "gauss", monkeypatch=monkeypatch)


def test_only_some_gradients_and_non_contiguous_upstream(monkeypatch):
    w, p, s = (t.float() for t in _taps(17, 2, 3, (5, 5), seed=9))
    s = s.expand(p.shape).contiguous()  # sigma of the full shape: the C kernels' case too
    p_ref = p.detach().double().requires_grad_(True)
    dcls_kernel_reference(w.double(), p_ref, s.double(), (5, 5), "gauss").sum().backward()
    for backend, variant in _fast_backends(s, "gauss", p):
        monkeypatch.setenv(construct.ENV_BACKEND, backend)
        dev = _device(backend)
        pb = p.detach().clone().to(dev).requires_grad_(True)
        wb, sb = w.to(dev), s.to(dev)
        with _construct_c.variant(variant) if variant else contextlib.nullcontext():
            k = dcls_kernel(wb, pb, sb, (5, 5), "gauss")
            k.sum().backward()  # upstream gradient: an expanded (zero-stride) tensor
        assert wb.grad is None and sb.grad is None
        _close(pb.grad.cpu(), p_ref.grad, f"grad positions ({variant or backend})")
    assert len(_fast_backends(s, "gauss", p)) == 2 + len(_construct_c.runnable_variants())


# ------------------------------------------------------------------------------------------ properties
@st.composite
def configurations(draw):
    ndim = draw(st.integers(1, 2))
    span = tuple(draw(st.integers(1, 11)) for _ in range(ndim))
    return dict(
        span=span, o=draw(st.integers(1, 24)), i=draw(st.integers(1, 3)), k=draw(st.integers(1, 6)),
        interpolation=draw(st.sampled_from(["gauss", "bilinear"])),
        sigma_kind=draw(st.sampled_from(["full", "scalar"])), fused=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=25, deadline=None)
@given(configurations())
def test_property_matches_formula(config):
    c = config
    w, p, s = _taps(c["o"], c["i"], c["k"], c["span"], seed=c["seed"], sigma_kind=c["sigma_kind"],
                    outside=1.0 if c["fused"] else 0.0, sigma_range=(0.3, 2.0), negative_sigma=c["fused"])
    bounds, floor = (_bounds(c["span"]), 0.4) if c["fused"] else (None, None)
    with pytest.MonkeyPatch.context() as mp:
        _check(w, p, s, c["span"], c["interpolation"], seed=c["seed"] % 1000, bounds=bounds, sigma_floor=floor,
               monkeypatch=mp)


# ------------------------------------------------------------------------------------------ backend choice
def test_automatic_choice():
    f32, f64 = torch.zeros(2, 3, 1), torch.zeros(2, 3, 1, dtype=torch.float64)
    assert construct.select_backend(f32, torch.zeros(2, 2, 3, 1), None, (3, 3)) == "numba"
    assert construct.select_backend(f64, torch.zeros(2, 2, 3, 1, dtype=torch.float64), None, (3, 3)) == "torch"
    assert construct.select_backend(f32, torch.zeros(3, 2, 3, 1), None, (3, 3, 3)) == "torch"
    assert construct.select_backend(f32.half(), torch.zeros(1, 2, 3, 1).half(), None, (3,)) == "torch"


def test_c_kernels_chosen_where_they_fit(monkeypatch):
    """Gaussian, full-shape float32 parameters go to the C kernels where they are built; the rest stays on numba."""
    monkeypatch.delenv(construct.ENV_BACKEND, raising=False)
    w, p, s = torch.zeros(2, 3, 4), torch.zeros(2, 2, 3, 4), torch.ones(2, 2, 3, 4)
    best_c = construct.c_available() and _construct_c.lanes() == 16  # the AVX2 build only stands in for numba
    assert construct.select_backend(w, p, s, (5, 5)) == ("c" if best_c else "numba")
    assert construct.select_backend(w, p, torch.ones(()), (5, 5)) == "numba"  # broadcast sigma
    assert construct.select_backend(w, p, None, (5, 5)) == "numba"  # bilinear
    monkeypatch.setenv(construct.ENV_BACKEND, "c")
    if construct.c_available():
        with pytest.raises(ValueError, match="bilinear"):
            construct.select_backend(w, p, None, (5, 5))
        with pytest.raises(ValueError, match="full shape"):
            construct.select_backend(w, p, torch.ones(()), (5, 5))
    monkeypatch.delenv(construct.ENV_BACKEND)
    if "_construct_avx2" in _construct_c.runnable_variants():
        with _construct_c.variant("_construct_avx2"):  # an AVX2-only CPU: numba's kernels, C only without numba
            assert construct.select_backend(w, p, s, (5, 5)) == "numba"
            with monkeypatch.context() as m:
                m.setattr(construct, "_NUMBA_INSTALLED", False)
                assert construct.select_backend(w, p, s, (5, 5)) == "c"
    monkeypatch.setenv(construct.ENV_BACKEND, "c")
    monkeypatch.setattr(_construct_c, "_LOADED", None)  # as on a machine where they could not be built
    with pytest.raises(ImportError, match="not built"):
        construct.select_backend(w, p, s, (5, 5))
    monkeypatch.delenv(construct.ENV_BACKEND)
    assert construct.select_backend(w, p, s, (5, 5)) == "numba"


@pytest.mark.skipif(not construct.c_available(), reason="the C kernels are not built for this CPU")
@pytest.mark.parametrize("span", [(7, 7), (9,)])
def test_c_kernels_on_one_thread(span, monkeypatch):
    """With one thread the C kernels are called directly (no numba driver): same values."""
    w, p, s = _taps(37, 3, 5, span, seed=12)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check(w, p, s, span, "gauss", bounds=_bounds(span), sigma_floor=1e-3, monkeypatch=monkeypatch)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not construct.c_available(), reason="the C kernels are not built for this CPU")
def test_c_kernels_on_numba_threads_when_openmp_is_unknown(monkeypatch):
    """Where torch's OpenMP runtime cannot be found, the C kernels run on numba's threads: same values."""
    monkeypatch.setattr(_construct_c, "_torch_openmp", lambda: None)
    w, p, s = _taps(37, 3, 5, (7, 7), seed=13)
    _check(w, p, s, (7, 7), "gauss", bounds=_bounds((7, 7)), sigma_floor=1e-3, monkeypatch=monkeypatch)


@pytest.mark.skipif(not construct.c_available(), reason="the C kernels are not built for this CPU")
def test_c_kernels_check_the_buffers_they_index():
    """The C entry points index raw pointers: a short, mistyped or strided buffer is refused, naming it."""
    w, p, s = torch.zeros(2, 3, 4), torch.zeros(2, 2, 3, 4), torch.ones(2, 2, 3, 4)
    with pytest.raises(ValueError, match=r"kernel must be 150 contiguous float32 CPU values, got 149"):
        _construct_c.forward(w, p, s, (5, 5), None, None, 40.0, torch.empty(149), 1)
    with pytest.raises(ValueError, match=r"sigma must be 48 .*torch.float64"):
        _construct_c.forward(w, p, s.double(), (5, 5), None, None, 40.0, torch.empty(150), 1)
    with pytest.raises(ValueError, match=r"positions must be 48 .*contiguous: False"):
        _construct_c.forward(w, p.transpose(1, 2), s, (5, 5), None, None, 40.0, torch.empty(150), 1)
    with pytest.raises(ValueError, match=r"upstream must be 150"):
        _construct_c.backward(torch.zeros(10), w, p, s, (5, 5), None, None, 40.0, None, None, None, 1)


def test_torch_thread_count_survives_the_first_numba_call():
    """numba's OpenMP pool shares torch's runtime; launching it must not change ``torch.get_num_threads()``."""
    code = (
        "import torch, dclszoo\n"
        "from dclszoo.kernels import delay\n"
        "torch.set_num_threads(1)\n"
        "m = dclszoo.DclsConv2d(4, 4, 3, 5, padding=2)\n"
        "m(torch.randn(1, 4, 6, 6)).sum().backward()\n"
        "delay.sparse_delay(torch.randn(5, 1, 3), torch.ones(2, 3, 1), torch.zeros(2, 3, 1, dtype=torch.long),"
        " backend='numba')\n"
        "import numba\n"
        "print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"], out.stdout


def test_explicit_choice_and_errors(monkeypatch):
    w, p = torch.zeros(2, 3, 1), torch.zeros(1, 2, 3, 1)
    assert construct.select_backend(w, p, None, (3,), backend="torch") == "torch"
    monkeypatch.setenv(construct.ENV_BACKEND, "torch")
    assert construct.select_backend(w, p, None, (3,)) == "torch"
    monkeypatch.setenv(construct.ENV_BACKEND, "numba")
    with pytest.raises(ValueError, match="float32 CPU"):
        construct.select_backend(w.double(), p.double(), None, (3,))
    with pytest.raises(ValueError, match="1-D and 2-D"):
        construct.select_backend(w, torch.zeros(3, 2, 3, 1), None, (3, 3, 3))
    with pytest.raises(ValueError, match="float32 CPU"):  # through the op: no silent fallback
        dcls_kernel(w.double(), p.double(), 1.0, (3,), "gauss")
    monkeypatch.setenv(construct.ENV_BACKEND, "cuda")
    with pytest.raises(ValueError, match="not one of"):
        construct.select_backend(w, p, None, (3,))


def test_forced_torch_backend_still_matches(monkeypatch):
    """The torch twin stays reachable (and right) for float32 when requested."""
    monkeypatch.setenv(construct.ENV_BACKEND, "torch")
    w, p, s = (t.float() for t in _taps(5, 3, 2, (5, 4), seed=2))
    _close(dcls_kernel(w, p, s, (5, 4), "gauss"), dcls_kernel_reference(w.double(), p.double(), s.double(), (5, 4)),
           "kernel (torch backend)")


def test_import_does_not_load_numba():
    code = "import sys, dclszoo, dclszoo.functional, dclszoo.kernels.construct; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_custom_ops_for_torch_compile(monkeypatch):
    """The numba and C calls are opaque custom ops with fake (meta) implementations: opcheck, then a compiled call,
    on every fused backend (and C variant) this CPU runs."""
    w, p, s = (t.float() for t in _taps(17, 2, 3, (5, 4), seed=8))
    g = torch.randn(17, 2, 5, 4)
    bounds = [float(v) for b in _bounds((5, 4)) for v in b]
    k_ref, grads_ref = _run(_reference(w.double(), p.double(), s.double(), (5, 4), "gauss", _bounds((5, 4)), 1e-3),
                            w.double(), p.double(), s.double(), (5, 4), "gauss", g.double())

    def build(w_, p_, s_):
        return dcls_kernel(w_, p_, s_, (5, 4), "gauss", position_bounds=_bounds((5, 4)), sigma_floor=1e-3)

    for backend, variant in _fast_backends(s, "gauss", p):
        monkeypatch.setenv(construct.ENV_BACKEND, backend)
        what = variant or backend
        wd, pd, sd, gd = (t.to(_device(backend)) for t in (w, p, s, g))
        with _construct_c.variant(variant) if variant else contextlib.nullcontext():
            torch.library.opcheck(construct._forward_op, (wd, pd, sd, [5, 4], True, bounds, 1e-3, backend))
            torch.library.opcheck(construct._backward_op,
                                  (gd, wd, pd, sd, [5, 4], True, bounds, 1e-3, True, True, True, backend))
            torch._dynamo.reset()
            leaves = [t.clone().requires_grad_(True) for t in (wd, pd, sd)]
            k = torch.compile(build, backend="aot_eager", fullgraph=True)(*leaves)
            k.backward(gd)
        _close(k.detach().cpu(), k_ref, f"kernel (compiled, {what})")
        for name, leaf, want in zip(("weight", "positions", "sigma"), leaves, grads_ref):
            _close(leaf.grad.cpu(), want, f"grad {name} (compiled, {what})")


@pytest.mark.parametrize("interpolation", ["gauss", "bilinear"])
def test_triton_takes_bfloat16_parameters(interpolation, triton_device):
    """Parameters in bfloat16: the Triton kernels compute in float32 and return the parameters' dtype."""
    w, p, s = _taps(6, 3, 4, (7, 5), seed=21)
    leaves = [t.bfloat16().to(triton_device).requires_grad_(True) for t in (w, p, s)]
    sig = leaves[2] if interpolation == "gauss" else None
    k = dcls_kernel(leaves[0], leaves[1], sig, (7, 5), interpolation, backend="triton")
    assert k.dtype == torch.bfloat16
    g = torch.randn(k.shape, generator=torch.Generator().manual_seed(2))
    k.backward(g.bfloat16().to(triton_device))
    ref = [t.bfloat16().double().requires_grad_(True) for t in (w, p, s)]
    k_ref = dcls_kernel_reference(ref[0], ref[1], ref[2] if interpolation == "gauss" else None, (7, 5), interpolation)
    k_ref.backward(g.bfloat16().double())
    _close(k.float().cpu(), k_ref.detach(), "kernel (bf16)", rtol=1e-2, atol=1e-2)
    for name, got, want in zip(("weight", "positions", "sigma"), leaves, ref):
        if want.grad is None:
            continue
        assert got.grad.dtype == torch.bfloat16
        _close(got.grad.float().cpu(), want.grad, f"grad {name} (bf16)", rtol=2e-2, atol=2e-2)
