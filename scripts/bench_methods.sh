#!/usr/bin/env bash
# Training step time of every MD-paper method relative to float, side by side (issue 3's benchmark).
# Usage: scripts/bench_methods.sh [extra quantlab bench arguments, e.g. --device cuda]
set -euo pipefail
QUANTLAB=${QUANTLAB:-quantlab}
"$QUANTLAB" bench --model resnet18 vgg16 --batch-size 128 \
  --methods float md_tanh_s bc md_softmax_s:ternary md_tanh_s:ternary md_softmax_s md_tanh md_softmax \
            md_softmax:ternary gd_tanh pmf pq "$@"
