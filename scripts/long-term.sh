#!/usr/bin/env bash
# The long-term attack at the defaults with K *different* stores per trial:
# `umbra eval anonymity` with enough targets that every sender has about
# 300 stores (about 15 minutes of CPU), its curve printed as a Markdown table
# and written as CSV (default docs/figures/long-term.csv) for
# scripts/plot.sh (kinds `message` and `store`: K stores of one sender, in
# whichever boxes; `store_box`: K stores of one box, what one gateway
# links). Extra arguments go to `umbra eval anonymity` (e.g.
# --seed 2, --discount). TARGETS and KS override the target count and the
# K list: TARGETS=66000 KS=1,10,100,300,1000 gives every sender about 1070
# stores, enough for K = 1000 different ones (about 41 minutes of CPU). Usage:
#   cargo build --release -p umbra && scripts/long-term.sh [CSV] [ARGS...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
umbra=${UMBRA:-$here/target/release/umbra}
csv=${1:-$here/docs/figures/long-term.csv}
shift || true
mkdir -p "$(dirname "$csv")"
targets=${TARGETS:-20000}
ks=${KS:-1,10,100,200,300}
json=$("$umbra" eval anonymity --targets "$targets" --long-term-k "$ks" --json "$@" 2>/dev/null | tail -n1)
[ -n "${JSON_OUT:-}" ] && printf '%s\n' "$json" > "$JSON_OUT"
python3 - "$json" "$csv" <<'PY'
import json, sys
j, csv = json.loads(sys.argv[1]), sys.argv[2]
print("| kind | K | identified | 95% CI (trials) | 95% CI (senders) | K different stores | senders |")
print("|---|---|---|---|---|---|---|")
with open(csv, "w") as f:
    f.write("kind,k,identified,ci_lo,ci_hi,independent,senders,chance,senders_lo,senders_hi\n")
    for l in j["long_term"] + j.get("long_term_box", []):
        lo, hi = l["ci95"]
        slo, shi = l.get("ci95_senders", [float("nan")] * 2)
        print(f"| {l['kind']} | {l['k']} | {100 * l['identified']:.1f} % | [{100 * lo:.1f}, {100 * hi:.1f}] | [{100 * slo:.1f}, {100 * shi:.1f}] | {l['independent']} | {l['senders']} |")
        f.write(f"{l['kind']},{l['k']},{l['identified']:.4f},{lo:.4f},{hi:.4f},{str(l['independent']).lower()},{l['senders']},{j['chance']},{slo:.4f},{shi:.4f}\n")
print(f"largest box: {j.get('largest_box')} stores ('store_box' rows: K stores of one box, what one gateway links)")
PY
