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

CONNS=${CONNS:-15000}
tmp=$(mktemp -d)
gw_pid=""
cleanup() {
	if [ -n "$gw_pid" ]; then kill -TERM "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi
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
# The per-IP caps and join rate protect a real edge; this run opens
# CONNS sockets from three loopback addresses on purpose.
limits:
  ip_max_conns: 20000
  ip_handshakes_per_second: 100000
  ip_handshake_burst: 20000
  ip_max_handshakes: 1000
  joins_per_second: 100000
  join_burst: 20000
  max_conns: 100000
routes:
  - topic: "room:*"
    backend: echo
YAML

# One process may hold at most 20,000 open files here; both processes stay
# under it (CONNS ≤ 15,000 per process).
(ulimit -n 20000 && exec "$tmp/phxgate" --config "$tmp/gateway.yaml") >"$tmp/gateway.log" 2>&1 &
gw_pid=$!
port="" admin=""
for _ in $(seq 1 100); do
	line=$(grep -m1 '"phxgate listening"' "$tmp/gateway.log" || true)
	if [ -n "$line" ]; then
		port=$(sed -E 's/.*"listen":"[^"]*:([0-9]+)".*/\1/' <<<"$line")
		admin=$(sed -E 's/.*"admin":"[^"]*:([0-9]+)".*/\1/' <<<"$line")
		break
	fi
	sleep 0.1
done
if [ -z "$port" ] || ! curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null; then
	cat "$tmp/gateway.log"
	exit 1
fi

(ulimit -n 20000 && "$tmp/bench" -url "ws://127.0.0.1:$port/socket/websocket" \
	-admin "http://127.0.0.1:$admin" -conns "$CONNS" -topic room:load \
	-local-ips 127.0.0.1,127.0.0.2,127.0.0.3 -timeout 5m)
