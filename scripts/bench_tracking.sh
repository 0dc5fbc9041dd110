#!/usr/bin/env bash
# The cost of MLflow tracking on the default run (`quantlab train`: digits, small_cnn, float, 30 epochs,
# its PTQ sweep): wall time of the whole command with logger=tensorboard (the default), logger=mlflow and
# logger=tensorboard_mlflow, interleaved in ROUNDS rounds (default 3), then the median of each and its
# ratio to tensorboard. The SQLite store is created by one untimed run first (its tables are made once
# per store: ~1 s). Usage: bash scripts/bench_tracking.sh [out dir]
set -euo pipefail
QUANTLAB=${QUANTLAB:-quantlab}
ROUNDS=${ROUNDS:-3}
OUT=${1:-$(mktemp -d)}
export QUANTLAB_OUTPUTS="$OUT/outputs"
unset MLFLOW_TRACKING_URI
mkdir -p "$OUT"
$QUANTLAB train logger=mlflow schedule.epochs=1 hydra.run.dir="$OUT/outputs/warmup" > /dev/null 2>&1
: > "$OUT/times.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for logger in tensorboard mlflow tensorboard_mlflow; do
    start=$(date +%s%N)
    $QUANTLAB train logger=$logger hydra.run.dir="$OUT/outputs/$logger-$round" > /dev/null 2>&1
    end=$(date +%s%N)
    echo -e "$logger\t$round\t$(( (end - start) / 1000000 ))" >> "$OUT/times.tsv"
  done
done
python3 - "$OUT/times.tsv" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
times = {}
for logger, _, seconds in rows:
    times.setdefault(logger, []).append(float(seconds) / 1000)  # milliseconds in the file
base = statistics.median(times["tensorboard"])
print(f"{'logger':<20} {'runs (s)':<28} {'median (s)':>10} {'ratio':>7}")
for logger, values in times.items():
    median = statistics.median(values)
    print(f"{logger:<20} {', '.join(f'{v:.2f}' for v in values):<28} {median:>10.2f} {median / base:>7.3f}")
PY
