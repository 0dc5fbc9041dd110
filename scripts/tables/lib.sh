# Shared by the paper-table scripts (sourced, not run). Each script is called as
#   scripts/tables/<table>.sh [smoke|full] [extra overrides for every run, e.g. dataset.root=/data/cifar]
# smoke: the table's grid at CPU scale on the embedded glyphs dataset (experiment=glyphs_*: no download,
#        about 30 s a run on 2 CPU cores; MD Table 2's MobileNetV2 on digits), set beside the paper's
#        numbers and claims with `quantlab table --paper <table>:<setting>`;
# full:  the paper's setting (experiment=<table presets>), for a GPU machine with the dataset on disk.
# Environment: OUT (default outputs/tables/<table>-<scale>; must not exist), SEEDS (default 0),
# QUANTLAB (default quantlab). Every grid runs even if a job of an earlier one fails; the table
# shows failed jobs as such, and the script then exits non-zero.
set -uo pipefail
TABLE=$(basename "$0" .sh)
SCALE=${1:-smoke}
shift $(($# > 0 ? 1 : 0))
EXTRA=("$@")
QUANTLAB=${QUANTLAB:-quantlab}
SEEDS=${SEEDS:-0}
OUT=${OUT:-outputs/tables/$TABLE-$SCALE}
STATUS=0
case "$SCALE" in
  smoke | full) ;;
  *) echo "$0: scale must be smoke or full, not '$SCALE'" >&2; exit 2 ;;
esac
if [ -e "$OUT" ]; then echo "$0: $OUT exists; set OUT to a new directory" >&2; exit 2; fi

# grid NAME OVERRIDE...: one multirun into $OUT/NAME over the seeds.
grid() {
  local name=$1
  shift
  echo "== $TABLE ($SCALE): $name: $*" >&2
  $QUANTLAB train -m "$@" "${EXTRA[@]}" "seed=$SEEDS" "hydra.sweep.dir=$OUT/$name" || STATUS=1
}

# finish PAPER[:SETTING]: the table beside the paper's numbers and its claims, the plots, the exit status.
finish() {
  $QUANTLAB table "$OUT" --paper "$1" || STATUS=1
  $QUANTLAB plot "$OUT" --paper "$1" || STATUS=1
  exit $STATUS
}

# Grids that two tables share.

# md_columns TABLE METHODS OVERRIDE...: MD Tables 1 and 5. Full scale: the five dataset/model columns
# (presets TABLE_<dataset>_<model>); smoke: glyphs_md with OVERRIDE... (the bitwidth), compared with
# the CIFAR-10 ResNet-18 column.
md_columns() {
  local table=$1 methods=$2
  shift 2
  if [ "$SCALE" = full ]; then
    local columns=cifar10_vgg16,cifar10_resnet18,cifar100_vgg16,cifar100_resnet18,tinyimagenet_resnet18
    grid "$table" "experiment=${table}_${columns//,/,${table}_}" "method=$methods"
    finish "$table"
  fi
  grid "$table" experiment=glyphs_md "method=$methods" "$@"
  finish "$table:cifar10/resnet18"
}

# gl1_rows PREFIX STE_BITWIDTHS OVERRIDE...: the gradient-L1 tables' rows: the float network, the
# three regularizers, and STE fine-tuned from the float run (seed 0's) at each of STE_BITWIDTHS.
gl1_rows() {
  local prefix=$1 bitwidths=$2
  shift 2
  grid "${prefix}float" "$@" method=float
  grid "${prefix}reg" "$@" method=dq,grad_l2,grad_l1
  grid "${prefix}ste" "$@" method=ste "bitwidth=$bitwidths" "init_from=$OUT/${prefix}float/0"
}
