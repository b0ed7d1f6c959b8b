"""The GPU tables of the Triton issues, in one run (about 3-5 minutes on one H200).

    python bench/gpu.py                                  # every section, on cuda
    python bench/gpu.py --only layers,construct          # some sections (model, layers, construct, dense, delays,
                                                         # profile)
    TRITON_INTERPRET=1 python bench/gpu.py --device cpu --quick   # smoke run of every code path, tiny shapes

Sections, each printed as a markdown table, ours beside the anchors measured in the same process:

- ``model``: ConvNeXt-T (timm) training and inference throughput under bf16 autocast (batch 64 train with SGD,
  256 inference, 224 x 224) and training peak memory: timm's 7x7 model (NCHW and channels_last), the dense 17x17
  depthwise model (cuDNN), ``dcls`` 0.1.1 ``Dcls2d`` (34 taps / 17, if installed) and the two presets of dclszoo
  (``convnext_tiny``: 34 taps / 17 bilinear; ``convnext_tiny_gauss``: 26 / 23). Ratios against the 7x7 model.
- ``layers``: one depthwise layer per ConvNeXt-T stage (batch 64), both presets, fp32 and bf16 autocast,
  forward + backward: ours, ``dcls``, cuDNN 7x7 (NCHW / channels_last) and cuDNN of the whole span.
- ``construct``: the kernel construction alone, forward + backward, and its extra memory: ours vs ``dcls``.
- ``dense``: a dense DCLS layer (256 -> 256, 9 taps in 7 x 7): our construction against the cuDNN conv it feeds
  (target <= 10%).
- ``delays``: the delay synapse table of the delay issue (``bench/_gpu_delays.py``).
- ``profile``: the CUDA kernels of three training steps of the preset model (torch profiler, top 15 by time).

Times are medians of CUDA-event-timed repetitions after warm-up (the first calls compile the Triton kernels).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dclszoo  # noqa: E402

STAGES = ((96, 56), (192, 28), (384, 14), (768, 7))  # ConvNeXt-T depthwise layers at 224 x 224
PRESETS = {"convnext_tiny": (34, 17, "bilinear"), "convnext_tiny_gauss": (26, 23, "gauss")}


# ------------------------------------------------------------------------------------------------ timing
class Clock:
    """Median milliseconds of a callable: CUDA events on GPUs, perf_counter elsewhere."""

    def __init__(self, device: str, reps: int, warmup: int):
        self.device, self.reps, self.warmup = device, reps, warmup

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def ms(self, fn: Callable[[], object], reps: int | None = None) -> float:
        for _ in range(self.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps or self.reps):
            if self.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def peak_mb(self, fn: Callable[[], object]) -> float | None:
        """Peak memory allocated during ``fn`` beyond what was allocated before it (MB); None off CUDA."""
        if self.device != "cuda":
            fn()
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        self.sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def _fmt(v, unit="") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.3g}{unit}" if abs(v) < 100 else f"{v:.0f}{unit}"


def _table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(_fmt(v) for v in r) + " |")
    sys.stdout.flush()


def _dcls_module():
    """``dcls`` 0.1.1's Dcls1d/Dcls2d, or None if it is not installed."""
    try:
        logging.disable(logging.WARNING)  # its warning flood about the implicit-GEMM extension
        from DCLS.construct.modules import Dcls1d, Dcls2d
    except ImportError:
        return None
    finally:
        logging.disable(logging.NOTSET)
    return Dcls1d, Dcls2d


def _dcls2d(channels, taps, span, interpolation, device):
    mods = _dcls_module()
    if mods is None:
        return None
    logging.disable(logging.WARNING)
    try:
        m = mods[1](channels, channels, taps, padding=span // 2, dilated_kernel_size=span, groups=channels,
                    version="gauss" if interpolation == "gauss" else "v1", use_implicit_gemm=False)
    finally:
        logging.disable(logging.NOTSET)
    return m.to(device)


def _ours(channels, taps, span, interpolation, device):
    return dclszoo.DclsConv2d(channels, channels, taps, span, padding="same", groups=channels,
                              interpolation=interpolation).to(device)


# ------------------------------------------------------------------------------------------------ sections
def _train_step(model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One bf16-autocast training step of a classifier (forward, cross-entropy, backward, optimizer step)."""
    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _replace_dw(model: nn.Module, make: Callable[[nn.Conv2d], nn.Module]) -> nn.Module:
    for name, mod in list(model.named_modules()):
        if name.endswith("conv_dw"):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, "conv_dw", make(mod))
    return model


def section_model(args, clock: Clock) -> None:
    import timm

    dclszoo.enable()
    dev, size = args.device, (64 if args.quick else 224)
    b_train, b_inf = (2, 4) if args.quick else (64, 256)

    def build(kind):
        if kind == "timm 7x7 (NCHW)":
            return timm.create_model("convnext_tiny")
        if kind == "timm 7x7 (channels_last)":
            return timm.create_model("convnext_tiny").to(memory_format=torch.channels_last)
        if kind == "dense 17x17 (cuDNN)":
            return _replace_dw(timm.create_model("convnext_tiny"), lambda c: nn.Conv2d(
                c.in_channels, c.out_channels, 17, padding=8, groups=c.groups))
        if kind == "dcls 0.1.1 Dcls2d 34/17":
            if _dcls_module() is None:
                return None
            return _replace_dw(timm.create_model("convnext_tiny"),
                               lambda c: _dcls2d(c.in_channels, 34, 17, "bilinear", "cpu"))
        preset = kind.split()[-1]
        return timm.create_model("convnext_tiny_dcls", dcls=preset)

    kinds = ["timm 7x7 (NCHW)", "timm 7x7 (channels_last)", "dense 17x17 (cuDNN)", "dcls 0.1.1 Dcls2d 34/17",
             "dclszoo convnext_tiny", "dclszoo convnext_tiny_gauss"]
    rows, base = [], None
    for kind in kinds:
        model = build(kind)
        if model is None:
            rows.append([kind, None, None, None, None, None])
            continue
        cl = "channels_last" in kind
        model = model.to(dev)
        fmt = torch.channels_last if cl else torch.contiguous_format
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x = torch.randn(b_train, 3, size, size, device=dev).contiguous(memory_format=fmt)
        train_step = _train_step(model, opt, x, torch.randint(0, 1000, (b_train,), device=dev))
        model.train()
        t_train = clock.ms(train_step, reps=args.model_reps)
        peak = clock.peak_mb(train_step)
        model.eval()
        xi = torch.randn(b_inf, 3, size, size, device=dev).contiguous(memory_format=fmt)

        def infer():
            with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):
                model(xi)

        t_inf = clock.ms(infer, reps=args.model_reps)
        train_ips, inf_ips = b_train / t_train * 1e3, b_inf / t_inf * 1e3
        if base is None:
            base = (train_ips, inf_ips)
        rows.append([kind, train_ips, f"{train_ips / base[0]:.2f}x", inf_ips, f"{inf_ips / base[1]:.2f}x",
                     None if peak is None else peak / 1024])
        del model, opt
        if dev == "cuda":
            torch.cuda.empty_cache()
    _table(f"ConvNeXt-T, bf16 autocast, {size}x{size}, batch {b_train} train / {b_inf} inference ({_device_name(dev)})",
           ["variant", "train img/s", "vs 7x7", "inference img/s", "vs 7x7", "train peak GB"], rows)


def _layer_step(module, x, gy, dtype):
    def run():
        module.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            y = module(x)
        y.backward(gy.to(y.dtype))

    return run


def section_layers(args, clock: Clock) -> None:
    dev = args.device
    batch = 2 if args.quick else 64
    stages = STAGES[-2:] if args.quick else STAGES
    rows = []
    for preset, (taps, span, interp) in PRESETS.items():
        for dtype in ("fp32", "bf16"):
            for c, hw in stages:
                c = min(c, 8) if args.quick else c
                x = torch.randn(batch, c, hw, hw, device=dev, requires_grad=True)
                xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
                gy = torch.randn(batch, c, hw, hw, device=dev)
                mods = {
                    "ours": _ours(c, taps, span, interp, dev),
                    "dcls": _dcls2d(c, taps, span, interp, dev),
                    "7x7": nn.Conv2d(c, c, 7, padding=3, groups=c).to(dev),
                    "span": nn.Conv2d(c, c, span, padding=span // 2, groups=c).to(dev),
                }
                t = {k: (None if m is None else clock.ms(_layer_step(m, x, gy, dtype))) for k, m in mods.items()}
                t7cl = clock.ms(_layer_step(mods["7x7"].to(memory_format=torch.channels_last), xcl,
                                            gy.contiguous(memory_format=torch.channels_last), dtype))
                faster = None if t["dcls"] is None else f"{t['dcls'] / t['ours']:.2f}x"
                rows.append([preset, dtype, f"C{c} {hw}x{hw}", t["ours"], t["dcls"], faster, t["7x7"], t7cl,
                             t["span"], f"{t['ours'] / min(t['7x7'], t7cl):.2f}x"])
    _table(f"Depthwise DCLS layer, batch {batch}, forward + backward, ms ({_device_name(dev)})",
           ["preset", "dtype", "stage", "ours", "dcls 0.1.1", "dcls / ours", "cuDNN 7x7 NCHW", "cuDNN 7x7 CL",
            "cuDNN span", "ours / best 7x7"], rows)


def _construct_case(o, i, taps, span, interp, dev):
    """(run_ours, run_theirs or None) for the construction of an ``[o, i, span, span]`` kernel (``i == 1``:
    depthwise)."""
    from dclszoo.functional import dcls_kernel

    torch.manual_seed(0)
    in_ch, groups = (o, o) if i == 1 else (i, 1)
    ours = dclszoo.DclsConv2d(in_ch, o, taps, span, padding="same", groups=groups, interpolation=interp).to(dev)
    g = torch.randn((o, i, span, span), device=dev)

    def run_ours():
        ours.zero_grad(set_to_none=True)
        k = dcls_kernel(ours.weight, ours.positions, ours.sigma, ours.span, interp,
                        position_bounds=ours.position_bounds, sigma_floor=1e-3 if ours.sigma is not None else None)
        k.backward(g)

    mods = _dcls_module()
    if mods is None:
        return run_ours, None
    logging.disable(logging.WARNING)
    try:
        theirs = mods[1](in_ch, o, taps, padding=span // 2, dilated_kernel_size=span, groups=groups,
                         version="gauss" if interp == "gauss" else "v1", use_implicit_gemm=False).to(dev)
    finally:
        logging.disable(logging.NOTSET)

    def run_theirs():
        theirs.zero_grad(set_to_none=True)
        theirs.DCK(theirs.weight, theirs.P, theirs.SIG).backward(g)

    return run_ours, run_theirs


def section_construct(args, clock: Clock) -> None:
    dev = args.device
    cases = [(768, 1, 34, 17, "bilinear"), (768, 1, 26, 23, "gauss"), (256, 256, 9, 7, "gauss")]
    if args.quick:
        cases = [(16, 1, 34, 17, "bilinear"), (8, 8, 9, 7, "gauss")]
    rows = []
    for o, i, taps, span, interp in cases:
        run_ours, run_theirs = _construct_case(o, i, taps, span, interp, dev)
        t_ours, m_ours = clock.ms(run_ours), clock.peak_mb(run_ours)
        t_theirs = clock.ms(run_theirs) if run_theirs else None
        m_theirs = clock.peak_mb(run_theirs) if run_theirs else None
        rows.append([f"{o}x{i} {interp}, {taps} taps in {span}x{span}", t_ours, t_theirs,
                     None if t_theirs is None else f"{t_theirs / t_ours:.1f}x", m_ours, m_theirs])
    _table(f"Kernel construction alone, forward + backward ({_device_name(dev)})",
           ["kernel", "ours ms", "dcls ms", "dcls / ours", "ours extra MB", "dcls extra MB"], rows)


def section_dense(args, clock: Clock) -> None:
    """A dense DCLS layer keeps cuDNN; the construction must cost <= 10% of that convolution."""
    dev = args.device
    batch, hw, ch = (2, 8, 16) if args.quick else (64, 14, 256)
    rows = []
    for dtype in ("fp32", "bf16"):
        torch.manual_seed(0)
        ours = dclszoo.DclsConv2d(ch, ch, 9, 7, padding=3, interpolation="gauss").to(dev)
        dense = nn.Conv2d(ch, ch, 7, padding=3).to(dev)
        x = torch.randn(batch, ch, hw, hw, device=dev, requires_grad=True)
        gy = torch.randn(batch, ch, hw, hw, device=dev)
        g = torch.randn(ch, ch, 7, 7, device=dev)

        def construct():
            ours.zero_grad(set_to_none=True)
            ours.kernel().backward(g)

        t_c = clock.ms(construct)
        t_layer = clock.ms(_layer_step(ours, x, gy, dtype))
        t_conv = clock.ms(_layer_step(dense, x, gy, dtype))
        rows.append([f"{ch}->{ch} {hw}x{hw} B{batch}", dtype, t_c, t_conv, f"{100 * t_c / t_conv:.1f}%", t_layer,
                     f"{t_layer / t_conv:.2f}x"])
    _table(f"Dense DCLS layer (9 taps in 7x7, Gaussian): construction vs the cuDNN convolution, ms ({_device_name(dev)})",
           ["layer", "dtype", "construction fwd+bwd", "cuDNN conv fwd+bwd", "construction / conv", "DCLS layer",
            "layer / conv"], rows)


def section_delays(args, clock: Clock) -> None:
    from _gpu_delays import delay_rows

    if args.quick:
        print("\n(delays: no quick variant; run it on a GPU)")
        return
    for dtype in (torch.float32, torch.bfloat16):
        rows = delay_rows(device=args.device, dtype=dtype)
        if not rows:
            continue
        header = list(rows[0].keys())
        _table(f"Delay synapses 700 -> 256, batch 32, forward + backward ({_device_name(args.device)}, {dtype})",
               header, [[r[h] for h in header] for r in rows])


def section_profile(args, clock: Clock) -> None:
    import timm
    from torch.profiler import ProfilerActivity, profile

    dclszoo.enable()
    dev = args.device
    size, batch = (64, 2) if args.quick else (224, 64)
    model = timm.create_model("convnext_tiny_dcls", dcls="convnext_tiny").to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device=dev)
    step = _train_step(model, opt, x, torch.randint(0, 1000, (batch,), device=dev))
    for _ in range(3):
        step()
    clock.sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            step()
        clock.sync()
    key = "self_cuda_time_total" if dev == "cuda" else "self_cpu_time_total"
    print(f"\n### Profile: 3 training steps of convnext_tiny_dcls (preset convnext_tiny), bf16, batch {batch}\n")
    print("```")
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))
    print("```")


SECTIONS = {"model": section_model, "layers": section_layers, "construct": section_construct,
            "dense": section_dense, "delays": section_delays, "profile": section_profile}


def _device_name(dev: str) -> str:
    return torch.cuda.get_device_name() if dev == "cuda" else "CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repetitions (a smoke run)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--model-reps", type=int, default=15)
    args = p.parse_args()
    if args.quick:
        args.reps, args.model_reps = 2, 2
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device here; run it on a GPU, or pass --device cpu --quick with "
                         "TRITON_INTERPRET=1 for a smoke run of the code paths.")
    torch.backends.cudnn.benchmark = True
    clock = Clock(args.device, args.reps, warmup=1 if args.quick else 3)
    print(f"# bench/gpu.py on {_device_name(args.device)}; torch {torch.__version__}; "
          f"backend {os.environ.get('DCLSZOO_BACKEND', 'auto')}")
    t0 = time.perf_counter()
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        if name not in SECTIONS:
            raise SystemExit(f"--only: unknown section {name!r}; expected some of {', '.join(SECTIONS)}.")
        t = time.perf_counter()
        SECTIONS[name](args, clock)
        print(f"\n({name}: {time.perf_counter() - t:.0f} s)", flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
