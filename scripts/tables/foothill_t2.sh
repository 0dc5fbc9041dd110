#!/usr/bin/env bash
# Foothill paper, Table 2: binary weights and activations (first and last layers in float), the
# BNN+ regularizers R1, R2 and the shifted foothill at Table 2's four (alpha, beta). Usage: lib.sh.
source "$(dirname "$0")/lib.sh"
PRESET=glyphs_binary
[ "$SCALE" = full ] && PRESET=foothill_t2_imagenet_alexnet
grid base experiment=$PRESET method=float,bnn_r1,bnn_r2,foothill   # foothill: (alpha, beta) = (0.5, 50)
for ab in 0.75,50 100,0.02 20,0.1; do
  grid "foothill_${ab/,/_}" experiment=$PRESET method=foothill "method.alpha=${ab%,*}" "method.beta=${ab#*,}"
done
if [ "$SCALE" = full ]; then finish foothill_t2; fi
finish foothill_t2:imagenet/alexnet_bn
