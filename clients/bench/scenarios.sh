#!/usr/bin/env bash
# Runs one of phxgate-bench's churn, actions or resume scenarios against a
# gateway of its own: builds both binaries, starts the gateway with
# clients/bench/scenarios.yaml (per-address limits raised for a loopback
# run; listeners moved to port 0), runs the scenario from 127.0.0.1–3 and
# writes result.json, summary.md and the two PNG plots to OUT. Bounded: the
# bench stops by itself (count and -timeout), and this script stops the
# gateway on exit. The bench's exit status is the script's (resume: 1 when
# a client ended with a gap or a duplicate).
#
#   SCENARIO=churn RATE=1000 DURATION=10s make bench-scenario
#   SCENARIO=actions CLIENTS=2000 RATE=5000 make bench-scenario
#   SCENARIO=resume CLIENTS=2000 ROOMS=50 RATE=500 make bench-scenario
#   SCENARIO=actions CLIENTS=30000 BENCH_FLAGS="-per-process 10000" make bench-scenario
set -euo pipefail
cd "$(dirname "$0")/../.."
. clients/bench/lib.sh

SCENARIO=${SCENARIO:-churn}
CLIENTS=${CLIENTS:-}
ROOMS=${ROOMS:-10}
RATE=${RATE:-}
DURATION=${DURATION:-10s}
LOCAL_IPS=${LOCAL_IPS:-127.0.0.1,127.0.0.2,127.0.0.3}
TIMEOUT=${TIMEOUT:-3m}
OUT=${OUT:-bench-out/$SCENARIO}
BENCH_FLAGS=${BENCH_FLAGS:-}

case "$SCENARIO" in churn | actions | resume) ;; *)
	echo "scenarios.sh: SCENARIO must be churn, actions or resume" >&2
	exit 2
	;;
esac

tmp=$(mktemp -d)
gw_pid="" worktree=""
cleanup() {
	stop "$gw_pid"
	if [ -n "$worktree" ]; then git worktree remove --force "$worktree" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_binaries "$tmp"

# Port 0: the kernel picks free ports; the gateway logs what it bound
# (at info level, which start_gateway reads).
sed -e 's/^listen: .*/listen: "127.0.0.1:0"/' -e 's/^admin_listen: .*/admin_listen: "127.0.0.1:0"/' \
	-e 's/^log_level: .*/log_level: info/' clients/bench/scenarios.yaml >"$tmp/gateway.yaml"
start_gateway bin/phxgate "$tmp/gateway.yaml" "$tmp/gateway.log"

args=("$SCENARIO" -url "ws://127.0.0.1:$gw_port/socket/websocket" -rooms "$ROOMS" -duration "$DURATION"
	-local-ips "$LOCAL_IPS" -timeout "$TIMEOUT" -out "$OUT")
[ -n "$CLIENTS" ] && args+=(-clients "$CLIENTS")
[ -n "$RATE" ] && args+=(-rate "$RATE")
# shellcheck disable=SC2206 # BENCH_FLAGS is split on purpose
args+=($BENCH_FLAGS)

echo "== phxgate-bench ${args[*]}"
rc=0
(ulimit -n 20000 && exec bin/phxgate-bench "${args[@]}") || rc=$?
gateway_report gateway "$gw_pid" "$gw_admin" "$tmp/gateway.log"
echo "outputs in $OUT/"
exit "$rc"
