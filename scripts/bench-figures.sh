#!/usr/bin/env bash
# Runs `umbra bench mixnode` at production settings across mean delays
# (0, 20, 100, 400, 800 ms) and both MTUs (1500 bytes; jumbo), and writes one CSV
# row per run for scripts/plot.py (default docs/figures/bench-mixnode.csv).
# Usage:
#   cargo build --release -p umbra && scripts/bench-figures.sh [CSV [BENCH FLAGS…]]
# e.g. `scripts/bench-figures.sh docs/figures/bench-mixnode.csv --shared-cores`
# to keep the load generator on the node's cores (the default gives it one
# of its own where the machine has two CPUs or more).
# A run that is not valid (outside load, idle cores, drops) keeps its row
# with valid=false and an empty ratio: rerun on a quiet machine.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
umbra=${UMBRA:-$here/target/release/umbra}
csv=${1:-$here/docs/figures/bench-mixnode.csv}
shift || true
echo "delay_ms,jumbo,peers,raw_unwrap_pps,mixnode_pps,ratio,valid,cores,generator_cores" >"$csv"
for jumbo in false true; do
  for delay in 0 20 100 400 800; do
    flag=()
    [ "$jumbo" = true ] && flag=(--jumbo)
    # Exit status 3 is a run marked not valid: keep its row.
    line=$("$umbra" bench mixnode --delay-ms "$delay" "${flag[@]}" "$@" --json 2>/dev/null | tail -1) || [ $? -eq 3 ]
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
low = lambda b: "true" if b else "false"
ratio = "" if r["ratio"] is None else r["ratio"]
print(",".join(str(x) for x in [r["delay_ms"], low(r["jumbo"]), r["peers"], r["raw_unwrap_pps"], r["mixnode_pps"], ratio, low(r["valid"]), r["cores"], r["generator_cores"]]))
' "$line" | tee -a "$csv"
  done
done
echo "wrote $csv"
