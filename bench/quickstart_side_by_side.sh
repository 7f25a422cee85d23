#!/usr/bin/env bash
# The quickstart and quickstart_classic side by side on this machine: each through the whole pipeline on the
# shipped sample, one after the other with nothing else running, in a fresh clone of this repository:
#   bench/quickstart_side_by_side.sh <out.json> [-S runs.quickstart.<key>=<value> ...]
# (the -S options change the quickstart for this comparison only: `dvc exp run`'s, recorded in the output as
# quickstart_set; a key its own section does not write takes Hydra's +, e.g. -S +runs.quickstart.model.d_model=96).
# Prints and writes each run's pipeline seconds (the first run's include download and preprocess, shared by the
# second), training seconds and steps, val/test BPC and accuracy, static, dynamic and mixed, and the machine; and both
# models scored alike after the pipeline in both protocols, whatever each run's evaluate stage used: consecutive
# windows (`chargpt score --stride 128`: on average 64 bytes of context) and sliding windows (`chargpt score --stride 32`: every
# byte after the first window sees at least 96 bytes). `chargpt score` runs in fp32, whatever precision the run
# trained and its evaluate stage scored in (recorded as each run's precision).
set -euo pipefail
out=$(realpath -m "${1:?usage: bench/quickstart_side_by_side.sh <out.json> [-S runs.quickstart.<key>=<value> ...]}")
shift
quickstart_set=("$@")
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$repo" "$work/clone"
cd "$work/clone"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this clone's code, whatever the environment installed
declare -A seconds
for run in quickstart quickstart_classic; do
  start=$SECONDS
  extra=()
  [[ $run == quickstart ]] && extra=("${quickstart_set[@]}")
  dvc exp run -S data.url=samples/enwiki-sample.xml.bz2 -S data.checksums=null "${extra[@]}" "evaluate@$run" \
    >"$work/$run.log" 2>&1 \
    || { tail -20 "$work/$run.log"; exit 1; }
  seconds[$run]=$((SECONDS - start))
done
for run in quickstart quickstart_classic; do
  for split in val test; do
    context=$(python -c "from chargpt.pipeline.config import load_run_config; print(load_run_config('$run').model.context)")
    python -m chargpt.cli score --run "$run" --stride "$context" "data/processed/$split.bin" \
      >"$work/$run.$split.consecutive.json"
    python -m chargpt.cli score --run "$run" --stride 32 "data/processed/$split.bin" >"$work/$run.$split.stride32.json"
  done
done
python3 - "$out" "${seconds[quickstart]}" "${seconds[quickstart_classic]}" "$work" "${quickstart_set[@]}" <<'PY'
import json, sys, torch
out, new, classic, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
quickstart_set = [a for a in sys.argv[5:] if a != "-S"]  # the -S options the quickstart ran with
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
from chargpt.device import cpu_has_native_bf16
result = {"machine": f"{cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}",
          "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__, "quickstart_set": quickstart_set}
for run, pipeline in (("quickstart", new), ("quickstart_classic", classic)):
    ev, tm = (json.load(open(f"reports/{run}/{f}.json")) for f in ("eval", "train_metrics"))
    result[run] = {"pipeline_seconds": pipeline, "train_seconds": tm["train_seconds"], "iterations": tm["iterations"],
                   **{k: ev[k] for k in ev if k.endswith(("_bpc", "_accuracy", "_bpc_dynamic", "_accuracy_dynamic", "_mixed",
                                                           "_bpc_ref", "_accuracy_ref"))},
                   "eval_stride": ev["protocol"]["stride"], "precision": ev["protocol"]["precision"]}
    for split in ("val", "test"):
        for protocol in ("consecutive", "stride32"):
            scored = json.load(open(f"{work}/{run}.{split}.{protocol}.json"))
            result[run] |= {f"{split}_bpc_{protocol}": scored["bpc"], f"{split}_accuracy_{protocol}": scored["accuracy"]}
new_run, old_run = result["quickstart"], result["quickstart_classic"]
# Differences only of like with like: the evaluate stage's static figures only where both runs used one protocol.
same_protocol = new_run["eval_stride"] == old_run["eval_stride"]
result["quickstart_minus_classic"] = {
    k: round(new_run[k] - old_run[k], 5)
    for k in new_run
    if k in old_run and k not in ("pipeline_seconds", "eval_stride", "precision")
    and (same_protocol or not k.endswith(("_bpc", "_accuracy")))
}
json.dump(result, open(out, "w"), indent=2)
print(json.dumps(result, indent=2))
PY
echo "the two runs' project, for more scoring: $work/clone" >&2
