#!/usr/bin/env bash
# Issue 6's benchmark: step time of the weight-shaping regularizers (WaveQ, Foothill, L1, L2, BNN+ R1 /
# R2, plain and binary) relative to float, side by side, on vgg_small and resnet18 at batch 128.
# Usage: scripts/bench_shaping.sh [extra quantlab bench arguments, e.g. --device cuda --rounds 5]
set -euo pipefail
QUANTLAB=${QUANTLAB:-quantlab}
$QUANTLAB bench --model vgg_small resnet18 --batch-size 128 \
  --methods float l1 l2 foothill foothill,binary=true bnn_r1 bnn_r2 bnn_r1,binarize_acts=true waveq "$@"
