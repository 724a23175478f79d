# Helpers shared by the bench scripts (broadcast.sh, loadtest.sh,
# redis.sh); sourced from the repository root, never run.

# stop PID: SIGTERM and wait; nothing for an empty PID.
stop() {
	if [ -n "$1" ]; then kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}

# build_binaries TMP: builds bin/phxgate-bench and bin/phxgate. The
# gateway is being changed alongside these tools; if the working tree does
# not build at this moment, HEAD is built instead, in a worktree under TMP
# whose path is left in $worktree (for the caller's cleanup).
build_binaries() {
	mkdir -p bin
	go build -o bin/phxgate-bench ./clients/bench
	if ! go build -o bin/phxgate ./cmd/phxgate 2>"$1/build.log"; then
		echo "$(basename "$0"): the working tree's gateway does not build; using HEAD ($(git rev-parse --short HEAD)):" >&2
		sed 's/^/  /' "$1/build.log" >&2
		worktree="$1/head"
		git worktree add --detach -q "$worktree" HEAD
		(cd "$worktree" && go build -o "$OLDPWD/bin/phxgate" ./cmd/phxgate)
	fi
}

# raised_limits: the limits block of a gateway config for a load run. The
# per-address caps and rates protect a real edge; a run opens thousands of
# sockets from three loopback addresses and publishes from them too,
# anonymous (so every limit keyed by player is keyed by address).
raised_limits() {
	cat <<'YAML'
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
YAML
}

# start_gateway BIN CONFIG LOG: starts a gateway with at most 20,000 open
# files (what one process may have here) and waits until it is ready. It
# sets gw_pid, and gw_port and gw_admin from what the gateway logs it bound
# (configs listen on port 0, so the kernel picks free ports). If it does
# not get ready, it prints the log and exits.
start_gateway() {
	(ulimit -n 20000 && exec "$1" --config "$2") >"$3" 2>&1 &
	gw_pid=$!
	gw_port="" gw_admin=""
	local line
	for _ in $(seq 1 100); do
		line=$(grep -m1 '"phxgate listening"' "$3" || true)
		if [ -n "$line" ]; then
			gw_port=$(sed -E 's/.*"listen":"[^"]*:([0-9]+)".*/\1/' <<<"$line")
			gw_admin=$(sed -E 's/.*"admin":"[^"]*:([0-9]+)".*/\1/' <<<"$line")
			break
		fi
		sleep 0.1
	done
	if [ -z "$gw_port" ] || ! curl -fsS "http://127.0.0.1:$gw_admin/readyz" >/dev/null; then
		cat "$3"
		exit 1
	fi
}

# gateway_report LABEL PID ADMIN LOG: after a run, what the gateway counted
# as shed, dropped or closed (the bench's own exit, client_closed, left
# out), its peak resident memory (what the run cost it, queues included)
# and its first warnings.
gateway_report() {
	curl -fsS "http://127.0.0.1:$3/metrics" 2>/dev/null |
		grep -E '^phxgate_[a-z_]*(shed|drop|overload|slow|disconnect|budget|publish_err|resync|lost|gap)[a-z_]*(\{[^}]*\})? [1-9]' |
		grep -v -e 'reason="client_closed"' -e '^phxgate_output_budget_bytes ' | sed "s/^/  $1 metric: /" || true
	echo "  $1 peak RSS: $(awk '/^VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$2/status" 2>/dev/null)"
	local n
	n=$(grep -cE '"level":"(WARN|ERROR)"' "$4" || true)
	if [ "${n:-0}" -gt 0 ]; then
		echo "  $1 log: $n warning/error lines, first ones:"
		grep -m3 -E '"level":"(WARN|ERROR)"' "$4" | sed 's/^/    /'
	fi
}
