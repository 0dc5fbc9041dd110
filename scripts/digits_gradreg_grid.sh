#!/usr/bin/env bash
# Issue 5's digits grid: none (float) / dq / grad_l2 / grad_l1 / ste, 3 seeds, each judged by its
# PTQ sweep (8,8) ... (2,2); train/grad_norm_linf is logged for every run.
# Usage: scripts/digits_gradreg_grid.sh [output dir, default outputs/digits_gradreg]
set -euo pipefail
QUANTLAB=${QUANTLAB:-quantlab}
OUT=${1:-outputs/digits_gradreg}
if [ -e "$OUT" ]; then echo "$OUT exists; give a new output directory" >&2; exit 2; fi
$QUANTLAB train -m experiment=digits_gradreg method=float,dq,grad_l2,grad_l1,ste seed=0,1,2 hydra.sweep.dir="$OUT"
