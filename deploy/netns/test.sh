#!/usr/bin/env bash
# The multi-host testnet test: an authority, 6 mix nodes and 2 gateways,
# each in its own network namespace with its own address and 20-80 ms
# links (lib.sh), scraped by a real Prometheus (Debian's) evaluating
# deploy/monitoring/umbra-rules.yml with every duration divided by 10
# (1m -> 6s, 5m -> 30s: the same expressions on a shorter clock; the rules'
# real timing is covered by their promtool unit tests). It
#  1. checks /readyz: a node not yet admitted answers 503 naming
#     `registered`; admitted, it turns 200; every node ends ready;
#  2. runs the demo (Alice and Bob, 4 messages) across it from a client
#     namespace, through the network's own defaults;
#  3. kills one mix node (SIGKILL) and waits for UmbraNodeDown on it and
#     UmbraLoopsLost on the others in Prometheus's API;
#  4. restarts it and waits for both to clear;
# printing how long each step took. Tears everything down on exit, also on
# failure. Needs root (namespaces); installs Debian's prometheus if missing.
#
#   deploy/netns/test.sh [UMBRA_BINARY]     (default target/debug/umbra)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
UMBRA=$(realpath "${1:-target/debug/umbra}")
[ -x "$UMBRA" ] || { echo "netns test: $UMBRA missing: cargo build -p umbra" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "netns test: needs root to make network namespaces" >&2; exit 1; }
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "netns test: installing Debian's prometheus package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; }
fi
NS_OUT=$(mktemp -d "${TMPDIR:-/tmp}/umbra-netns.XXXXXX")
NS_UNADMITTED="mix5"
# shellcheck source=lib.sh
. "$here/lib.sh"
started=$(date +%s)
cleanup() {
  local status=${1:-$?}
  ns_down
  ns_hosts_cleanup
  if [ "$status" != 0 ]; then
    echo "netns test FAILED; the last lines of each log:" >&2
    for l in "$NS_OUT"/*.log; do echo "== $l" >&2; tail -n 15 "$l" >&2; done
  fi
  rm -rf "$NS_OUT"
}
trap cleanup EXIT
# Stops the whole test after 12 minutes whatever happens (its own output
# closed, so that a pipe reading ours ends with us).
# (`&&`: when the trap below stops the sleep, the kill does not follow.)
( exec >/dev/null 2>&1; sleep 720 && kill -TERM $$ ) &
watchdog=$!
trap 'rc=$?; pkill -P $watchdog 2>/dev/null || true; cleanup $rc' EXIT

t() { echo $(( $(date +%s) - started )); }
say() { echo "[$(t) s] $*"; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls every second.
wait_for() {
  local limit=$1 what=$2 from
  shift 2
  from=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    if [ $(( $(date +%s) - from )) -ge "$limit" ]; then
      echo "netns test: not within ${limit} s: $what" >&2
      return 1
    fi
    sleep 1
  done
  say "$what (after $(( $(date +%s) - from )) s)"
}

readyz() { # HOST:PORT -> the status code
  in_ns prometheus curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/readyz" || true
}
readyz_is() { [ "$(readyz "$1")" = "$2" ]; }
# Each asks Prometheus and fails if it cannot answer.
quiet() { local f; f=$(ns_firing) || return 1; ! grep -qE '^(UmbraNodeDown|UmbraLoopsLost) ' <<<"$f"; }
firing() { local f; f=$(ns_firing) || return 1; grep -q "^$1 ${2:-}" <<<"$f"; }
not_firing() { local f; f=$(ns_firing) || return 1; ! grep -q "^$1 ${2:-}" <<<"$f"; }
all_ready() {
  local a
  for a in "$NET.10:8000" $(seq -f "$NET.%g:9100" 20 25) "$NET.40:9700" "$NET.41:9700"; do
    [ "$(readyz "$a")" = 200 ] || return 1
  done
}
targets_up() {
  [ "$(in_ns prometheus curl -sf "http://$NET.2:9090/api/v1/query?query=count(up==1)" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)')" = 9 ]
}

ns_up
ns_configs "$NS_OUT"
key=$(cat "$NS_OUT/authority.pub")
python3 - deploy/monitoring/umbra-rules.yml "$NS_OUT/rules.yml" <<'PY'
import re, sys
units = {"s": 1, "m": 60, "h": 3600}
def scale(m):
    secs = int(m.group(2)) * units[m.group(3)] // 10
    return f"{m.group(1)}{max(secs, 2)}s{m.group(4)}"
text = open(sys.argv[1]).read()
text = re.sub(r"(for: )(\d+)([smh])()", scale, text)
text = re.sub(r"(\[)(\d+)([smh])(\])", scale, text)
open(sys.argv[2], "w").write(text)
PY
promtool check rules "$NS_OUT/rules.yml" >/dev/null
ns_start_all "$NS_OUT"
ns_prometheus "$NS_OUT" "$NS_OUT/rules.yml"
say "network up in $(ls -d /run/netns/"$NS"-* | wc -l) namespaces; Prometheus scraping"

# 1. Readiness: mix5 runs but is not admitted.
wait_for 90 "every target answers Prometheus's scrapes" targets_up
wait_for 60 "the unadmitted mix5 answers /readyz 503" readyz_is "$NET.25:9100" 503
body=$(in_ns prometheus curl -s --max-time 2 "http://$NET.25:9100/readyz")
echo "$body" | grep -q '^\[-\]registered failed' || { echo "netns test: mix5's /readyz does not name registration: $body" >&2; exit 1; }
say "mix5 /readyz before admission: 503, $(echo "$body" | grep '^\[-\]' | tr '\n' ' ')"
"$UMBRA" directory admit --config "$NS_OUT/authority.toml" --role mix "$(cat "$NS_OUT/mix5.pub")" >/dev/null
wait_for 90 "mix5 /readyz is 200 once admitted" readyz_is "$NET.25:9100" 200
wait_for 90 "every node and the authority answer /readyz 200" all_ready

# 2. The demo across the namespaces, from the clients' namespace.
say "demo: 4 messages from Alice and Bob through the network"
demo=$(in_ns clients env UMBRA_DANGEROUS_LINK_FAULTS="$(cat "$NS_OUT/clients.faults")" \
  "$UMBRA" demo --authority-key "$key" --directory-url "http://$NET.10:8000" --messages 4 --json \
  2>>"$NS_OUT/demo.log" | tail -1)
echo "$demo" | python3 -c '
import json, sys
r = json.load(sys.stdin)
assert r["delivered"] == r["sent"] == 4 and r["lost"] == 0 and r["duplicates"] == 0 and r["corrupted"] == 0, r
print("demo: %d/%d delivered, p50 %d ms, p99 %d ms" % (r["delivered"], r["sent"], r["p50_ms"], r["p99_ms"]))'
say "demo done"

# 3. Kill a mix node.
wait_for 120 "no UmbraNodeDown or UmbraLoopsLost firing before the kill" quiet
KILL=1 ns_stop "$NS_OUT" mix2
killed=$(date +%s)
say "killed mix2 ($NET.22) with SIGKILL"
wait_for 90 "UmbraNodeDown fires for mix2" firing UmbraNodeDown "$NET.22:9100"
wait_for 240 "UmbraLoopsLost fires for the nodes whose loops crossed mix2" firing UmbraLoopsLost
say "firing now: $(ns_firing | grep -E '^Umbra(NodeDown|LoopsLost) ' | tr '\n' ';')"
down_for=$(( $(date +%s) - killed ))

# 4. Restart it.
ns_start "$NS_OUT" mixnode mix2
restarted=$(date +%s)
say "restarted mix2 after ${down_for} s down"
wait_for 90 "UmbraNodeDown clears" not_firing UmbraNodeDown
wait_for 300 "UmbraLoopsLost clears" not_firing UmbraLoopsLost
say "every alert cleared $(( $(date +%s) - restarted )) s after the restart"
ns_firing | sed 's/^/still firing (other alerts): /' || true
echo "netns test: ok in $(t) s"
