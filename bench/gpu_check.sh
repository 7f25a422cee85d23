#!/usr/bin/env bash
# #5's GPU figures in one prepared run (about 5 minutes on one H100 or H200), for a session lent a GPU:
#   1. T12 (`final`) throughput and MFU: bf16 autocast + torch.compile, then bf16 eager, against plain fp32 eager;
#   2. the numerics check: the quickstart trained in IEEE fp32, TF32 and bf16 from the same seed
#      (bench/grids/bf16_numerics.yaml); bf16 must end within 0.02 BPC of fp32.
# Every figure is printed and kept under <out dir>.
#
#   bench/gpu_check.sh <splits dir> <out dir>
#
# <splits dir>: a preprocess output (train.bin, val.bin, test.bin), e.g. data/processed of the Wikipedia sample
# (`dvc repro preprocess` with -S data.url=file://$PWD/../shared/data/enwiki-sample.xml.bz2 -S data.checksums=null).
# CHECK_SET adds overrides to the numerics runs (e.g. "train.iterations=20 train.device=cpu" to try the script
# without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
splits=${1:?usage: bench/gpu_check.sh <splits dir> <out dir>}
out=${2:?usage: bench/gpu_check.sh <splits dir> <out dir>}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python - <<'EOF' | tee "$out/device.txt"
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}; {name}")
EOF

if python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  python bench/throughput.py --run final --steps 30 --eval-bytes 5000000 --preprocess-mb 100 \
    --set train.compile=true --set eval.batch_size=64 2>/dev/null | tee "$out/throughput_final_compile.txt"
  python bench/throughput.py --run final --steps 30 --eval-bytes 2000000 --preprocess-mb 10 \
    --set train.compile=false --set eval.batch_size=64 2>/dev/null | tee "$out/throughput_final_eager.txt"
  device_set=(--set train.device=cuda)
else
  device_set=()
fi

check_set=()
for override in ${CHECK_SET:-}; do check_set+=(--set "$override"); done
# lr_max: the quickstart's LR range test suggestion (the sweep runs no range test), so all three share it.
python bench/recipe_sweep.py --run quickstart --grid bench/grids/bf16_numerics.yaml --data-dir "$splits" \
  --out "$out/bf16_numerics.jsonl" --workers 3 --set schedule.lr_max=8.812e-3 "${device_set[@]}" "${check_set[@]}"
python bench/recipe_sweep.py --summarize "$out/bf16_numerics.jsonl" | tee "$out/bf16_numerics.txt"
