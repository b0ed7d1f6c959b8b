"""Resume is exact: N optimizer steps, save_state, load_state in a fresh run, M more == N + M uninterrupted steps
(bit-identical parameters and losses), through the example script's loop (accelerate, bf16 autocast on CPU,
gradient accumulation, the Progress counter and, for the delays, the sigma schedule registered for checkpointing)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:.*does not represent the dense kernel")


@pytest.mark.parametrize("model", ["convnext", "snn"])
def test_resume_is_exact(model, example, fresh_accelerate, tmp_path):
    pytest.importorskip("timm" if model == "convnext" else "spikingjelly")
    common = ["--model", model, "--steps", "6", "--batch-size", "8", "--grad-accum", "2", "--mixed-precision", "bf16",
              "--no-progress", "--cpu"]
    straight = example.main(common + ["--output-dir", str(tmp_path / "straight")])
    fresh_accelerate()
    first = example.main(common + ["--output-dir", str(tmp_path / "resumed"), "--stop-after", "2"])
    fresh_accelerate()
    second = example.main(common + ["--output-dir", str(tmp_path / "resumed"), "--resume"])
    assert (first["step"], second["step"], straight["step"]) == (2, 6, 6)
    assert second["digest"] == straight["digest"]
    assert first["losses"] + second["losses"] == straight["losses"]
    assert (tmp_path / "resumed" / "model" / "dclszoo_config.json").is_file()  # finalized and saved at the end
