"""``dclszoo finetune``: the main job exactly as the README types it (steps cut by the test-only variable), the
delays and audio recipes on a few steps, and their error paths."""

from __future__ import annotations

import json
import re

from conftest import run_cli, run_many


def _accuracies(out: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(dense|DCLS|no delays|delays)\s+[\d,]+\s+([\d.]+)\s",
                                                               out, re.M)}


def test_main_job_no_arguments(tmp_path):
    """`dclszoo finetune`, no arguments: both models trained, both accuracies printed, saved, reloaded, checked."""
    res = run_cli("finetune", cwd=tmp_path, env={"DCLSZOO_FINETUNE_MAX_STEPS": "2"})
    assert res.rc == 0, res.text
    assert "scikit-learn's handwritten digits" in res.out and "convnext_atto" in res.out
    accuracies = _accuracies(res.out)
    assert set(accuracies) == {"dense", "DCLS"}, res.out
    assert all(0.0 <= a <= 1.0 for a in accuracies.values())
    assert "max |logit difference| 0," in res.out
    model_dir = tmp_path / "runs" / "digits" / "model"
    assert {"model.safetensors", "dclszoo_config.json", "config.json"} <= {p.name for p in model_dir.iterdir()}
    results = json.loads((tmp_path / "runs" / "digits" / "results.json").read_text())
    assert results["runs"]["DCLS"]["steps"] == 2 and results["runs"]["dense"]["steps"] == 2
    assert results["reload"]["max_abs_logit_diff"] == 0.0
    assert results["settings"]["init"] == "random" and results["settings"]["dcls"]["span"] == 11
    assert "dense" in res.err and "DCLS" in res.err and "it/s" in res.err  # the progress bars


def test_delays_recipe(delays_checkpoint):
    model_dir, res = delays_checkpoint
    assert set(_accuracies(res.out)) == {"no delays", "delays"}, res.out
    assert "TimingTask" in res.out and "max |logit difference| 0," in res.out
    config = json.loads((model_dir / "dclszoo_config.json").read_text())
    assert config["plugin"] == "spikingjelly" and config["builder"]["name"] == "dclszoo.cli.timing_snn"
    assert config["patch_config"]["config_type"] == "DelayConfig"


def test_audio_recipe(tmp_path):
    res = run_cli("finetune", "--recipe", "audio", "--max-steps", "1", "--no-baseline", "--no-progress", "--out",
                  "audio", cwd=tmp_path)
    assert res.rc == 0, res.text
    assert set(_accuracies(res.out)) == {"DCLS"}, res.out
    assert "pos_conv_embed" in res.out and "max |logit difference| 0," in res.out
    saved = tmp_path / "audio" / "model"
    assert json.loads((saved / "config.json").read_text())["model_type"] == "wav2vec2_dcls"
    assert (saved / "preprocessor_config.json").is_file()


def test_finetune_failures(tmp_path):
    argvs = [
        ["finetune", "--model", "convnext_attoo", "--no-progress"],        # not a timm architecture
        ["finetune", "--recipe", "delays", "--model", "convnext_atto"],    # --model does not apply (usage)
        ["finetune", "--no-progress"],                                     # bad env value below
    ]
    results, _ = run_many(argvs[:2], cwd=tmp_path)
    assert results[0].rc == 1 and "not a timm architecture" in results[0].err, results[0].text
    assert results[1].rc == 2 and "--model applies to --recipe digits / audio, not delays" in results[1].err
    res = run_cli(*argvs[2], cwd=tmp_path, env={"DCLSZOO_FINETUNE_MAX_STEPS": "many"})
    assert res.rc == 1 and "DCLSZOO_FINETUNE_MAX_STEPS='many'" in res.err, res.text
