#!/bin/bash
# Train on a lent GPU machine (the `device` tool): the jobs of a plan at once on one GPU, in one
# call of at most 10 minutes. Here, first:
#   python tools/gpu_stage.py ../shared/camvid .gpu/camvid      # frames as JPEG q97: the 64 MiB limit
#   pip download --no-deps ... -d .whl segmentation-models-pytorch==0.6.0   # the GPU image lacks smp
#   weights/ (99 MB, tracked) would not fit the transfer either: for the calls, untrack it with
#   `git rm -r -q --cached weights` + `/weights/` in .git/info/exclude; `git reset -q -- weights` after
# There (repo root, carry .gpu and .whl):  bash tools/gpu_train.sh BUDGET_S PLAN [bench]
# PLAN (tools/gpu_plans/*.txt): one job a line, "NAME MODEL [train options]", on top of the shipped recipe.
# A job whose options hold --epochs runs exactly that, cut at the budget; one without runs 4 epochs
# (inside the lr warm-up, so they are the first 4 of any run of this recipe), then the epoch count that
# fits the budget at the measured epoch time, resumed from the checkpoint.
# Out: $OUT/NAME.log, $OUT/runs.tar.NN (the $RUNS/NAME folders without checkpoints, split for the
# transfer); here: mkdir -p runs/gpu && cat runs.tar.* | tar x -C runs/gpu
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=$1; PLAN=$2; BENCH=0; [ "${3:-}" = bench ] && BENCH=1
PY=${PYTHON:-python3}  # the interpreter with torch: the GPU image's python3, or a venv's
if ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu_out}; RUNS=${RUNS:-runs/gpu}; mkdir -p "$OUT" "$RUNS"
DATA=${DATA:-.gpu/camvid}
RECIPE="--data $DATA --crop 352x480 --scale 0.75,1.5 --flips h --optimizer adamw --weight-decay 1e-4
 --lr 2e-3 --schedule poly --warmup 200 --class-weighting sqrt-median --batch-size 8 --val-every 2 --half --threads 3 ${EXTRA:-}"
NAMES=(); declare -A MODEL ARGS
while read -r name model args; do
  [ -z "${name:-}" ] || [ "${name:0:1}" = "#" ] && continue
  NAMES+=("$name"); MODEL[$name]=$model; ARGS[$name]=${args:-}
done < "$PLAN"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch, timm, segmentation_models_pytorch as s; print('torch', torch.__version__, 'timm', timm.__version__, 'smp', s.__version__)" || exit 1

train() {  # NAME [more options]   (under timeout TMO)
  local n=$1; shift
  # shellcheck disable=SC2086  # the options are words
  timeout -s TERM "${TMO:-9999}" "$PY" -m sis train --model "${MODEL[$n]}" --out "$RUNS/$n" $RECIPE ${ARGS[$n]} "$@" \
    >> "$OUT/$n.log" 2>&1
}
[ $BENCH = 1 ] && RESERVE=110 || RESERVE=40   # seconds kept for the benches and the packing
for n in "${NAMES[@]}"; do rm -rf "$RUNS/$n"; done  # a fresh run each call
ADAPT=(); PROBES=()
for n in "${NAMES[@]}"; do
  if [[ " ${ARGS[$n]} " == *" --epochs "* ]]; then  # a fixed run: cut at the budget, the model so far kept
    TMO=$((BUDGET - RESERVE + 20)) train "$n" &
  else
    ADAPT+=("$n"); train "$n" --epochs 4 & PROBES+=($!)
  fi
done
[ ${#PROBES[@]} -gt 0 ] && wait "${PROBES[@]}"
for n in "${ADAPT[@]}"; do
  E=$("$PY" - "$n" "$T0" "$BUDGET" "$RESERVE" "$RUNS" <<'PY'
import json, sys, time
n, t0, budget, reserve, runs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
h = json.load(open(f"{runs}/{n}/card.json"))["history"]
per_epoch = (h[3]["time_s"] - h[1]["time_s"]) / 2   # epochs 3-4, one validation among them
left = budget - (time.time() - t0) - reserve
print(4 + max(0, int(left / per_epoch)))
PY
)
  echo "$n: $E epochs" | tee -a "$OUT/$n.log"
  TMO=$((BUDGET - RESERVE + 20 - $(date +%s) + T0)); [ $TMO -lt 30 ] && TMO=30
  TMO=$TMO train "$n" --epochs "$E" &
done; wait
if [ $BENCH = 1 ]; then
  "$PY" -m sis bench --compare-train --model unet-resnet18 --device cuda --repeats 20 --out "$OUT/compare_train_cuda.json" > "$OUT/bench.log" 2>&1
  for n in "${NAMES[@]}"; do
    "$PY" -m sis bench --model "$RUNS/$n" --device cuda --amp --repeats 50 --out "$OUT/infer_cuda_$n.json" >> "$OUT/bench.log" 2>&1
  done
fi
for n in "${NAMES[@]}"; do "$PY" -c "import json,sys; c=json.load(open(sys.argv[1])); print(sys.argv[2], c['status'], \
  c['epochs_run'], 'epochs', c['wall_time_s'], 's', 'val', (c['val'] or {}).get('miou'))" "$RUNS/$n/card.json" "$n"; done
# only this call's runs: a machine still warm from the last call keeps its runs/ (8 files back at most)
tar cf - --exclude=checkpoint -C "$RUNS" "${NAMES[@]}" | split -b 15M -d - "$OUT/runs.tar."
ls -la "$OUT"; echo "wall $(( $(date +%s) - T0 )) s"
