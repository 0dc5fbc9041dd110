#!/usr/bin/env bash
# Mirror-descent paper, Table 2: MobileNetV2 with every learnable parameter binarized. Usage: lib.sh.
source "$(dirname "$0")/lib.sh"
METHODS=float,bc,md_softmax_s,md_tanh_s
if [ "$SCALE" = full ]; then
  grid t2 experiment=md_t2_cifar10_mobilenetv2,md_t2_cifar100_mobilenetv2 method=$METHODS
  finish md_t2
fi
# smoke: MobileNetV2 on digits' 8x8 images, 10 epochs (190 steps, 4.5 s each epoch on 2 CPU cores),
# beta x1.2 every 3 steps so that it still passes 1e4 (at digits' every 10 steps it ends at 32 and the
# sign-exported MD networks are at chance: 9-11 %, against 59 % with this)
grid t2 experiment=digits_md model=mobilenetv2 schedule.epochs=10 schedule.beta.interval=3 method=$METHODS
finish md_t2:cifar10/mobilenetv2
