"""DelayedLinear / DelayedConv2d against a float64 plain-formula oracle; paths, causality, streaming, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dclszoo import DelayedConv2d, DelayedLinear


def _profile64(delays: torch.Tensor, sigma: float, max_delay: int) -> torch.Tensor:
    """``[..., max_delay]`` weight of each integer delay: normalised Gaussian, or one-hot of the rounded delay."""
    d = delays.double().clamp(0, max_delay - 1)
    grid = torch.arange(max_delay, dtype=torch.float64)
    if sigma == 0:
        return (grid == torch.round(d.detach())[..., None]).double()
    g = torch.exp(-0.5 * ((grid - d[..., None]) / sigma) ** 2)
    return g / (g.sum(-1, keepdim=True) + 1e-7)


def _shift(x: torch.Tensor, j: int) -> torch.Tensor:
    """``x`` delayed by ``j`` steps along dim 0 (zeros enter)."""
    out = torch.zeros_like(x)
    if j < x.shape[0]:
        out[j:] = x[: x.shape[0] - j]
    return out


def linear_oracle(m: DelayedLinear, x: torch.Tensor) -> torch.Tensor:
    """``y[t,o] = b[o] + sum_{i,k,j} w[o,i,k] prof[o,i,k,j] x[t-j,i]`` in float64, x ``[T, B, I]``."""
    prof = _profile64(m.delays, float(m.sigma), m.max_delay)
    kern = (m.weight.double()[..., None] * prof).sum(2)  # [O, I, D], index = delay
    y = sum(torch.einsum("tbi,oi->tbo", _shift(x.double(), j), kern[..., j]) for j in range(m.max_delay))
    return y + (m.bias.double() if m.bias is not None else 0)


def conv_oracle(m: DelayedConv2d, x: torch.Tensor) -> torch.Tensor:
    prof = _profile64(m.delays, float(m.sigma), m.max_delay)  # [O, I, kc, D]
    steps, batch = x.shape[:2]
    y = 0
    for j in range(m.max_delay):
        w = (m.weight.double() * prof[..., j][..., None, None]).sum(2)
        out = F.conv2d(_shift(x.double(), j).flatten(0, 1), w, None, m.stride, m.padding, m.dilation, m.groups)
        y = y + out.view((steps, batch) + out.shape[1:])
    return y + m.bias.double().view(1, 1, -1, 1, 1)


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("sigma", [4.0, 0.7, 0.0])
@pytest.mark.parametrize("kc", [1, 2])
def test_linear_matches_formula_values_and_gradients(path, sigma, kc):
    torch.manual_seed(kc)
    m = DelayedLinear(7, 5, 11, kernel_count=kc, sigma=sigma, path=path)
    x = torch.randn(13, 3, 7, requires_grad=True)
    y = m(x)
    x64 = x.detach().double().requires_grad_(True)
    w64 = m.weight.detach().double().requires_grad_(True)
    d64 = m.delays.detach().double().requires_grad_(True)
    ref_mod = type("R", (), {"weight": w64, "delays": d64, "sigma": sigma, "max_delay": 11, "bias": m.bias.detach()})
    ref = linear_oracle(ref_mod, x64)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    y.backward(g.float())
    ref.backward(g)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)
    if sigma > 0:  # integer mode has no delay gradient by design
        torch.testing.assert_close(m.delays.grad.double(), d64.grad, rtol=1e-3, atol=1e-4)
    else:
        assert m.delays.grad is None


def test_dense_and_sparse_agree_and_auto_rule():
    torch.manual_seed(0)
    m = DelayedLinear(9, 6, 40, sigma=0.5)
    assert m.taps_per_delay() == 6 and m.use_sparse()  # 4 * 6 <= 40
    m.set_sigma(12.0)
    assert not m.use_sparse()
    m.set_sigma(0.0)
    assert m.taps_per_delay() == 1 and m.use_sparse()
    x = torch.randn(50, 4, 9)
    for sigma in (0.5, 1.3, 0.0):
        m.set_sigma(sigma)
        outs = []
        for path in ("dense", "sparse"):
            m.path = path
            m.zero_grad()
            y = m(x)
            y.square().sum().backward()
            outs.append((y.detach(), m.weight.grad.clone(), None if m.delays.grad is None else m.delays.grad.clone()))
        (y0, gw0, gd0), (y1, gw1, gd1) = outs
        torch.testing.assert_close(y0, y1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gw0, gw1, rtol=1e-4, atol=1e-4)
        if sigma > 0:
            torch.testing.assert_close(gd0, gd1, rtol=1e-4, atol=1e-3)


def test_layouts_batch_first_and_extra_batch_dims():
    torch.manual_seed(1)
    m = DelayedLinear(4, 3, 6, sigma=0.0)
    x = torch.randn(9, 2, 5, 4)
    y = m(x)
    assert y.shape == (9, 2, 5, 3)
    torch.testing.assert_close(y.double(), linear_oracle(m, x.reshape(9, 10, 4)).reshape(9, 2, 5, 3))
    mb = DelayedLinear(4, 3, 6, sigma=0.0, batch_first=True)
    mb.load_state_dict(m.state_dict())
    torch.testing.assert_close(mb(x[:, :, 0].transpose(0, 1)).transpose(0, 1), y[:, :, 0])


@pytest.mark.parametrize("sigma", [2.0, 0.0])
def test_causal_perturbing_the_future_changes_nothing_before(sigma):
    torch.manual_seed(2)
    lin = DelayedLinear(5, 4, 8, sigma=sigma)
    conv = DelayedConv2d(3, 4, 3, 8, padding=1, sigma=sigma)
    for m, x in ((lin, torch.randn(20, 2, 5)), (conv, torch.randn(12, 2, 3, 6, 6))):
        for path in ("dense", "sparse"):
            m.path = path
            t0 = x.shape[0] // 2
            x2 = x.clone()
            x2[t0:] += torch.randn_like(x2[t0:]) * 10
            y, y2 = m(x), m(x2)
            assert torch.equal(y[:t0], y2[:t0])
            assert not torch.allclose(y[t0:], y2[t0:])


def test_streaming_equals_multistep_and_reset():
    torch.manual_seed(3)
    cases = [(DelayedLinear(6, 5, 7, sigma=0.0), torch.randn(15, 3, 6)),
             (DelayedConv2d(2, 3, 3, 5, padding=1, sigma=0.0, groups=1), torch.randn(9, 2, 2, 5, 5))]
    for m, x in cases:
        y_multi = m(x)
        m.step_mode = "s"
        for _ in range(2):  # the second pass checks that reset() cleared the history
            y_stream = torch.stack([m(x[t]) for t in range(x.shape[0])])
            torch.testing.assert_close(y_stream, y_multi, rtol=1e-5, atol=1e-5)
            m.reset()


def test_streaming_needs_integer_delays_and_a_fixed_batch():
    m = DelayedLinear(3, 2, 5, sigma=1.0, step_mode="s")
    with pytest.raises(ValueError, match="integer delays"):
        m(torch.randn(4, 3))
    m.round_delays()
    m(torch.randn(4, 3))
    with pytest.raises(ValueError, match="reset_net"):
        m(torch.randn(2, 3))


def test_conv_matches_formula_both_paths():
    torch.manual_seed(4)
    for sigma in (2.0, 0.5, 0.0):
        m = DelayedConv2d(4, 6, 3, 7, padding=1, groups=2, kernel_count=2, sigma=sigma)
        x = torch.randn(9, 2, 4, 5, 5)
        ref = conv_oracle(m, x)
        for path in ("dense", "sparse"):
            m.path = path
            torch.testing.assert_close(m(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_from_linear_and_from_conv_are_function_identical_and_to_dense_round_trips():
    torch.manual_seed(5)
    lin = torch.nn.Linear(6, 4)
    m = DelayedLinear.from_linear(lin, max_delay=9, kernel_count=2)
    x = torch.randn(10, 3, 6)
    torch.testing.assert_close(m(x), lin(x))
    torch.testing.assert_close(m.to_dense()(x), lin(x))
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    mc = DelayedConv2d.from_conv(conv, max_delay=4)
    xc = torch.randn(5, 2, 3, 6, 6)
    torch.testing.assert_close(mc(xc), conv(xc.flatten(0, 1)).view(5, 2, 4, 6, 6))
    torch.testing.assert_close(mc.to_dense().weight, conv.weight)
    with torch.no_grad():
        m.delays[0, 0, 0] = 3.0
    with pytest.raises(ValueError, match="no nn.Linear equivalent"):
        m.to_dense()
    m.set_sigma(2.0)
    with torch.no_grad():
        m.delays.zero_()
    with pytest.raises(ValueError, match="sigma=2"):  # a wide Gaussian at delay 0 still spreads in time
        m.to_dense()


def test_delays_are_clamped_after_an_optimizer_step():
    m = DelayedLinear(3, 2, 5, sigma=1.0)
    opt = torch.optim.SGD(m.parameters(), lr=1e4)
    m(torch.randn(6, 1, 3)).sum().backward()
    with torch.no_grad():
        m.delays.grad.fill_(-1.0)  # pushes every delay up by 1e4 steps
    opt.step()
    assert float(m.delays.detach().max()) == 4.0 and float(m.delays.detach().min()) >= 0.0


def test_round_delays_and_state_dict_restore_sigma():
    m = DelayedLinear(3, 2, 6, sigma=1.5)
    with torch.no_grad():
        m.delays.copy_(torch.tensor([[[0.4], [2.6], [5.0]], [[1.2], [3.5], [4.49]]]))
    m2 = DelayedLinear(3, 2, 6, sigma=3.0)
    m2.load_state_dict(m.state_dict())
    assert m2._sigma_value == 1.5 and not m2.integer_mode
    m.round_delays()
    assert m.integer_mode and m.delays.flatten().tolist() == [0.0, 3.0, 5.0, 1.0, 4.0, 4.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_delay": 0}, "max_delay=0"),
        ({"max_delay": 2.5}, "max_delay=2.5"),
        ({"max_delay": 4, "sigma": -1.0}, "sigma=-1.0"),
        ({"max_delay": 4, "path": "fast"}, "path='fast'"),
        ({"max_delay": 4, "kernel_count": 0}, "kernel_count=0"),
        ({"max_delay": 4, "step_mode": "x"}, "step_mode='x'"),
    ],
)
def test_bad_construction_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DelayedLinear(3, 2, **kwargs)


def test_bad_inputs_name_the_layout():
    m = DelayedLinear(3, 2, 4)
    with pytest.raises(ValueError, match=r"\[T, N, \.\.\., C\].*in_features = 3"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="T=0"):
        m(torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match=r"\[N, T, \.\.\., C\]"):
        DelayedLinear(3, 2, 4, batch_first=True)(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="expects"):
        DelayedConv2d(3, 2, 3, 4)(torch.randn(2, 3, 5, 5))  # one step given to a multi-step module
    with pytest.raises(ValueError, match="not integers"):
        DelayedLinear(3, 2, 4, sigma=1.0).integer_delays()
