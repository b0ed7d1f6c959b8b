"""SpikingJelly plugin: patched networks equal the unpatched ones, train, reset, stream, unpatch, reload."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn as nn

import dclszoo
from dclszoo.delays_training import SigmaSchedule, delay_param_groups, round_delays

sj = pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import base, functional, layer, neuron, surrogate  # noqa: E402


def snn_delays_net(n_in=12, hidden=16, n_out=5, step_mode="m", container=True):
    """The SNN-delays architecture: Linear -> BatchNorm1d -> LIF -> Dropout, twice, then a Linear readout."""
    def lif():
        return neuron.LIFNode(tau=1.05, decay_input=False, v_threshold=1.0, surrogate_function=surrogate.ATan(5.0),
                              detach_reset=True, step_mode=step_mode)

    return nn.Sequential(
        layer.Linear(n_in, hidden, bias=False, step_mode=step_mode), layer.BatchNorm1d(hidden, step_mode=step_mode),
        lif(), layer.Dropout(0.4, step_mode=step_mode),
        layer.SeqToANNContainer(nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden)) if container else
        nn.Sequential(layer.Linear(hidden, hidden, bias=False, step_mode=step_mode),
                      layer.BatchNorm1d(hidden, step_mode=step_mode)),
        lif(), layer.Dropout(0.4, step_mode=step_mode),
        layer.Linear(hidden, n_out, step_mode=step_mode),
    )


def _spikes(steps=20, batch=4, ch=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, batch, ch, generator=g) < 0.4).float()


def _run(net, x):
    functional.reset_net(net)
    return net(x)


def test_snn_delays_net_patched_is_function_identical_and_reports_the_synapses():
    torch.manual_seed(0)
    net = snn_delays_net().eval()
    orig = copy.deepcopy(net)
    x = _spikes()
    report = dclszoo.patch(net, dclszoo.DelayConfig(max_delay=8))
    assert report.plugin == "spikingjelly"
    assert [r.name for r in report.replaced] == ["0", "4.0", "7"]
    assert isinstance(net[0], base.MemoryModule) and net[0].step_mode == "m"
    torch.testing.assert_close(_run(net, x), _run(orig, x), rtol=1e-5, atol=1e-6)
    dclszoo.unpatch(net)
    assert type(net[0]) is layer.Linear and type(net[4]) is layer.SeqToANNContainer and type(net[4][0]) is nn.Linear
    torch.testing.assert_close(_run(net, x), _run(orig, x), rtol=1e-5, atol=1e-6)


def test_patched_net_trains_delays_and_loss_decreases():
    torch.manual_seed(1)
    net = snn_delays_net()
    dclszoo.patch(net, dclszoo.DelayConfig(max_delay=8, sigma=3.0))
    sched = SigmaSchedule(net, total_steps=30)
    assert net[0]._sigma_value == 3.0
    opt = torch.optim.Adam(delay_param_groups(net, lr=1e-2, delay_lr=0.5))
    x, y = _spikes(batch=16, seed=1), torch.randint(0, 5, (16,))
    d0 = net[0].delays.detach().clone()
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(_run(net, x).sum(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert not torch.equal(net[0].delays.detach(), d0)
    assert float(net[0].delays.detach().min()) >= 0 and float(net[0].delays.detach().max()) <= 7


def test_streaming_net_equals_multistep_and_reset_net_clears_history(caplog):
    torch.manual_seed(2)
    net = snn_delays_net(step_mode="m", container=False).eval()  # SeqToANNContainer is multi-step only
    dclszoo.patch(net, dclszoo.DelayConfig(max_delay=6))
    with torch.no_grad():
        for m in (net[0], net[4][0], net[7]):
            m.delays.copy_(torch.randint(0, 6, m.delays.shape).float())
    x = _spikes(steps=15)
    y_multi = _run(net, x)
    stream = snn_delays_net(step_mode="s", container=False).eval()
    dclszoo.patch(stream, dclszoo.DelayConfig(max_delay=6))
    stream.load_state_dict(net.state_dict())
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the second pass only matches if reset_net cleared every history
            functional.reset_net(stream)
            y_stream = torch.stack([stream(x[t]) for t in range(x.shape[0])])
            torch.testing.assert_close(y_stream, y_multi, rtol=1e-5, atol=1e-5)
    assert "not a MemoryModule" not in caplog.text
    assert stream[0]._history is not None
    functional.reset_net(stream)
    assert stream[0]._history is None


def test_set_step_mode_and_checkpoint_reload():
    torch.manual_seed(3)
    net = snn_delays_net().eval()
    dclszoo.patch(net, dclszoo.DelayConfig(max_delay=5))
    SigmaSchedule(net, total_steps=4, start=2.0)
    with torch.no_grad():
        net[0].delays.uniform_(0, 4)
    functional.set_step_mode(net, "s")
    assert net[0].step_mode == "s"
    functional.set_step_mode(net, "m")
    state = copy.deepcopy(net.state_dict())
    fresh = snn_delays_net().eval()
    dclszoo.patch(fresh, dclszoo.DelayConfig(max_delay=5))
    fresh.load_state_dict(state)
    x = _spikes(seed=3)
    assert fresh[0]._sigma_value == 2.0
    torch.testing.assert_close(_run(fresh, x), _run(net, x))


def test_model_zoo_network_with_conv_targets_is_function_identical():
    from spikingjelly.activation_based.model import parametric_lif_net

    torch.manual_seed(4)
    net = parametric_lif_net.NMNISTNet(channels=4, spiking_neuron=neuron.LIFNode, surrogate_function=surrogate.ATan())
    functional.set_step_mode(net, "m")
    net.eval()
    orig = copy.deepcopy(net)
    x = (torch.rand(4, 2, 2, 34, 34) < 0.3).float()
    report = dclszoo.patch(net, dclszoo.DelayConfig(max_delay=4, targets=("linear", "conv")))
    kinds = sorted({r.new for r in report.replaced})
    assert kinds == ["SJDelayedConv2d", "SJDelayedLinear"] and len(report.replaced) == 4
    for stop in (2, 11, 16):  # conv+BN, ...+Linear (real-valued, non-trivial), the whole network
        ours, theirs = _run(net.conv_fc[:stop], x), _run(orig.conv_fc[:stop], x)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert _run(orig.conv_fc[:11], x).abs().sum() > 0
    round_delays(net)
    with torch.no_grad():
        net.conv_fc[0].delays.fill_(2.0)
    y, y0 = _run(net.conv_fc[:1], x), _run(orig.conv_fc[:1], x)  # a 2-step delay on every conv channel pair
    torch.testing.assert_close(y[2:], y0[:-2], rtol=1e-5, atol=1e-5)
    assert torch.equal(y[:2], torch.zeros_like(y[:2]))


def test_plugin_declines_non_spikingjelly_models_and_dcls_configs():
    from dclszoo.plugins.spikingjelly_delays import plugin

    plain = nn.Sequential(nn.Linear(3, 3))
    assert plugin.dclszoo_patch(plain, dclszoo.DelayConfig(max_delay=4), None) is None
    assert plugin.dclszoo_patch(snn_delays_net(), dclszoo.DclsConfig(), None) is None
    with pytest.raises(ValueError, match="spikingjelly"):
        dclszoo.patch(plain, dclszoo.DelayConfig(max_delay=4))


def test_filter_fn_limits_the_patch():
    net = snn_delays_net()
    report = dclszoo.patch(net, dclszoo.DelayConfig(max_delay=4), filter_fn=lambda m, fqn: fqn == "7")
    assert [r.name for r in report.replaced] == ["7"] and type(net[0]) is layer.Linear
