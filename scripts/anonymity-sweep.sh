#!/usr/bin/env bash
# Sweeps the mean per-hop delay and the client payload rate with
# `umbra eval anonymity` (the real client; 100 clients, 2 mix nodes per
# layer, 5000 targets, λ_L = λ_M = 1/s) under each adversary, prints a
# Markdown table and writes the figures as CSV (default
# docs/figures/anonymity-sweep.csv) for scripts/plot.sh. Runs JOBS
# evaluations at once (default 2: one per core). Usage:
#   cargo build --release -p umbra && scripts/anonymity-sweep.sh [SEED] [CSV]
# DELAYS (default "50 100 200 400 800"), RATES ("3 5 8") and ADVERSARIES
# ("exponential discount") narrow it; a row takes 2–6 minutes of CPU.
# EXTRA adds arguments to every run (e.g. EXTRA="--targets 200" to try it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
umbra=${UMBRA:-$here/target/release/umbra}
seed=${1:-1}
csv=${2:-$here/docs/figures/anonymity-sweep.csv}
delays=${DELAYS:-50 100 200 400 800}
rates=${RATES:-3 5 8}
adversaries=${ADVERSARIES:-exponential discount}
jobs=${JOBS:-2}
mkdir -p "$(dirname "$csv")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for a in $adversaries; do
  for d in $delays; do
    for lp in $rates; do
      echo "$a $d $lp"
    done
  done
done >"$work/runs"
extra=${EXTRA:-}
export umbra seed work extra
xargs -P "$jobs" -L 1 sh -c '
  flag=""; [ "$0" = discount ] && flag=--discount
  "$umbra" eval anonymity --delay-ms "$1" --lambda-p "$2" --lambda-l 1 --lambda-m 1 \
    --seed "$seed" $flag $extra --json >"$work/$0-$1-$2.out" 2>/dev/null || true
' <"$work/runs"
python3 - "$work" "$csv" <<'PY'
import json, os, re, sys
work, csv = sys.argv[1], sys.argv[2]
print("| adversary | delay ms | λ_P /s | client pkt/s | entropy % of log2 N | top-1 / chance [95% CI] | clustered CI | `store` top-1 / chance [95% CI] | calibrated | latency s |")
print("|---|---|---|---|---|---|---|---|---|---|")
with open(csv, "w") as f:
    f.write("adversary,delay_ms,lambda_p,client_pps,entropy_pct,top1_over_chance,ci_lo,ci_hi,"
            "clustered_lo,clustered_hi,store_top1_over_chance,store_ci_lo,store_ci_hi,calibrated,"
            "latency_s\n")
    for line in open(os.path.join(work, "runs")):
        a, d, lp = line.split()
        out = open(os.path.join(work, f"{a}-{d}-{lp}.out")).read()
        js = [l for l in out.splitlines() if l.startswith("{")]
        if not js:
            print(f"| {a} | {d} | {lp} | run failed (an error: no JSON) | | | | | | |")
            continue
        j = json.loads(js[-1])
        lat = re.search(r"mean latency to the dropbox ([0-9.]+)", out)
        lat = lat.group(1) if lat else ""
        c = j["chance"]
        ent = 100 * j["entropy_bits"] / j["max_entropy_bits"]
        top, lo, hi = j["top1_accuracy"] / c, j["top1_ci95"][0] / c, j["top1_ci95"][1] / c
        st = next(k for k in j["kinds"] if k["kind"] == "store")
        stop, slo, shi = st["top1_accuracy"] / c, st["top1_ci95"][0] / c, st["top1_ci95"][1] / c
        # The interval that counts clustered targets (absent before it existed).
        clo, chi = (x / c for x in j.get("top1_ci95_clustered", [float("nan")] * 2))
        pps = float(lp) + 1
        cal = str(j["calibrated"]).lower()
        print(f"| {a} | {d} | {lp} | {pps:g} | {ent:.2f} | {top:.2f} [{lo:.2f}, {hi:.2f}] | "
              f"[{clo:.2f}, {chi:.2f}] | {stop:.2f} [{slo:.2f}, {shi:.2f}] | {cal} | {lat} |")
        f.write(f"{a},{d},{lp},{pps:g},{ent:.3f},{top:.3f},{lo:.3f},{hi:.3f},{clo:.3f},{chi:.3f},"
                f"{stop:.3f},{slo:.3f},{shi:.3f},{cal},{lat}\n")
PY
