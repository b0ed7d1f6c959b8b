"""Draw ``docs/figures/dcls_and_delays.png``, the README's picture: a dense 7x7 kernel, a DCLS kernel (taps at
learnable positions in a 17x17 span, built by :func:`dclszoo.functional.dcls_kernel`) and learnable delays
aligning the spikes of a pattern onto one neuron.

    pip install -e ".[plot]" && python docs/figures/make_readme_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dclszoo.functional import dcls_kernel  # noqa: E402

OUT = Path(__file__).with_name("dcls_and_delays.png")


def _dense_7x7(gen: torch.Generator) -> torch.Tensor:
    k = torch.zeros(17, 17)
    k[5:12, 5:12] = torch.randn(7, 7, generator=gen)
    return k


def _dcls_17x17(gen: torch.Generator) -> torch.Tensor:
    taps = 34
    weight = torch.randn(1, 1, taps, generator=gen)
    positions = (torch.rand(2, 1, 1, taps, generator=gen) - 0.5) * 15  # anywhere in the span, off the grid
    return dcls_kernel(weight, positions, None, (17, 17), "bilinear", backend="torch")[0, 0]


def main() -> None:
    gen = torch.Generator().manual_seed(3)
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.5]})
    for ax, kernel, title in ((axes[0], _dense_7x7(gen), "dense 7x7 kernel\n(49 weights on a fixed grid)"),
                              (axes[1], _dcls_17x17(gen), "DCLS: 34 taps in a 17x17 span\n(weights and positions learned)")):
        lim = float(kernel.abs().max())
        ax.imshow(kernel.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(title, fontsize=10)

    ax = axes[2]
    onsets = [0, 2, 4, 6]  # one spike per input channel, in a class-specific order
    delays = [6, 4, 2, 0]  # learned: every spike arrives at step 6
    for ch, (t, d) in enumerate(zip(onsets, delays)):
        y = 3 - ch
        ax.plot([t], [y], "o", color="tab:blue", ms=8)
        ax.annotate("", xy=(t + d, y), xytext=(t, y), arrowprops=dict(arrowstyle="->", color="tab:orange", lw=1.5))
        ax.plot([t + d], [y], "o", mfc="none", mec="tab:orange", ms=10)
        ax.text(t + d / 2, y + 0.22, f"d={d}", ha="center", fontsize=8, color="tab:orange")
    ax.axvline(6, color="gray", ls=":", lw=1)
    ax.text(6.15, -0.75, "all arrive together:\nthe neuron fires", fontsize=8, color="gray", va="bottom")
    ax.set_xlim(-0.5, 9.5), ax.set_ylim(-0.9, 3.6)
    ax.set_yticks(range(4), [f"input {4 - i}" for i in range(4)], fontsize=8)
    ax.set_xlabel("time step", fontsize=9)
    ax.set_title("learnable delays: one per synapse\n(spikes o shifted to coincide)", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT, dpi=90)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
