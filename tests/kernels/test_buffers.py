"""The reusable output buffers of the fused CPU construction (``dclszoo.kernels._buffers``).

A pooled storage may be handed out again only when nothing references it: every test keeps a result (a kernel,
a kernel saved by autograd, a ``.grad``) alive across a later call and checks it is intact, and checks the values
of the later call against the pure-torch construction (``DCLSZOO_BACKEND=torch``).
"""

from __future__ import annotations

import threading

import pytest
import torch

import dclszoo
from dclszoo.functional import dcls_kernel
from dclszoo.kernels import _buffers, construct

pytestmark = pytest.mark.skipif(not construct.numba_available(), reason="numba is not installed")

SPAN = (7, 7)


@pytest.fixture(autouse=True)
def _fresh_pool(monkeypatch):
    monkeypatch.delenv(_buffers.ENV_REUSE, raising=False)
    monkeypatch.delenv(construct.ENV_BACKEND, raising=False)
    dclszoo.empty_cache()
    yield
    dclszoo.empty_cache()


def _params(seed, o=64, i=64, k=9, requires_grad=False):
    """Parameters large enough for the pool (kernel 784 KiB, gradients 144-288 KiB)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(o, i, k, generator=gen)
    p = (torch.rand(2, o, i, k, generator=gen) - 0.5) * 6
    s = 0.4 + torch.rand(2, o, i, k, generator=gen)
    return [t.requires_grad_(requires_grad) for t in (w, p, s)]


def _kernel(params):
    return dcls_kernel(*params, SPAN, "gauss")


def _torch_kernel(params, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv(construct.ENV_BACKEND, "torch")
        return _kernel(params)


def test_kept_kernel_is_not_overwritten(monkeypatch):
    a, b = _params(0), _params(1)
    k1 = _kernel(a)
    snapshot = k1.clone()
    k2 = _kernel(b)
    assert k2.data_ptr() != k1.data_ptr()
    torch.testing.assert_close(k1, snapshot, rtol=0, atol=0)
    torch.testing.assert_close(k2, _torch_kernel(b, monkeypatch), rtol=1e-5, atol=1e-6)


def test_released_kernel_storage_is_reused(monkeypatch):
    a, b = _params(0), _params(1)
    k1 = _kernel(a)
    ptr = k1.data_ptr()
    del k1
    k2 = _kernel(b)
    assert k2.data_ptr() == ptr, "a storage no one references should be handed out again"
    assert _buffers.cached_bytes() == k2.numel() * 4
    torch.testing.assert_close(k2, _torch_kernel(b, monkeypatch), rtol=1e-5, atol=1e-6)


def test_kernel_saved_by_autograd_survives_a_second_forward(monkeypatch):
    """A layer called twice in one graph: the first kernel is saved by its convolution until the backward."""

    def grads(backend):
        with monkeypatch.context() as m:
            if backend is not None:
                m.setenv(construct.ENV_BACKEND, backend)
            torch.manual_seed(0)
            layer = dclszoo.DclsConv2d(64, 64, 9, 7, padding=3)
            x1, x2 = torch.randn(2, 64, 9, 9), torch.randn(2, 64, 9, 9)
            (layer(x1) * layer(x2)).sum().backward()
            return [p.grad for p in layer.parameters()]

    for ours, ref in zip(grads(None), grads("torch")):
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3)


def test_held_gradient_is_not_overwritten_and_accumulation_is_right(monkeypatch):
    a = _params(2, requires_grad=True)
    g1, g2 = torch.randn(64, 64, *SPAN), torch.randn(64, 64, *SPAN)

    def reference(g):
        with monkeypatch.context() as m:
            m.setenv(construct.ENV_BACKEND, "torch")
            return torch.autograd.grad(_kernel(a), a, g)

    _kernel(a).backward(g1)
    held = [t.grad for t in a]
    assert any(_buffers.MIN_BYTES <= g.numel() * 4 for g in held)  # pooled gradients are among them
    snapshot = [g.clone() for g in held]
    for t in a:
        t.grad = None  # zero_grad(set_to_none=True), the user still holding the old gradients
    _kernel(a).backward(g2)
    for g, s in zip(held, snapshot):
        torch.testing.assert_close(g, s, rtol=0, atol=0)
    for t, r in zip(a, reference(g2)):
        assert t.grad.data_ptr() not in {g.data_ptr() for g in held}
        torch.testing.assert_close(t.grad, r, rtol=1e-4, atol=1e-4)
    _kernel(a).backward(g1)  # accumulated into the existing .grad
    for t, r1, r2 in zip(a, reference(g1), reference(g2)):
        torch.testing.assert_close(t.grad, r1 + r2, rtol=1e-4, atol=1e-4)


def test_gradients_released_with_set_to_none_are_reused():
    a = _params(3, requires_grad=True)
    g = torch.randn(64, 64, *SPAN)
    _kernel(a).backward(g)
    ptr = a[1].grad.data_ptr()
    for t in a:
        t.grad = None
    _kernel(a).backward(g)
    assert a[1].grad.data_ptr() == ptr, "autograd should adopt the pooled gradient and give it back when dropped"


def test_reuse_can_be_disabled(monkeypatch):
    monkeypatch.setenv(_buffers.ENV_REUSE, "0")
    k = _kernel(_params(0))
    assert _buffers.cached_bytes() == 0
    torch.testing.assert_close(k, _torch_kernel(_params(0), monkeypatch), rtol=1e-5, atol=1e-6)


def test_empty_cache_keeps_buffers_in_use_valid():
    k = _kernel(_params(0))
    snapshot = k.clone()
    assert _buffers.cached_bytes() > 0
    dclszoo.empty_cache()
    assert _buffers.cached_bytes() == 0
    _kernel(_params(1))
    torch.testing.assert_close(k, snapshot, rtol=0, atol=0)


def test_small_buffers_are_not_pooled():
    _buffers.empty(_buffers.MIN_BYTES // 4 - 1)
    assert _buffers.cached_bytes() == 0


def test_no_two_holders_under_threads():
    """Threads taking, filling and checking buffers of one size: no buffer is ever handed to two holders."""
    numel, errors = _buffers.MIN_BYTES // 4, []

    def work(tag):
        for _ in range(300):
            t = _buffers.empty(numel)
            t.fill_(tag)
            if not bool((t == tag).all()):
                errors.append(tag)
            del t

    threads = [threading.Thread(target=work, args=(float(n),)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _buffers.cached_bytes() <= 4 * numel * 4


def test_inference_mode_and_training_share_the_pool(monkeypatch):
    """Pooled storages pass between inference-mode, no-grad and training calls with the same values."""
    torch.manual_seed(0)
    layer = dclszoo.DclsConv2d(64, 64, 9, 7, padding=3)
    x = torch.randn(2, 64, 9, 9)
    with monkeypatch.context() as m:
        m.setenv(construct.ENV_BACKEND, "torch")
        with torch.no_grad():
            ref = layer(x)
    with torch.inference_mode():
        first = layer(x)
    layer(x).sum().backward()
    with torch.inference_mode():
        again = layer(x)
    assert _buffers.cached_bytes() > 0
    for y in (first, again):
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
