"""dclszoo.patch / unpatch / to_dense on plain torch models (the generic fallback) and replace_modules.

The oracle is always the unpatched copy of the model (or, after moving positions, the patched model itself for
to_dense), never the code under test.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dclszoo
from dclszoo import _plugins


@pytest.fixture(autouse=True)
def no_plugins(monkeypatch):
    """Only the generic fallback: no entry-point plugin is loaded."""
    monkeypatch.setenv(_plugins.ENV_ALLOW, "")
    with _plugins._isolated():
        yield


class TinyCNN(nn.Module):
    """Every kind of convolution the generic fallback must tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)                              # dense 3x3
        self.blocks = nn.Sequential(
            nn.Conv2d(8, 8, 5, padding=2, groups=8),                           # depthwise 5x5
            nn.GELU(),
            nn.Conv2d(8, 16, 1),                                               # pointwise: below min_kernel_size
            nn.Conv2d(16, 32, 3, padding=1, groups=16, bias=False),            # depthwise, channel multiplier 2
        )
        self.heads = nn.ModuleDict({"a": nn.Conv2d(32, 32, (1, 7), padding=(0, 3), groups=32)})  # 1x7 depthwise
        self.grouped = nn.ModuleList([nn.Conv2d(32, 32, 3, padding=1, groups=4)])  # grouped: only 'all'
        self.up = nn.ConvTranspose2d(32, 8, 3, stride=2, padding=1, output_padding=1)  # never replaced
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.stem(x))
        x = self.blocks(x)
        x = self.heads["a"](x) + x
        x = self.grouped[0](x)
        x = self.up(x)
        return self.fc(x.mean(dim=(2, 3)))


DEPTHWISE = ["blocks.0", "blocks.3", "heads.a"]


def make_model(seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = TinyCNN()
    return model, copy.deepcopy(model), torch.randn(2, 3, 10, 12)


def replaced(report) -> list[str]:
    return [r.name for r in report.replaced]


def dcls_param_count(conv: nn.Module, kernel_count: int, gauss_learned: bool = False) -> int:
    """Independent count: weight, positions (one per axis) [+ sigma per axis] per tap, plus bias."""
    ndim = conv.weight.dim() - 2
    per_tap = 1 + ndim + (ndim if gauss_learned else 0)
    taps = conv.out_channels * (conv.in_channels // conv.groups) * kernel_count
    return taps * per_tap + (conv.out_channels if conv.bias is not None else 0)


# --------------------------------------------------------------------------- default patch


def test_default_patch_replaces_depthwise_and_preserves_output():
    model, reference, x = make_model()
    config = dclszoo.DclsConfig()
    report = dclszoo.patch(model, config)
    assert report.plugin == "generic"
    assert replaced(report) == DEPTHWISE
    assert model.dclszoo_config is config and dclszoo.is_patched(model)
    ref_modules = dict(reference.named_modules())
    new_modules = dict(model.named_modules())
    for name in DEPTHWISE:
        assert isinstance(new_modules[name], dclszoo.DclsConv2d)
    for name in ["stem", "blocks.2", "grouped.0", "up"]:
        assert type(new_modules[name]) is type(ref_modules[name])
    torch.testing.assert_close(model(x), reference(x))


def test_report_contents_and_parameter_counts():
    model, reference, _ = make_model()
    report = dclszoo.patch(model, dclszoo.DclsConfig())
    ref_modules = dict(reference.named_modules())
    expect_before = expect_after = 0
    for row in report.replaced:
        old = ref_modules[row.name]
        before = sum(p.numel() for p in old.parameters())
        after = dcls_param_count(old, kernel_count=math.prod(old.kernel_size))
        assert (row.old, row.new, row.params_before, row.params_after) == ("Conv2d", "DclsConv2d", before, after)
        expect_before, expect_after = expect_before + before, expect_after + after
    assert (report.params_before, report.params_after) == (expect_before, expect_after)
    text = str(report)
    assert all(name in text for name in DEPTHWISE)
    assert f"{expect_before:,}" in text and f"{expect_after:,}" in text and "3 replaced" in text


def test_positions_get_gradients_after_patch():
    model, _, x = make_model()
    dclszoo.patch(model, dclszoo.DclsConfig())
    model(x).square().sum().backward()
    for name in DEPTHWISE:
        grad = model.get_submodule(name).positions.grad
        assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(targets="dense"), ["stem"]),
        (dict(targets="dense", min_kernel_size=1), ["stem", "blocks.2"]),
        (dict(targets="all"), ["stem", "blocks.0", "blocks.3", "heads.a", "grouped.0"]),
        (dict(min_kernel_size=6), ["heads.a"]),   # 1x7: large enough on one axis
        (dict(min_kernel_size=8), None),
    ],
    ids=["dense", "dense-with-1x1", "all", "min-kernel-6", "min-kernel-8"],
)
def test_targets_and_min_kernel_size(kwargs, expected):
    model, reference, x = make_model()
    if expected is None:
        with pytest.warns(UserWarning, match="no module of this TinyCNN matched"):
            report = dclszoo.patch(model, dclszoo.DclsConfig(**kwargs))
        assert report.replaced == [] and not hasattr(model, "dclszoo_config")
        return
    report = dclszoo.patch(model, dclszoo.DclsConfig(**kwargs))
    assert replaced(report) == expected
    torch.testing.assert_close(model(x), reference(x))


def test_filter_fn_sees_every_candidate_and_restricts():
    model, reference, x = make_model()
    seen = []

    def keep(module, fqn):
        seen.append((fqn, module))
        return not fqn.startswith("blocks")

    report = dclszoo.patch(model, dclszoo.DclsConfig(), filter_fn=keep)
    assert replaced(report) == ["heads.a"]
    # called on every submodule (it returned False for the containers, so their children were visited too)
    assert [fqn for fqn, _ in seen] == [n for n, _ in reference.named_modules() if n]
    assert all(m is model.get_submodule(fqn) for fqn, m in seen if fqn != "heads.a")
    torch.testing.assert_close(model(x), reference(x))


def test_conv1d_and_conv3d_and_dtype():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(4, 4, 9, padding=4, groups=4), nn.Conv3d(4, 4, 3, padding=1, groups=4)).double()
    reference = copy.deepcopy(model)
    x = torch.randn(2, 4, 6, 5, 7, dtype=torch.float64)
    report = dclszoo.patch(model, dclszoo.DclsConfig(span=11))
    assert [(r.name, r.new) for r in report.replaced] == [("0", "DclsConv1d"), ("1", "DclsConv3d")]
    assert model[0].span == (11,) and model[1].span == (11, 11, 11) and model[1].weight.dtype == torch.float64
    x1 = torch.randn(2, 4, 20, dtype=torch.float64)
    torch.testing.assert_close(model[0](x1), reference[0](x1))
    torch.testing.assert_close(model[1](x), reference[1](x))


# --------------------------------------------------------------------------- config options


def test_int_span_grows_only_non_trivial_axes():
    model, reference, x = make_model()
    dclszoo.patch(model, dclszoo.DclsConfig(span=9))
    assert model.blocks[0].span == (9, 9) and model.blocks[3].span == (9, 9)
    assert model.heads["a"].span == (1, 9)
    torch.testing.assert_close(model(x), reference(x))


def test_tuple_span():
    model, reference, x = make_model()
    dclszoo.patch(model, dclszoo.DclsConfig(span=(7, 9)))
    assert model.blocks[0].span == (7, 9) and model.heads["a"].span == (7, 9)
    torch.testing.assert_close(model(x), reference(x))


def test_span_smaller_than_kernel_raises_and_leaves_model_untouched():
    model, reference, x = make_model()
    with pytest.raises(ValueError, match=r"blocks\.0 \(kernel_size=\(5, 5\)\): config\.span=3 is smaller"):
        dclszoo.patch(model, dclszoo.DclsConfig(span=3))
    assert not dclszoo.is_patched(model)
    assert all(type(a) is type(b) for a, b in zip(model.modules(), reference.modules()))


def test_odd_span_difference_names_the_module():
    model, _, _ = make_model()
    with pytest.raises(ValueError, match=r"^blocks\.0: .*odd amount"):
        dclszoo.patch(model, dclszoo.DclsConfig(span=(6, 7)))


def test_span_axes_mismatch():
    model = nn.Sequential(nn.Conv1d(4, 4, 5, groups=4))
    with pytest.raises(ValueError, match=r"^0 \(kernel_size=\(5,\)\): config\.span=\(7, 7\) has 2 axes"):
        dclszoo.patch(model, dclszoo.DclsConfig(span=(7, 7)))


def test_interpolation_sigma_kernel_count_are_passed():
    model, _, _ = make_model()
    config = dclszoo.DclsConfig(kernel_count=4, interpolation="gauss", sigma=0.7, learn_sigma=False)
    with pytest.warns(UserWarning, match="does not represent"):
        report = dclszoo.patch(model, config)
    for name in DEPTHWISE:
        m = model.get_submodule(name)
        assert (m.kernel_count, m.interpolation) == (4, "gauss")
        assert "sigma" in dict(m.named_buffers()) and torch.all(m.sigma == 0.7)
    ref = dict(make_model()[1].named_modules())
    assert [r.params_after for r in report.replaced] == [dcls_param_count(ref[n], 4) for n in DEPTHWISE]


def test_share_positions_needs_a_plugin():
    model, _, _ = make_model()
    with pytest.raises(ValueError, match="share_positions=True needs a plugin"):
        dclszoo.patch(model, dclszoo.DclsConfig(share_positions=True))


def test_delay_config_on_plain_model_says_which_plugin():
    model, _, _ = make_model()
    with pytest.raises(ValueError, match=r"DelayConfig.*pip install dclszoo\[snn\].*'spikingjelly' plugin"):
        dclszoo.patch(model, dclszoo.DelayConfig(max_delay=10))
    assert not dclszoo.is_patched(model)


# --------------------------------------------------------------------------- what is never touched


class SamePadConv(nn.Conv2d):
    """A conv subclass with its own forward (like timm's Conv2dSame): converting it would change the output."""

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 1, 1)))


def test_conv_subclass_overriding_forward_is_left_alone():
    model = nn.Sequential(SamePadConv(4, 4, 3, groups=4), nn.Conv2d(4, 4, 3, padding=1, groups=4))
    report = dclszoo.patch(model, dclszoo.DclsConfig())
    assert replaced(report) == ["1"] and type(model[0]) is SamePadConv


def test_shared_module_converted_once():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    reference = copy.deepcopy(model)
    x = torch.randn(1, 4, 6, 6)
    report = dclszoo.patch(model, dclszoo.DclsConfig())
    assert replaced(report) == ["0"]
    assert model[0] is model[2] and isinstance(model[0], dclszoo.DclsConv2d)
    torch.testing.assert_close(model(x), reference(x))


def test_bad_arguments():
    model, _, _ = make_model()
    with pytest.raises(TypeError, match="config=.*expected a dclszoo.DclsConfig"):
        dclszoo.patch(model, {"span": 7})
    with pytest.raises(TypeError, match="model=str"):
        dclszoo.patch("resnet", dclszoo.DclsConfig())
    with pytest.raises(TypeError, match="filter_fn=3"):
        dclszoo.patch(model, dclszoo.DclsConfig(), filter_fn=3)


# --------------------------------------------------------------------------- twice, unpatch, to_dense


def test_patching_twice_is_an_error():
    model, _, _ = make_model()
    dclszoo.patch(model, dclszoo.DclsConfig())
    with pytest.raises(ValueError, match=r"already patched.*blocks\.0.*dclszoo\.unpatch"):
        dclszoo.patch(model, dclszoo.DclsConfig(targets="dense"))


def test_model_with_dcls_layers_counts_as_patched():
    model = nn.Sequential(dclszoo.DclsConv2d(4, 4, 3, 5, groups=4), nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match="already patched"):
        dclszoo.patch(model, dclszoo.DclsConfig())


def test_unpatch_restores_plain_convs_with_identical_output():
    model, reference, x = make_model()
    dclszoo.patch(model, dclszoo.DclsConfig(span=9))
    assert dclszoo.unpatch(model) is model
    assert not hasattr(model, "dclszoo_config") and not dclszoo.is_patched(model)
    for (name, new), (_, old) in zip(model.named_modules(), reference.named_modules()):
        assert type(new) is type(old), name
    assert model.blocks[0].kernel_size == (9, 9)  # the span became the dense kernel size
    torch.testing.assert_close(model(x), reference(x))
    assert set(model.state_dict()) == set(reference.state_dict())
    dclszoo.patch(model, dclszoo.DclsConfig())  # patchable again
    with pytest.raises(ValueError, match="not patched"):
        dclszoo.unpatch(reference)


def test_to_dense_after_training_matches_the_dcls_model():
    model, _, x = make_model()
    with pytest.warns(UserWarning, match="does not represent the dense kernel exactly"):
        dclszoo.patch(model, dclszoo.DclsConfig(span=9, interpolation="gauss", kernel_count=6))
    with torch.no_grad():  # move taps off the grid, as training would
        for name in DEPTHWISE:
            m = model.get_submodule(name)
            m.positions.add_(torch.rand_like(m.positions) - 0.5)
    expected = model(x)
    dense = dclszoo.to_dense(model)
    assert dense is model and not any(isinstance(m, dclszoo.DclsConvNd) for m in model.modules())
    torch.testing.assert_close(dense(x), expected)


def test_to_dense_on_models_built_with_dcls_layers():
    torch.manual_seed(0)
    layer = dclszoo.DclsConv2d(4, 4, kernel_count=3, span=5, padding=2, groups=4, interpolation="gauss")
    x = torch.randn(1, 4, 8, 8)
    expected = layer(x)
    dense = dclszoo.to_dense(layer)  # the root itself: a new module is returned
    assert type(dense) is nn.Conv2d
    torch.testing.assert_close(dense(x), expected)
    plain = nn.Sequential(nn.Conv2d(4, 4, 3))
    assert dclszoo.to_dense(plain) is plain and type(plain[0]) is nn.Conv2d


# --------------------------------------------------------------------------- replace_modules


def test_replace_modules_is_atomic_and_checks_results():
    model = nn.Sequential(nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2), nn.ReLU()]))
    first = model[0]

    def make(module, fqn):
        if fqn == "1.1":
            raise RuntimeError("boom")
        return nn.Identity() if isinstance(module, nn.Linear) else None

    with pytest.raises(RuntimeError, match="boom"):
        dclszoo.replace_modules(model, make)
    assert model[0] is first
    with pytest.raises(TypeError, match=r"make\('0'\) returned int"):
        dclszoo.replace_modules(model, lambda m, fqn: 1 if fqn == "0" else None)
    report = dclszoo.replace_modules(model, lambda m, f: nn.Identity() if isinstance(m, nn.Linear) else None,
                                     plugin="mine")
    assert report.plugin == "mine" and replaced(report) == ["0", "1.0"]
    assert [r.params_before for r in report.replaced] == [6, 6] and report.params_after == 0
    assert type(model[1][0]) is nn.Identity
