#!/usr/bin/env bash
# Measures rooms across several gateway nodes on one Redis: starts its own
# redis-server (a free loopback port, no persistence, in a temp dir) and
# NODES gateways on it (each its own process and node_id, the same
# redis_url), then phxgate-bench rooms opens CLIENTS subscribers spread
# evenly over the nodes and ROOMS rooms (every room has subscribers on every
# node) from 127.0.0.1–3, and publishes RATE events per second in all for
# DURATION, each room's events pushed from every node in turn, so most
# deliveries cross Redis. It prints publish→receive latency, missing and
# duplicate deliveries (per node too), and the CPU of each gateway, of
# redis-server and of the bench itself over the publish window.
# Bounded: the bench stops by itself (count and -timeout), and this script
# stops everything it started on exit.
#
#   make bench-redis                  # 3 nodes, 15,000 clients, 100 rooms, 1,000 events/s, 20 s
#   CLIENTS=6000 RATE=500 DURATION=10s make bench-redis
#   BENCH_FLAGS="-per-process 5000" make bench-redis   # subscribers in 3 worker processes
#   GATEWAY_YAML="pollers: 1" make bench-redis         # extra lines in every gateway's config
#   FLOOR=1 make bench-redis          # the same run against the floor server instead
#
# FLOOR=1 replaces Redis and the gateways by one `phxgate-bench floor
# -rooms` process (the least a server can do for rooms: encode each event
# once, write it to the room's sockets), named NODES times, so the clients,
# the publishers and the load are the same: the cost of the deliveries
# alone, with no broker and no second node.
set -euo pipefail
cd "$(dirname "$0")/../.."
. clients/bench/lib.sh

NODES=${NODES:-3}
CLIENTS=${CLIENTS:-15000}
ROOMS=${ROOMS:-100}
RATE=${RATE:-1000}
DURATION=${DURATION:-20s}
PAYLOAD=${PAYLOAD:-300}
LOCAL_IPS=${LOCAL_IPS:-127.0.0.1,127.0.0.2,127.0.0.3}
TIMEOUT=${TIMEOUT:-3m}
BENCH_FLAGS=${BENCH_FLAGS:-}
REDIS_SERVER=${REDIS_SERVER:-redis-server}

tmp=$(mktemp -d)
redis_pid="" gw_pids=() worktree="" floor_pid=""
cleanup() {
	for p in "${gw_pids[@]}"; do stop "$p"; done
	stop "$floor_pid"
	stop "$redis_pid"
	if [ -n "$worktree" ]; then git worktree remove --force "$worktree" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_binaries "$tmp"

if [ "${FLOOR:-}" = 1 ]; then
	(ulimit -n 20000 && exec bin/phxgate-bench floor -rooms -listen 127.0.0.1:0 -timeout 30m) >"$tmp/floor.log" 2>&1 &
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
	urls=""
	for _ in $(seq 1 "$NODES"); do urls="${urls:+$urls,}ws://$addr/socket/websocket"; done
	echo "== rooms against the floor: NODES=$NODES (one floor process) CLIENTS=$CLIENTS ROOMS=$ROOMS RATE=$RATE DURATION=$DURATION PAYLOAD=$PAYLOAD"
	# shellcheck disable=SC2086 # BENCH_FLAGS is a list of flags
	(ulimit -n 20000 && exec bin/phxgate-bench rooms -urls "$urls" -clients "$CLIENTS" -rooms "$ROOMS" \
		-rate "$RATE" -duration "$DURATION" -payload "$PAYLOAD" -local-ips "$LOCAL_IPS" \
		-pids "floor=$floor_pid" -timeout "$TIMEOUT" $BENCH_FLAGS) || echo "redis.sh: the rooms run failed" >&2
	echo "  floor peak RSS: $(awk '/^VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$floor_pid/status" 2>/dev/null)"
	stop "$floor_pid"
	floor_pid=""
	sed -n 's/^floor stopped: /  floor: /p' "$tmp/floor.log"
	exit 0
fi

# redis-server cannot be told to pick a free port and report it, so try
# ports below the ephemeral range until one binds.
mkdir -p "$tmp/redis"
redis_port=""
for _ in $(seq 1 20); do
	p=$((20000 + RANDOM % 10000))
	: >"$tmp/redis.log"
	"$REDIS_SERVER" --port "$p" --bind 127.0.0.1 --save "" --appendonly no \
		--dir "$tmp/redis" --logfile "$tmp/redis.log" --daemonize no &
	redis_pid=$!
	for _ in $(seq 1 50); do
		if grep -q 'Ready to accept connections' "$tmp/redis.log"; then redis_port=$p; break; fi
		kill -0 "$redis_pid" 2>/dev/null || break
		sleep 0.1
	done
	[ -n "$redis_port" ] && break
	stop "$redis_pid"
	redis_pid=""
done
if [ -z "$redis_port" ]; then
	echo "redis.sh: redis-server did not start:" >&2
	cat "$tmp/redis.log" >&2
	exit 1
fi

# Port 0: the kernel picks free ports; each gateway logs what it bound.
urls="" pids="redis=$redis_pid" admins=()
for i in $(seq 1 "$NODES"); do
	cat >"$tmp/gateway$i.yaml" <<YAML
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
api_listen: ""
node_id: "bench-$i"
redis_url: "redis://127.0.0.1:$redis_port/0"
${GATEWAY_YAML:-}
$(raised_limits)
routes:
  - topic: "room:*"
    backend: echo
    history: 100
YAML
	start_gateway bin/phxgate "$tmp/gateway$i.yaml" "$tmp/gateway$i.log"
	gw_pids+=("$gw_pid")
	admins+=("$gw_admin")
	urls="${urls:+$urls,}ws://127.0.0.1:$gw_port/socket/websocket"
	pids="$pids,gw$i=$gw_pid"
done

echo "== rooms: NODES=$NODES CLIENTS=$CLIENTS ROOMS=$ROOMS RATE=$RATE DURATION=$DURATION PAYLOAD=$PAYLOAD (redis-server $("$REDIS_SERVER" --version | sed -E 's/.*v=([^ ]+).*/\1/') on :$redis_port)"
# One process may hold at most 20,000 open files here; the bench keeps
# each of its processes under it (at most 15,000 subscribers each).
# shellcheck disable=SC2086 # BENCH_FLAGS is a list of flags
(ulimit -n 20000 && exec bin/phxgate-bench rooms -urls "$urls" -clients "$CLIENTS" -rooms "$ROOMS" \
	-rate "$RATE" -duration "$DURATION" -payload "$PAYLOAD" -local-ips "$LOCAL_IPS" \
	-pids "$pids" -timeout "$TIMEOUT" $BENCH_FLAGS) || echo "redis.sh: the rooms run failed" >&2

for i in $(seq 1 "$NODES"); do
	gateway_report "gw$i" "${gw_pids[$((i - 1))]}" "${admins[$((i - 1))]}" "$tmp/gateway$i.log"
done
echo "  redis: $(redis-cli -p "$redis_port" info stats 2>/dev/null | tr -d '\r' |
	grep -E '^(total_commands_processed|instantaneous_ops_per_sec|total_net_output_bytes):' | tr '\n' ' ')"
echo "  redis peak RSS: $(awk '/^VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$redis_pid/status" 2>/dev/null)"
