#!/usr/bin/env bash
# WaveQ appendix, Table 6: training from scratch at 3, 4, 5 bits with WaveQ and without it
# (method.strength=0), and the float network. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = full ]; then
  grid float experiment=waveq_t6_cifar10_lenet5,waveq_t6_svhn_lenet5 method=float
  grid waveq experiment=waveq_t6_cifar10_lenet5,waveq_t6_svhn_lenet5 method=waveq method.strength=0,1 preset.bits=3,4,5
  finish waveq_t6
fi
# smoke: glyphs_waveq (digits_waveq's strength 0.1, ramp width 0.2E and constant lr; the presets say
# why) at 2-5 bits (the table's 2-bit column is not in the paper)
grid float experiment=glyphs_waveq method=float
grid waveq experiment=glyphs_waveq method=waveq method.strength=0,0.1 preset.bits=2,3,4,5
finish waveq_t6:svhn
