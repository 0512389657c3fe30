#!/usr/bin/env bash
# Starts every node listed in OUT_DIR/nodes.txt (see generate.sh) as its own
# process, logs to OUT_DIR/<name>.log, and stops them all on Ctrl-C.
#
#   deploy/local/generate.sh /tmp/umbra-net && deploy/local/start.sh /tmp/umbra-net
set -euo pipefail
out=${1:?usage: start.sh OUT_DIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${UMBRA:-}" ]; then
  if command -v umbra >/dev/null; then UMBRA=umbra
  elif [ -x "$here/target/release/umbra" ]; then UMBRA=$here/target/release/umbra
  else UMBRA=$here/target/debug/umbra; fi
fi
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait; }
trap cleanup EXIT INT TERM
while read -r role cfg; do
  name=$(basename "$cfg" .toml)
  "$UMBRA" "$role" run --config "$cfg" >"$out/$name.log" 2>&1 &
  pids+=($!)
  [ "$role" = directory ] && sleep 0.5
done < "$out/nodes.txt"
echo "started ${#pids[@]} processes; logs in $out/*.log; Ctrl-C stops them"
wait
