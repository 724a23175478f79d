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

free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
}

go build -o "$tmp/phxgate" ./cmd/phxgate
go build -o "$tmp/bench" ./clients/bench
port=$(free_port)
admin=$(free_port)
cat >"$tmp/gateway.yaml" <<YAML
listen: "127.0.0.1:$port"
admin_listen: "127.0.0.1:$admin"
# The per-IP caps and join rate protect a real edge; this run opens
# CONNS sockets from three loopback addresses on purpose.
limits:
  ip_max_conns: 20000
  ip_handshakes_per_second: 100000
  ip_handshake_burst: 20000
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
for _ in $(seq 1 100); do
	if curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1; then break; fi
	sleep 0.1
done
curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null || { cat "$tmp/gateway.log"; exit 1; }

(ulimit -n 20000 && "$tmp/bench" -url "ws://127.0.0.1:$port/socket/websocket" \
	-admin "http://127.0.0.1:$admin" -conns "$CONNS" -topic room:load \
	-local-ips 127.0.0.1,127.0.0.2,127.0.0.3 -timeout 5m)
