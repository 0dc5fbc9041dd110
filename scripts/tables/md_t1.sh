#!/usr/bin/env bash
# Mirror-descent paper, Table 1: binary quantization, every method. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
METHODS=float,bc,pq,pq_star,pmf,gd_tanh,md_softmax,md_tanh,md_softmax_s,md_tanh_s
if [ "$SCALE" = full ]; then
  grid t1 experiment=md_t1_cifar10_vgg16,md_t1_cifar10_resnet18,md_t1_cifar100_vgg16,md_t1_cifar100_resnet18,md_t1_tinyimagenet_resnet18 \
    method=$METHODS
  finish md_t1
fi
grid t1 experiment=digits_md bitwidth=binary method=$METHODS
finish md_t1:cifar10/resnet18
