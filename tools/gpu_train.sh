#!/bin/bash
# Train shipped models on a lent GPU machine (the `device` tool), two at a time on one GPU,
# in one call of at most 10 minutes. Here, first:
#   python tools/gpu_stage.py ../shared/camvid .gpu/camvid      # frames as JPEG q97: the 64 MiB limit
#   pip download --no-deps ... -d .whl segmentation-models-pytorch==0.6.0   # the GPU image lacks smp
#   weights/ (99 MB, tracked) would not fit the transfer either: for the calls, untrack it with
#   `git rm -r -q --cached weights` + `/weights/` in .git/info/exclude; `git reset -q -- weights` after
# There (repo root, carry .gpu and .whl):  bash tools/gpu_train.sh BUDGET_S MODEL [MODEL...]  [-- bench]
# Each model: 4 epochs (inside the lr warm-up, so they are the first 4 of any run of this recipe),
# then the epoch count that fits the budget at the measured epoch time, resumed from the checkpoint.
# Out: $OUT/MODEL.log, $OUT/runs.tar.NN (run folders without checkpoints, split for the transfer);
# here: cat runs.tar.* | tar x -C runs
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=$1; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu_out}; mkdir -p "$OUT"
DATA=${DATA:-.gpu/camvid}
RECIPE="--data $DATA --crop 352x480 --scale 0.75,1.5 --flips h --optimizer adamw --weight-decay 1e-4
 --lr 2e-3 --schedule poly --warmup 200 --class-weighting sqrt-median --batch-size 8 --val-every 2 --half --threads 3 ${EXTRA:-}"
MODELS=(); BENCH=0
for a in "$@"; do [ "$a" = bench ] && BENCH=1 || { [ "$a" != -- ] && MODELS+=("$a"); }; done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm, segmentation_models_pytorch as s; print('torch', torch.__version__, 'timm', timm.__version__, 'smp', s.__version__)"

train() {  # MODEL EPOCHS|--max-steps N  [timeout]
  local m=$1; shift
  timeout -s TERM "${TMO:-9999}" python3 -m sis train --model "$m" --out "runs/gpu/$m" $RECIPE "$@" >> "$OUT/$m.log" 2>&1
}
for m in "${MODELS[@]}"; do rm -rf "runs/gpu/$m"; train "$m" --epochs 4 & done; wait  # a fresh run each call
[ $BENCH = 1 ] && RESERVE=110 || RESERVE=40   # seconds kept for the benches and the packing
for m in "${MODELS[@]}"; do
  E=$(python3 - "$m" "$T0" "$BUDGET" "$RESERVE" <<'EOF'
import json, sys, time
m, t0, budget, reserve = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
h = json.load(open(f"runs/gpu/{m}/card.json"))["history"]
per_epoch = (h[3]["time_s"] - h[1]["time_s"]) / 2   # epochs 3-4, one validation among them
left = budget - (time.time() - t0) - reserve
print(4 + max(0, int(left / per_epoch)))
EOF
)
  echo "$m: $E epochs" | tee -a "$OUT/$m.log"
  TMO=$((BUDGET - RESERVE + 20 - $(date +%s) + T0)); [ $TMO -lt 30 ] && TMO=30
  TMO=$TMO train "$m" --epochs "$E" &
done; wait
if [ $BENCH = 1 ]; then
  python3 -m sis bench --compare-train --model unet-resnet18 --device cuda --repeats 20 --out "$OUT/compare_train_cuda.json" > "$OUT/bench.log" 2>&1
  for m in "${MODELS[@]}"; do
    python3 -m sis bench --model "$m" --device cuda --amp --repeats 50 --out "$OUT/infer_cuda_$m.json" >> "$OUT/bench.log" 2>&1
    for amp in "" --amp; do  # the CUDA eval path, fp32 and autocast, on the staged val frames
      python3 -m sis eval --model "runs/gpu/$m" --data "$DATA" --split val --device cuda $amp >> "$OUT/bench.log" 2>&1
    done
    python3 -m sis predict --model "runs/gpu/$m" --device cuda --out /tmp/pred "$DATA/val" >> "$OUT/bench.log" 2>&1
    ls /tmp/pred | head -3 >> "$OUT/bench.log"
  done
fi
# only this call's models: a machine still warm from the last call keeps its runs/ (8 files back at most)
tar cf - --exclude=checkpoint -C runs "${MODELS[@]/#/gpu/}" | split -b 15M -d - "$OUT/runs.tar."
ls -la "$OUT"; echo "wall $(( $(date +%s) - T0 )) s"
