# Functions for a multi-host Umbra testnet in network namespaces, sourced by
# testnet.sh (interactive) and test.sh (the CI test). Needs root, iproute2
# (ip, tc with netem), and the umbra binary in $UMBRA.
#
# Layout: one namespace per process, each with one address on 10.77.0.0/24,
# all joined by a bridge in a hub namespace. Every node's QUIC datagrams
# leave 20-80 ms late (a different latency per node, jitter a quarter of
# it), so its links are as slow as paths between hosts far apart;
# $NETNS_LOSS (a probability, default 0) adds loss. The latency is the
# umbra binary's own fault injection (UMBRA_DANGEROUS_LINK_FAULTS), not
# netem: the kernel this was built on has no sch_netem (tc: "Specified
# qdisc kind is unknown") and no modules to load; with netem, the same
# figures would go on each namespace's eth0. Nothing is configured outside
# the namespaces made here (their names start with $NS, unique per run)
# and /etc/netns/$NS-*; ns_down removes them all.
#
#   authority  10.77.0.10   HTTP :8000 (also /metrics, /healthz, /readyz)
#   mix0..5    10.77.0.20-25 QUIC :9000, metrics :9100
#   gateway0,1 10.77.0.40-41 QUIC :9500, clients :9600, metrics :9700
#   prometheus 10.77.0.2    :9090
#   clients    10.77.0.3

NS=${NS:-um$$}
# Where configs, keys, logs and the per-host fault specs go.
NS_OUT=${NS_OUT:?set NS_OUT to a directory}
NET=10.77.0
NETNS_LOSS=${NETNS_LOSS:-0}
MIXES=6
GATEWAYS=2

# host NAME LAST_OCTET DELAY_MS: a namespace $NS-NAME with $NET.LAST on
# eth0; its processes' datagrams leave DELAY_MS late.
ns_host() {
  local name=$1 ip=$NET.$2 delay=$3 ns=$NS-$1 veth
  veth="v${NS: -5}${2}"
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" netns "$NS-hub"
  ip -n "$NS-hub" link set "$veth" master br0 up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  echo "latency_ms=$delay,jitter_ms=$(( delay / 4 )),loss=$NETNS_LOSS,seed=$2" >"$NS_OUT/$name.faults"
}

ns_up() {
  ip netns add "$NS-hub"
  ip -n "$NS-hub" link add br0 type bridge
  ip -n "$NS-hub" link set br0 up
  ns_host prometheus 2 0
  ns_host clients 3 30
  ns_host authority 10 0
  local i
  for i in $(seq 0 $((MIXES - 1))); do ns_host "mix$i" $((20 + i)) $((20 + (i * 13) % 61)); done
  for i in $(seq 0 $((GATEWAYS - 1))); do ns_host "gateway$i" $((40 + i)) $((35 + i * 30)); done
}

# Kills what runs in our namespaces, then removes them.
ns_down() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$NS-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$NS-" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
}

in_ns() { local n=$1; shift; ip netns exec "$NS-$n" "$@"; }

set_key() { sed -i "s|^$2 = .*|$2 = $3|" "$1"; }

# Writes every config under $1 and admits every node.
ns_configs() {
  local out=$1 i f key url
  mkdir -p "$out"
  "$UMBRA" directory init --config "$out/authority.toml" --force >/dev/null
  set_key "$out/authority.toml" listen "\"$NET.10:8000\""
  set_key "$out/authority.toml" data_dir "\"$out/authority\""
  # Private 10.77.0.x addresses: an explicit test network.
  set_key "$out/authority.toml" test_network true
  key=$("$UMBRA" directory key --config "$out/authority.toml")
  url="http://$NET.10:8000"
  for i in $(seq 0 $((MIXES - 1))); do
    f="$out/mix$i.toml"
    "$UMBRA" mixnode init --config "$f" --force --authority-key "$key" --directory-url "$url" >/dev/null
    set_key "$f" listen "\"0.0.0.0:9000\""
    # Published by name: each namespace resolves it through /etc/hosts.
    sed -i "s|^# public_address = \"203.*|public_address = \"$NS-mix$i.test:9000\"|" "$f"
    set_key "$f" metrics_listen "\"$NET.$((20 + i)):9100\""
    set_key "$f" data_dir "\"$out/mix$i\""
    set_key "$f" workers 1
    set_key "$f" topology_refresh_secs 5
    "$UMBRA" mixnode key --config "$f" >"$out/mix$i.pub"
    # $NS_UNADMITTED names nodes left for the operator to admit later.
    case " ${NS_UNADMITTED:-} " in *" mix$i "*) continue ;; esac
    "$UMBRA" directory admit --config "$out/authority.toml" --role mix "$(cat "$out/mix$i.pub")" >/dev/null
  done
  for i in $(seq 0 $((GATEWAYS - 1))); do
    f="$out/gateway$i.toml"
    "$UMBRA" gateway init --config "$f" --force --authority-key "$key" --directory-url "$url" >/dev/null
    set_key "$f" listen "\"$NET.$((40 + i)):9500\""
    set_key "$f" client_listen "\"$NET.$((40 + i)):9600\""
    set_key "$f" metrics_listen "\"$NET.$((40 + i)):9700\""
    set_key "$f" data_dir "\"$out/gateway$i\""
    set_key "$f" workers 1
    set_key "$f" topology_refresh_secs 5
    "$UMBRA" directory admit --config "$out/authority.toml" --role gateway \
      "$("$UMBRA" gateway key --config "$f")" >/dev/null
  done
  echo "$key" >"$out/authority.pub"
  # The names the mix nodes publish, for every namespace (ip netns exec
  # bind-mounts /etc/netns/<ns>/hosts over /etc/hosts).
  local hosts="$out/hosts"
  printf '127.0.0.1 localhost\n' >"$hosts"
  for i in $(seq 0 $((MIXES - 1))); do echo "$NET.$((20 + i)) $NS-mix$i.test" >>"$hosts"; done
  for ns in hub prometheus clients authority $(seq -f 'mix%g' 0 $((MIXES - 1))) $(seq -f 'gateway%g' 0 $((GATEWAYS - 1))); do
    mkdir -p "/etc/netns/$NS-$ns"
    cp "$hosts" "/etc/netns/$NS-$ns/hosts"
  done
}

ns_hosts_cleanup() { rm -rf /etc/netns/"$NS"-*; }

# Starts role NAME (config $out/NAME.toml) in its namespace; its pid in $out/NAME.pid.
ns_start() {
  local out=$1 role=$2 name=$3
  in_ns "$name" env UMBRA_DANGEROUS_LINK_FAULTS="$(cat "$out/$name.faults")" \
    "$UMBRA" "$role" run --config "$out/$name.toml" >>"$out/$name.log" 2>&1 &
  echo $! >"$out/$name.pid"
}

# Stops what runs in NAME's namespace (SIGKILL with KILL=1: a crash).
ns_stop() {
  local out=$1 name=$2 sig=TERM
  [ "${KILL:-0}" = 1 ] && sig=KILL
  ip netns pids "$NS-$name" 2>/dev/null | xargs -r kill -s "$sig" 2>/dev/null || true
  rm -f "$out/$name.pid"
}

ns_start_all() {
  local out=$1 i
  ns_start "$out" directory authority
  for i in $(seq 0 $((MIXES - 1))); do ns_start "$out" mixnode "mix$i"; done
  for i in $(seq 0 $((GATEWAYS - 1))); do ns_start "$out" gateway "gateway$i"; done
}

# A Prometheus (Debian's) scraping every node, with the rules in $2.
ns_prometheus() {
  local out=$1 rules=$2 i
  {
    echo "global: {scrape_interval: 2s, evaluation_interval: 2s, scrape_timeout: 1s}"
    echo "rule_files: [\"$rules\"]"
    echo "scrape_configs:"
    echo "  - job_name: umbra-directory"
    echo "    static_configs: [{targets: [\"$NET.10:8000\"]}]"
    echo "  - job_name: umbra-mixnode"
    echo "    static_configs:"
    echo "      - targets:"
    for i in $(seq 0 $((MIXES - 1))); do echo "          - $NET.$((20 + i)):9100"; done
    echo "  - job_name: umbra-gateway"
    echo "    static_configs:"
    echo "      - targets:"
    for i in $(seq 0 $((GATEWAYS - 1))); do echo "          - $NET.$((40 + i)):9700"; done
  } >"$out/prometheus.yml"
  in_ns prometheus prometheus --config.file="$out/prometheus.yml" \
    --storage.tsdb.path="$out/prometheus-data" --web.listen-address="$NET.2:9090" \
    >>"$out/prometheus.log" 2>&1 &
  echo $! >"$out/prometheus.pid"
}

# Alerts firing now, one "name instance" per line.
ns_firing() {
  in_ns prometheus curl -sf "http://$NET.2:9090/api/v1/alerts" | python3 -c '
import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    if a["state"] == "firing":
        print(a["labels"]["alertname"], a["labels"].get("instance", "-"))'
}
