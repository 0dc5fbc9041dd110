#!/usr/bin/env bash
# Mirror-descent paper, Table 1: binary quantization, every method. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
md_columns md_t1 float,bc,pq,pq_star,pmf,gd_tanh,md_softmax,md_tanh,md_softmax_s,md_tanh_s bitwidth=binary
