"""timm plugin: one shared table of tiny timm models, patched and checked against the unpatched model.

References are independent of the code under test: the unpatched timm model (same weights), timm's own
``Conv2dSame``, checkpoints the tests write themselves into the local Hub (tests/hub_server.py) or a temp dir.
"""

from __future__ import annotations

import copy
import uuid
import warnings

import pytest
import torch
import torch.nn as nn

torch.set_num_threads(2)
timm = pytest.importorskip("timm")

import dclszoo  # noqa: E402
from dclszoo import DclsConfig, DclsConvNd  # noqa: E402
from dclszoo.plugins.timm_dcls import DclsConv2dSame, get_preset, list_presets  # noqa: E402
from dclszoo.plugins.timm_dcls import plugin as timm_plugin  # noqa: E402
from timm.layers import Conv2dSame  # noqa: E402

dclszoo.enable()

SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))


def _metaformer_small(**kwargs):
    from timm.models.metaformer import MetaFormer, SepConv

    return MetaFormer(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40), token_mixers=SepConv, **kwargs)


# name -> (builder, DclsConfig kwargs, class every replaced module must have, minimum replaced count)
CASES = {
    "convnext_atto": (lambda: timm.create_model("convnext_atto", num_classes=10, **SMALL), {}, nn.Conv2d, 5),
    "convnext_atto-span9": (lambda: timm.create_model("convnext_atto", num_classes=10, **SMALL), dict(span=9),
                            nn.Conv2d, 5),
    "convnextv2_atto": (lambda: timm.create_model("convnextv2_atto", num_classes=10, **SMALL), {}, nn.Conv2d, 5),
    "inception_next_atto": (lambda: timm.create_model("inception_next_atto", num_classes=10, **SMALL), {},
                            nn.Conv2d, 15),
    "mobilenetv3_small_050": (lambda: timm.create_model("mobilenetv3_small_050", num_classes=10), {}, nn.Conv2d, 11),
    "mobilenetv4_conv_small": (lambda: timm.create_model("mobilenetv4_conv_small", num_classes=10), {}, nn.Conv2d, 8),
    "tf_mobilenetv3_small_minimal_100": (
        lambda: timm.create_model("tf_mobilenetv3_small_minimal_100", num_classes=10), {}, Conv2dSame, 11),
    "tf_mobilenetv3-span7": (
        lambda: timm.create_model("tf_mobilenetv3_small_minimal_100", num_classes=10), dict(span=7), Conv2dSame, 11),
    "tf_efficientnet_b0": (lambda: timm.create_model("tf_efficientnet_b0", num_classes=10), {}, Conv2dSame, 16),
    "convformer (MetaFormer+SepConv)": (lambda: _metaformer_small(num_classes=10), {}, nn.Conv2d, 5),
    "edgenext_xx_small": (lambda: timm.create_model("edgenext_xx_small", num_classes=10), {}, nn.Conv2d, 9),
    "resnet18-dense": (lambda: timm.create_model("resnet18", num_classes=10), dict(targets="dense"), nn.Conv2d, 17),
}


def _dcls_modules(model: nn.Module) -> dict[str, DclsConvNd]:
    return {n: m for n, m in model.named_modules() if isinstance(m, DclsConvNd)}


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    scale = expected.abs().max().clamp_min(1e-6)
    diff = (actual - expected).abs().max()
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel} * logit scale {scale:.3g}"


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Move every DCLS tap off the grid and change its weight, as training would."""
    gen = torch.Generator().manual_seed(seed)
    for m in _dcls_modules(model).values():
        m.positions.add_(torch.rand(m.positions.shape, generator=gen) - 0.5)
        m.clamp_parameters()
        m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=gen))  # timm inits at std 0.02


@torch.no_grad()
def _as_if_pretrained(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every block a non-trivial contribution, as pretraining does: timm initialises layer scales at 1e-6
    (ConvNeXt, InceptionNeXt, EdgeNeXt) and zeroes the last norm of residual blocks (ResNet), which would hide
    the convolutions from the logits."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "layer_scale") or (p.ndim == 1 and leaf == "weight"):
            p.copy_(0.5 + torch.rand(p.shape, generator=gen))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model


def _build_pair(case: str):
    builder, config_kwargs, dense_cls, min_count = CASES[case]
    torch.manual_seed(0)
    reference = _as_if_pretrained(builder()).eval()
    model = copy.deepcopy(reference)
    report = dclszoo.patch(model, DclsConfig(**config_kwargs))
    return reference, model.eval(), report, DclsConfig(**config_kwargs), dense_cls, min_count


@pytest.mark.parametrize("case", list(CASES))
def test_patch_is_function_preserving_and_trainable(case):
    reference, model, report, config, dense_cls, min_count = _build_pair(case)
    assert report.plugin == "timm" and len(report.replaced) >= min_count
    found = _dcls_modules(model)
    assert sorted(found) == sorted(r.name for r in report.replaced)
    originals = dict(reference.named_modules())
    for name, module in found.items():
        assert type(originals[name]) in (nn.Conv2d, dense_cls), name
        assert isinstance(module, DclsConv2dSame) == (type(originals[name]) is Conv2dSame), name
        if config.targets == "depthwise":
            assert originals[name].groups == originals[name].in_channels > 1
        if config.span is not None:
            assert all(s == config.span for s, k in zip(module.span, originals[name].kernel_size) if k > 1)
    assert any(type(originals[name]) is dense_cls for name in found)  # tf_* rows: some Conv2dSame among them
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        _close(model(x), expected)
    model.train()
    model(x).square().mean().backward()
    for name, module in found.items():
        assert module.positions.grad is not None and module.positions.grad.abs().sum() > 0, name
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, name


@pytest.mark.parametrize("case", list(CASES))
def test_to_dense_and_state_dict_roundtrip(case, tmp_path):
    from safetensors.torch import load_file, save_file

    reference, model, _, config, dense_cls, _ = _build_pair(case)
    _perturb(model)
    x = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trained = model(x)
        # the perturbation changed the function far beyond the tolerance used below
        feats = model.forward_features(x)
        assert (feats - reference.forward_features(x)).abs().max() > 100 * 1e-5 * feats.abs().max()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "model.pt")

    for state in (load_file(tmp_path / "model.safetensors"), torch.load(tmp_path / "model.pt", weights_only=True)):
        torch.manual_seed(123)  # a different init: everything must come from the checkpoint
        fresh = copy.deepcopy(reference)
        dclszoo.patch(fresh, config)
        fresh.load_state_dict(state, strict=True)
        with torch.no_grad():
            _close(fresh.eval()(x), trained)

    dense = dclszoo.to_dense(copy.deepcopy(model))
    assert not _dcls_modules(dense)
    names = _dcls_modules(model)
    originals = dict(reference.named_modules())
    for name, module in dense.named_modules():
        if name in names:
            assert type(module) is type(originals[name]), name
    with torch.no_grad():
        _close(dense(x), trained)
        _close(dense.forward_features(x), feats)


def test_conv2d_same_twin_matches_timm():
    torch.manual_seed(0)
    for k, stride, dilation, span, size in [(3, 2, 1, 3, (15, 16)), (3, 2, 1, 7, (15, 16)), (5, 2, 1, 9, (17, 20)),
                                            (3, 1, 2, 7, (9, 10)), (5, 2, 1, 5, (1, 2)), (3, 2, 1, 5, (2, 3))]:
        conv = Conv2dSame(6, 12, k, stride=stride, dilation=dilation, groups=6)
        module = DclsConv2dSame.from_dense(conv, span=span)
        x = torch.randn(2, 6, *size)
        expected = conv(x)
        assert module(x).shape == expected.shape
        _close(module(x), expected)
        dense = module.to_dense()
        assert type(dense) is Conv2dSame and tuple(dense.kernel_size) == (span, span)
        _close(dense(x), expected)
    with pytest.raises(ValueError, match="clamped at 0"):  # (k-1)*d < stride-1: a wider span would shift
        DclsConv2dSame.from_dense(Conv2dSame(4, 4, 3, stride=4, groups=4), span=5)


def test_shared_positions_state_dict_and_gradients(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    reference = timm.create_model("convnext_atto", num_classes=10, depths=(2, 3, 1, 1), dims=(16, 24, 32, 40)).eval()
    model = copy.deepcopy(reference)
    config = DclsConfig(span=9, share_positions=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dclszoo.patch(model, config)
    assert not [w for w in record if "kernel error" in str(w.message)]  # 49 taps in 9x9: exact
    stages = [[b.conv_dw for b in stage.blocks] for stage in model.stages]
    for s, convs in enumerate(stages):
        assert all(c.positions is convs[0].positions for c in convs)
        assert all(c.positions is not other[0].positions for other in stages[:s] for c in convs)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _close(model.eval()(x), reference(x))

    # gradient of a shared tensor = sum of the gradients the blocks get when untied (same values)
    untied = copy.deepcopy(model)
    for stage in untied.stages:
        for block in list(stage.blocks)[1:]:
            conv = block.conv_dw
            conv.positions = nn.Parameter(conv.positions.detach().clone())
            conv.dclszoo_positions_owner = None
    model.zero_grad()
    model(x).sum().backward()
    untied(x).sum().backward()
    for shared, free in zip(stages, [[b.conv_dw for b in st.blocks] for st in untied.stages]):
        total = sum(c.positions.grad for c in free)
        torch.testing.assert_close(shared[0].positions.grad, total, rtol=1e-4, atol=1e-6)

    _perturb(model)
    with torch.no_grad():
        trained = model(x)
    state = model.state_dict()
    assert "stages.1.blocks.0.conv_dw.positions" in state
    assert "stages.1.blocks.1.conv_dw.positions" not in state and "stages.1.blocks.2.conv_dw.positions" not in state
    assert "stages.1.blocks.2.conv_dw.weight" in state
    save_file(state, tmp_path / "shared.safetensors")  # safetensors refuses aliased tensors: none left
    fresh = copy.deepcopy(reference)
    dclszoo.patch(fresh, config)
    fresh.load_state_dict(load_file(tmp_path / "shared.safetensors"), strict=True)
    assert fresh.stages[1].blocks[2].conv_dw.positions is fresh.stages[1].blocks[0].conv_dw.positions
    with torch.no_grad():
        _close(fresh.eval()(x), trained)
        _close(dclszoo.to_dense(copy.deepcopy(model))(x), trained)
    n_params = sum(p.numel() for p in model.parameters())
    n_unique = sum(t.numel() for t in {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}.values())
    assert n_params == n_unique


def test_presets_follow_the_paper():
    assert list_presets() == ["convnext_base", "convnext_small", "convnext_tiny", "convnext_tiny_gauss"]
    expected = {"convnext_tiny": (34, 17, "bilinear"), "convnext_small": (40, 17, "bilinear"),
                "convnext_base": (40, 17, "bilinear"), "convnext_tiny_gauss": (26, 23, "gauss")}
    for name, (taps, span, interp) in expected.items():
        cfg = get_preset(name)
        assert (cfg.kernel_count, cfg.span, cfg.interpolation, cfg.share_positions) == (taps, span, interp, True)
    with pytest.raises(ValueError, match="convnext_tiny"):
        get_preset("convnext_huge")

    torch.manual_seed(0)
    model = timm.create_model("convnext_tiny_dcls", dcls="paper", num_classes=10, depths=(2, 2, 2, 2),
                              dims=(16, 24, 32, 40))
    convs = [b.conv_dw for stage in model.stages for b in stage.blocks]
    assert all(isinstance(c, DclsConvNd) and c.span == (17, 17) and c.kernel_count == 34 for c in convs)
    assert convs[1].positions is convs[0].positions and convs[2].positions is not convs[0].positions
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    assert convs[0].positions.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no published DCLS recipe"):
        timm.create_model("resnet18_dcls", dcls="paper")


def test_registry_lists_every_supported_family():
    names = timm.list_models("*_dcls")
    expected = ["convnext_atto", "convnextv2_atto", "inception_next_atto", "mobilenetv3_small_050",
                "tf_mobilenetv3_small_minimal_100", "mobilenetv4_conv_small", "efficientnet_b0", "tf_efficientnet_b0",
                "convformer_s18", "edgenext_xx_small", "resnet18", "resnet50"]
    assert all(f"{arch}_dcls" in names for arch in expected)
    # every timm ConvNeXt/ConvNeXt-V2 architecture has its twin, and every twin names a real architecture
    assert {f"{a}_dcls" for a in timm.list_models("convnext*") if not a.endswith("_dcls")} <= set(names)
    assert all(timm.is_model(n[: -len("_dcls")]) for n in names)
    assert "convnext_atto_dcls.d2_in1k" in timm.list_models("convnext_atto_dcls*", pretrained=True)
    assert timm_plugin.dclszoo_patch(model=nn.Sequential(nn.Conv2d(3, 3, 3, groups=3)), config=DclsConfig(),
                                     filter_fn=None) is None


def test_create_model_resnet_defaults_to_dense_targets():
    torch.manual_seed(0)
    model = timm.create_model("resnet18_dcls", num_classes=7)
    assert model.num_classes == 7 and isinstance(model.conv1, DclsConvNd)
    assert isinstance(model.layer1[0].conv1, DclsConvNd) and not isinstance(model.layer2[0].downsample[0], DclsConvNd)
    assert model.dclszoo_config.targets == "dense"


def _upload_dense_checkpoint(repo_id: str, model: nn.Module) -> None:
    import tempfile
    from pathlib import Path

    from huggingface_hub import HfApi
    from safetensors.torch import save_file

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_file(model.state_dict(), Path(tmp) / "model.safetensors")
        api.upload_folder(repo_id=repo_id, folder_path=tmp)


def test_create_model_pretrained_from_local_hub_and_file(local_hub, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(7)
    dense = timm.create_model("convnext_atto").eval()  # the "pretrained" dense checkpoint, written by the test
    hub_id = timm.models.get_pretrained_cfg("convnext_atto").hf_hub_id
    _upload_dense_checkpoint(hub_id, dense)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    torch.manual_seed(99)
    model = timm.create_model("convnext_atto_dcls", pretrained=True).eval()
    assert model.pretrained_cfg["architecture"] == "convnext_atto_dcls"
    assert len(_dcls_modules(model)) == 12
    with torch.no_grad():
        _close(model(x), dense(x))

    torch.manual_seed(99)
    head10 = timm.create_model("convnext_atto_dcls", pretrained=True, num_classes=10).eval()
    assert head10.num_classes == 10
    with torch.no_grad():
        _close(head10.forward_features(x), dense.forward_features(x))

    save_file(dense.state_dict(), tmp_path / "dense.safetensors")
    local_hub.requests.clear()
    from_file = timm.create_model("convnext_atto_dcls", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / "dense.safetensors"))).eval()
    assert not local_hub.requests  # read from the file, not the Hub
    with torch.no_grad():
        _close(from_file(x), dense(x))


def test_push_to_local_hub_and_reload(local_hub, tmp_path):
    from timm.models import push_to_hf_hub, save_for_hf

    torch.manual_seed(0)
    dcls = DclsConfig(span=9, share_positions=True).to_dict()
    model = timm.create_model("convnext_atto_dcls", num_classes=10, dcls=dcls, depths=(2, 2, 1, 1),
                              dims=(16, 24, 32, 40)).eval()
    _perturb(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
    repo_id = f"tester/convnext-atto-dcls-{uuid.uuid4().hex[:6]}"
    push_to_hf_hub(model, repo_id)
    save_for_hf(model, tmp_path / "export", safe_serialization=True)

    for source in (f"hf-hub:{repo_id}", f"local-dir:{tmp_path / 'export'}"):
        torch.manual_seed(5)
        loaded = timm.create_model(source, pretrained=True).eval()
        assert loaded.pretrained_cfg["architecture"] == "convnext_atto_dcls", source
        assert loaded.dclszoo_config == DclsConfig(span=9, share_positions=True)
        assert loaded.stages[0].blocks[1].conv_dw.positions is loaded.stages[0].blocks[0].conv_dw.positions
        with torch.no_grad():
            _close(loaded(x), expected)

    # a plain timm model patched with dclszoo.patch is saved as <arch>_dcls too; unpatch restores the metadata
    plain = timm.create_model("mobilenetv3_small_050", num_classes=4).eval()
    dclszoo.patch(plain, DclsConfig(span=7))
    _perturb(plain)
    with torch.no_grad():
        expected = plain(x)
    save_for_hf(plain, tmp_path / "mnv3", safe_serialization=True)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'mnv3'}", pretrained=True).eval()
    with torch.no_grad():
        _close(loaded(x), expected)
    dclszoo.unpatch(plain)
    assert plain.pretrained_cfg["architecture"] == "mobilenetv3_small_050" and "dcls" not in plain._model_args


def test_reparameterizable_blocks_must_be_fused_first():
    torch.manual_seed(0)
    model = timm.create_model("fastvit_t8", num_classes=5).eval()
    with pytest.raises(ValueError, match="reparameterize_model"):
        dclszoo.patch(model, DclsConfig())
    fused = timm.utils.reparameterize_model(model)
    patched = copy.deepcopy(fused)
    report = dclszoo.patch(patched, DclsConfig())
    assert len(report.replaced) > 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _close(patched(x), fused(x))
