#!/usr/bin/env bash
# Draws the PNG figures in docs/figures from the CSV files there (written by
# scripts/anonymity-sweep.sh, scripts/bench-figures.sh and scripts/long-term.sh). Installs
# matplotlib into target/plot-venv on first use. Usage: scripts/plot.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$here/target/plot-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q matplotlib
fi
"$venv/bin/python" "$here/scripts/plot.py" "$here/docs/figures"
