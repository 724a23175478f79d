#!/usr/bin/env bash
# Measures phxgate's memory per idle joined connection the way DESIGN.md §3
# states the target: a real gateway process, the bench tool in a separate
# process opening CONNS connections (each joined to one topic) from several
# loopback source addresses, and the least-squares slope of the gateway's
# RSS over the connection count. Bounded: the bench tool stops by itself
# (count and time), and this script stops the gateway on exit.
#
#   make loadtest                 # 15,000 connections
#   CONNS=5000 make loadtest
set -euo pipefail
cd "$(dirname "$0")/../.."
. clients/bench/lib.sh

CONNS=${CONNS:-15000}
tmp=$(mktemp -d)
gw_pid=""
cleanup() {
	stop "$gw_pid"
	rm -rf "$tmp"
}
trap cleanup EXIT

go build -o "$tmp/phxgate" ./cmd/phxgate
go build -o "$tmp/bench" ./clients/bench
# Port 0: the kernel picks free ports; the gateway logs what it bound.
cat >"$tmp/gateway.yaml" <<YAML
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
api_listen: ""
$(raised_limits)
routes:
  - topic: "room:*"
    backend: echo
YAML

# One process may hold at most 20,000 open files here; both processes stay
# under it (CONNS ≤ 15,000 per process).
start_gateway "$tmp/phxgate" "$tmp/gateway.yaml" "$tmp/gateway.log"

(ulimit -n 20000 && "$tmp/bench" -url "ws://127.0.0.1:$gw_port/socket/websocket" \
	-admin "http://127.0.0.1:$gw_admin" -conns "$CONNS" -topic room:load \
	-local-ips 127.0.0.1,127.0.0.2,127.0.0.3 -timeout 5m)
