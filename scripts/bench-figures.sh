#!/usr/bin/env bash
# Runs `umbra bench mixnode` and writes its figures as CSV for
# scripts/plot.sh (default docs/figures/bench-mixnode.csv). Usage:
#   cargo build --release -p umbra && scripts/bench-figures.sh [CSV]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
umbra=${UMBRA:-$here/target/release/umbra}
csv=${1:-$here/docs/figures/bench-mixnode.csv}
out=$("$umbra" bench mixnode 2>/dev/null)
echo "$out"
num() { grep -o "$1 [0-9.]*" <<<"$out" | head -1 | awk '{print $NF}'; }
raw=$(grep -o 'raw sphinx unwrap: [0-9]*' <<<"$out" | awk '{print $NF}')
node=$(grep -o 'mix node over QUIC: [0-9]*' <<<"$out" | awk '{print $NF}')
half=$(grep -o 'half load ([0-9]*' <<<"$out" | tr -d '(' | awk '{print $NF}')
{
  echo "what,pps"
  echo "raw unwrap (2 cores),$raw"
  echo "mix node over QUIC,$node"
  echo "half load (latency run),$half"
} >"$csv"
echo "wrote $csv"
