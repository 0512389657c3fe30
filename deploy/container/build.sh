#!/usr/bin/env bash
# Builds the container image `umbra:<version>` (and `umbra:latest`) from a
# built binary, without pulling anything: a FROM scratch image with the
# binary and the shared libraries `ldd` lists.
# Usage: deploy/container/build.sh [UMBRA_BINARY] [TAG]
#   UMBRA_BINARY defaults to target/release/umbra, else target/debug/umbra.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-}"
if [ -z "$bin" ]; then
  for b in "$here/../../target/release/umbra" "$here/../../target/debug/umbra"; do
    [ -x "$b" ] && { bin="$b"; break; }
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "build.sh: no umbra binary; cargo build --release -p umbra" >&2; exit 1; }
tag="${2:-umbra:$("$bin" --version | awk '{print $2}')}"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
install -D -m 0755 "$bin" "$root/usr/local/bin/umbra"
# The dynamic loader and every library the binary links, at their paths.
ldd "$bin" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r lib; do
  install -D -m 0644 "$lib" "$root$lib"
done
chmod 0755 "$root"/lib64/ld-linux-* 2>/dev/null || true
install -d -m 0755 "$root/var/lib/umbra" "$root/etc/umbra" "$root/tmp"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/var/lib/umbra"
# Names for the unprivileged user, so tools that look it up find it.
printf 'root:x:0:0::/:/nonexistent\numbra:x:65532:65532::/var/lib/umbra:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\numbra:x:65532:\n' >"$root/etc/group"
cp "$here/Containerfile" "$ctx/Containerfile"
podman build --quiet --pull=never -t "$tag" -t umbra:latest -f "$ctx/Containerfile" "$ctx"
echo "built $tag"
