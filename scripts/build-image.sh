#!/usr/bin/env bash
# Builds Coffer's container image without pulling anything: FROM scratch, holding the
# `coffer` binary (debug info stripped, symbols kept), the shared libraries it links (as
# `ldd` finds them on this machine), a passwd/group naming the `coffer` user (10001), and an
# empty /data owned by it.
#
#   ./scripts/build-image.sh                       # release build, tagged coffer:latest
#   ./scripts/build-image.sh --binary target/debug/coffer --tag coffer:dev
#
# The image runs `coffer server` as user 10001 with /data as its volume, declares ports 8200
# (API) and 8201 (peers), and checks its health with `coffer health` (`sys/health`). With no
# config file the node is configured by COFFER_* variables (COFFER_NODE_ID, COFFER_API_ADDR,
# COFFER_PEER_ADDR, …); see ops/compose/ for a cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
tag="coffer:latest"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image: unknown argument $1 (see --help)" >&2; exit 1 ;;
  esac
done

if ! docker info >/dev/null 2>&1; then
  echo "build-image: no container engine answers ('docker info' failed)" >&2
  exit 1
fi

if [ -z "$binary" ]; then
  ./scripts/setup.sh
  # Always --workspace: a -p build compiles RocksDB a second time.
  cargo build --workspace --release --bins
  binary="${CARGO_TARGET_DIR:-target}/release/coffer"
fi
[ -x "$binary" ] || { echo "build-image: $binary is not an executable" >&2; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$ctx/volume/data"
chmod 1777 "$root/tmp"
chmod 0700 "$ctx/volume/data"

# Debug info off, symbols on: backtraces and perf still name functions.
objcopy --strip-debug "$binary" "$root/usr/local/bin/coffer"

# The dynamic loader and every library the binary links, at the paths it looks them up.
ldd "$binary" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }' | sort -u |
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
[ -n "$(find "$root" -name 'ld-linux*' -print -quit)" ] || {
  echo "build-image: ldd found no dynamic loader for $binary" >&2
  exit 1
}

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
coffer:x:10001:10001:Coffer:/data:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
coffer:x:10001:
EOF
# glibc's resolver: the hosts file first (Docker writes it), then DNS.
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"

# The binary names its own version and commit (`coffer 0.1.0 (b29997ad1608)`): the labels
# say what is in the image, whatever the checkout is at now.
read -r _ version commit < <("$root/usr/local/bin/coffer" --version)
commit="${commit//[()]/}"
cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 volume/ /
LABEL org.opencontainers.image.title="coffer" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.revision="$commit"
# The node's defaults in a container: its data in the volume, the API on every interface,
# the CLI talking to this node with this node's CA. Logs without colour codes.
ENV COFFER_DATA_DIR=/data \\
    COFFER_LISTEN_ADDR=0.0.0.0:8200 \\
    COFFER_ADDR=https://localhost:8200 \\
    COFFER_CACERT=/data/tls/ca.pem \\
    NO_COLOR=1
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8200 8201
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \\
    CMD ["/usr/local/bin/coffer", "health"]
ENTRYPOINT ["/usr/local/bin/coffer"]
CMD ["server"]
EOF

# Without the buildx plugin the engine's own builder runs, and says it is deprecated.
if ! docker build --tag "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  exit 1
fi
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "build-image: built $tag ($((size / 1024 / 1024)) MiB, coffer $version, commit $commit)" >&2
