#!/usr/bin/env bash
# Gradient-L1 paper, Table 2: ImageNet ResNet-18, PTQ at (8,8), (6,6), (4,4), and STE fine-tuning
# of the float run (seed 0's) at each pair. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = full ]; then
  gl1_rows "" w8a8,w6a6,w4a4 experiment=gl1_t2_imagenet_resnet18
  finish gl1_t2
fi
gl1_rows "" w8a8,w6a6,w4a4 experiment=glyphs_gradreg 'bitwidth.sweep=[[8,8],[6,6],[4,4]]'
finish gl1_t2:resnet18
