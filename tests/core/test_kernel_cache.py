"""The inference kernel cache of the DCLS layers: reused in eval/no-grad, never stale.

The reference for "not stale" is a freshly built module with the same parameters (no cache), and the kernel
built by the op directly.
"""

from __future__ import annotations

import copy

import pytest
import torch

import dclszoo


def _layer(interpolation="gauss"):
    torch.manual_seed(0)
    return dclszoo.DclsConv2d(4, 4, 3, 7, padding="same", groups=4, interpolation=interpolation)


def _fresh_kernel(module):
    with torch.no_grad():
        return module._build_kernel()


@pytest.mark.parametrize("interpolation", ["gauss", "bilinear"])
def test_cached_in_eval_without_grad(interpolation):
    m = _layer(interpolation).eval()
    with torch.no_grad():
        k1, k2 = m.kernel(), m.kernel()
        assert k1 is k2, "eval + no_grad must reuse the kernel"
        y = m(torch.randn(1, 4, 9, 9))
    assert y.shape == (1, 4, 9, 9)
    torch.testing.assert_close(k1, _fresh_kernel(m), rtol=0, atol=0)


def test_not_cached_in_training_or_with_grad():
    m = _layer()
    with torch.no_grad():
        assert m.kernel() is not m.kernel()  # training mode
    m.eval()
    assert m.kernel() is not m.kernel()  # gradients enabled
    assert m.kernel().requires_grad


def test_optimizer_step_invalidates():
    m = _layer()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m.eval()
    with torch.no_grad():
        before = m.kernel()
    m.train()
    m(torch.randn(1, 4, 9, 9)).square().sum().backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        after = m.kernel()
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, _fresh_kernel(m), rtol=0, atol=0)


def test_step_in_eval_mode_invalidates():
    """An update made while the module stays in eval mode (no train() call) still invalidates: version counters."""
    m = _layer().eval()
    with torch.no_grad():
        before = m.kernel()
        m.positions.add_(0.3)
        after = m.kernel()
    assert after is not before and not torch.equal(before, after)
    torch.testing.assert_close(after, _fresh_kernel(m), rtol=0, atol=0)


def test_load_state_dict_invalidates():
    m, other = _layer().eval(), _layer()
    with torch.no_grad():
        other.positions.normal_(0, 1)
        other.weight.mul_(2)
        before = m.kernel()
    m.load_state_dict(other.state_dict())
    with torch.no_grad():
        after = m.kernel()
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, _fresh_kernel(other), rtol=0, atol=0)


def test_train_drops_and_copies_do_not_share():
    m = _layer().eval()
    with torch.no_grad():
        m.kernel()
    twin = copy.deepcopy(m)
    assert "_kernel_cache" not in twin.__dict__
    m.train()
    assert "_kernel_cache" not in m.__dict__


def test_writes_through_data_need_clear():
    """``param.data`` writes bypass version counters (documented); clear_kernel_cache() is the way out."""
    m = _layer().eval()
    with torch.no_grad():
        m.kernel()
        m.weight.data.mul_(3)
        m.clear_kernel_cache()
        torch.testing.assert_close(m.kernel(), _fresh_kernel(m), rtol=0, atol=0)

