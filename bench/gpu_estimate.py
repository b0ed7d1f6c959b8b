"""Expected H200 times of the Triton depthwise DCLS layers and delay synapses, from their FLOP, instruction and
byte counts (no GPU needed).

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

Model of the delay synapse (700 -> 256, batch 32, fp32, forward + backward), :func:`delay_ms`:
- every tap is one FMA: ``T * B * I * O * J`` per pass (``J`` taps; the tiles' rounding of ``T`` added), one pass
  forward, two backward (input and coefficient gradients, in one kernel);
- issue: instructions per FMA read from the sm_90 SASS of the kernels' loops (``DELAY_CONFIGS``), at 4 warp
  instructions per clock per SM, 132 SMs, 1.98 GHz;
- L2 -> SM bytes: what a program loads that no other load of the same program has loaded in the same step of
  its loop (windows of the ``BN`` columns of a row overlap when the delays are close: :func:`_union`), nothing
  assumed from L1 beyond that; at ``L2_DELAY`` bytes/s;
- the expected range per configuration: from max(issue, L2 at the high rate) to issue + L2 at the low rate (no
  overlap); the autotuner's pick lies between the best low end and the best high end over the configurations.
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


CLOCK, SMS, LANES_PER_CLOCK = 1.98e9, 132, 128  # lane instructions issued per clock per SM (4 warps)
L2_DELAY = (8e12, 5.5e12)  # L2 -> SM bytes/s: the rate above, and a pessimistic one
# The delay kernel's configurations (dclszoo.kernels._delay_triton._CONFIGS: R steps, BN columns) with the
# instructions per FMA of their main loops, fp32, batch 32 (`python bench/kernel_sass.py --taps J`: sm_90 SASS of
# the Triton 3.8 builds): the forward, and the backward per FMA of its two gradients.
DELAY_CONFIGS = {  # J: [(R, BN, forward, backward)]
    6: [(32, 8, 1.39, 1.48), (32, 4, 1.53, 1.61), (32, 16, 1.46, 1.62), (16, 8, 1.61, 1.88)],
    4: [(32, 8, 1.61, 1.56), (32, 4, 1.66, 1.72), (32, 16, 1.66, 1.73), (16, 8, 1.85, 2.01)],
    1: [(32, 8, 3.03, 2.36), (32, 4, 3.50, 2.71), (32, 16, 3.50, 2.71), (16, 8, 4.16, 3.15)],
}
# The kernels before the runs of taps (one load per tap, a separate coefficient-gradient kernel; removed): 3.3-3.6
# instructions per gathered element in their better configurations under Triton 3.8 (9.7-48 for their forward
# under Triton 3.6, the GPU machine's version).
GATHER_INSTR = 3.4
DELAY_CASES = ((25, 100), (100, 100), (250, 100), (250, 300))
DELAY_ANCHORS = {(25, 100): (0.65, 2.27), (100, 100): (0.66, 8.30), (250, 300): (0.59, 36.0)}  # Linear, dcls (ms)


def _union(n: int, width: int, spread: int) -> float:
    """Expected steps covered by ``n`` windows of ``width`` steps whose starts are uniform over ``spread``."""
    span = spread + width - 1
    return span * (1 - (1 - width / span) ** n)


def delay_ms(max_delay: int, steps: int, taps: int, before: bool = False, n_in: int = 700, n_out: int = 256,
             batch: int = 32) -> dict:
    """Expected forward + backward of one ``DelayedLinear`` sparse phase on an H200 (see the module docstring):
    one run of ``taps`` consecutive delays per synapse on the kernel of ``dclszoo.kernels._delay_triton`` (each
    configuration modelled, the autotuner's pick lying between the best low and the best high end), or
    (``before``) on the earlier gather kernels that loaded every tap separately."""
    step_bytes = batch * 4  # one time step of one channel, fp32
    rate = LANES_PER_CLOCK * SMS * CLOCK
    hbm = (4 * (3 * steps * batch * (2 * n_in + n_out)) + 4 * 6 * n_out * n_in * taps) / HBM  # copies, outputs, tables
    if before:  # tiles of R * L = 256 row positions (8 steps of 32) x BN = 16 columns, one load per tap
        fma = steps * batch * n_in * n_out * taps
        issue = 3 * fma * GATHER_INSTR / rate
        w, bn = 256 // batch + taps - 1, 16  # the J taps of a column, one after the other, cover w steps
        fwd = -(-steps // (256 // batch)) * -(-n_out // bn) * n_in * _union(bn, w, max_delay) * step_bytes
        gx = -(-steps // (256 // batch)) * -(-n_in // bn) * n_out * _union(bn, w, max_delay) * step_bytes
        # coefficient gradient: chunks of 2 steps per column (R = 2, L = 32), the J taps of a row side by side
        gc = fma * 4 * (2 + taps - 1) / (2 * taps)
        models = [(3 * fma, issue, fwd + gx + gc, gc)]
    else:
        models = []
        for r, bn, i_fwd, i_bwd in DELAY_CONFIGS[taps]:
            rows = -(-steps // r) * r
            fma = rows * batch * n_in * n_out * taps
            issue = (i_fwd + 2 * i_bwd) * fma / rate
            w = r + taps - 1
            fwd = rows // r * -(-n_out // bn) * n_in * _union(bn, w, max_delay) * step_bytes
            gx = rows // r * -(-n_in // bn) * n_out * _union(bn, w, max_delay) * step_bytes
            # the coefficient gradient rides on the backward's windows: x read once per program, and an atomic
            # read-modify-write of 4 bytes per (program's steps, synapse, tap)
            gc = steps * batch * n_in * 4 + rows // r * n_out * n_in * taps * 8
            models.append((3 * fma, issue, fwd + gx + gc, gc))
    lows = [max(issue, l2 / L2_DELAY[0]) + hbm for _, issue, l2, _ in models]
    highs = [issue + l2 / L2_DELAY[1] + hbm for _, issue, l2, _ in models]
    best = min(range(len(models)), key=lambda k: highs[k])  # the row's other columns: the best high end's config
    fma, issue, l2, gc = models[best]
    return {"fma": fma, "issue_ms": issue * 1e3, "l2_gb": l2 / 1e9, "gc_gb": gc / 1e9,
            "low_ms": min(lows) * 1e3, "high_ms": min(highs) * 1e3}


def delay_table() -> None:
    print("\nDelay synapse 700 -> 256, batch 32, fp32, forward + backward, expected on an H200; "
          "Linear and `dcls` measured before (CONTEXT.md §8):\n")
    print("| max_delay, T | phase, kernels | GFMA | issue ms | L2 GB (coefficient gradient) | expected ms | "
          "nn.Linear | 3x Linear | `dcls` |")
    print("|---|---|---|---|---|---|---|---|---|")
    phases = (("integer (J = 1)", 1, False), ("sigma 0.5 (J = 6)", 6, False),
              ("sigma 0.25 (J = 4): the floor of dclszoo's recipe", 4, False), ("integer, before", 1, True),
              ("sigma 0.5, before", 6, True))
    for span, steps in DELAY_CASES:
        lin, dcls = DELAY_ANCHORS.get((span, steps), (None, None))
        for name, taps, before in phases:
            e = delay_ms(span, steps, taps, before)
            anchor = f"{lin} ms | {3 * lin:.2f} ms | {dcls} ms" if lin else "- | - | -"
            print(f"| {span}, {steps} | {name} | {e['fma'] / 1e9:.1f} | {e['issue_ms']:.2f} | {e['l2_gb']:.1f} "
                  f"({e['gc_gb']:.1f}) | {e['low_ms']:.2f}-{e['high_ms']:.2f} | {anchor} |")


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
    delay_table()
