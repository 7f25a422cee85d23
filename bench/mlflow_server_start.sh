#!/usr/bin/env bash
# MLflow's server as `chargpt ui` starts it (the chargpt app, one worker, a new SQLite store), with and without its
# GenAI job runner: the seconds to its first /health answer, its processes, and their CPU seconds 5 s later.
#   bench/mlflow_server_start.sh [starts per setting, default 2]
set -euo pipefail
tree_of() {  # the pids of $1 and its descendants
  ps -eo pid=,ppid= | awk -v root="$1" '{parent[$1] = $2} END {
    keep[root] = 1; grew = 1
    while (grew) { grew = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 } }
    for (p in keep) print p }'
}
for _ in $(seq "${1:-2}"); do
  for jobs in true false; do
    dir=$(mktemp -d)
    port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    start=$(date +%s.%N)
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$jobs python -m mlflow server --app-name chargpt --host 127.0.0.1 \
      --port "$port" --workers 1 --backend-store-uri "sqlite:///$dir/store.db" --artifacts-destination "$dir/a" \
      >"$dir/log" 2>&1 &
    server=$!
    until curl -s "http://127.0.0.1:$port/health" >/dev/null; do
      kill -0 "$server" 2>/dev/null || { tail "$dir/log"; exit 1; }
      sleep 0.2
    done
    up=$(python -c "print(f'{$(date +%s.%N) - $start:.1f}')")
    sleep 5
    pids=$(tree_of "$server")
    cpu=$(ps -o times= -p "$(echo $pids | tr ' ' ,)" | awk '{s += $1} END {print s}')
    echo "job runner $jobs: up in $up s, $(echo $pids | wc -w) processes, $cpu CPU s 5 s later"
    kill $pids 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$dir"
  done
done
