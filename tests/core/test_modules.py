"""Behaviour of the DCLS modules: device/dtype moves, copies, compile, clamping, dense <-> DCLS, bad input.

Outputs are compared with independent references: a plain ``nn.ConvNd`` holding the kernel of the plain
formula (``dcls_kernel_reference``), or the dense convolution a module was converted from.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dclszoo import DclsConv1d, DclsConv2d, DclsConv3d, DclsConvNd
from dclszoo.reference import dcls_kernel_reference

DCLS = {1: DclsConv1d, 2: DclsConv2d, 3: DclsConv3d}
DENSE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def dense_twin(m: DclsConvNd) -> nn.Module:
    """A plain nn.ConvNd with the module's hyper-parameters and the plain-formula kernel of its parameters."""
    n = len(m.span)
    conv = DENSE[n](
        m.in_channels, m.out_channels, m.span, stride=m.stride, padding=m.padding, dilation=m.dilation,
        groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode, dtype=m.weight.dtype,
    )
    sigma = m.sigma.detach() if m.interpolation == "gauss" else None
    with torch.no_grad():
        conv.weight.copy_(dcls_kernel_reference(m.weight.detach(), m.positions.detach(), sigma, m.span, m.interpolation))
        if m.bias is not None:
            conv.bias.copy_(m.bias)
    return conv


def make(n=2, interpolation="gauss", span=None, **kw):
    span = span or (5, 3, 4)[:n]
    kw = {"padding": 1, **kw}
    return DCLS[n](4, 6, kw.pop("kernel_count", 3), span, interpolation=interpolation, **kw)


def inp(m: DclsConvNd, size=7, batch=2, dtype=torch.float32):
    return torch.randn((batch, m.in_channels) + (size,) * len(m.span), dtype=dtype)


def rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("interpolation", ["gauss", "bilinear"])
def test_forward_matches_plain_formula(n, interpolation):
    torch.manual_seed(0)
    m = make(n, interpolation, groups=2, stride=2, dilation=2 if n < 3 else 1)
    x = inp(m, size=11)
    torch.testing.assert_close(m(x), dense_twin(m)(x))


def test_positions_axis_d_moves_along_spatial_axis_d():
    m = DclsConv3d(1, 1, 1, (3, 5, 7), interpolation="bilinear", bias=False)
    for d in range(3):
        with torch.no_grad():
            m.weight.fill_(1.0)
            m.positions.zero_()
            m.positions[d] = 1.0
        k = m.kernel()[0, 0]
        expected = [s // 2 for s in (3, 5, 7)]
        expected[d] += 1
        assert k[tuple(expected)] == 1.0 and k.sum() == 1.0


# ----------------------------------------------------------------------------------------------- moves and copies
@pytest.mark.parametrize("interpolation", ["gauss", "bilinear"])
def test_to_float64_and_half(interpolation):
    torch.manual_seed(1)
    m = make(2, interpolation)
    x = inp(m)
    y32 = m(x)
    m64 = copy.deepcopy(m).to(torch.float64)
    assert m64.positions.dtype == torch.float64
    torch.testing.assert_close(m64(x.double()), dense_twin(m64)(x.double()))
    for dtype, tol in ((torch.float16, 3e-3), (torch.bfloat16, 2e-2)):
        low = copy.deepcopy(m).to(dtype)
        y = low(x.to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert rel(y, y32) < tol
    half = copy.deepcopy(m).half()
    half(x.half()).float().sum().backward()
    assert torch.isfinite(half.positions.grad).all() and half.positions.grad.abs().sum() > 0


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_meta_then_to_empty_and_reset(learn_sigma):
    m = make(2, "gauss", device="meta", sigma=0.7, learn_sigma=learn_sigma)
    assert m.weight.is_meta and m.positions.is_meta
    m.to_empty(device="cpu")
    m.reset_parameters()
    assert torch.isfinite(m.weight).all() and m.weight.abs().sum() > 0
    assert torch.all(m.sigma == 0.7)
    lo, hi = m.position_bounds
    for d in range(2):
        assert m.positions[d].min() >= lo[d] and m.positions[d].max() <= hi[d]
    x = inp(m)
    torch.testing.assert_close(m(x), dense_twin(m)(x))


def test_deepcopy_is_independent_and_still_clamped():
    torch.manual_seed(2)
    m = make(2, "bilinear")
    twin = copy.deepcopy(m)
    x = inp(m)
    assert torch.equal(twin(x), m(x))
    with torch.no_grad():
        twin.weight.mul_(2)
    assert not torch.equal(twin(x), m(x))
    opt = torch.optim.SGD(twin.parameters(), lr=1e4)
    twin(x).pow(2).sum().backward()
    opt.step()  # no user call: the copy must be clamped by the step hook too
    lo, hi = twin.position_bounds
    for d in range(2):
        assert twin.positions[d].min() >= lo[d] and twin.positions[d].max() <= hi[d]


@pytest.mark.parametrize("interpolation,learn_sigma", [("gauss", True), ("gauss", False), ("bilinear", True)])
def test_state_dict_round_trip(interpolation, learn_sigma):
    torch.manual_seed(3)
    m = make(2, interpolation, learn_sigma=learn_sigma)
    torch.manual_seed(4)
    fresh = make(2, interpolation, learn_sigma=learn_sigma)
    x = inp(m)
    assert not torch.equal(fresh(x), m(x))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh(x), m(x))
    assert set(m.state_dict()) == ({"weight", "positions", "bias"} | ({"sigma"} if interpolation == "gauss" else set()))


@pytest.mark.parametrize("interpolation", ["gauss", "bilinear"])
def test_torch_compile_aot_eager(interpolation):
    torch.manual_seed(5)
    m = make(2, interpolation)
    ref = copy.deepcopy(m)
    x = inp(m)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=False)
    y = compiled(x)
    torch.testing.assert_close(y, ref(x))
    y.pow(2).sum().backward()
    ref(x).pow(2).sum().backward()
    for name in ("weight", "positions", "bias"):
        torch.testing.assert_close(getattr(m, name).grad, getattr(ref, name).grad)


def test_torch_compile_inductor_tiny_1d():
    """Default backend once (about 30 s on 2 cores, mostly compiling)."""
    torch.manual_seed(6)
    m = DclsConv1d(2, 2, 2, 5, padding=2)
    x = torch.randn(1, 2, 9)
    y = torch.compile(m)(x)
    torch.testing.assert_close(y, dense_twin(m)(x))


# ----------------------------------------------------------------------------------------------- clamping
@pytest.mark.parametrize("opt_cls,lr", [(torch.optim.SGD, 1e6), (torch.optim.Adam, 1e3)])
@pytest.mark.parametrize("span", [(5, 4), (1, 6)])
def test_positions_stay_inside_after_huge_steps(opt_cls, lr, span):
    torch.manual_seed(7)
    m = make(2, "gauss", span=span)
    opt = opt_cls(m.parameters(), lr=lr)
    x = inp(m)
    for _ in range(3):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    for d, s in enumerate(span):
        assert m.positions[d].min() >= -(s // 2) and m.positions[d].max() <= s - 1 - s // 2
    assert torch.isfinite(m(x)).all()


@pytest.mark.parametrize(
    "interpolation,border",
    [("gauss", "lo"), ("gauss", "hi"), ("bilinear", "lo"), ("bilinear", "hi")],
)
def test_position_at_border_moves_back_inward(interpolation, border):
    m = DclsConv1d(1, 1, 1, 7, padding=3, bias=False, interpolation=interpolation)
    lo, hi = m.position_bounds
    start = lo[0] if border == "lo" else hi[0]
    with torch.no_grad():
        m.weight.fill_(1.0)
        m.positions.fill_(start)
    x = torch.zeros(1, 1, 15)
    x[0, 0, 7] = 1.0  # impulse: the output is the (flipped) kernel
    target = x.clone()  # wants the tap at the centre
    F.mse_loss(m(x), target).backward()
    assert m.positions.grad.abs().item() > 0
    torch.optim.SGD([m.positions], lr=0.5).step()
    assert abs(m.positions.item()) < abs(start)


# ----------------------------------------------------------------------------------------------- dense -> DCLS
FROM_DENSE = [  # (ndim, kernel_size, span, conv kwargs)
    (1, 5, None, {"padding": 2}),
    (1, 4, 8, {"padding": "same", "dilation": 2}),
    (1, 4, 7, {"padding": "same"}),
    (2, (2, 3), (5, 4), {"padding": "same", "padding_mode": "replicate"}),
    (1, 3, 9, {"padding": "valid", "stride": 2}),
    (2, 3, None, {"padding": 1, "groups": 2}),
    (2, (3, 5), (7, 7), {"padding": (1, 2), "stride": (2, 1)}),
    (2, 4, 6, {"padding": "same", "padding_mode": "reflect"}),
    (2, 3, 5, {"padding": 1, "padding_mode": "circular", "dilation": (1, 2)}),
    (3, 3, None, {"padding": 1}),
    (3, (1, 3, 3), (3, 5, 3), {"padding": (0, 1, 1), "groups": 4}),
]


@pytest.mark.parametrize("n,ksize,span,kw", FROM_DENSE)
def test_from_dense_is_exact_and_positions_learn(n, ksize, span, kw):
    torch.manual_seed(8)
    conv = DENSE[n](4, 8, ksize, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact conversion must not warn
        m = DCLS[n].from_dense(conv, span=span)
    assert m.conversion_error == 0.0
    x = inp(m, size=12)
    y = m(x)
    torch.testing.assert_close(y, conv(x))
    y.pow(2).sum().backward()
    g = m.positions.grad
    nonzero = (m.weight != 0).expand_as(g)
    assert nonzero.any() and (g[nonzero] != 0).all(), "every tap with a weight must get a position gradient"


def test_from_dense_on_base_class_dispatches_by_dimension():
    conv = nn.Conv3d(2, 2, 3, padding=1)
    m = DclsConvNd.from_dense(conv)
    assert type(m) is DclsConv3d
    x = torch.randn(1, 2, 5, 5, 5)
    torch.testing.assert_close(m(x), conv(x))


def test_from_dense_with_zeros_needs_only_nonzero_taps():
    torch.manual_seed(9)
    conv = nn.Conv2d(3, 5, 5, padding=2)
    with torch.no_grad():
        conv.weight.mul_((torch.rand_like(conv.weight) < 0.3).float())
    kc = int((conv.weight != 0).flatten(2).sum(-1).max())
    m = DclsConv2d.from_dense(conv, kernel_count=kc, span=7)
    assert m.conversion_error == 0.0
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(m(x), conv(x))


def test_from_dense_fewer_taps_keeps_largest_and_reports_error():
    torch.manual_seed(10)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with pytest.warns(UserWarning, match="relative kernel error"):
        m = DclsConv2d.from_dense(conv, kernel_count=4)
    w = conv.weight.detach().flatten(2)
    kept = w.abs().topk(4, dim=-1).values
    torch.testing.assert_close(m.weight.abs().sort(-1, descending=True).values, kept)
    dropped = w.pow(2).sum() - kept.pow(2).sum()
    expected = float((dropped / w.pow(2).sum()).sqrt())
    assert m.conversion_error == pytest.approx(expected, rel=1e-4)
    # The kept taps are at their original places: the dense kernel with the small weights zeroed.
    pruned = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        thresh = kept[..., -1:].unsqueeze(-1)
        pruned.weight.copy_(conv.weight * (conv.weight.abs() >= thresh))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(m(x), pruned(x))


def test_from_dense_gauss_reports_error():
    conv = nn.Conv1d(2, 2, 5, padding=2)
    with pytest.warns(UserWarning, match="gauss"):
        m = DclsConv1d.from_dense(conv, interpolation="gauss", sigma=0.3)
    assert 0 < m.conversion_error < 1


@pytest.mark.parametrize(
    "conv,span,match",
    [
        (nn.Conv2d(2, 2, 5), 3, "span"),
        (nn.Conv2d(2, 2, 3, padding=1), 4, "odd amount"),
        (nn.Conv1d(2, 2, 3, padding="same", dilation=2), 6, "cannot be placed"),
    ],
)
def test_from_dense_bad_span(conv, span, match):
    with pytest.raises(ValueError, match=match):
        DCLS[conv.weight.dim() - 2].from_dense(conv, span=span)


def test_from_dense_bad_module_and_kernel_count():
    with pytest.raises(TypeError, match="Conv2d"):
        DclsConv2d.from_dense(nn.Conv1d(2, 2, 3))
    with pytest.raises(TypeError, match="expects an nn.Conv1d"):
        DclsConv1d.from_dense(nn.ConvTranspose1d(2, 2, 3))
    with pytest.raises(ValueError, match="kernel_count=10"):
        DclsConv2d.from_dense(nn.Conv2d(2, 2, 3), kernel_count=10)


# ----------------------------------------------------------------------------------------------- DCLS -> dense
TO_DENSE = [
    (1, "gauss", {"padding": "same", "span": (6,)}),
    (2, "bilinear", {"padding": "same", "span": (4, 6), "dilation": 2}),
    (2, "gauss", {"padding": 2, "padding_mode": "reflect", "groups": 2}),
    (2, "gauss", {"padding": "same", "span": (4, 5), "padding_mode": "replicate"}),
    (3, "bilinear", {"padding": (1, 0, 2), "stride": (1, 2, 1), "groups": 2}),
    (3, "gauss", {"padding": "valid", "bias": False}),
]


@pytest.mark.parametrize("n,interpolation,kw", TO_DENSE)
def test_to_dense_is_exact(n, interpolation, kw):
    torch.manual_seed(11)
    m = make(n, interpolation, **kw)
    dense = m.to_dense()
    assert type(dense) is DENSE[n]
    assert not any(p.requires_grad is False for p in dense.parameters())
    x = inp(m, size=10)
    expected = dense_twin(m)(x)
    torch.testing.assert_close(dense(x), expected)
    torch.testing.assert_close(m(x), expected)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"kernel_count": 0}, ValueError, "kernel_count=0"),
        ({"span": 0}, ValueError, r"span=\(0, 0\)"),
        ({"span": (3, -1)}, ValueError, "span"),
        ({"in_channels": 6, "groups": 4}, ValueError, "groups=4"),
        ({"out_channels": 5, "groups": 2}, ValueError, "out_channels=5"),
        ({"interpolation": "cubic"}, ValueError, "interpolation='cubic'"),
        ({"padding_mode": "mirror"}, ValueError, "padding_mode='mirror'"),
        ({"padding": "full"}, ValueError, "padding='full'"),
        ({"sigma": float("nan")}, ValueError, "sigma=nan"),
        ({"span": (3, 3, 3)}, TypeError, "span"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    args = {"in_channels": 4, "out_channels": 6, "kernel_count": 3, "span": 5, **kwargs}
    with pytest.raises(exc, match=match):
        DclsConv2d(**args)


def test_bad_forward_input():
    m = make(2, "gauss")
    with pytest.raises(ValueError, match=r"shape \(4, 7\) has 2 dims; expected a 4-D input \[N, C, H, W\]"):
        m(torch.randn(4, 7))
    with pytest.raises(ValueError, match="expected in_channels=4"):
        m(torch.randn(2, 3, 7, 7))
    assert m(torch.randn(4, 7, 7)).shape == (6, 5, 7)  # unbatched input is fine (span (5, 3), padding 1)


@pytest.mark.parametrize("name", ["positions", "sigma", "weight"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_parameters_reported(name, value):
    m = make(2, "gauss")
    with torch.no_grad():
        getattr(m, name).view(-1)[0] = value
    with pytest.raises(ValueError, match=f"{name} has 1 non-finite"):
        m.validate()
    with pytest.raises(ValueError, match=name):
        m.to_dense()
    with pytest.warns(RuntimeWarning, match=f"saving the module: .*{name} has 1 non-finite"):
        m.state_dict()
    with pytest.warns(RuntimeWarning, match=f"saving '0': .*{name} has 1 non-finite"):
        torch.nn.Sequential(m).state_dict()  # nested: the key prefix names the module


def test_finite_parameters_save_without_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(2, "gauss").state_dict()


def test_import_is_light():
    code = (
        "import sys, dclszoo, dclszoo.convert, dclszoo.modules, dclszoo.functional\n"
        "heavy = [m for m in ('timm', 'transformers', 'spikingjelly', 'triton', 'numba', 'DCLS') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import dclszoo pulled in: {out.stdout.strip()}"


def test_widened_position_bounds_are_respected_and_validated():
    m = DclsConv1d(1, 1, 1, 5, padding=2, bias=False)
    assert m.position_bounds == ((-2.0,), (2.0,))
    m.position_bounds = ((-2.0,), (4.0,))
    with torch.no_grad():
        m.positions.fill_(3.5)
        m.weight.fill_(1.0)
    torch.optim.SGD(m.parameters(), lr=0.0).step()
    assert m.positions.item() == 3.5  # inside the widened range: kept
    twin = copy.deepcopy(m)
    assert twin.position_bounds == ((-2.0,), (4.0,))
    x = torch.randn(1, 1, 9)
    torch.testing.assert_close(m(x), dense_twin(m)(x))  # the Gaussian centred off the grid, normalised on it
    m.position_bounds = None
    torch.optim.SGD(m.parameters(), lr=0.0).step()
    assert m.positions.item() == 2.0
    with pytest.raises(ValueError, match="lo must be <= its hi"):
        m.position_bounds = ((1.0,), (0.0,))
    with pytest.raises(ValueError, match="finite"):
        m.position_bounds = ((-2.0, 0.0), (2.0, 1.0))
    with pytest.raises(TypeError, match="position_bounds"):
        m.position_bounds = 3


def test_clamp_of_a_flattened_shard():
    """FSDP leaves parameters as flat shards between steps (of any length, possibly empty): the step clamp must
    neither fail nor clamp an element by another axis's bounds."""
    torch.manual_seed(0)
    m = DclsConv2d(4, 4, 3, 7, padding="same", groups=4)
    full = m.positions.detach().clone()
    for shard in (full.flatten()[5:17].clone() * 10, full.flatten()[:0].clone()):
        m.positions.data = shard
        m.clamp_parameters()
        assert m.positions.abs().max().item() <= 3.0 if shard.numel() else m.positions.numel() == 0
    square = DclsConv2d(2, 2, 3, (5, 7), groups=2)
    square.positions.data = torch.full((6,), 9.0)
    square.clamp_parameters()  # unequal bounds per axis: left to the forward's clamp
    assert torch.all(square.positions == 9.0)
