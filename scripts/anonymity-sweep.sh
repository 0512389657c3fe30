#!/usr/bin/env bash
# Sweeps the mean per-hop delay and the client payload rate with
# `umbra eval anonymity` (100 clients, 2 mix nodes per layer, 5000 targets,
# λ_L = λ_M = 1/s) and prints a Markdown table. Usage:
#   cargo build --release -p umbra && scripts/anonymity-sweep.sh [SEED]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
umbra=${UMBRA:-$here/target/release/umbra}
seed=${1:-1}
echo "| delay ms | λ_P /s | client pkt/s | entropy % of log2 N | top-1 / chance | top-1 95% CI | latency s |"
echo "|---|---|---|---|---|---|---|"
for d in 50 100 200 400 800; do
  for lp in 3 5 8; do
    out=$("$umbra" eval anonymity --delay-ms "$d" --lambda-p "$lp" --lambda-l 1 --lambda-m 1 --seed "$seed" --json 2>/dev/null)
    json=$(tail -n1 <<<"$out")
    lat=$(grep -o 'mean latency to the dropbox [0-9.]*' <<<"$out" | awk '{print $NF}')
    python3 - "$d" "$lp" "$lat" "$json" <<'PY'
import json, sys
d, lp, lat, j = sys.argv[1], float(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
print(f"| {d} | {lp:g} | {lp + 1:g} | {100 * j['entropy_bits'] / j['max_entropy_bits']:.1f} | "
      f"{j['top1_accuracy'] / j['chance']:.2f} | [{j['top1_ci95'][0] / j['chance']:.2f}, {j['top1_ci95'][1] / j['chance']:.2f}] | {lat} |")
PY
  done
done
