#!/usr/bin/env bash
# Mirror-descent paper, Table 2: MobileNetV2 with every learnable parameter binarized. Usage: lib.sh.
source "$(dirname "$0")/lib.sh"
METHODS=float,bc,md_softmax_s,md_tanh_s
if [ "$SCALE" = full ]; then
  grid t2 experiment=md_t2_cifar10_mobilenetv2,md_t2_cifar100_mobilenetv2 method=$METHODS
  finish md_t2
fi
# smoke: MobileNetV2 on digits' 8x8 images at digits_md's budget (30 epochs, 570 steps, beta x1.2 every
# 10 steps; about 2 min a run on 2 CPU cores). Binary MobileNetV2 is budget-bound there, not broken: at
# 10 epochs (190 steps, beta x1.2 every 3) the binary rows end at 44-59 % with train accuracy still
# climbing (BC 44, MD-softmax-S 57, MD-tanh-S 59); at 30 epochs they reach 71 / 79 / 77 and the paper's
# ordering REF > MD-softmax-S ~ MD-tanh-S > BC shows; at 60 epochs MD-tanh-S reaches ~82.
grid t2 experiment=digits_md model=mobilenetv2 method=$METHODS
finish md_t2:cifar10/mobilenetv2
