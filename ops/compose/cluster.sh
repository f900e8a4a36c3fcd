#!/usr/bin/env bash
# The compose cluster: three voters (node1-3) and a read-only standby learner (node4).
#
#   ops/compose/cluster.sh up                  # found the cluster on node1, join the others from packs
#   ops/compose/cluster.sh coffer NODE ARGS…   # run `coffer ARGS…` in NODE with the root token
#   ops/compose/cluster.sh down [-v]           # stop and remove (-v: the data volumes too)
#   ops/compose/cluster.sh stop|start|ps|logs …  # anything else goes to docker-compose
#
# Needs the image (./scripts/build-image.sh) and docker-compose. `up` keeps the root token
# and the init output (the unseal share) in COFFER_STATE (default ops/compose/state, 0700);
# the packs pass through COFFER_PACKS (default ops/compose/packs) and are deleted once their
# node has joined. COFFER_NET, COFFER_PORT_1..4 and COFFER_IMAGE: see docker-compose.yml.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-coffer}"
export COFFER_PACKS="${COFFER_PACKS:-$here/packs}"
export COFFER_NET="${COFFER_NET:-10.231.0}"
export COFFER_IMAGE="${COFFER_IMAGE:-coffer:latest}"
state="${COFFER_STATE:-$here/state}"
# The image's user: the packs directory must be its own.
uid=10001

# Docker's Compose: the docker-compose command (Debian's package), or the compose plugin.
if command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "cluster: installing docker-compose" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null
  compose=(docker-compose)
else
  echo "cluster: needs docker-compose (Debian: apt-get install docker-compose)" >&2
  exit 1
fi
dc() { "${compose[@]}" --file "$here/docker-compose.yml" "$@"; }

root_token() {
  sed -n 's/^ *"root_token": *"\([^"]*\)".*/\1/p' "$state/init.json"
}

# coffer NODE ARGS…: the CLI inside NODE, talking to NODE, with the root token (passed
# through the environment, never on a command line).
coffer_in() {
  local node="$1"
  shift
  COFFER_TOKEN="$(root_token)" dc exec -T -e COFFER_TOKEN "$node" coffer "$@"
}

# wait_for SECONDS WHAT COMMAND…: polls COMMAND once a second until it succeeds.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  echo "cluster: gave up after ${seconds}s waiting for $what" >&2
  return 1
}

# Answers `sys/health` at all: uninitialized and sealed nodes too (their exit code is 2).
answers() {
  local body
  body="$(dc exec -T "$1" coffer health -format=json 2>/dev/null || true)"
  grep -q '"initialized"' <<<"$body"
}
serves() { dc exec -T "$1" coffer health >/dev/null 2>&1; }
members_joined() {
  local json
  json="$(coffer_in node1 operator members -format=json 2>/dev/null)" || return 1
  # Three voters and one learner, all of them heard from.
  [ "$(grep -c '"voter": true' <<<"$json")" = 3 ] && [ "$(grep -c '"voter": false' <<<"$json")" = 1 ]
}

up() {
  docker image inspect "$COFFER_IMAGE" >/dev/null 2>&1 || {
    echo "cluster: no image $COFFER_IMAGE; build it with ./scripts/build-image.sh" >&2
    exit 1
  }
  install -d -m 0700 "$state"
  install -d -m 0700 -o "$uid" -g "$uid" "$COFFER_PACKS"

  dc up -d node1
  wait_for 120 "node1 to answer" answers node1
  if [ ! -s "$state/init.json" ]; then
    # One share: node1's seal is a key file (node1.toml), the share is for recovery.
    (umask 077 && dc exec -T node1 coffer operator init -key-shares=1 -key-threshold=1 \
      -format=json >"$state/init.json.tmp")
    mv "$state/init.json.tmp" "$state/init.json"
    echo "cluster: initialized; the root token and the unseal share are in $state/init.json" >&2
  fi
  wait_for 120 "node1 to lead" serves node1

  for n in 2 3 4; do
    [ -e "$state/node$n.joined" ] && continue
    voter=--voter
    [ "$n" = 4 ] && voter=""
    # The passphrase comes on stdout; the pack goes into the shared directory.
    (umask 077 && coffer_in node1 operator pack create --node-id "$n" \
      --api-addr "https://$COFFER_NET.1$n:8200" --peer-addr "$COFFER_NET.1$n:8201" \
      $voter --include-unseal-key -o "/packs/node$n.pack" >"$COFFER_PACKS/node$n.pass")
    chown "$uid:$uid" "$COFFER_PACKS/node$n.pass"
  done

  dc up -d node2 node3 node4
  for n in 2 3 4; do
    wait_for 180 "node$n to serve" serves "node$n"
  done
  wait_for 120 "three voters and a learner" members_joined
  for n in 2 3 4; do
    # Registered: the pack is spent and the node restarts from its own data.
    rm -f "$COFFER_PACKS/node$n.pack" "$COFFER_PACKS/node$n.pass"
    touch "$state/node$n.joined"
  done
  # The cluster's CA, for clients on this host (each node's API is published on loopback).
  docker cp "$(dc ps -q node1)":/data/tls/ca.pem "$state/ca.pem"
  coffer_in node1 operator members
  echo "cluster: up. Try: $0 coffer node1 kv put secret/app password=s3cret" >&2
  echo "cluster: from this host: COFFER_ADDR=https://localhost:${COFFER_PORT_1-8200} COFFER_CACERT=$state/ca.pem" >&2
}

case "${1:-}" in
  up) up ;;
  coffer)
    [ $# -ge 2 ] || { echo "usage: $0 coffer NODE ARGS…" >&2; exit 1; }
    shift
    coffer_in "$@"
    ;;
  down)
    shift
    dc down "$@"
    if [ "${1:-}" = -v ] || [ "${1:-}" = --volumes ]; then
      rm -rf "$state" "$COFFER_PACKS"
    fi
    ;;
  ""|-h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) dc "$@" ;;
esac
