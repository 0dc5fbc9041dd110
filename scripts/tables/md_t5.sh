#!/usr/bin/env bash
# Mirror-descent paper, Table 5: ternary quantization, Q = {-1, 0, 1}. Usage and environment: lib.sh.
source "$(dirname "$0")/lib.sh"
md_columns md_t5 float,pq,pq_star,gd_tanh,md_softmax_s,md_tanh_s bitwidth=ternary
