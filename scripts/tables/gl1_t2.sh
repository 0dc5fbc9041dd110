#!/usr/bin/env bash
# Gradient-L1 paper, Table 2: ImageNet ResNet-18, PTQ at (8,8), (6,6), (4,4), and STE fine-tuning
# of the float run (seed 0's) at each pair. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = full ]; then
  grid float experiment=gl1_t2_imagenet_resnet18 method=float
  grid reg experiment=gl1_t2_imagenet_resnet18 method=dq,grad_l2,grad_l1
  grid ste experiment=gl1_t2_imagenet_resnet18 method=ste bitwidth=w8a8,w6a6,w4a4 "init_from=$OUT/float/0"
  finish gl1_t2
fi
PAIRS='bitwidth.sweep=[[8,8],[6,6],[4,4]]'
grid float experiment=digits_gradreg method=float "$PAIRS"
grid reg experiment=digits_gradreg method=dq,grad_l2,grad_l1 "$PAIRS"
grid ste experiment=digits_gradreg method=ste bitwidth=w8a8,w6a6,w4a4 "init_from=$OUT/float/0" "$PAIRS"
finish gl1_t2:resnet18
