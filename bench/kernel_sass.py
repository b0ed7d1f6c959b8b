"""Instructions per FMA of the Triton delay kernels, from their sm_90 SASS (no GPU needed).

    python bench/kernel_sass.py

Compiles the delay kernels (``dclszoo.kernels._delay_triton``) for an H100/H200 target with Triton's
own ``ptxas``, disassembles them with the ``nvdisasm`` Triton ships, finds each kernel's main loop (the
instructions between a label and the branch back to it) and prints its instruction mix: the figures
``bench/gpu_estimate.py`` uses (``INSTR_PER_FMA``). Shapes: batch 32 (one warp of lanes), ``J`` taps per run.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, not the interpreter's configurations

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from dclszoo.kernels import _delay_triton as kern  # noqa: E402

_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_OP = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def _sass(fn, signature: dict, constants: dict, warps: int) -> tuple[str, str]:
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        sass = subprocess.run([os.path.join(_BIN, "nvdisasm"), "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([os.path.join(_BIN, "cuobjdump"), "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    regs = re.search(r"REG:(\d+)", usage)
    return sass, regs.group(1) if regs else "?"


def _main_loop(sass: str) -> collections.Counter:
    """Instruction counts of the largest loop (label ... backward branch to it)."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", line.strip()))}
    best = collections.Counter()
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
        if m and labels.get(m.group(1), i) < i:
            ops = collections.Counter(m2.group(1) for b in lines[labels[m.group(1)]:i + 1] if (m2 := _OP.match(b)))
            if sum(ops.values()) > sum(best.values()):
                best = ops
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--taps", type=int, default=6, help="J, taps per run (6: sigma 0.5)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = p.parse_args()
    dt = args.dtype
    ints = dict.fromkeys(("T", "N", "Q", "G", "ROW", "PAD", "S"), "i32")
    sig = {"src_ptr": f"*{dt}", "c_ptr": f"*{dt}", "s_ptr": "*i32", "dst_ptr": f"*{dt}", "x_ptr": f"*{dt}",
           "gc_ptr": "*fp32", **ints}
    print(f"sm_90, {dt}, batch 32, J = {args.taps}: the main loop of each kernel (FMAs: of both gradients in the "
          "backward)\n")
    print("| kernel | R | columns | warps | registers | instructions | FFMA | LDG | instructions per FMA |")
    print("|---|---|---|---|---|---|---|---|---|")
    passes = (("forward", {"SIGN": -1, "OUT": True, "GC": False}),
              ("backward: input + coefficient gradients", {"SIGN": 1, "OUT": True, "GC": True}),
              ("backward: coefficient gradient alone", {"SIGN": 1, "OUT": False, "GC": True}))
    cases = [(name, kern._tap_kernel, sig, extra, "BN", cfg) for name, extra in passes for cfg in kern._CONFIGS]
    for name, kernel, sig, extra, cols, cfg in cases:
        const = {"B": 32, "J": args.taps, "ACC": tl.float32, "L": 32, **extra, **cfg.kwargs}
        signature = {**sig, **dict.fromkeys(const, "constexpr")}
        sass, regs = _sass(kernel.fn, signature, const, cfg.num_warps)
        ops = _main_loop(sass)
        total, ffma = sum(ops.values()), ops["FFMA"]
        print(f"| {name} | {cfg.kwargs['R']} | {cfg.kwargs[cols]} | {cfg.num_warps} | {regs} | {total} | {ffma} | "
              f"{ops['LDG']} | {total / ffma:.2f} |")


if __name__ == "__main__":
    main()
