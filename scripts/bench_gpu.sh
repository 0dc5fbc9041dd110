#!/usr/bin/env bash
# What to run on a GPU machine (issue 16): ResNet-18 on CIFAR-10-shaped data, batch 128 (the MD
# paper's), with the fast settings (bf16 autocast + channels-last + torch.compile) on and off.
#
#   1. quantlab bench data, fast on and off: each loader alone, the model step alone, a full epoch
#      through each loader, and the share of wall time the GPU was busy;
#   2. quantlab bench, fast on and off: float, md_tanh_s, bc, grad_l1 (fd, and exact — which
#      differentiates through a gradient, so it runs without torch.compile), side by side;
#   3. the targets, checked on the JSON rows: with the resident loader the GPU is >= 90 % busy over
#      the epoch (data never the bottleneck) and ResNet-18 float reaches >= 20,000 images/s in bf16.
#
# Usage: scripts/bench_gpu.sh [output dir, default outputs/bench_gpu]
#   QUANTLAB=<command>   how to call quantlab (default: quantlab)
#   SMOKE=1              a seconds-long run of every step (small_cnn, 1,024 images) on any device,
#                        to check the script itself; its numbers mean nothing
set -euo pipefail
QUANTLAB=${QUANTLAB:-quantlab}
OUT=${1:-outputs/bench_gpu}
mkdir -p "$OUT"
FAST=(trainer.amp=bf16 trainer.channels_last=true trainer.compile=true)
PLAIN=(trainer.amp=false trainer.channels_last=false trainer.compile=false)
if [[ "${SMOKE:-0}" == 1 ]]; then
  MODEL=small_cnn; DATA=(--num-train 1024 --steps 3 --profile-steps 3); ROUNDS=(--rounds 1 --steps 1)
else
  python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "scripts/bench_gpu.sh: no CUDA device (SMOKE=1 checks the script on the CPU)")'
  MODEL=resnet18; DATA=(--steps 50 --warmup 5); ROUNDS=(--rounds 5 --steps 20 --warmup 5)
fi
LOADERS=(--loaders resident torchvision:0 torchvision:auto)

for mode in fast plain; do
  if [[ $mode == fast ]]; then settings=("${FAST[@]}"); else settings=("${PLAIN[@]}"); fi
  echo "== quantlab bench data: $MODEL float, $mode (${settings[*]})"
  "$QUANTLAB" bench data --model "$MODEL" --method float "${LOADERS[@]}" "${DATA[@]}" \
    --json "$OUT/data_$mode.json" "${settings[@]}"
  echo "== quantlab bench: $MODEL methods, $mode"
  "$QUANTLAB" bench --model "$MODEL" --methods float md_tanh_s bc grad_l1,estimator=fd "${ROUNDS[@]}" \
    --json "$OUT/methods_$mode.json" "${settings[@]}"
done
echo "== quantlab bench: $MODEL grad_l1 (exact: double backward, never compiled), bf16 + channels-last"
"$QUANTLAB" bench --model "$MODEL" --methods float grad_l1 "${ROUNDS[@]}" --json "$OUT/methods_grad_l1.json" \
  trainer.amp=bf16 trainer.channels_last=true trainer.compile=false

python3 - "$OUT" <<'EOF'
import json, math, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = json.loads((out / "data_fast.json").read_text())
epoch = next(r for r in rows if r["stage"] == "epoch" and r["what"] == "resident")
step = next(r for r in rows if r["stage"] == "step")
busy = epoch.get("gpu_busy", math.nan)
checks = [
    (f"GPU busy over the resident-loader epoch: {100 * busy:.1f} % (target >= 90 %)", busy >= 0.90),
    (f"float bf16 full epoch: {epoch['images_per_s']:,.0f} images/s (target >= 20,000)", epoch["images_per_s"] >= 20_000),
    (f"float bf16 step alone: {step['images_per_s']:,.0f} images/s", True),
]
for text, ok in checks:
    print(("PASS  " if ok else "MISS  ") + text)
EOF
