#!/usr/bin/env bash
# Sweeps the mean per-hop delay and the client payload rate with
# `umbra eval anonymity` (100 clients, 2 mix nodes per layer, 5000 targets,
# λ_L = λ_M = 1/s), prints a Markdown table and writes the figures as CSV
# (default docs/figures/anonymity-sweep.csv) for scripts/plot.sh. Usage:
#   cargo build --release -p umbra && scripts/anonymity-sweep.sh [SEED] [CSV]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
umbra=${UMBRA:-$here/target/release/umbra}
seed=${1:-1}
csv=${2:-$here/docs/figures/anonymity-sweep.csv}
mkdir -p "$(dirname "$csv")"
echo "delay_ms,lambda_p,client_pps,entropy_pct,top1_over_chance,ci_lo,ci_hi,latency_s" >"$csv"
echo "| delay ms | λ_P /s | client pkt/s | entropy % of log2 N | top-1 / chance | top-1 95% CI | latency s |"
echo "|---|---|---|---|---|---|---|"
for d in 50 100 200 400 800; do
  for lp in 3 5 8; do
    out=$("$umbra" eval anonymity --delay-ms "$d" --lambda-p "$lp" --lambda-l 1 --lambda-m 1 --seed "$seed" --json 2>/dev/null)
    json=$(tail -n1 <<<"$out")
    lat=$(grep -o 'mean latency to the dropbox [0-9.]*' <<<"$out" | awk '{print $NF}')
    python3 - "$d" "$lp" "$lat" "$json" "$csv" <<'PY'
import json, sys
d, lp, lat, j, csv = sys.argv[1], float(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
c = j['chance']
ent = 100 * j['entropy_bits'] / j['max_entropy_bits']
top, lo, hi = j['top1_accuracy'] / c, j['top1_ci95'][0] / c, j['top1_ci95'][1] / c
print(f"| {d} | {lp:g} | {lp + 1:g} | {ent:.1f} | {top:.2f} | [{lo:.2f}, {hi:.2f}] | {lat} |")
with open(csv, "a") as f:
    f.write(f"{d},{lp:g},{lp + 1:g},{ent:.2f},{top:.3f},{lo:.3f},{hi:.3f},{lat}\n")
PY
  done
done
