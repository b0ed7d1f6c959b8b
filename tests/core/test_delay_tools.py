"""Sigma schedule, integer evaluation, param groups, SNN-delays import (vs dcls 0.1.1), export round trips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dclszoo import DelayedConv2d, DelayedLinear
from dclszoo.convert import from_snn_delays
from dclszoo.delays_export import export_delays, from_nir, load_delays, to_nir
from dclszoo.delays_training import (DELAY_LR_PER_SIGMA, SigmaSchedule, delay_param_groups, integer_delays,
                                    round_delays)
from dclszoo.tasks import TimingTask


def _net():
    return nn.Sequential(DelayedLinear(4, 6, 9), nn.ReLU(), DelayedLinear(6, 3, 21), nn.BatchNorm1d(3))


def test_sigma_schedule_follows_the_exponential_then_floor_then_hard_phase():
    torch.manual_seed(0)
    net = _net()
    s = SigmaSchedule(net, total_steps=10, decay_fraction=0.4, floor=0.5, hard_fraction=0.2)
    a, b = net[0], net[2]
    assert a._sigma_value == 4.0 and b._sigma_value == 10.0  # max_delay // 2 each
    expected = [4.0 * (0.5 / 4.0) ** (k / 4) for k in range(4)] + [0.5] * 4 + [0.0] * 2
    seen = [a._sigma_value]
    for _ in range(9):
        s.step()
        seen.append(a._sigma_value)
    assert seen == pytest.approx(expected)
    assert b.integer_mode and torch.equal(b.delays, torch.round(b.delays))  # rounded in place in the hard phase


def test_sigma_schedule_state_dict_round_trip():
    net = _net()
    s = SigmaSchedule(net, total_steps=20, start=6.0)
    for _ in range(3):
        s.step()
    state = s.state_dict()
    net2 = _net()
    s2 = SigmaSchedule(net2, total_steps=5)
    s2.load_state_dict(state)
    # defaults: decay over the first half (10 of 20 steps) down to 0.25
    assert s2.step_count == 3 and net2[2]._sigma_value == pytest.approx(6.0 * (0.25 / 6.0) ** (3 / 10))
    with pytest.raises(ValueError, match="no delay modules"):
        SigmaSchedule(nn.Linear(2, 2), total_steps=3)
    with pytest.raises(ValueError, match="total_steps=0"):
        SigmaSchedule(net, total_steps=0)


def test_integer_delays_context_restores_sigma_and_round_delays():
    torch.manual_seed(1)
    net = _net()
    x = torch.randn(12, 2, 4)
    with integer_delays(net):
        y_int = net[0](x)
        assert net[0].integer_mode
    assert net[0]._sigma_value == 4.0
    ref = DelayedLinear(4, 6, 9, sigma=0.0)
    ref.load_state_dict({**net[0].state_dict(), "sigma": torch.tensor(0.0)})
    torch.testing.assert_close(y_int, ref(x))
    round_delays(net)
    assert all(m.integer_mode for m in (net[0], net[2]))


def test_param_groups_give_delays_their_own_lr_and_no_weight_decay():
    net = _net()
    groups = delay_param_groups(net, lr=1e-3, weight_decay=1e-5, delay_lr=0.1)  # SNN-delays: one group, 100 x lr
    by_lr = {g["lr"]: g for g in groups}
    delays = {id(net[0].delays), id(net[2].delays)}
    assert {id(p) for p in by_lr[0.1]["params"]} == delays and by_lr[0.1]["weight_decay"] == 0.0
    decayed = [g for g in groups if g["weight_decay"] > 0][0]["params"]
    assert {id(p) for p in decayed} == {id(net[0].weight), id(net[2].weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    # default: one group per delay module at DELAY_LR_PER_SIGMA x its sigma (max_delay // 2: 4 and 10)
    groups = delay_param_groups(net, lr=1e-3, weight_decay=1e-5)
    delay_groups = [g for g in groups if any(id(p) in delays for p in g["params"])]
    assert [[id(p) for p in g["params"]] for g in delay_groups] == [[id(net[0].delays)], [id(net[2].delays)]]
    assert [g["lr"] for g in delay_groups] == [DELAY_LR_PER_SIGMA * 4.0, DELAY_LR_PER_SIGMA * 10.0]
    assert all(g["weight_decay"] == 0.0 for g in delay_groups)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_sigma_schedule_drives_the_delay_learning_rate():
    torch.manual_seed(4)
    net = _net()
    opt = torch.optim.Adam(delay_param_groups(net, lr=1e-2))
    s = SigmaSchedule(net, total_steps=10, decay_fraction=0.4, floor=0.25, hard_fraction=0.2, optimizer=opt,
                      lr_per_sigma=0.3)
    lrs = lambda: [g["lr"] for g in opt.param_groups[-2:]]  # noqa: E731
    seen = [lrs()]
    for _ in range(9):
        opt.step()
        s.step()
        seen.append(lrs())
    def sigma(k, start):  # the documented schedule: exponential over 0.4 x 10 = 4 steps, then the floor
        return start * (0.25 / start) ** (k / 4) if k < 4 else 0.25

    expected = [[0.3 * sigma(k, start) if k < 8 else 0.3 * 0.25 for start in (4.0, 10.0)] for k in range(10)]
    assert seen == [pytest.approx(e) for e in expected]
    assert opt.param_groups[0]["lr"] == 1e-2  # the weights' lr is left alone
    # the optimizer's own checkpoint replaces its group dicts: the schedule still finds them
    state, s_state = opt.state_dict(), s.state_dict()
    opt2 = torch.optim.Adam(delay_param_groups(net, lr=1e-2))
    s2 = SigmaSchedule(net, total_steps=10, optimizer=opt2)
    opt2.load_state_dict(state)
    s2.load_state_dict({**s_state, "step_count": 2})
    assert [g["lr"] for g in opt2.param_groups[-2:]] == pytest.approx([0.3 * sigma(2, st) for st in (4.0, 10.0)])


def test_sigma_schedule_rejects_groups_whose_lr_cannot_follow_sigma():
    net = _net()
    mixed = torch.optim.Adam([{"params": [net[0].weight, net[0].delays]}], lr=1e-2)
    with pytest.raises(ValueError, match="param group 0 mixes delays with other parameters"):
        SigmaSchedule(net, total_steps=5, optimizer=mixed)
    both = torch.optim.Adam(delay_param_groups(net, lr=1e-2, delay_lr=0.1))  # delays of max_delay 9 and 21
    with pytest.raises(ValueError, match=r"sigma starts at \[4.0, 10.0\]"):
        SigmaSchedule(net, total_steps=5, optimizer=both)
    SigmaSchedule(net, total_steps=5, optimizer=both, start=3.0)  # one start: one sigma, one lr
    assert both.param_groups[-1]["lr"] == pytest.approx(DELAY_LR_PER_SIGMA * 3.0)
    with pytest.raises(ValueError, match="no param group of the optimizer holds"):
        SigmaSchedule(net, total_steps=5, optimizer=torch.optim.Adam([net[0].weight], lr=1e-2))
    with pytest.raises(ValueError, match="lr_per_sigma=0"):
        SigmaSchedule(net, total_steps=5, lr_per_sigma=0)


# ----------------------------------------------------------------------------- SNN-delays import
def _snn_delays_forward(layer, x, max_delay):
    """SNN-delays' own forward of one synapse layer (snn_delays.py): permute, pad left D-1 / right (D-1)//2."""
    xr = F.pad(x.permute(1, 2, 0), (max_delay - 1, (max_delay - 1) // 2))
    return layer(xr).permute(2, 0, 1)


@pytest.mark.parametrize("max_delay", [9, 25])
@pytest.mark.parametrize("sig", [5.0, 0.23, 0.0])
def test_from_snn_delays_matches_dcls_on_the_first_t_steps(max_delay, sig):
    pytest.importorskip("DCLS")
    from DCLS.construct.modules import Dcls1d

    torch.manual_seed(max_delay)
    ref = Dcls1d(12, 7, kernel_count=1, dilated_kernel_size=max_delay, bias=True, version="gauss")
    with torch.no_grad():
        nn.init.uniform_(ref.P, -(max_delay // 2), max_delay // 2)
        ref.SIG.fill_(sig)
    x = torch.randn(30, 3, 12)
    y_ref = _snn_delays_forward(ref, x, max_delay)
    assert y_ref.shape[0] == 30 + (max_delay - 1) // 2
    ours = from_snn_delays(ref)
    torch.testing.assert_close(ours(x), y_ref[:30], rtol=1e-5, atol=1e-5)
    from_sd = from_snn_delays({k: v for k, v in ref.state_dict().items()}, max_delay=max_delay)
    torch.testing.assert_close(from_sd(x), y_ref[:30], rtol=1e-5, atol=1e-5)


def test_from_snn_delays_bad_input():
    from DCLS.construct.modules import Dcls1d

    ref = Dcls1d(4, 3, kernel_count=1, dilated_kernel_size=10, version="gauss")
    with torch.no_grad():
        ref.P.fill_(5.0)  # allowed by dcls' clamp for an even span, outside its grid
    with pytest.raises(ValueError, match="outside the span grid"):
        from_snn_delays(ref)
    with pytest.raises(ValueError, match="max_delay=None"):
        from_snn_delays(ref.state_dict())
    with pytest.raises(ValueError, match="lacks"):
        from_snn_delays({"weight": ref.weight}, max_delay=10)
    sd = dict(ref.state_dict())
    sd["SIG"] = torch.rand_like(sd["SIG"])
    with pytest.raises(ValueError, match="SIG varies"):
        from_snn_delays(sd, max_delay=10, strict=False)
    with pytest.raises(TypeError, match="Dcls1d"):
        from_snn_delays(nn.Linear(2, 2))


# ----------------------------------------------------------------------------- export
def test_export_tensors_round_trip_and_integer_requirement():
    torch.manual_seed(2)
    m = DelayedLinear(6, 4, 8, kernel_count=1, sigma=1.0)
    with pytest.raises(ValueError, match="not integers"):
        export_delays(m)
    m.round_delays()
    exp = export_delays(m)
    assert exp["delays"].dtype == torch.int64 and exp["delays"].shape == (4, 6) and exp["weight"].shape == (4, 6)
    x = torch.randn(15, 2, 6)
    # independent check of the exported meaning: y[t,o] = b[o] + sum_i w[o,i] x[t - d[o,i], i]
    y = torch.zeros(15, 2, 4) + exp["bias"]
    for o in range(4):
        for i in range(6):
            d = int(exp["delays"][o, i])
            y[d:, :, o] += exp["weight"][o, i] * x[: 15 - d, :, i]
    torch.testing.assert_close(m(x), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(load_delays(exp)(x), y, rtol=1e-5, atol=1e-5)
    conv_exp = export_delays(DelayedConv2d(2, 3, 3, 5, sigma=0.0))
    assert conv_exp["delays"].shape == (3, 2) and conv_exp["weight"].shape == (3, 2, 3, 3)


@pytest.mark.parametrize("kc", [1, 3])
def test_nir_round_trip_through_a_file(tmp_path, kc):
    nir = pytest.importorskip("nir")
    torch.manual_seed(kc)
    m = DelayedLinear(5, 4, 7, kernel_count=kc)
    m.round_delays()
    graph = to_nir(m)
    assert {type(n).__name__ for n in graph.nodes.values()} >= {"Delay", "Input", "Output"}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Delay):  # per-channel NIR delays: one amount for the whole group
            assert len(set(node.delay.tolist())) == 1
    nir.write(tmp_path / "m.nir", graph)
    back = from_nir(nir.read(tmp_path / "m.nir"))
    x = torch.randn(12, 2, 5)
    torch.testing.assert_close(back(x), m(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- timing task
def test_timing_task_has_class_independent_bags_of_steps():
    task = TimingTask(channels=6, classes=3, spacing=2, steps=20, noise=0.0)
    x, y = task.sample(60, seed=3)
    assert x.shape == (20, 60, 6) and set(y.tolist()) == {0, 1, 2}
    assert torch.equal(x.sum(0), torch.ones(60, 6))  # every channel exactly once
    assert torch.equal(x.sum(2).max(0).values, torch.ones(60))  # never two pattern spikes in one step
    # the order of the channels is what differs between classes
    first = [x[:, n].argmax(0).argsort().tolist() for n in range(60)]
    for k in range(3):
        orders = {tuple(first[n]) for n in range(60) if y[n] == k}
        assert len(orders) == 1
    with pytest.raises(ValueError, match="shorter than the pattern span"):
        TimingTask(channels=6, spacing=2, steps=10)
