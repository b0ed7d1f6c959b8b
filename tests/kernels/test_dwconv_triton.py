"""The Triton depthwise convolution (``dclszoo.kernels.dwconv``) and the DCLS layers that run on it, against torch.

References: ``F.conv1d`` / ``F.conv2d`` in float64 on the same (dtype-rounded) inputs for the op; the same DCLS module
with ``DCLSZOO_BACKEND=torch`` (pure-torch construction and ``F.conv``) for the layers. On machines without a GPU
the kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, set by tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dclszoo
from dclszoo.kernels import backend as kb
from dclszoo.kernels import dwconv

TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (4e-3, 4e-3)}


def _close(got, want, what, dtype):
    rtol, atol = TOL[dtype]
    scale = max(1.0, want.abs().max().item())
    err = (got.double() - want).abs().max().item()
    assert err <= atol * scale + rtol * want.abs().max().item(), f"{what}: max error {err:.3e} (scale {scale:.3g})"


def _reference(x, k, b, padding):
    """float64 torch convolution and its gradients for the upstream gradient ``g``."""
    conv = F.conv1d if k.dim() == 3 else F.conv2d
    pads = dwconv.resolve_padding(padding, k.shape[2:])
    xp = F.pad(x, [p for pair in reversed(pads) for p in pair])
    return conv(xp, k, b, groups=x.shape[1])


CASES = [
    # (input shape, span, padding): odd sizes, even and non-square spans, widths across several column blocks
    ((2, 3, 9, 11), (5, 5), "same"),
    ((1, 2, 7, 7), (17, 17), "same"),  # the span larger than the image (ConvNeXt stage 4)
    ((2, 3, 9, 11), (4, 6), "same"),  # even spans: the extra padding cell goes after
    ((2, 3, 9, 11), (3, 5), 1),
    ((2, 2, 6, 8), (3, 5), "valid"),
    ((2, 3, 5, 70), (3, 9), "same"),  # two 64-wide column blocks
    ((3, 4, 20), (7,), "same"),  # 1-D
    ((2, 3, 70), (31,), "same"),  # 1-D, conformer-like kernel, two column blocks
    ((2, 2, 1, 5), (1, 3), (0, 1)),
    ((1, 2, 80), (71,), "same"),  # 64 + 70 input columns: the kernel gradient in several chunks
]


@pytest.mark.parametrize("shape, span, padding", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_matches_torch(shape, span, padding, dtype, triton_device):
    gen = torch.Generator().manual_seed(sum(shape) + sum(span))
    c = shape[1]
    x = torch.randn(shape, generator=gen).to(dtype)
    k = torch.randn((c, 1) + span, generator=gen)
    b = torch.randn(c, generator=gen)
    leaves = [t.double().requires_grad_(True) for t in (x, k.to(dtype), b.to(dtype))]  # what the kernel computes
    y_ref = _reference(*leaves, padding)
    g = torch.randn(y_ref.shape, generator=gen).to(dtype)
    y_ref.backward(g.double())
    xt, kt, bt = (t.clone().to(triton_device).requires_grad_(True) for t in (x, k, b))
    y = dwconv.depthwise_conv(xt, kt, bt, padding, backend="triton")
    assert y.dtype == dtype and y.shape == y_ref.shape
    y.backward(g.to(triton_device))
    _close(y.detach().cpu(), y_ref.detach(), "output", dtype)
    for name, got, want in zip(("input", "kernel", "bias"), (xt, kt, bt), leaves):
        assert got.grad is not None and got.grad.dtype == got.dtype, f"grad {name}"
        _close(got.grad.cpu(), want.grad, f"grad {name}", dtype)


def test_op_channels_last_and_fp16(triton_device):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 13, generator=gen).half().contiguous(memory_format=torch.channels_last)
    k = torch.randn(4, 1, 7, 7, generator=gen)
    xt = x.clone().to(triton_device).requires_grad_(True)
    kt = k.clone().to(triton_device).requires_grad_(True)
    y = dwconv.depthwise_conv(xt, kt, None, "same", backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last), "channels_last in, channels_last out"
    leaves = [x.double().requires_grad_(True), k.half().double().requires_grad_(True)]
    y_ref = _reference(*leaves, None, "same")
    g = torch.randn(y_ref.shape, generator=gen).half()
    y.backward(g.to(triton_device).contiguous(memory_format=torch.channels_last))
    y_ref.backward(g.double())
    _close(y.detach().cpu(), y_ref.detach(), "output", torch.float16)
    _close(xt.grad.cpu(), leaves[0].grad, "grad input", torch.float16)
    _close(kt.grad.cpu(), leaves[1].grad, "grad kernel", torch.float16)


def test_kernel_gradient_split_over_rows(triton_device, monkeypatch):
    """Enough rows that the kernel gradient is split over several programs whose partial sums torch adds."""
    from dclszoo.kernels import _dwconv_triton

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 1, 16, 5, generator=gen)  # 144 rows of 16 -> 9 row splits of one block each
    g = torch.randn(9, 1, 16, 5, generator=gen)
    want = torch.nn.grad.conv2d_weight(x.double(), (1, 1, 3, 3), g.double(), padding=1, groups=1)
    got = _dwconv_triton.grad_kernel(x.to(triton_device), g.to(triton_device), (3, 3), (1, 1))
    _close(got.cpu().view(1, 1, 3, 3), want, "kernel gradient", torch.float32)


# ------------------------------------------------------------------------------------------ DCLS layers
def _layers(cls, channels, taps, span, interpolation, seed, device):
    torch.manual_seed(seed)
    a = cls(channels, channels, taps, span, padding="same", groups=channels, interpolation=interpolation)
    with torch.no_grad():  # taps on and near the border: the straight-through clamp and the bilinear border cell
        hi = torch.tensor([s - 1 - s // 2 for s in a.span], dtype=torch.float32).view(-1, 1, 1, 1)
        a.positions[..., 0] = hi[..., 0]
        a.positions[..., 1] = -hi[..., 0] - 0.5
    b = cls(channels, channels, taps, span, padding="same", groups=channels, interpolation=interpolation)
    b.load_state_dict(a.state_dict())
    return a.to(device), b


@pytest.mark.parametrize("interpolation", ["bilinear", "gauss"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_dcls_layer_on_triton_matches_torch(interpolation, ndim, triton_device, monkeypatch):
    cls, shape, span = ((dclszoo.DclsConv1d, (2, 5, 23), 9) if ndim == 1 else
                        (dclszoo.DclsConv2d, (2, 5, 10, 12), (7, 5)))
    tri, ref = _layers(cls, 5, 4, span, interpolation, seed=ndim, device=triton_device)
    x = torch.randn(shape)
    xs = [x.clone().to(triton_device).requires_grad_(True), x.clone().requires_grad_(True)]
    calls = []
    kernels = dwconv._triton()
    for name in ("forward", "grad_kernel"):
        monkeypatch.setattr(kernels, name, lambda *a, _f=getattr(kernels, name), _n=name: calls.append(_n) or _f(*a))
    monkeypatch.setenv(kb.ENV, "triton")
    y_tri = tri(xs[0])
    y_tri.square().sum().backward()
    assert calls == ["forward", "forward", "grad_kernel"], calls  # output, input gradient, kernel gradient
    monkeypatch.setenv(kb.ENV, "torch")
    y_ref = ref(xs[1])
    y_ref.square().sum().backward()
    _close(y_tri.detach().cpu(), y_ref.detach().double(), "output", torch.float32)
    _close(xs[0].grad.cpu(), xs[1].grad.double(), "grad input", torch.float32)
    for name, p in ref.named_parameters():
        _close(dict(tri.named_parameters())[name].grad.cpu(), p.grad.double(), f"grad {name}", torch.float32)


def test_dcls_layer_under_bf16_autocast(triton_device, monkeypatch):
    """Under autocast the Triton path computes what the torch path computes: a bf16 convolution with the kernel
    cast to bf16, a bf16 output, float32 parameter gradients."""
    tri, ref = _layers(dclszoo.DclsConv2d, 4, 5, 9, "bilinear", seed=4, device=triton_device)
    x = torch.randn(2, 4, 8, 8)
    out = {}
    for name, mod, dev in (("triton", tri, triton_device), ("torch", ref, "cpu")):
        monkeypatch.setenv(kb.ENV, name)
        with torch.autocast(dev, dtype=torch.bfloat16):
            y = mod(x.to(dev))
        assert y.dtype == torch.bfloat16, name
        y.float().sum().backward()
        out[name] = (y.detach().cpu(), {n: p.grad.cpu() for n, p in mod.named_parameters()})
    _close(out["triton"][0], out["torch"][0].double(), "output", torch.bfloat16)
    for n, g in out["torch"][1].items():
        assert out["triton"][1][n].dtype == torch.float32
        _close(out["triton"][1][n], g.double(), f"grad {n}", torch.bfloat16)


def test_dense_dcls_layers_keep_torch_conv(triton_device, monkeypatch):
    """Dense and strided layers use F.conv with the Triton-built kernel; the automatic choice never raises."""
    monkeypatch.setenv(kb.ENV, "construct=triton")
    torch.manual_seed(0)
    dense = dclszoo.DclsConv2d(3, 4, 3, 5, padding=2).to(triton_device)
    x = torch.randn(1, 3, 6, 6, device=triton_device)
    monkeypatch.setenv(kb.ENV, "construct=torch")
    want = dense(x)
    monkeypatch.setenv(kb.ENV, "construct=triton,dwconv=triton")
    torch.testing.assert_close(dense(x), want, rtol=1e-5, atol=1e-5)  # not depthwise: never the dwconv op
    strided = dclszoo.DclsConv2d(4, 4, 3, 5, stride=2, padding=2, groups=4).to(triton_device)
    with pytest.raises(ValueError, match="stride"):
        strided(torch.randn(1, 4, 8, 8, device=triton_device))
    monkeypatch.setenv(kb.ENV, "construct=triton")
    assert strided(torch.randn(1, 4, 8, 8, device=triton_device)).shape == (1, 4, 4, 4)


def test_custom_ops_and_torch_compile(triton_device):
    x = torch.randn(2, 3, 6, 7, device=triton_device)
    k = torch.randn(3, 1, 5, 5, device=triton_device)
    b = torch.randn(3, device=triton_device)
    torch.library.opcheck(dwconv._forward_op, (x, k, b, [2, 2], [6, 7]))
    torch.library.opcheck(dwconv._backward_op, (torch.randn(2, 3, 6, 7, device=triton_device), x, k, [2, 2], True, True))
    torch._dynamo.reset()
    leaves = [t.clone().requires_grad_(True) for t in (x, k, b)]
    fn = torch.compile(lambda a, w, c: dwconv.depthwise_conv(a, w, c, "same", backend="triton"), backend="aot_eager",
                       fullgraph=True)
    y = fn(*leaves)
    y.sum().backward()
    ref = [t.double().requires_grad_(True) for t in (x.cpu(), k.cpu(), b.cpu())]
    y_ref = _reference(*ref, "same")
    y_ref.sum().backward()
    _close(y.detach().cpu(), y_ref.detach(), "compiled output", torch.float32)
    for leaf, want in zip(leaves, ref):
        _close(leaf.grad.cpu(), want.grad, "compiled grad", torch.float32)


def test_compiled_dcls_layer_on_triton(triton_device, monkeypatch):
    """torch.compile of a whole depthwise DCLS layer on the Triton path (construction and convolution custom ops)."""
    tri, ref = _layers(dclszoo.DclsConv2d, 3, 4, 5, "gauss", seed=6, device=triton_device)
    x = torch.randn(2, 3, 7, 9)
    monkeypatch.setenv(kb.ENV, "triton")
    torch._dynamo.reset()
    y = torch.compile(tri, backend="aot_eager")(x.to(triton_device))
    y.square().sum().backward()
    monkeypatch.setenv(kb.ENV, "torch")
    y_ref = ref(x)
    y_ref.square().sum().backward()
    _close(y.detach().cpu(), y_ref.detach().double(), "compiled output", torch.float32)
    for name, p in ref.named_parameters():
        _close(dict(tri.named_parameters())[name].grad.cpu(), p.grad.double(), f"compiled grad {name}", torch.float32)


def test_bias_only_gradient_and_partial_backward_ops(triton_device):
    """Only the bias trains (frozen input and kernel): the backward op is not needed and must not fail; the op
    itself, asked for neither or one gradient, returns distinct (non-aliasing) outputs as custom ops must."""
    x = torch.randn(2, 3, 6, 7, device=triton_device)
    k = torch.randn(3, 1, 5, 5, device=triton_device)
    b = torch.randn(3, device=triton_device, requires_grad=True)
    g = torch.randn(2, 3, 6, 7, device=triton_device)
    dwconv.depthwise_conv(x, k, b, "same", backend="triton").backward(g)
    torch.testing.assert_close(b.grad.cpu(), g.sum(dim=(0, 2, 3)).cpu())  # dy summed over batch and space
    for need_x, need_k in ((False, False), (True, False), (False, True)):
        torch.library.opcheck(dwconv._backward_op, (g, x, k, [2, 2], need_x, need_k))
