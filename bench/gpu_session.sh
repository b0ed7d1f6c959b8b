#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the device tool: torch 2.11, triton 3.6, no network), as one command:
# install the project and the pure-Python wheels the machine lacks, run the Triton tests on the GPU, then
# the audio / accelerate examples on CUDA, then bench/gpu.py. Everything lands under $OUT (tests.txt,
# finetune_gpu.txt, audio_gpu.txt, gpu.md, est.md).
#
# Here, before the run (the wheels are not committed; .gpu_wheels/ is ignored and travels with `carry`):
#   python -m pip download --no-deps -d .gpu_wheels spikingjelly==2.0.0 loguru dcls==0.1.1
# Then, with the device tool: run(command="bash bench/gpu_session.sh", carry=[".gpu_wheels"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dclszoo_gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/device.txt" 2>&1
if ls .gpu_wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-deps --no-index .gpu_wheels/*.whl >> "$OUT/install.txt" 2>&1
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >> "$OUT/install.txt" 2>&1 \
    || { echo "install failed" >> "$OUT/install.txt"; exit 1; }
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_dwconv_triton.py \
    tests/kernels/test_delay_triton.py tests/kernels/test_construct_kernel.py tests/kernels/test_backend.py \
    tests/core/test_kernel_cache.py > "$OUT/tests.txt" 2>&1
echo "tests rc=$?" >> "$OUT/tests.txt"
# issues 17 / 18: the audio plugin and the accelerate loop on CUDA (bf16): patch, train, save, reload, throughput
timeout 60 python3 examples/finetune_accelerate.py --steps 40 --no-progress --output-dir "$OUT/ft" \
    > "$OUT/finetune_gpu.txt" 2>&1; echo "finetune rc=$?" >> "$OUT/finetune_gpu.txt"
timeout 60 python3 examples/finetune_audio.py --epochs 1 --train 128 --test 64 --mixed-precision bf16 \
    --out "$OUT/audio" > "$OUT/audio_gpu.txt" 2>&1; echo "audio rc=$?" >> "$OUT/audio_gpu.txt"
rm -rf "$OUT/ft" "$OUT/audio"  # checkpoints: not worth bringing back
python3 bench/gpu_estimate.py > "$OUT/est.md" 2>&1
timeout 300 python3 bench/gpu.py > "$OUT/gpu.md" 2>&1
echo "bench rc=$?" >> "$OUT/gpu.md"
tail -5 "$OUT/tests.txt"; tail -3 "$OUT/finetune_gpu.txt" "$OUT/audio_gpu.txt"; tail -40 "$OUT/gpu.md"
