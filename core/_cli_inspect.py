"""``dclszoo inspect DIR``: what a checkpoint's DCLS / delay layers learned -- a table, a JSON summary, PNG plots."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ._cli_common import count_params, dclszoo_modules, format_table, info
from ._cli_load import load_checkpoint

__all__ = ["add_arguments", "run", "layer_summaries"]

DESCRIPTION = """\
Summarise the DCLS convolutions and delay synapses of a checkpoint: per layer its shape, taps, span and where the
taps (or delays) went, as a table on stdout and summary.json; plus PNG plots (matplotlib): positions.png, the
learned tap positions of every DCLS layer inside its span, and delays.png, a histogram of the delays of every
delay layer.
"""

EPILOG = """\
examples:
  dclszoo inspect runs/digits/model                   # plots in runs/digits/model/inspect/
  dclszoo inspect convnext-atto-dcls --out plots --no-plots
"""

MAX_PANELS = 24
MAX_POINTS = 4000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="checkpoint directory (dclszoo.save_pretrained, convert, finetune)")
    p.add_argument("--out", default=None, metavar="DIR", help="where summary.json and the PNGs go (default DIR/inspect)")
    p.add_argument("--no-plots", action="store_true", help="table and summary.json only (no matplotlib needed)")


def _dcls_row(fqn: str, m) -> dict:
    import torch

    p = m.effective_positions().detach().float()  # [ndim, O, I/g, K]
    lo, hi = (torch.tensor(b, dtype=torch.float32).view(-1, 1, 1, 1) for b in m.position_bounds)
    at_border = ((p - lo).abs() < 1e-3) | ((p - hi).abs() < 1e-3)
    dist = p.abs().amax(0)  # Chebyshev distance of each tap from the kernel centre
    row = {"layer": fqn, "kind": "dcls", "type": type(m).__name__, "in": m.in_channels, "out": m.out_channels,
           "groups": m.groups, "taps": m.kernel_count, "span": list(m.span), "interpolation": m.interpolation,
           "mean_abs_position": float(p.abs().mean()), "max_abs_position": float(dist.max()),
           "taps_at_border": float(at_border.any(0).float().mean())}
    sigma = m.effective_sigma()
    row["sigma_mean"] = None if sigma is None else float(sigma.detach().float().mean())
    return row


def _delay_row(fqn: str, m) -> dict:
    d = m.effective_delays().detach().float()
    return {"layer": fqn, "kind": "delays", "type": type(m).__name__, "in": int(m.weight.shape[1]),
            "out": int(m.weight.shape[0]), "taps": m.kernel_count, "max_delay": m.max_delay,
            "sigma": m._sigma_value, "integer": bool(m.integer_mode or bool((d == d.round()).all())),
            "mean_delay": float(d.mean()), "min_delay": float(d.min()), "max_delay_used": float(d.max())}


def layer_summaries(model) -> list[dict]:
    """One dict per DCLS convolution and delay synapse layer of ``model``, in module order."""
    from .modules import DclsConvNd
    from .modules._delay_base import DelayedSynapse

    rows = []
    for fqn, m in model.named_modules():
        if isinstance(m, DclsConvNd):
            rows.append(_dcls_row(fqn or "<root>", m))
        elif isinstance(m, DelayedSynapse):
            rows.append(_delay_row(fqn or "<root>", m))
    return rows


def _print_tables(rows: list[dict]) -> None:
    dcls = [r for r in rows if r["kind"] == "dcls"]
    delays = [r for r in rows if r["kind"] == "delays"]
    if dcls:
        info(format_table(
            ["DCLS layer", "in->out", "groups", "taps", "span", "interp", "mean|pos|", "max|pos|", "at border", "sigma"],
            [[r["layer"], f"{r['in']}->{r['out']}", r["groups"], r["taps"], "x".join(map(str, r["span"])),
              r["interpolation"], f"{r['mean_abs_position']:.2f}", f"{r['max_abs_position']:.2f}",
              f"{100 * r['taps_at_border']:.0f}%", "-" if r["sigma_mean"] is None else f"{r['sigma_mean']:.2f}"]
             for r in dcls]))
    if delays:
        info(format_table(
            ["delay layer", "in->out", "taps", "max_delay", "sigma", "integer", "mean delay", "min", "max"],
            [[r["layer"], f"{r['in']}->{r['out']}", r["taps"], r["max_delay"], f"{r['sigma']:g}",
              "yes" if r["integer"] else "no", f"{r['mean_delay']:.2f}", f"{r['min_delay']:g}",
              f"{r['max_delay_used']:g}"] for r in delays]))


def _pyplot():
    from ._cli_common import require

    matplotlib = require("matplotlib", "dclszoo inspect's plots (or pass --no-plots)")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 6)
    return int(math.ceil(n / cols)), cols


def _pick(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    step = (len(items) - 1) / (limit - 1)
    return [items[round(i * step)] for i in range(limit)]


def _panels(modules: list[tuple[str, object]], width: float, height: float) -> tuple:
    """``(pyplot, figure, [(axes, (fqn, module)), ...])``: one panel per shown layer, unused panels hidden."""
    plt = _pyplot()
    shown = _pick(modules, MAX_PANELS)
    rows, cols = _grid(len(shown))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    return plt, fig, list(zip(axes.flat, shown))


def _save(plt, fig, title: str, path: Path) -> Path:
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_positions(modules: list[tuple[str, object]], path: Path) -> Path:
    """One panel per DCLS layer: its tap positions inside the span (a sample of at most ``MAX_POINTS`` taps;
    1-D layers: a histogram). Taps of an exact conversion start on the integer grid: spread shows learning."""
    import torch

    plt, fig, panels = _panels(modules, width=2.6, height=2.7)
    for ax, (fqn, m) in panels:
        p = m.effective_positions().detach().float().cpu().flatten(1)  # [ndim, taps]
        lo, hi = m.position_bounds
        if p.shape[1] > MAX_POINTS:
            p = p[:, torch.randperm(p.shape[1], generator=torch.Generator().manual_seed(0))[:MAX_POINTS]]
        if p.shape[0] >= 2:  # the last two axes: rows (y) and columns (x), drawn like the kernel
            ax.scatter(p[-1].numpy(), p[-2].numpy(), s=3, alpha=0.25, linewidths=0)
            ax.set_xlim(lo[-1] - 0.5, hi[-1] + 0.5)
            ax.set_ylim(hi[-2] + 0.5, lo[-2] - 0.5)
            ax.set_aspect("equal")
            ax.grid(True, linewidth=0.3, alpha=0.5)
        else:
            ax.hist(p[0].numpy(), bins=4 * (int(hi[0] - lo[0]) + 1), range=(lo[0] - 0.5, hi[0] + 0.5))
        ax.set_title(f"{fqn}\n{m.kernel_count} taps, span {'x'.join(map(str, m.span))}", fontsize=7)
        ax.tick_params(labelsize=6)
    title = "learned tap positions (offset from the kernel centre)"
    if len(panels) < len(modules):
        title += f"; {len(panels)} of {len(modules)} layers"
    return _save(plt, fig, title, path)


def plot_delays(modules: list[tuple[str, object]], path: Path) -> Path:
    """One panel per delay layer: the histogram of its delays (time steps)."""
    plt, fig, panels = _panels(modules, width=3.2, height=2.4)
    for ax, (fqn, m) in panels:
        d = m.effective_delays().detach().float().cpu().flatten().numpy()
        ax.hist(d, bins=m.max_delay, range=(-0.5, m.max_delay - 0.5), color="tab:orange")
        ax.set_title(f"{fqn} (max_delay {m.max_delay})", fontsize=7)
        ax.set_xlabel("delay (steps)", fontsize=7)
        ax.tick_params(labelsize=6)
    return _save(plt, fig, "learned synaptic delays", path)


def run(args: argparse.Namespace) -> int:
    model, fmt = load_checkpoint(args.directory)
    rows = layer_summaries(model)
    out = Path(args.out) if args.out else Path(args.directory) / "inspect"
    info(f"{args.directory}: {type(model).__name__} ({fmt} checkpoint), {count_params(model):,} parameters, "
         f"{sum(r['kind'] == 'dcls' for r in rows)} DCLS layer(s), {sum(r['kind'] == 'delays' for r in rows)} "
         f"delay layer(s)")
    if not rows:
        info("no DCLS convolution or delay synapse in this model: nothing to plot.")
    _print_tables(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"model": type(model).__name__, "format": fmt,
                                                  "parameters": count_params(model), "layers": rows}, indent=1))
    written = [out / "summary.json"]
    if not args.no_plots and rows:
        dcls, delays = dclszoo_modules(model)
        if dcls:
            written.append(plot_positions(dcls, out / "positions.png"))
        if delays:
            written.append(plot_delays(delays, out / "delays.png"))
    info("wrote " + ", ".join(str(p) for p in written))
    return 0
