# Shared by the paper-table scripts (sourced, not run). Each script is called as
#   scripts/tables/<table>.sh [smoke|full] [extra overrides for every run, e.g. dataset.root=/data/cifar]
# smoke: the table's grid on digits (no download; minutes on 2 CPU cores), set beside the paper's
#        numbers with `quantlab table --paper <table>:<setting>`;
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

# finish PAPER[:SETTING]: the table beside the paper's numbers, the plots, and the exit status.
finish() {
  $QUANTLAB table "$OUT" --paper "$1" || STATUS=1
  $QUANTLAB plot "$OUT" || STATUS=1
  exit $STATUS
}
