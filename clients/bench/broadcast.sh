#!/usr/bin/env bash
# Measures one publisher broadcasting to SUBS subscribers, on phxgate and on
# the floor server (phxgate-bench floor: the least a server can do for the
# same scenario), and prints both side by side with the ratios
# gateway/floor. Each server runs as its own process; the bench tool runs
# in another, from three loopback source addresses, and measures each
# server's CPU the same way (/proc/PID/stat over the publish window).
# Bounded: the bench stops by itself (count and -timeout), and this script
# stops the servers it started on exit.
#
#   make bench-broadcast                            # 15,000 subscribers, 10/s, 10 s
#   SUBS=5000 RATE=40 DURATION=20s PAYLOAD=1000 make bench-broadcast
set -euo pipefail
cd "$(dirname "$0")/../.."

SUBS=${SUBS:-15000}
RATE=${RATE:-10}
DURATION=${DURATION:-10s}
PAYLOAD=${PAYLOAD:-300}
LOCAL_IPS=${LOCAL_IPS:-127.0.0.1,127.0.0.2,127.0.0.3}
TIMEOUT=${TIMEOUT:-5m}

tmp=$(mktemp -d)
gw_pid="" floor_pid="" worktree=""
stop() { # pid
	if [ -n "$1" ]; then kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}
cleanup() {
	stop "$gw_pid"
	stop "$floor_pid"
	if [ -n "$worktree" ]; then git worktree remove --force "$worktree" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p bin
go build -o bin/phxgate-bench ./clients/bench
# The gateway is being changed alongside this tool; if the working tree
# does not build at this moment, measure the last commit instead.
if ! go build -o bin/phxgate ./cmd/phxgate 2>"$tmp/build.log"; then
	echo "broadcast.sh: the working tree's gateway does not build; using HEAD ($(git rev-parse --short HEAD)):" >&2
	sed 's/^/  /' "$tmp/build.log" >&2
	worktree="$tmp/head"
	git worktree add --detach -q "$worktree" HEAD
	(cd "$worktree" && go build -o "$OLDPWD/bin/phxgate" ./cmd/phxgate)
fi

# Port 0: the kernel picks free ports; the gateway logs what it bound.
cat >"$tmp/gateway.yaml" <<YAML
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
api_listen: ""
# The per-address caps and rates protect a real edge; this run opens SUBS
# sockets from three loopback addresses and publishes from one of them,
# anonymous (so every limit keyed by player is keyed by address).
limits:
  ip_max_conns: 20000
  player_max_conns: 20000
  ip_handshakes_per_second: 100000
  ip_handshake_burst: 20000
  ip_max_handshakes: 1000
  joins_per_second: 100000
  join_burst: 20000
  max_conns: 100000
  classes:
    default: {per_second: 100000, burst: 100000}
routes:
  - topic: "room:*"
    backend: echo
YAML

# One process may hold at most 20,000 open files here; every process stays
# under it (at most 15,000 subscribers each).
bench() { # label url pid
	(ulimit -n 20000 && exec bin/phxgate-bench broadcast -url "$2" -server-pid "$3" -label "$1" \
		-subs "$SUBS" -rate "$RATE" -duration "$DURATION" -payload "$PAYLOAD" \
		-local-ips "$LOCAL_IPS" -timeout "$TIMEOUT" -json) | tee "$tmp/$1.out" ||
		echo "broadcast.sh: the $1 run failed" >&2
}

echo "== phxgate (SUBS=$SUBS RATE=$RATE DURATION=$DURATION PAYLOAD=$PAYLOAD)"
(ulimit -n 20000 && exec bin/phxgate --config "$tmp/gateway.yaml") >"$tmp/gateway.log" 2>&1 &
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
bench gateway "ws://127.0.0.1:$port/socket/websocket" "$gw_pid"
# What the gateway counted as shed, dropped or closed during the run (the
# bench's own exit, client_closed, left out).
curl -fsS "http://127.0.0.1:$admin/metrics" 2>/dev/null |
	grep -E '^phxgate_[a-z_]*(shed|drop|overload|slow|disconnect|budget|publish_err)[a-z_]*(\{[^}]*\})? [1-9]' |
	grep -v 'reason="client_closed"' | sed 's/^/  gateway metric: /' || true
# Peak resident memory: what the run cost the gateway, queues included.
echo "  gateway peak RSS: $(awk '/^VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$gw_pid/status" 2>/dev/null)"
n=$(grep -cE '"level":"(WARN|ERROR)"' "$tmp/gateway.log" || true)
if [ "${n:-0}" -gt 0 ]; then
	echo "  gateway log: $n warning/error lines, first ones:"
	grep -m3 -E '"level":"(WARN|ERROR)"' "$tmp/gateway.log" | sed 's/^/    /'
fi
stop "$gw_pid"
gw_pid=""

echo
echo "== floor"
(ulimit -n 20000 && exec bin/phxgate-bench floor -listen 127.0.0.1:0 -timeout 30m) >"$tmp/floor.log" 2>&1 &
floor_pid=$!
addr=""
for _ in $(seq 1 100); do
	addr=$(sed -n 's/^floor listening //p' "$tmp/floor.log")
	[ -n "$addr" ] && break
	sleep 0.1
done
if [ -z "$addr" ]; then
	cat "$tmp/floor.log"
	exit 1
fi
bench floor "ws://$addr/socket/websocket" "$floor_pid"
echo "  floor peak RSS: $(awk '/^VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$floor_pid/status" 2>/dev/null)"
stop "$floor_pid"
floor_pid=""
sed -n 's/^floor stopped: /  floor: /p' "$tmp/floor.log"

echo
echo "== gateway vs floor (SUBS=$SUBS RATE=$RATE DURATION=$DURATION PAYLOAD=$PAYLOAD)"
bin/phxgate-bench compare "$tmp/gateway.out" "$tmp/floor.out"
