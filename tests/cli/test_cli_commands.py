"""``dclszoo convert`` / ``inspect`` / ``export`` on small checkpoints, with their error paths."""

from __future__ import annotations

import json

import pytest

from conftest import run_many

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)
    assert float(image[..., :3].std()) > 0.01  # not a blank canvas


def test_convert_saves_a_dcls_checkpoint(dcls_checkpoint):
    files = {p.name for p in dcls_checkpoint.iterdir()}
    assert {"model.safetensors", "dclszoo_config.json", "config.json", "README.md"} <= files
    config = json.loads((dcls_checkpoint / "dclszoo_config.json").read_text())
    assert config["plugin"] == "timm" and config["architecture"] == "test_convnext"
    assert config["patch_config"]["span"] == 9 and config["model_args"]["num_classes"] == 5


@pytest.fixture(scope="module")
def sources(cli_workdir, local_hub):
    """A dense timm model as a local directory (timm's save_for_hf) and as a repo on the session's local Hub."""
    import timm
    from timm.models import push_to_hf_hub, save_for_hf

    model = timm.create_model("test_convnext", num_classes=3)
    save_for_hf(model, cli_workdir / "dense-timm")
    push_to_hf_hub(model, "cli-tests/dense-convnext")
    (cli_workdir / "not-a-model").mkdir(exist_ok=True)
    (cli_workdir / "not-a-model" / "notes.txt").write_text("hello")
    return cli_workdir


def test_convert_inspect_export(sources, dcls_checkpoint, delays_checkpoint):
    cwd = sources
    delays_dir, _ = delays_checkpoint
    ck, dl = str(dcls_checkpoint), str(delays_dir)
    argvs = [
        # convert: sources and settings
        ["convert", "dense-timm", "--out", "from-dir", "--span", "11"],
        ["convert", "hf-hub:cli-tests/dense-convnext", "--out", "from-hub", "--kernel-count", "20", "--span", "9"],
        ["convert", "test_convnext", "--out", "gauss", "--preset", "convnext_tiny_gauss", "--no-check"],
        # convert: failures
        ["convert", "convnext_attoo", "--out", "x"],                      # unknown model, with a suggestion
        ["convert", "not-a-model", "--out", "x"],                         # directory without a model
        ["convert", "no/such/dir", "--out", "x"],                         # a path that does not exist
        ["convert", "test_convnext", "--out", "x", "--preset", "huge"],   # unknown preset
        ["convert", "test_convnext", "--out", "x", "--span", "0"],        # invalid setting
        ["convert", ck, "--out", "x"],                                    # already DCLS
        ["convert", "convnext_atto_dcls", "--out", "x"],                  # a DCLS architecture name
        # inspect
        ["inspect", ck],
        ["inspect", dl, "--out", "delay-plots"],
        ["inspect", "missing-dir"],
        ["inspect", "not-a-model"],
        ["inspect", str(dcls_checkpoint / "model.safetensors")],
        # export
        ["export", ck, "--to", "dense"],
        ["export", dl, "--to", "delays"],
        ["export", dl, "--to", "nir", "--out", "nir"],
        ["export", ck, "--to", "delays"],                                 # no delays in a DCLS ConvNeXt
        ["export", dl, "--to", "dense"],                                  # delays have no dense equivalent
        ["export", "missing-dir", "--to", "dense"],
        ["export", ck, "--to", "dense", "--input-shape", "3,x", "--out", "y"],
    ]
    by_index, _ = run_many(argvs, cwd=cwd)

    # convert
    for i in (0, 1, 2):
        assert by_index[i].rc == 0, (argvs[i], by_index[i].text)
    assert "function preserved" in by_index[0].out and "identical outputs" in by_index[0].out
    assert "fewer taps" in by_index[1].out  # 20 of 49 taps: reported as lossy
    assert (cwd / "from-hub" / "dclszoo_config.json").is_file() and (cwd / "gauss" / "model.safetensors").is_file()
    gauss = json.loads((cwd / "gauss" / "dclszoo_config.json").read_text())["patch_config"]
    assert gauss["interpolation"] == "gauss" and gauss["kernel_count"] == 26 and gauss["span"] == 23
    expected = {3: ["unknown model 'convnext_attoo'", "convnext_atto"], 4: ["without config.json"],
                5: ["does not exist"], 6: ["unknown preset", "convnext_tiny"], 7: ["span"],
                8: ["already a dclszoo checkpoint", "dclszoo inspect"], 9: ["already a DCLS architecture", "convnext_atto"]}
    for i, needles in expected.items():
        res = by_index[i]
        assert res.rc == 1, (argvs[i], res.text)
        assert res.err.startswith("dclszoo convert: error: "), res.err
        for needle in needles:
            assert needle in res.err, (argvs[i], res.err)
        assert "Traceback" not in res.err

    # inspect
    res = by_index[10]
    assert res.rc == 0, res.text
    assert "DCLS layer" in res.out and "stages.0.blocks.0.conv_dw" in res.out
    summary = json.loads((dcls_checkpoint / "inspect" / "summary.json").read_text())
    assert len(summary["layers"]) == 9 and all(layer["span"] == [9, 9] for layer in summary["layers"])
    _check_png(dcls_checkpoint / "inspect" / "positions.png")
    res = by_index[11]
    assert res.rc == 0, res.text
    assert "delay layer" in res.out and "synapses" in res.out
    _check_png(cwd / "delay-plots" / "delays.png")
    assert not (cwd / "delay-plots" / "positions.png").exists()
    for i, needle in ((12, "does not exist"), (13, "not a model directory"), (14, "is a file")):
        assert by_index[i].rc == 1 and needle in by_index[i].err, (argvs[i], by_index[i].text)

    # export
    res = by_index[15]
    assert res.rc == 0, res.text
    dense_dir = dcls_checkpoint.parent / (dcls_checkpoint.name + "-dense")
    assert {"model.safetensors", "model.pt2", "export.json"} <= {p.name for p in dense_dir.iterdir()}
    _check_dense_program(dcls_checkpoint, dense_dir)
    res = by_index[16]
    assert res.rc == 0, res.text
    _check_integer_delays(delays_dir, delays_dir.parent / "model-delays")
    res = by_index[17]
    assert res.rc == 0, res.text
    assert (cwd / "nir" / "synapses.nir").is_file() and "read back: same outputs" in res.out
    for i, needle in ((18, "no delay synapses"), (19, "--to delays or --to nir"), (20, "does not exist"),
                      (21, "--input-shape")):
        assert by_index[i].rc == 1 and by_index[i].err.startswith("dclszoo export: error:"), (argvs[i], by_index[i].text)
        assert needle in by_index[i].err, (argvs[i], by_index[i].err)


def _check_dense_program(checkpoint, dense_dir):
    """model.pt2 runs without dclszoo modules and computes what the DCLS checkpoint computes."""
    import torch

    import dclszoo

    model = dclszoo.from_pretrained(checkpoint)
    program = torch.export.load(str(dense_dir / "model.pt2")).module()
    assert not any(getattr(type(m), "dclszoo_patched", False) for m in program.modules())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(program(x[:1]), model(x[:1]), rtol=1e-4, atol=1e-4)
    info = json.loads((dense_dir / "export.json").read_text())
    assert info["to"] == "dense" and len(info["changed_layers"]) == 9 and info["max_abs_diff"] < 1e-4


def _check_integer_delays(checkpoint, export_dir):
    from safetensors.torch import load_file

    import dclszoo._cli_models  # noqa: F401  (registers the builder of the delays recipe's network)
    import dclszoo
    from dclszoo.delays_export import load_delays

    model = dclszoo.from_pretrained(checkpoint)
    tensors = load_file(export_dir / "delays.safetensors")
    assert tensors["synapses.delays"].dtype.is_floating_point is False
    layer = load_delays({"delays": tensors["synapses.delays"], "weight": tensors["synapses.weight"],
                         "bias": tensors.get("synapses.bias")})
    import torch

    x = (torch.rand(48, 3, tensors["synapses.delays"].shape[1], generator=torch.Generator().manual_seed(0)) < 0.2).float()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), model.synapses(x))
