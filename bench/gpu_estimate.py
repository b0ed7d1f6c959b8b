"""Expected H200 times of the Triton depthwise DCLS layers, from their FLOP and byte counts (no GPU needed).

    python bench/gpu_estimate.py

For a session without a GPU: what ``bench/gpu.py`` should find, derived from the tile sizes the kernels pick
(``dclszoo.kernels._dwconv_triton.blocks``) and stated machine figures, beside the cuDNN anchors measured on an H200
(../shared/CONTEXT.md §8, bf16, batch 64, forward only). Not a measurement: replace it by bench/gpu.py's table.

Model per layer (batch 64, bf16):
- tensor-core FLOPs of the three kernels (forward, input gradient, kernel gradient): ``2 * rows * C * SY *
  (NCH * BK) * BX * column_blocks`` each (the kernel gradient with its own single wide chunk), run at
  ``EFFICIENCY`` of the H200's dense bf16 rate;
- HBM bytes: input read and output written by each kernel (3 kernels, 2 tensors each), at 4.8 TB/s; the kernel
  gradient's re-reads of ``x`` and ``dy`` tiles from L2 (once per kernel row) at 8 TB/s;
- time = FLOP time + byte times (no overlap assumed: conservative).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the tile choice only; no kernel runs

from dclszoo.kernels._dwconv_triton import blocks  # noqa: E402

PEAK_BF16 = 790e12  # dense bf16 FLOP/s of an H200 as the device README gives it
EFFICIENCY = 0.35  # assumed fraction of it reached by 64 x 16..64 x 64 Triton dots fed from L1/L2
HBM = 4.8e12  # bytes/s
L2 = 8e12  # bytes/s, a conservative L2 read rate (the kernel gradient re-reads its tiles from L2 per kernel row)
STAGES = ((96, 56, 3), (192, 28, 3), (384, 14, 9), (768, 7, 3))  # channels, size, blocks of ConvNeXt-T
# cuDNN depthwise forward, bf16, batch 64, ms (CONTEXT.md §8): 7x7 NCHW, 7x7 channels_last, direct Triton 17x17
ANCHORS = {56: (0.66, 0.14, 1.11), 28: (0.35, 0.087, 0.58), 14: (0.18, 0.047, 0.30), 7: (0.097, 0.034, 0.18)}
PRESETS = {"convnext_tiny (34 taps, 17x17)": 17, "convnext_tiny_gauss (26 taps, 23x23)": 23}


def _flop(rows: int, channels: int, span: int, bk: int, nch: int, bx: int, col_blocks: int) -> float:
    return 2 * rows * channels * span * nch * bk * bx * col_blocks


def layer_ms(channels: int, size: int, span: int, batch: int = 64, efficiency: float = EFFICIENCY) -> tuple:
    """(forward ms, forward + backward ms, GFLOP of the forward) of one layer: forward and input gradient with
    the forward's tiles, the kernel gradient with one chunk of ``pow2(BX + SX - 1)`` columns where <= 128."""
    b = blocks(size, span, batch * size)
    rows = -(-batch * size // b["BM"]) * b["BM"]
    col_blocks = -(-size // b["BX"])
    flop = _flop(rows, channels, span, b["BK"], b["NCH"], b["BX"], col_blocks)
    wide = 1 << (b["BX"] + span - 2).bit_length()
    flop_k = _flop(rows, channels, span, wide, 1, b["BX"], col_blocks) if wide <= 128 else flop
    bytes_ = 2 * batch * channels * size * size * 2  # bf16 in + out
    rate = efficiency * PEAK_BF16
    fwd = (flop / rate + bytes_ / HBM) * 1e3
    # kernel gradient: every (channel, kernel row, column block) program reads its rows of x and dy from L2
    l2_k = channels * span * col_blocks * rows * (b["BX"] + (wide if wide <= 128 else b["NCH"] * b["BK"])) * 2
    return fwd, 2 * fwd + (flop_k / rate + bytes_ / HBM + l2_k / L2) * 1e3, flop / 1e9


def main() -> None:
    print(f"Assumed: {EFFICIENCY:.0%} of {PEAK_BF16 / 1e12:.0f} TFLOP/s bf16, {HBM / 1e12:.1f} TB/s; batch 64.\n")
    print("| preset | stage | fwd GFLOP | expected fwd ms | expected fwd+bwd ms | cuDNN 7x7 fwd NCHW / CL (measured) | "
          "direct Triton 17x17 fwd (measured) |")
    print("|---|---|---|---|---|---|---|")
    for preset, span in PRESETS.items():
        for c, hw, n in STAGES:
            fwd, both, gflop = layer_ms(c, hw, span)
            a = ANCHORS[hw]
            print(f"| {preset} | C{c} {hw}x{hw} | {gflop:.1f} | {fwd:.3f} | {both:.3f} | {a[0]} / {a[1]} | {a[2]} |")
    step7 = 64 / 1914 * 1e3  # measured (CONTEXT.md §8): timm's 7x7 ConvNeXt-T trains at 1914 img/s, batch 64, bf16
    inf7 = 256 / 7952 * 1e3  # and infers at 7952 img/s, batch 256
    print("\nConvNeXt-T, all 18 depthwise layers, against the measured 7x7 model. Lower bounds: the 7x7 model's own "
          "depthwise convolutions are taken to cost nothing, so ours add their whole time:\n")
    print("| preset | efficiency | ours per training step | expected training vs 7x7 | ours per inference batch "
          "(256) | expected inference vs 7x7 |")
    print("|---|---|---|---|---|---|")
    for preset, span in PRESETS.items():
        for eff in (EFFICIENCY, 0.15):
            train = sum(n * layer_ms(c, hw, span, 64, eff)[1] for c, hw, n in STAGES)
            infer = sum(n * layer_ms(c, hw, span, 256, eff)[0] for c, hw, n in STAGES)
            print(f"| {preset} | {eff:.0%} | {train:.1f} ms | >= {step7 / (step7 + train):.2f}x | {infer:.1f} ms | "
                  f">= {inf7 / (inf7 + infer):.2f}x |")


if __name__ == "__main__":
    main()
