#!/usr/bin/env bash
# Every option of conf/method/ with no other argument on the embedded default (digits, small_cnn), over
# seeds, then the table of exported test accuracy per method (mean ± std). Run from the repository root:
#   bash scripts/method_defaults.sh
# Environment: OUT (default outputs/method_defaults; must not exist), SEEDS (default 0,1,2),
# QUANTLAB (default quantlab). tests/test_method_defaults.py (slow) checks one seed against floors.
set -euo pipefail
OUT=${OUT:-outputs/method_defaults}
SEEDS=${SEEDS:-0,1,2}
QUANTLAB=${QUANTLAB:-quantlab}
if [ -e "$OUT" ]; then echo "$0: $OUT exists; set OUT to a new directory" >&2; exit 2; fi
METHODS=$(find conf/method -maxdepth 1 -name '*.yaml' -exec basename {} .yaml \; | sort | paste -sd, -)
STATUS=0
$QUANTLAB train -m "method=$METHODS" "seed=$SEEDS" "hydra.sweep.dir=$OUT" || STATUS=1
$QUANTLAB table "$OUT" --rows method || STATUS=1
exit $STATUS
