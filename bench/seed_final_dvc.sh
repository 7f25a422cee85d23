#!/usr/bin/env bash
# The user's path for the seed's final model: `dvc exp run ... evaluate@final` on the shipped sample, in a
# throwaway git + DVC copy of this tree, with the run cut to fit (train.iterations, and a prefix of each split for
# the stride-1 evaluation). Writes <out dir>/seed_final_dvc.json: each stage's seconds, val/test BPC and accuracy,
# training tokens/s and the LR range test's suggestion, or the stage where it failed.
#
#   bench/seed_final_dvc.sh <out dir> [extra `dvc exp run` -S assignments ...]
#
# ITERATIONS (default 1200) and EVAL_BYTES (default 50000) size the run. On a CPU, shrink the model too, e.g.
#   ITERATIONS=4 EVAL_BYTES=2000 bench/seed_final_dvc.sh /tmp/out -S +runs.final.model.n_layer=1 ...
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/seed_final_dvc.sh <out dir> [-S assignment ...]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
repo=$PWD
work=$(mktemp -d)/chargpt
mkdir -p "$work"
# The tracked and untracked-but-not-ignored files, as the device machine and a clone see them.
(git ls-files --cached --others --exclude-standard 2>/dev/null || find . -type f -not -path './.git/*') |
  while read -r f; do [ -f "$f" ] && cp --parents "$f" "$work/"; done
cd "$work"
git init -q && git add -A && git -c user.email=check@chargpt -c user.name=check commit -qm "gpu check snapshot"
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" CHARGPT_MAX_HOURS=${CHARGPT_MAX_HOURS:-1}
log="$out/seed_final_dvc.log"
start=$SECONDS
# Each line of DVC's output with the seconds since the start, so each stage's time is the gap between its
# "Running stage" line and the next.
dvc exp run -S "data.url=$repo/samples/enwiki-sample.xml.bz2" -S data.checksums=null \
  -S "runs.final.train.iterations=${ITERATIONS:-1200}" -S "+runs.final.eval.max_bytes=${EVAL_BYTES:-50000}" \
  -S "+runs.final.train.eval_interval=200" "$@" evaluate@final 2>&1 |
  while IFS= read -r line; do echo "$((SECONDS - start)) $line"; done > "$log"
status=${PIPESTATUS[0]}
python3 - "$work" "$log" "$status" "$out/seed_final_dvc.json" <<'PY'
import json, re, sys
from pathlib import Path

work, log, status, dest = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
lines = log.read_text(errors="replace").splitlines()
marks = [(int(l.split(" ", 1)[0]), m.group(1)) for l in lines if (m := re.search(r"Running stage '([^']+)'", l))]
end = int(lines[-1].split(" ", 1)[0]) if lines else 0
seconds = {stage: (marks[i + 1][0] if i + 1 < len(marks) else end) - t for i, (t, stage) in enumerate(marks)}
result = {"exit_status": status, "stage_seconds": seconds, "failed_in": marks[-1][1] if status and marks else None}
reports = work / "reports" / "final"
for name in ("lr_range_test.json", "train_metrics.json", "eval.json"):
    if (reports / name).exists():
        result[name.removesuffix(".json")] = json.loads((reports / name).read_text())
if status:
    result["last_lines"] = [l.split(" ", 1)[-1][-300:] for l in lines[-5:]]
dest.write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({k: v for k, v in result.items() if k != "last_lines"})[:2000])
PY
exit "$status"
