#!/usr/bin/env bash
# The PTQ algorithms side by side (issue 28): the default digits run (small_cnn, 30 epochs) and a digits
# MobileNetV2 run, each swept at w8a8, w4a8, w3a8 and w2a8 with round-to-nearest, cross-layer
# equalization (CLE), CLE + bias correction, and AdaRound (the fast CPU setting), then one table of
# top-1 (quantlab table: its rows are the runs' differing settings) and one of top-1 / KL(float || quant)
# per pair with the sweep's seconds per pair.
#   bash scripts/ptq_algorithms.sh [out dir]        (~10 min on 2 CPU cores)
# Re-running skips the runs and sweeps already there.
set -euo pipefail
OUT=${1:-outputs/ptq_algorithms}
Q=${QUANTLAB:-quantlab}
PAIRS='bitwidth.sweep=[[8,8],[4,8],[3,8],[2,8]]'
declare -A MODELS=([small_cnn]="" [mobilenetv2]="model=mobilenetv2 schedule.epochs=15")
declare -A ALGORITHMS=(
  [1_nearest]="ptq.weight_rounding=nearest"
  [2_cle]="ptq.equalize=true"
  [3_cle_bias_correction]="ptq.equalize=true ptq.bias_correction=true"
  [4_adaround]="ptq.weight_rounding=adaround ptq.adaround.iterations=1000 ptq.adaround.samples=256"
)
for model in small_cnn mobilenetv2; do
  run="$OUT/train/$model"
  [ -f "$run/results.json" ] || $Q train ${MODELS[$model]} hydra.run.dir="$run"
  for name in $(printf '%s\n' "${!ALGORITHMS[@]}" | sort); do
    target="$OUT/ptq/$model/$name"
    # shellcheck disable=SC2086  # the settings are words
    [ -f "$target/results.json" ] || $Q ptq run="$run" "$PAIRS" ${ALGORITHMS[$name]} hydra.run.dir="$target"
  done
done
$Q table "$OUT/ptq" --cols ptq --metric reference/acc --out "$OUT" --name top1
${PYTHON:-python} - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'model':12} {'algorithm':24} " + " ".join(f"{p:>17}" for p in ("w8a8", "w4a8", "w3a8", "w2a8")) + "  s/pair")
for path in sorted((out / "ptq").glob("*/*/results.json")):
    r = json.loads(path.read_text())
    rows = {e["pair"]: e for e in r["ptq"]}
    cells = " ".join(f"{rows[p]['acc']:7.2f} / {rows[p]['kl']:7.4f}" for p in ("w8a8", "w4a8", "w3a8", "w2a8"))
    per_pair = r["timing"].get("ptq_total_s", 0.0) / max(len(rows), 1)
    print(f"{path.parent.parent.name:12} {path.parent.name:24} {cells}  {per_pair:6.2f}")
print("cells: top-1 % / KL(float || quant); s/pair: the sweep's wall time over its pairs")
PY
