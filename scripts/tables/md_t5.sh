#!/usr/bin/env bash
# Mirror-descent paper, Table 5: ternary quantization, Q = {-1, 0, 1}. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
METHODS=float,pq,pq_star,gd_tanh,md_softmax_s,md_tanh_s
if [ "$SCALE" = full ]; then
  grid t5 experiment=md_t5_cifar10_vgg16,md_t5_cifar10_resnet18,md_t5_cifar100_vgg16,md_t5_cifar100_resnet18,md_t5_tinyimagenet_resnet18 \
    method=$METHODS
  finish md_t5
fi
grid t5 experiment=digits_md bitwidth=ternary method=$METHODS
finish md_t5:cifar10/resnet18
