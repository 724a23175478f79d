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
. clients/bench/lib.sh

SUBS=${SUBS:-15000}
RATE=${RATE:-10}
DURATION=${DURATION:-10s}
PAYLOAD=${PAYLOAD:-300}
LOCAL_IPS=${LOCAL_IPS:-127.0.0.1,127.0.0.2,127.0.0.3}
TIMEOUT=${TIMEOUT:-5m}

tmp=$(mktemp -d)
gw_pid="" floor_pid="" worktree=""
cleanup() {
	stop "$gw_pid"
	stop "$floor_pid"
	if [ -n "$worktree" ]; then git worktree remove --force "$worktree" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_binaries "$tmp"

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

# One process may hold at most 20,000 open files here; every process stays
# under it (at most 15,000 subscribers each).
bench() { # label url pid
	(ulimit -n 20000 && exec bin/phxgate-bench broadcast -url "$2" -server-pid "$3" -label "$1" \
		-subs "$SUBS" -rate "$RATE" -duration "$DURATION" -payload "$PAYLOAD" \
		-local-ips "$LOCAL_IPS" -timeout "$TIMEOUT" -json) | tee "$tmp/$1.out" ||
		echo "broadcast.sh: the $1 run failed" >&2
}

echo "== phxgate (SUBS=$SUBS RATE=$RATE DURATION=$DURATION PAYLOAD=$PAYLOAD)"
start_gateway bin/phxgate "$tmp/gateway.yaml" "$tmp/gateway.log"
bench gateway "ws://127.0.0.1:$gw_port/socket/websocket" "$gw_pid"
gateway_report gateway "$gw_pid" "$gw_admin" "$tmp/gateway.log"
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
