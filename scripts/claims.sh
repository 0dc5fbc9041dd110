#!/usr/bin/env bash
# The four papers' claims at CPU scale, on the embedded glyphs dataset (experiment=glyphs_*: LeNet-5,
# 8 epochs; README "Claims"):
#   scripts/claims.sh quick     # 3 seeds on a smaller budget (10-12 minutes on 2 cores; what CI runs)
#   scripts/claims.sh full      # 5 seeds on the claims' budget (about an hour on 2 cores)
# Each grid is a Hydra sweep in $OUT/<grid>; running the script again with the same OUT continues
# the sweeps that were interrupted (resume=auto) and skips the jobs that completed. Then
# `quantlab claims` writes $OUT/claims.md (every paper table and its claims: effect, 95 % CI over
# seeds, verdict) and $OUT/claims.json (the claims, and the calibration from the same runs).
# Environment: OUT (default outputs/claims-<scale>), SEEDS (default 0,1,2 quick, 0,1,2,3,4 full),
# QUANTLAB (default quantlab). Further arguments are overrides for every run. Every grid runs even
# when a job of an earlier one fails; the script then exits non-zero.
set -uo pipefail
SCALE=${1:-quick}
shift $(($# > 0 ? 1 : 0))
EXTRA=("$@")
QUANTLAB=${QUANTLAB:-quantlab}
OUT=${OUT:-outputs/claims-$SCALE}
STATUS=0
case "$SCALE" in
  quick)
    SEEDS=${SEEDS:-0,1,2}
    # a smaller budget: 13k training images, 3 epochs, beta annealed over them as over the full 8,
    # the gradient regularizers in the last of them (as in the last 3 of 8)
    BUDGET=(dataset.num_train=15000 dataset.val_size=2000 schedule.epochs=3 schedule.beta.interval=3)
    GRADREG=(preset.last_epochs=1) ;;
  full)
    SEEDS=${SEEDS:-0,1,2,3,4}
    BUDGET=()
    GRADREG=() ;;
  *) echo "$0: scale must be quick or full, not '$SCALE'" >&2; exit 2 ;;
esac

# grid NAME OVERRIDE...: one sweep into $OUT/NAME over the seeds, or its continuation.
grid() {
  local name=$1
  shift
  if [ -f "$OUT/$name/sweep.json" ]; then
    echo "== claims ($SCALE): $name: continuing $OUT/$name" >&2
    $QUANTLAB train -m "hydra.sweep.dir=$OUT/$name" resume=auto || STATUS=1
  else
    echo "== claims ($SCALE): $name: $*" >&2
    $QUANTLAB train -m "$@" "${BUDGET[@]}" "${EXTRA[@]}" "seed=$SEEDS" "hydra.sweep.dir=$OUT/$name" || STATUS=1
  fi
}

grid gradreg experiment=glyphs_gradreg method=float,dq,grad_l2,grad_l1 "${GRADREG[@]}"
grid md experiment=glyphs_md method=md_tanh_s,md_softmax_s,bc,pq bitwidth=binary
grid md_ternary experiment=glyphs_md method=md_tanh_s,pq bitwidth=ternary
grid binary experiment=glyphs_binary method=foothill,bnn_r1,bnn_r2
grid shaping experiment=glyphs_shaping method=l1,foothill method.strength=1e-3,1e-2
grid waveq experiment=glyphs_waveq method=waveq method.strength=0,0.1 preset.bits=3,4,5

# the tables compare every run with one column group of each paper table (its smoke scale)
TABLES=md_t1:cifar10/resnet18,md_t5:cifar10/resnet18,gl1_t1:vgg_small,foothill_t2:imagenet/alexnet_bn
TABLES=$TABLES,foothill_t3:cifar10/alexnet_bn,waveq_t6:svhn
$QUANTLAB claims "$OUT" --paper "$TABLES" --out "$OUT" || STATUS=1
exit $STATUS
