#!/usr/bin/env bash
# Runs every shipped config for a few epochs and keeps what each run
# produced that a refactor must not change: the graph (graph.toml) and the
# report (report.json without its timings). Run it before and after a change, then compare:
#
#   scripts/report-metrics.sh /tmp/before     # on the old commit
#   scripts/report-metrics.sh /tmp/after      # on the new one
#   diff -r /tmp/before /tmp/after && echo identical
#
# Tabular configs read MTREC_DATA_DIR (skipped, and said so, when unset).
# EPOCHS (default 2) shortens every run; MTREC (default target/release/mtrec).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/report-metrics.sh OUT_DIR}
epochs=${EPOCHS:-2}
mtrec=${MTREC:-target/release/mtrec}
[ -x "$mtrec" ] || cargo build --release -p mtrec-runner
mkdir -p "$out"
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
for config in configs/*.toml configs/examples/*.toml; do
  name=$(basename "$config" .toml)
  if grep -q '^source = "\(csv\|parquet\)"' "$config" && [ -z "${MTREC_DATA_DIR:-}" ]; then
    echo "skipped $config: MTREC_DATA_DIR is not set"
    continue
  fi
  "$mtrec" run --config "$config" --set "train.epochs=$epochs" --out "$runs/$name" >/dev/null
  # A single-task run of K tasks is K one-task runs: a graph per task.
  if [ -f "$runs/$name/graph.toml" ]; then
    cp "$runs/$name/graph.toml" "$out/$name.graph.toml"
  else
    for task in "$runs/$name"/tasks/*/; do
      cp "$task/graph.toml" "$out/$name.$(basename "$task").graph.toml"
    done
  fi
  # Everything but the timings (seconds, rows per second).
  python3 - "$runs/$name/report.json" "$out/$name.report.json" <<'PY'
import json, sys
def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if "second" not in k}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x
with open(sys.argv[1]) as f:
    report = json.load(f)
with open(sys.argv[2], "w") as f:
    json.dump(strip(report), f, indent=1, sort_keys=True)
PY
  echo "ran $config"
done
