"""dclszoo.training: parameter groups, clamping through accelerate's wrapped optimizer (with gradient accumulation),
finalize, the checkpointable pieces and the DDP unused-parameter rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dclszoo
from dclszoo import training
from dclszoo.delays_training import SigmaSchedule as DelaySigmaSchedule

torch.set_num_threads(2)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    conv_a = dclszoo.DclsConv2d(4, 4, kernel_count=3, span=7, padding="same", groups=4, interpolation="gauss")
    conv_b = dclszoo.DclsConv2d(4, 4, kernel_count=3, span=7, padding="same", groups=4, interpolation="bilinear")
    conv_b.positions = conv_a.positions  # shared, as timm's share_positions does
    return nn.Sequential(conv_a, nn.BatchNorm2d(4), conv_b, nn.Flatten(2), nn.Linear(64, 8))


def test_param_groups_split_positions_delays_and_no_decay():
    model = _model()
    delays = dclszoo.DelayedLinear(8, 3, max_delay=5)
    model.append(delays)
    model[4].weight.requires_grad_(False)  # frozen: left out
    groups = {g["name"]: g for g in training.param_groups(model, lr=1e-3, position_lr_scale=5, weight_decay=0.05,
                                                           delay_lr_scale=100)}
    assert set(groups) == {"decay", "no_decay", "positions", "delays"}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["positions"] == {id(model[0].positions), id(model[0].sigma)}  # shared positions once
    assert ids["delays"] == {id(delays.delays)}
    assert ids["decay"] == {id(model[0].weight), id(model[2].weight), id(delays.weight)}
    assert {id(model[1].weight), id(model[1].bias), id(model[4].bias), id(delays.bias)} <= ids["no_decay"]
    assert id(model[4].weight) not in set().union(*ids.values())
    assert groups["positions"]["lr"] == pytest.approx(5e-3) and groups["delays"]["lr"] == pytest.approx(0.1)
    assert groups["decay"]["weight_decay"] == 0.05
    assert all(groups[n]["weight_decay"] == 0.0 for n in ("no_decay", "positions", "delays"))
    torch.optim.AdamW(list(groups.values()))  # a valid optimizer argument
    # default: the delays' rate follows sigma, one group per delay module, which SigmaSchedule can drive
    second = dclszoo.DelayedLinear(3, 2, max_delay=9)
    model.append(second)
    default = training.param_groups(model, lr=1e-3)
    delay_groups = [g for g in default if g["name"] == "delays"]
    assert [[id(p) for p in g["params"]] for g in delay_groups] == [[id(delays.delays)], [id(second.delays)]]
    assert [g["lr"] for g in delay_groups] == pytest.approx(
        [training.DELAY_LR_PER_SIGMA * m._sigma_value for m in (delays, second)])
    opt = torch.optim.Adam(default)
    training.SigmaSchedule(model, total_steps=4, optimizer=opt)  # accepted: every group holds one module's delays
    assert [g["lr"] for g in opt.param_groups if g["name"] == "delays"] == pytest.approx(
        [training.DELAY_LR_PER_SIGMA * 2.0, training.DELAY_LR_PER_SIGMA * 4.0])  # sigma = max_delay // 2
    with pytest.raises(ValueError, match="position_lr_scale=0"):
        training.param_groups(model, lr=1e-3, position_lr_scale=0)
    assert training.SigmaSchedule is DelaySigmaSchedule


def test_clamping_through_accelerate_wrapped_optimizer_and_accumulation(fresh_accelerate):
    from accelerate import Accelerator

    model = _model()
    delays = dclszoo.DelayedLinear(8, 3, max_delay=5, sigma=1.0)
    model.append(delays)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    optimizer = torch.optim.SGD(training.param_groups(model, lr=1.0, position_lr_scale=1e4, delay_lr_scale=1e4),
                                lr=1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    assert type(optimizer).__name__ == "AcceleratedOptimizer"
    x = torch.randn(4, 4, 8, 8)
    before = model[0].positions.detach().clone()
    for micro in range(2):
        with accelerator.accumulate(model):
            accelerator.backward(model(x).square().mean())
            optimizer.step()
            optimizer.zero_grad()
        if micro == 0:  # no optimizer step yet, no clamp: nothing moved
            assert torch.equal(model[0].positions.detach(), before)
    lo, hi = model[0].position_bounds
    moved = model[0].positions.detach()
    assert not torch.equal(moved, before)
    assert moved.min() >= lo[0] and moved.max() <= hi[0] and (moved.abs() == hi[0]).any()  # pushed out, clamped
    assert delays.delays.min() >= 0 and delays.delays.max() <= 4


def test_finalize_rounds_delays_freezes_sigma_and_converts():
    model = _model()
    delays = dclszoo.DelayedLinear(8, 3, max_delay=5, sigma=1.0)
    model.append(delays)
    with torch.no_grad():
        delays.delays.copy_(torch.rand(delays.delays.shape) * 4)
        model[0].positions.add_(0.3)
    model.eval()
    x = torch.randn(2, 4, 8, 8)
    assert training.finalize(model) is model
    assert delays.integer_mode and torch.equal(delays.delays, delays.delays.round())
    assert not model[0].sigma.requires_grad and model[0].positions.requires_grad
    with torch.no_grad():
        expected = model(x)
        dense = training.finalize(model, dense=True)  # the delays have no plain equivalent: they stay
        assert type(dense[0]) is nn.Conv2d and type(dense[2]) is nn.Conv2d and dense[5] is delays
        torch.testing.assert_close(dense(x), expected, rtol=1e-5, atol=1e-6)
        plain = training.finalize(_model().eval(), dense=True)
        assert not dclszoo.is_patched(plain) and type(plain[0]) is nn.Conv2d


def test_progress_and_ddp_unused_parameter_rule():
    progress = training.Progress()
    progress.step, progress.epoch, progress.batch = 7, 2, 3
    other = training.Progress()
    other.load_state_dict(progress.state_dict())
    assert other.state_dict() == {"step": 7, "epoch": 2, "batch": 3}

    net = nn.Sequential(dclszoo.DelayedLinear(4, 3, max_delay=6, sigma=0.0))
    assert training.needs_find_unused_parameters(net)  # integer mode: the delays get no gradient
    schedule = training.SigmaSchedule(net, total_steps=10, decay_fraction=0.5, start=2.0, floor=0.5,
                                      hard_fraction=0.0)
    assert not training.needs_find_unused_parameters(net, schedule)
    hard = training.SigmaSchedule(net, total_steps=10, decay_fraction=0.5, start=2.0, floor=0.5, hard_fraction=0.2)
    assert training.needs_find_unused_parameters(net, hard)
    assert not training.needs_find_unused_parameters(_model())
