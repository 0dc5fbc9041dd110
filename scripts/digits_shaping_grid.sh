#!/usr/bin/env bash
# Issue 6's digits grids (Foothill paper Tables 3 and 2, and WaveQ Table 6, on digits), 3 seeds each:
#   1. the lambda grid of the plain l1 / l2 / foothill regularizers (one multirun) and its float reference;
#   2. binary weights and activations: float vs foothill vs bnn_r1 vs bnn_r2 (one multirun);
#   3. WaveQ from scratch at 2, 3, 4, 5 bits, with and without the regularizer (one multirun).
# Usage: scripts/digits_shaping_grid.sh [output dir, default outputs/digits_shaping]
set -euo pipefail
QUANTLAB=${QUANTLAB:-quantlab}
OUT=${1:-outputs/digits_shaping}
if [ -e "$OUT" ]; then echo "$OUT exists; give a new output directory" >&2; exit 2; fi
$QUANTLAB train -m experiment=digits_shaping method=l1,l2,foothill method.strength=1e-4,1e-3,1e-2 seed=0,1,2 \
  hydra.sweep.dir="$OUT/lambda_grid"
$QUANTLAB train -m experiment=digits_shaping method=float seed=0,1,2 hydra.sweep.dir="$OUT/float"
$QUANTLAB train -m experiment=digits_binary method=float,foothill,bnn_r1,bnn_r2 seed=0,1,2 hydra.sweep.dir="$OUT/binary"
$QUANTLAB train -m experiment=digits_waveq method=waveq method.strength=0,0.1 preset.bits=2,3,4,5 seed=0,1,2 \
  hydra.sweep.dir="$OUT/waveq"
