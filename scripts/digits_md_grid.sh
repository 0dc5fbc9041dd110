#!/usr/bin/env bash
# Every MD-paper method, binary and ternary, on digits, 3 seeds: one multirun (about 10 minutes on 2 cores).
# Usage: scripts/digits_md_grid.sh [extra overrides]
set -euo pipefail
QUANTLAB=${QUANTLAB:-quantlab}
"$QUANTLAB" train -m experiment=digits_md \
  method=float,md_tanh,md_tanh_s,md_softmax,md_softmax_s,gd_tanh,pmf,bc,pq,pq_star \
  bitwidth=binary,ternary seed=0,1,2 "$@" || echo "note: md_tanh and bc have no ternary form; those jobs fail by design"
