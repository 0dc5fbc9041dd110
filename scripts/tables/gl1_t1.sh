#!/usr/bin/env bash
# Gradient-L1 paper, Table 1: the regularizers judged by PTQ at (8,4), (6,4), (4,4), and STE
# fine-tuning of the float run (seed 0's) at each pair. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = full ]; then
  for model in vgg_small resnet18; do
    grid "float_$model" experiment=gl1_t1_cifar10_$model method=float
    grid "reg_$model" experiment=gl1_t1_cifar10_$model method=dq,grad_l2,grad_l1
    grid "ste_$model" experiment=gl1_t1_cifar10_$model method=ste bitwidth=w8a4,w6a4,w4a4 "init_from=$OUT/float_$model/0"
  done
  finish gl1_t1
fi
PAIRS='bitwidth.sweep=[[8,4],[6,4],[4,4]]'
grid float experiment=digits_gradreg method=float "$PAIRS"
grid reg experiment=digits_gradreg method=dq,grad_l2,grad_l1 "$PAIRS"
grid ste experiment=digits_gradreg method=ste bitwidth=w8a4,w6a4,w4a4 "init_from=$OUT/float/0" "$PAIRS"
finish gl1_t1:vgg_small
