#!/usr/bin/env bash
# #13's GPU figures in one prepared run (at most 8 minutes on a bare H100), for a session lent a GPU:
#   1. T12 (`final`) training throughput and MFU: eager, torch.compile, CUDA graphs, and both, at batch 32 (and
#      64), SGD and AdamW; evaluation eager and from a CUDA graph;
#   2. the numerics: the quickstart trained in IEEE fp32, TF32, bf16 and fp16 from the same seed and LR, and in
#      bf16 replayed from a CUDA graph (bench/grids/precision_numerics.yaml); each must end within 0.02 BPC of fp32;
#   3. the T12 recipes at 1200 steps on the sample (bench/grids/t12_recipes.yaml): the seed's SGD, SGD at the
#      range test's LR, without clipping, with GPT-2's positions, AdamW and Muon; target <= 1.60 test BPC.
# Parts 2 and 3 share the GPU (their figures are BPC, not speed). One part failing does not stop the others.
# Every figure is kept under <out dir>, and bench/gpu_report.py prints them as one table at the end.
#
#   bench/gpu_check.sh <splits dir> <out dir>
#
# <splits dir>: a preprocess output (train.bin, val.bin, test.bin), e.g. data/processed of the Wikipedia sample
# (`dvc repro preprocess` with -S data.url=file://$PWD/../shared/data/enwiki-sample.xml.bz2 -S data.checksums=null).
# Without a GPU it skips part 1 and trains on the CPU; CHECK_SET adds overrides to parts 2 and 3 so that the
# script can be tried there, e.g. CHECK_SET="train.iterations=20 train.eval_interval=10 eval.max_bytes=20000".
set -uo pipefail
cd "$(dirname "$0")/.."
splits=${1:?usage: bench/gpu_check.sh <splits dir> <out dir>}
out=${2:?usage: bench/gpu_check.sh <splits dir> <out dir>}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS
stamp() { echo "[gpu_check $((SECONDS - start))s] $*"; }

python3 - <<'EOF' | tee "$out/device.txt"
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}; {name}")
EOF

check_set=()
for override in ${CHECK_SET:-}; do check_set+=(--set "$override"); done
if python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  cuda=1
else
  cuda=0
fi

if [ "$cuda" = 1 ]; then
  stamp "1. throughput"
  # --isolate: each figure in a process of its own (a failed capture would poison the ones after it).
  tp=(python3 bench/throughput.py --run final --steps 30 --preprocess-mb 0 --no-fp32-baseline --isolate
      --json "$out/throughput.jsonl" --set eval.batch_size=64)
  "${tp[@]}" --modes eager,graphs,compile,compile+graphs --batch-sizes 32,64 --eval-bytes 2000000 \
    2>"$out/throughput_sgd.err" | tee "$out/throughput_sgd.txt"
  "${tp[@]}" --set optimizer.name=adamw --modes compile,compile+graphs --batch-sizes 32 --eval-bytes 0 \
    2>"$out/throughput_adamw.err" | tee "$out/throughput_adamw.txt"
  device_set=(--set train.device=cuda)
else
  device_set=()
fi
# Parts 2 and 3 run eagerly (no compile minutes per process, no capture): their figures are BPC. The numerics grid
# has one variant with the step replayed from a CUDA graph, which must train as the plain step does.
exec_set=(--set train.compile=false --set train.cuda_graphs=false)

stamp "2 and 3. numerics and recipes"
# lr_max: the quickstart's LR range test suggestion on the sample (the numerics runs share it, so only the precision
# differs); the recipes run their own range tests where they say lr_max=auto.
python3 bench/recipe_sweep.py --run quickstart --grid bench/grids/precision_numerics.yaml --data-dir "$splits" \
  --out "$out/precision_numerics.jsonl" --workers 5 --threads 1 --set schedule.lr_max=8.812e-3 \
  --set train.checkpoint_every=0 "${device_set[@]}" "${exec_set[@]}" "${check_set[@]}" \
  >"$out/precision_numerics.log" 2>&1 &
numerics=$!
python3 bench/recipe_sweep.py --run final --grid bench/grids/t12_recipes.yaml --data-dir "$splits" \
  --out "$out/t12_recipes.jsonl" --workers 4 --threads 2 --set train.iterations=1200 --set train.eval_interval=200 \
  --set train.checkpoint_every=0 --set eval.batch_size=64 "${device_set[@]}" "${exec_set[@]}" "${check_set[@]}" \
  2>&1 | tee "$out/t12_recipes.log" | grep --line-buffered '^\['
wait "$numerics"
grep '^\[' "$out/precision_numerics.log"
stamp "done"

python3 bench/gpu_report.py "$out" | tee "$out/report.md"
