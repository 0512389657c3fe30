#!/usr/bin/env bash
# A multi-host Umbra testnet in network namespaces (lib.sh): an authority,
# 6 mix nodes and 2 gateways, each in its own namespace and address, with
# 20-80 ms links, and a Prometheus with the alert rules of
# deploy/monitoring at http://10.77.0.2:9090 (inside its namespace). Runs
# until Ctrl-C, then removes every namespace. Needs root.
#
#   deploy/netns/testnet.sh [UMBRA_BINARY]
#   NETNS_LOSS=0.01 deploy/netns/testnet.sh     # 1 % loss on every link
#
# While it runs, from another shell (the namespace names are printed):
#   ip netns exec <ns>-clients umbra demo --authority-key KEY --directory-url http://10.77.0.10:8000
#   ip netns exec <ns>-prometheus curl -s http://10.77.0.2:9090/api/v1/alerts
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
UMBRA=$(realpath "${1:-target/debug/umbra}")
[ "$(id -u)" = 0 ] || { echo "testnet: needs root to make network namespaces" >&2; exit 1; }
command -v prometheus >/dev/null || { echo "testnet: install Debian's prometheus package" >&2; exit 1; }
NS_OUT=$(mktemp -d "${TMPDIR:-/tmp}/umbra-netns.XXXXXX")
# shellcheck source=lib.sh
. "$here/lib.sh"
trap 'ns_down; ns_hosts_cleanup; echo "removed the namespaces; logs and configs stay in $NS_OUT"' EXIT
ns_up
ns_configs "$NS_OUT"
ns_start_all "$NS_OUT"
ns_prometheus "$NS_OUT" "$here/../monitoring/umbra-rules.yml"
echo "namespaces: $(ip netns list | awk '{print $1}' | grep "^$NS-" | tr '\n' ' ')"
echo "authority: http://$NET.10:8000 key $(cat "$NS_OUT/authority.pub")"
echo "logs and configs: $NS_OUT; Ctrl-C stops everything"
wait
