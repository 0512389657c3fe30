#!/usr/bin/env bash
# Builds the image and runs what it holds.
#  1. deploy/container/build.sh with the given binary (podman build, nothing pulled).
#  2. The image: entrypoint /usr/local/bin/umbra, user 65532, a volume at
#     /var/lib/umbra, and no file but the binary, its libraries, passwd/group.
#  3. `podman run umbra --version`. Where podman cannot run containers (this
#     project's CI sandbox: crun's setrlimit(RLIMIT_NOFILE) is not permitted),
#     it says so and goes on with step 4 alone.
#  4. The image's root file system (podman create + podman mount) run with
#     chroot as the image's user: `umbra --version`, and `umbra demo` (a whole
#     network on loopback inside the image's files), which must deliver every
#     message.
#  5. compose.yaml names a config for every process generate.sh writes.
# Installs Debian's podman and buildah if missing.
# Usage: deploy/container/test.sh [UMBRA_BINARY]   (default target/debug/umbra)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "${1:-$here/../../target/debug/umbra}")"
if ! command -v podman >/dev/null; then
  echo "container test: installing Debian's podman and buildah"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends podman buildah >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends podman buildah >/dev/null; }
fi
tag="umbra:citest"
"$here/build.sh" "$bin" "$tag" >/dev/null
fail() { echo "container test: $*" >&2; exit 1; }

cfg="$(podman image inspect "$tag" --format '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Volumes}}')"
echo "image config: $cfg"
[[ "$cfg" == '65532:65532 ["/usr/local/bin/umbra"] {"/var/lib/umbra":{}}' ]] || fail "unexpected image config"

cid="$(podman create "$tag")"
cleanup() { podman umount "$cid" >/dev/null 2>&1 || true; podman rm -f "$cid" >/dev/null 2>&1 || true; podman rmi -f "$tag" >/dev/null 2>&1 || true; }
trap cleanup EXIT
root="$(podman mount "$cid")"
files="$(cd "$root" && find . -type f | sort)"
echo "image files:"; echo "$files" | sed 's/^/  /'
while read -r f; do
  case "$f" in
    ./usr/local/bin/umbra|./etc/passwd|./etc/group|./lib/*|./lib64/*|./usr/lib/*) ;;
    *) fail "unexpected file $f in the image" ;;
  esac
done <<<"$files"

if out="$(timeout 60 podman run --rm "$tag" --version 2>&1)"; then
  echo "podman run: $out"
  [[ "$out" == umbra\ * ]] || fail "podman run printed $out"
else
  echo "podman run cannot run containers here: $(echo "$out" | tail -1)"
  echo "running the image's root file system with chroot instead"
fi

v="$(chroot --userspec=65532:65532 "$root" /usr/local/bin/umbra --version)"
echo "in the image: $v"
[[ "$v" == "$("$bin" --version)" ]] || fail "the image's binary is not $bin"
start=$(date +%s)
chroot --userspec=65532:65532 "$root" /usr/local/bin/umbra demo --messages 6 --json 2>/dev/null | tail -1 >"$here/.demo.json" \
  || fail "the demo inside the image failed: $(cat "$here/.demo.json")"
echo "demo inside the image ($(( $(date +%s) - start )) s): $(cat "$here/.demo.json")"
rm -f "$here/.demo.json"

python3 - "$here" <<'PY'
import sys, yaml, re
here = sys.argv[1]
d = yaml.safe_load(open(f"{here}/compose.yaml"))
gen = open(f"{here}/../local/generate.sh").read()
want = {"directory.toml"} | {f"mix{i}.toml" for i in range(6)} | {f"gateway{j}.toml" for j in range(2)}
got = {s["command"][-1].rsplit("/", 1)[-1] for s in d["services"].values()}
assert got == want, (got, want)
assert all(s["command"][1] == "run" for s in d["services"].values())
assert "mix$i.toml" in gen and "gateway$j.toml" in gen
print(f"compose.yaml: {len(got)} services, one per config generate.sh writes")
PY
echo "container test: ok"
