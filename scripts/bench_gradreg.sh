#!/usr/bin/env bash
# Issue 5's benchmark: step time of the gradient-L1 paper's methods relative to float, side by side,
# on vgg_small and resnet18 at batch 128 (synthetic CIFAR-shaped data).
# Usage: scripts/bench_gradreg.sh [extra quantlab bench arguments, e.g. --device cuda --rounds 5]
set -euo pipefail
QUANTLAB=${QUANTLAB:-quantlab}
$QUANTLAB bench --model vgg_small resnet18 --batch-size 128 \
  --methods float grad_l1 grad_l1,estimator=fd grad_l2 grad_l2,estimator=fd dq ste:w8a4 "$@"
