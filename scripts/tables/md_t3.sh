#!/usr/bin/env bash
# Mirror-descent paper, Table 3: binary ResNet-18 on ImageNet: the float reference, MD-tanh-S from
# scratch with the first conv / last FC / biases in float (*) and with everything binarized (*+),
# and MD-tanh-S fine-tuned from the float run (seed 0's). Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = full ]; then
  grid float experiment=md_t3_imagenet_resnet18 method=float
  grid scratch experiment=md_t3_imagenet_resnet18 method=md_tanh_s
  grid scratch_all experiment=md_t3_imagenet_resnet18 method=md_tanh_s preset.scope.first=true preset.scope.last=true preset.scope.bias=true
  grid finetune experiment=md_t3_imagenet_resnet18_finetune method=md_tanh_s "init_from=$OUT/float/0"
  finish md_t3
fi
grid float experiment=glyphs_md method=float
grid scratch experiment=glyphs_md method=md_tanh_s +preset.scope.first=false +preset.scope.last=false +preset.scope.bias=false
grid scratch_all experiment=glyphs_md method=md_tanh_s
grid finetune experiment=glyphs_md method=md_tanh_s "init_from=$OUT/float/0" +preset.init=keep
finish md_t3:imagenet/resnet18
