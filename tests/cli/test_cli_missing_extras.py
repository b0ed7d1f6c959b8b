"""A missing optional dependency: the command fails with exit code 1 and names the ``pip install`` command."""

from __future__ import annotations

import json

from conftest import run_many


def test_missing_zoos(tmp_path):
    """timm and transformers hidden: convert says which extra to install; plugins lists the unloaded ones."""
    (tmp_path / "dense-hf").mkdir()
    (tmp_path / "dense-hf" / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    results, _ = run_many([["convert", "convnext_atto", "--out", "x"], ["convert", "dense-hf", "--out", "x"],
                           ["plugins"], ["finetune", "--no-progress"]], cwd=tmp_path, hide=("timm", "transformers"))
    timm_fail, hf_fail, plugins, finetune = results
    assert timm_fail.rc == 1 and 'pip install "dclszoo[timm]"' in timm_fail.err, timm_fail.text
    assert hf_fail.rc == 1 and 'pip install "dclszoo[audio]"' in hf_fail.err, hf_fail.text
    assert plugins.rc == 0, plugins.text
    assert "timm 0.1.0 [NOT LOADED]" in plugins.out or "timm" in plugins.out and "NOT LOADED" in plugins.out
    assert 'fix: pip install "dclszoo[timm]"' in plugins.out and 'fix: pip install "dclszoo[audio]"' in plugins.out
    assert "spikingjelly" in plugins.out and "[loaded]" in plugins.out
    assert finetune.rc == 1 and 'pip install "dclszoo[timm]"' in finetune.err, finetune.text


def test_missing_plot_nir_and_data(tmp_path, dcls_checkpoint, delays_checkpoint):
    """matplotlib, nir and scikit-learn hidden: inspect / export / finetune name their extras; --no-plots works."""
    delays_dir, _ = delays_checkpoint
    results, _ = run_many([["inspect", str(dcls_checkpoint), "--out", "plots"],
                           ["inspect", str(dcls_checkpoint), "--out", "table", "--no-plots"],
                           ["export", str(delays_dir), "--to", "nir", "--out", "nir"],
                           ["finetune", "--no-progress"]],
                          cwd=tmp_path, hide=("matplotlib", "nir", "sklearn"))
    plots, table, nir, finetune = results
    assert plots.rc == 1 and 'pip install "dclszoo[plot]"' in plots.err and "--no-plots" in plots.err, plots.text
    assert table.rc == 0 and (tmp_path / "table" / "summary.json").is_file(), table.text
    assert nir.rc == 1 and 'pip install "dclszoo[nir]"' in nir.err, nir.text
    assert finetune.rc == 1 and 'pip install "dclszoo[finetune]"' in finetune.err, finetune.text
    assert "scikit-learn" in finetune.err
