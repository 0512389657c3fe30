#!/usr/bin/env bash
# The long-term attack at the defaults with K *different* stores per trial:
# `umbra eval anonymity` with enough targets that every sender has about
# 300 stores (about 15 minutes of CPU), its curve printed as a Markdown table
# and written as CSV (default docs/figures/long-term.csv) for
# scripts/plot.sh. Extra arguments go to `umbra eval anonymity` (e.g.
# --seed 2, --discount). Usage:
#   cargo build --release -p umbra && scripts/long-term.sh [CSV] [ARGS...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
umbra=${UMBRA:-$here/target/release/umbra}
csv=${1:-$here/docs/figures/long-term.csv}
shift || true
mkdir -p "$(dirname "$csv")"
json=$("$umbra" eval anonymity --targets 20000 --long-term-k 1,10,100,200,300 --json "$@" 2>/dev/null | tail -n1)
python3 - "$json" "$csv" <<'PY'
import json, sys
j, csv = json.loads(sys.argv[1]), sys.argv[2]
print("| kind | K | identified | 95% CI | K different stores | senders |")
print("|---|---|---|---|---|---|")
with open(csv, "w") as f:
    f.write("kind,k,identified,ci_lo,ci_hi,independent,senders,chance\n")
    for l in j["long_term"]:
        lo, hi = l["ci95"]
        print(f"| {l['kind']} | {l['k']} | {100 * l['identified']:.1f} % | [{100 * lo:.1f}, {100 * hi:.1f}] | {l['independent']} | {l['senders']} |")
        f.write(f"{l['kind']},{l['k']},{l['identified']:.4f},{lo:.4f},{hi:.4f},{str(l['independent']).lower()},{l['senders']},{j['chance']}\n")
PY
