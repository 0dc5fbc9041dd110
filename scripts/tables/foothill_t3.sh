#!/usr/bin/env bash
# Foothill paper, Table 3: L1, L2 and foothill at Table 3's four (alpha, beta), each at
# lambda in {1e-4, 1e-3, 1e-2}, and the unregularized network. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
PRESET=glyphs_shaping
[ "$SCALE" = full ] && PRESET=foothill_t3_cifar10_alexnet
LAMBDAS=1e-4,1e-3,1e-2
grid float experiment=$PRESET method=float
grid l1_l2 experiment=$PRESET method=l1,l2 method.strength=$LAMBDAS
for ab in 0.5,50 0.75,50 16,0.125 20,0.1; do
  grid "foothill_${ab/,/_}" experiment=$PRESET method=foothill "method.alpha=${ab%,*}" "method.beta=${ab#*,}" \
    method.strength=$LAMBDAS
done
if [ "$SCALE" = full ]; then finish foothill_t3; fi
finish foothill_t3:cifar10/alexnet_bn
