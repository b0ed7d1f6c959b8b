"""``dclszoo export DIR --to dense|delays|nir``: a checkpoint as plain torch convolutions, integer delays or NIR."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._cli_common import CliError, dclszoo_modules, example_input, info, model_output, require, warn
from ._cli_load import load_checkpoint

__all__ = ["add_arguments", "run"]

DESCRIPTION = """\
Export a checkpoint for use without dclszoo:

  --to dense   every DCLS convolution becomes a plain torch convolution of kernel size `span` (same outputs):
               model.safetensors (the dense state dict), model.pt2 (a torch.export program: load it with
               torch.export.load(path).module(), no dclszoo or zoo code needed) and export.json (what changed).
  --to delays  the delay synapses with integer delays: delays.safetensors (<layer>.delays int64 [out, in],
               <layer>.weight, <layer>.bias) and delays.json; y[t, o] = bias[o] + sum_i weight[o, i] *
               x[t - delays[o, i], i]. Delays that are not integers yet are rounded (what evaluation with
               integer delays computes).
  --to nir     each DelayedLinear as a NIR graph (<layer>.nir: nir.Delay + nir.Linear/Affine nodes, one group per
               integer delay), for neuromorphic toolchains; needs the nir package.
"""

EPILOG = """\
examples:
  dclszoo export runs/digits/model --to dense          # -> runs/digits/model-dense/
  dclszoo export runs/delays/model --to nir --out nir-graphs
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="checkpoint directory")
    p.add_argument("--to", required=True, choices=("dense", "delays", "nir"), help="export format")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default DIR-<format>)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="dense: input shape without the batch (default: C from the model, 64x64 images; "
                        "transformers audio: 16000 samples)")
    p.add_argument("--no-program", action="store_true", help="dense: skip model.pt2 (torch.export)")


def _sample(model, shape: str | None):
    import torch

    if shape is None:
        return example_input(model)
    try:
        dims = [int(s) for s in shape.split(",")]
    except ValueError:
        raise CliError(f"--input-shape {shape!r}: expected comma-separated ints such as 3,224,224.") from None
    if not dims or any(d < 1 for d in dims):
        raise CliError(f"--input-shape {shape!r}: every size must be >= 1.")
    x = torch.randn(1, *dims, generator=torch.Generator().manual_seed(0))
    if getattr(model, "main_input_name", None) not in (None, "pixel_values"):
        return (), {model.main_input_name: x}
    return (x,), {}


def _dense(model, args, out: Path) -> dict:
    import torch
    from safetensors.torch import save_model

    from .training import finalize

    dcls, delays = dclszoo_modules(model)
    if not dcls:
        if delays:
            raise CliError(f"{args.directory!r} has delay synapses and no DCLS convolution; a delay has no plain torch "
                           f"equivalent: export it with --to delays or --to nir.")
        raise CliError(f"{args.directory!r} has no DCLS convolution: nothing to convert.")
    if delays:
        warn(f"{len(delays)} delay layer(s) stay dclszoo modules (a delay has no plain torch equivalent); "
             f"model.pt2 is skipped.")
    changed = {f: {"class": type(m).__name__, "kernel_size": list(m.span), "taps": m.kernel_count} for f, m in dcls}
    sample = _sample(model, args.input_shape)
    before = model_output(model, sample) if sample is not None else None
    model = finalize(model, dense=True).eval()
    result: dict = {"to": "dense", "changed_layers": changed, "files": ["model.safetensors", "export.json"]}
    if before is not None:
        after = model_output(model, sample)
        diff = float((after.float() - before.float()).abs().max())
        scale = float(before.float().abs().max()) or 1.0
        result["max_abs_diff"] = diff
        info(f"dense model vs DCLS model on a random input: max |diff| = {diff:.3g} (outputs up to {scale:.3g})")
        if diff > 1e-3 * scale:
            raise CliError(f"the dense model's outputs differ from the DCLS model's by {diff:.3g}; not exporting.")
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / "model.safetensors"))
    if args.no_program or delays:
        pass
    elif sample is None:
        warn("model.pt2 skipped: unknown input format; pass --input-shape.")
    else:
        try:
            program = torch.export.export(model, sample[0], sample[1])
            torch.export.save(program, str(out / "model.pt2"))
            result["files"].insert(1, "model.pt2")
            result["input_shape"] = [list(t.shape) for t in list(sample[0]) + list(sample[1].values())]
        except Exception as exc:  # torch.export refuses some Python control flow; the safetensors file remains
            warn(f"model.pt2 skipped: torch.export failed ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    info(f"{len(changed)} DCLS layer(s) -> plain convolutions")
    return result


def _integer(model, delays) -> None:
    from .training import finalize

    fractional = [f for f, m in delays if not m.integer_mode]
    if fractional:
        warn(f"{len(fractional)} delay layer(s) had non-integer delays; rounded (the outputs are those of "
             f"evaluation with integer delays).")
    finalize(model)


def _delays(model, args, out: Path) -> dict:
    from safetensors.torch import save_file

    from .delays_export import export_delays

    _, delays = dclszoo_modules(model)
    if not delays:
        raise CliError(f"{args.directory!r} has no delay synapses; DCLS convolutions export with --to dense.")
    _integer(model, delays)
    tensors, layers = {}, {}
    for fqn, m in delays:
        exp = export_delays(m)
        for key in ("delays", "weight", "bias"):
            if exp[key] is not None:
                tensors[f"{fqn}.{key}"] = exp[key].contiguous()
        layers[fqn] = {"class": type(m).__name__, "max_delay": exp["max_delay"], "delays_shape": list(exp["delays"].shape),
                       "weight_shape": list(exp["weight"].shape), "bias": exp["bias"] is not None}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "delays.safetensors"), metadata={"format": "pt", "producer": "dclszoo"})
    info(f"{len(layers)} delay layer(s): " + ", ".join(f"{f} ({v['delays_shape']}, max_delay {v['max_delay']})"
                                                       for f, v in layers.items()))
    return {"to": "delays", "layers": layers, "files": ["delays.safetensors", "export.json"],
            "formula": "y[t, o] = bias[o] + sum_i weight[o, i] * x[t - delays[o, i], i]"}


def _nir(model, args, out: Path) -> dict:
    import torch

    nir = require("nir", "dclszoo export --to nir")
    from .delays_export import from_nir, to_nir
    from .modules import DelayedLinear

    _, delays = dclszoo_modules(model)
    linear = [(f, m) for f, m in delays if isinstance(m, DelayedLinear)]
    if not linear:
        what = "only delay convolutions (export them with --to delays)" if delays else "no delay synapses"
        raise CliError(f"{args.directory!r} has {what}; NIR export covers DelayedLinear layers "
                       f"(DCLS convolutions export with --to dense).")
    skipped = [f for f, m in delays if not isinstance(m, DelayedLinear)]
    if skipped:
        warn(f"NIR export covers DelayedLinear layers; skipped {skipped} (use --to delays).")
    _integer(model, delays)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for fqn, m in linear:
        path = out / f"{fqn}.nir"
        graph = to_nir(m)
        nir.write(path, graph)
        back = from_nir(nir.read(path), max_delay=m.max_delay)
        x = (torch.rand(m.max_delay + 8, 2, m.in_features, generator=torch.Generator().manual_seed(0)) < 0.3).float()
        with torch.no_grad():
            ref, got = m.eval()(x.to(m.weight.dtype)), back.eval()(x.to(back.weight.dtype))
        diff = float((ref.float() - got.float()).abs().max())
        if diff > 1e-4:
            raise CliError(f"{path} read back computes a different function (max |diff| {diff:.3g}).")
        files.append(path.name)
        info(f"{fqn}: {m.in_features}->{m.out_features}, {len([n for n in graph.nodes if n.startswith('delay_')])}"
             f" Delay node(s) -> {path} (read back: same outputs)")
    return {"to": "nir", "files": files + ["export.json"], "skipped": skipped,
            "note": "delay synapses only: neurons and other layers are not part of these graphs"}


def run(args: argparse.Namespace) -> int:
    model, fmt = load_checkpoint(args.directory)
    model.eval()
    out = Path(args.out) if args.out else Path(str(Path(args.directory)).rstrip("/") + f"-{args.to}")
    result = {"dense": _dense, "delays": _delays, "nir": _nir}[args.to](model, args, out)
    result.update(source=str(args.directory), source_format=fmt, model_class=type(model).__name__)
    (out / "export.json").write_text(json.dumps(result, indent=1))
    info(f"wrote {', '.join(result['files'])} to {out}/")
    return 0
