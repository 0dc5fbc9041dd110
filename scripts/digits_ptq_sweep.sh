#!/usr/bin/env bash
# Issue 4's digits numbers: the float default's PTQ sweep (bitwidth=w8a8: w8a8 ... w2a2) over 3
# seeds, then `quantlab ptq` on seed 0's run with each activation-range estimator.
# Usage: scripts/digits_ptq_sweep.sh [output dir, default outputs/digits_ptq]
set -euo pipefail
QUANTLAB=${QUANTLAB:-quantlab}
OUT=${1:-outputs/digits_ptq}
if [ -e "$OUT" ]; then echo "$OUT exists; give a new output directory" >&2; exit 2; fi
$QUANTLAB train -m seed=0,1,2 hydra.sweep.dir="$OUT/train"
$QUANTLAB ptq -m run="$OUT/train/0" ptq.act_range=bn,minmax,percentile,mse hydra.sweep.dir="$OUT/ranges"
