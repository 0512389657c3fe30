#!/usr/bin/env bash
# Writes the configs of a local Umbra network of separate processes:
# one directory, 2 mix nodes per layer (6), 2 gateways, all on loopback,
# every node admitted by the directory.
#
#   deploy/local/generate.sh OUT_DIR [BASE_PORT]
#
# Ports from BASE_PORT (default 47000): directory HTTP BASE; mix node i QUIC
# BASE+10+i, metrics BASE+30+i; gateway j QUIC BASE+50+j, clients BASE+60+j,
# metrics BASE+70+j. Writes OUT_DIR/nodes.txt: one "role config" per line,
# in start order. Set UMBRA to the binary (default: umbra on PATH, else
# target/release/umbra, else target/debug/umbra).
set -euo pipefail
out=${1:?usage: generate.sh OUT_DIR [BASE_PORT]}
base=${2:-47000}
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${UMBRA:-}" ]; then
  if command -v umbra >/dev/null; then UMBRA=umbra
  elif [ -x "$here/target/release/umbra" ]; then UMBRA=$here/target/release/umbra
  else UMBRA=$here/target/debug/umbra; fi
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

set_key() { # file key value
  sed -i "s|^$2 = .*|$2 = $3|" "$1"
}

"$UMBRA" directory init --config "$out/directory.toml" --force >/dev/null
set_key "$out/directory.toml" listen "\"127.0.0.1:$base\""
set_key "$out/directory.toml" data_dir "\"$out/directory\""
# A local network: a payload rate (ten times the default) that lets clients
# fetch every 250 ms and move a 5 MiB file in about a minute, and a downlink
# in the same ratio to it as the defaults'.
set_key "$out/directory.toml" lambda_payload 50.0
set_key "$out/directory.toml" lambda_downlink 120.0
# Loopback addresses: an explicit test network.
set_key "$out/directory.toml" test_network true
key=$("$UMBRA" directory key --config "$out/directory.toml")
url="http://127.0.0.1:$base"
echo "directory $out/directory.toml" > "$out/nodes.txt"

for i in 0 1 2 3 4 5; do
  f="$out/mix$i.toml"
  "$UMBRA" mixnode init --config "$f" --force --authority-key "$key" --directory-url "$url" >/dev/null
  set_key "$f" listen "\"127.0.0.1:$((base + 10 + i))\""
  set_key "$f" metrics_listen "\"127.0.0.1:$((base + 30 + i))\""
  set_key "$f" data_dir "\"$out/mix$i\""
  set_key "$f" workers 1
  set_key "$f" topology_refresh_secs 2
  # The authority admits only nodes its operator approved.
  "$UMBRA" directory admit --config "$out/directory.toml" --role mix \
    "$("$UMBRA" mixnode key --config "$f")" >/dev/null
  echo "mixnode $f" >> "$out/nodes.txt"
done

for j in 0 1; do
  f="$out/gateway$j.toml"
  "$UMBRA" gateway init --config "$f" --force --authority-key "$key" --directory-url "$url" >/dev/null
  set_key "$f" listen "\"127.0.0.1:$((base + 50 + j))\""
  set_key "$f" client_listen "\"127.0.0.1:$((base + 60 + j))\""
  set_key "$f" metrics_listen "\"127.0.0.1:$((base + 70 + j))\""
  set_key "$f" data_dir "\"$out/gateway$j\""
  set_key "$f" workers 1
  set_key "$f" topology_refresh_secs 2
  "$UMBRA" directory admit --config "$out/directory.toml" --role gateway \
    "$("$UMBRA" gateway key --config "$f")" >/dev/null
  echo "gateway $f" >> "$out/nodes.txt"
done

echo "directory_url=$url"
echo "authority_key=$key"
