#!/usr/bin/env bash
# The GPU check a session runs when it is lent a GPU (docs/benchmarks.md, "On a GPU"): versions, a CUDA
# smoke test of the trainer (bf16 MaPO job that must learn; adapter loaded with load_lora_weights), then
# the trainer-step benchmark on the small SDXL-shaped model at 128 px and on a real-size SDXL at 1024 px,
# and the same for the flow-matching families (small SD3, FLUX.1, FLUX.2 [klein], Z-Image, Qwen-Image and
# Chroma; a real-size model of each but SD3, Qwen-Image's 20B only where it fits); last, the
# faster-floor variants (bench.trainer_step --variants) on the small and the real-size SDXL.
# Writes logs and JSON rows to $OUT (default ./gpu-check). Run from the repository root:
#     OUT=/tmp/gpu scripts/gpu_check.sh
set -euo pipefail
OUT=${OUT:-gpu-check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" -c 'import torch, diffusers, peft, transformers, accelerate as a
print("torch", torch.__version__, "cuda", torch.version.cuda, "diffusers", diffusers.__version__,
      "peft", peft.__version__, "transformers", transformers.__version__, "accelerate", a.__version__)' \
    | tee -a "$OUT/gpu.txt"

"$PYTHON" -m bench.cuda_smoke "$(mktemp -d)" 2>&1 | tee "$OUT/smoke.log" || echo "SMOKE TEST FAILED"
"$PYTHON" -m bench.trainer_step --presets small --resolutions 128 --json "$OUT/small.json" 2>&1 \
    | tee "$OUT/small.log"
# Real size: 2 pairs of 1024 px images per step need gradient checkpointing to stay well inside 80 GB.
"$PYTHON" -m bench.trainer_step --presets full --resolutions 1024 --steps 8 --warmup 2 --pairs 8 \
    --gradient-checkpointing --json "$OUT/full.json" 2>&1 | tee "$OUT/full.log"
# The flow-matching families: the small SD3- and FLUX-shaped transformers at 128 px, then a real-size
# FLUX.1-dev (bench/full_flux.py, 11.9B transformer, random weights) at 1024 px.
"$PYTHON" -m bench.trainer_step --families sd3 flux --presets small --resolutions 128 \
    --json "$OUT/small-flow.json" 2>&1 | tee "$OUT/small-flow.log"
"$PYTHON" -m bench.trainer_step --families flux --presets full --resolutions 1024 --steps 6 --warmup 2 \
    --pairs 8 --gradient-checkpointing --json "$OUT/full-flux.json" 2>&1 | tee "$OUT/full-flux.log"
# The 2026 families: their small transformers at 128 px, then each real-size config (bench/full_<family>.py,
# random weights) at 1024 px, one family per run so that one that does not fit leaves the others measured.
"$PYTHON" -m bench.trainer_step --families flux2 z_image qwen_image chroma --presets small --resolutions 128 \
    --json "$OUT/small-2026.json" 2>&1 | tee "$OUT/small-2026.log"
for family in flux2 z_image chroma qwen_image; do
    "$PYTHON" -m bench.trainer_step --families "$family" --presets full --resolutions 1024 --steps 6 \
        --warmup 2 --pairs 8 --gradient-checkpointing --json "$OUT/full-$family.json" 2>&1 \
        | tee "$OUT/full-$family.log" || echo "FULL $family FAILED"
done
# Faster floor (docs/benchmarks.md, "Faster floor"): the floor's variants side by side, interleaved, with
# TFLOP/s against the card's bf16 peak: channels_last (on by default for the UNet on CUDA), fused AdamW,
# DPO's reference separate or folded into the policy pass, and torch.compile with its compile time.
"$PYTHON" -m bench.trainer_step --variants --compile --presets small --resolutions 128 --rounds 12 \
    --json "$OUT/variants-small.json" 2>&1 | tee "$OUT/variants-small.log"
"$PYTHON" -m bench.trainer_step --variants --compile --presets full --resolutions 1024 --rounds 6 \
    --warmup 2 --gradient-checkpointing --json "$OUT/variants-full.json" 2>&1 | tee "$OUT/variants-full.log"
