#!/usr/bin/env bash
# The GPU figures in one prepared run (at most 8 minutes on a bare H100/H200), for a session lent a GPU:
#   0. the user's path: `dvc exp run` of the seed's final model (runs.final) on the sample, cut to 1200 steps, through
#      lr_range_test, train and evaluate (bench/seed_final_dvc.sh): each stage's seconds, val/test BPC and accuracy;
#   1. training throughput, MFU and compile time of the seed's final model (T12's shape, 2 heads, tied, no biases):
#      eager, torch.compile, and torch.compile's reduce-overhead mode (CUDA graphs: train.cuda_graphs) at batch 16
#      (the seed's) and 32, SGD; AdamW and Muon compiled in both modes; evaluation in each mode;
#   2. the seed's final and its optimizer variants at 19.7M training bytes (research/grids/seed_final_recipes.yaml:
#      2400 steps at batch 16), and the T12 recipes of #13 at 1200 steps of batch 32 (research/grids/t12_recipes.yaml,
#      variants of runs.t12); target <= 1.60 test BPC. Both grids hold the modern recipe of #29 (seed_final_modern:
#      runs.final_modern; muon_modern: runs.t12_modern), measured against that target beside the recipes before it.
# Part 2's sweeps share the GPU (their figures are BPC, not speed). One part failing does not stop the others.
# Every figure is kept under <out dir>, and bench/gpu_report.py prints them as one table at the end.
#
#   bench/gpu_check.sh <splits dir> <out dir>
#
# <splits dir>: a preprocess output (train.bin, val.bin, test.bin, meta.json), e.g. data/processed of the Wikipedia sample
# (`dvc exp run -S data.url=samples/enwiki-sample.xml.bz2 -S data.checksums=null preprocess`).
# Without a GPU it skips part 1 and trains on the CPU; CHECK_SET adds overrides to part 2, and SEED_SET `dvc exp run`
# assignments to part 0, so that the script can be tried there, e.g.
#   CHECK_SET="train.iterations=20 train.eval_interval=10 eval.max_bytes=20000 model.n_layer=1"
#   SEED_SET="-S +runs.final.model.n_layer=1 -S runs.final.lr_range_test.iterations=40" ITERATIONS=4 EVAL_BYTES=2000
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

stamp "0. the user's path: dvc exp run of final"
# shellcheck disable=SC2086 # SEED_SET is a list of -S assignments
bench/seed_final_dvc.sh "$out" ${SEED_SET:-} | tail -1

if [ "$cuda" = 1 ]; then
  stamp "1. throughput"
  # --isolate: each figure in a process of its own (a mode that fails spares the ones after it).
  tp=(python3 bench/throughput.py --run final --steps 30 --preprocess-mb 0 --no-fp32-baseline --isolate
      --json "$out/throughput.jsonl" --set eval.batch_size=64)
  "${tp[@]}" --modes eager,compile,reduce-overhead --batch-sizes 16,32 --eval-bytes 2000000 \
    2>"$out/throughput_sgd.err" | tee "$out/throughput_sgd.txt"
  for optimizer in adamw muon; do
    "${tp[@]}" --set optimizer.name=$optimizer --modes compile,reduce-overhead --batch-sizes 16,32 --eval-bytes 0 \
      2>"$out/throughput_$optimizer.err" | tee "$out/throughput_$optimizer.txt"
  done
  device_set=(--set train.device=cuda)
else
  device_set=()
fi
# Part 2 runs eagerly (no compile minutes per process): its figures are BPC. Evaluation on consecutive
# windows (eval.stride=null), as every T12 figure before: the seed's stride 1 is part 0's.
exec_set=(--set train.compile=false --set train.cuda_graphs=false --set train.checkpoint_every=0
          --set eval.batch_size=64 --set eval.stride=null)

stamp "2. recipes at 19.7M training bytes"
python3 research/recipe_sweep.py --run final --grid research/grids/seed_final_recipes.yaml --data-dir "$splits" \
  --out "$out/seed_final_recipes.jsonl" --workers 4 --threads 2 --set train.iterations=2400 \
  --set train.eval_interval=400 "${device_set[@]}" "${exec_set[@]}" "${check_set[@]}" \
  >"$out/seed_final_recipes.log" 2>&1 &
seed_recipes=$!
python3 research/recipe_sweep.py --run t12 --grid research/grids/t12_recipes.yaml --data-dir "$splits" \
  --out "$out/t12_recipes.jsonl" --workers 4 --threads 2 --set train.iterations=1200 --set train.eval_interval=200 \
  "${device_set[@]}" "${exec_set[@]}" "${check_set[@]}" \
  2>&1 | tee "$out/t12_recipes.log" | grep --line-buffered '^\['
wait "$seed_recipes"
grep '^\[' "$out/seed_final_recipes.log"
stamp "done"

python3 bench/gpu_report.py "$out" | tee "$out/report.md"
