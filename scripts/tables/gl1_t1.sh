#!/usr/bin/env bash
# Gradient-L1 paper, Table 1: the regularizers judged by PTQ at (8,4), (6,4), (4,4), and STE
# fine-tuning of the float run (seed 0's) at each pair. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = full ]; then
  for model in vgg_small resnet18; do
    gl1_rows "${model}_" w8a4,w6a4,w4a4 "experiment=gl1_t1_cifar10_$model"
  done
  finish gl1_t1
fi
gl1_rows "" w8a4,w6a4,w4a4 experiment=glyphs_gradreg
finish gl1_t1:vgg_small
