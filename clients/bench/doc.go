// Command bench (built as phxgate-bench) is phxgate's load tool. It has
// seven scenarios and a helper:
//
//	phxgate-bench [idle] …    idle joined connections; gateway RSS slope
//	phxgate-bench broadcast … one publisher, N subscribers; latency, loss, CPU
//	phxgate-bench rooms …     clients over several nodes and many rooms
//	phxgate-bench churn …     connect+join+leave cycles at a rate; join latency
//	phxgate-bench actions …   pushes through a backend at a rate; reply latency
//	phxgate-bench resume …    reconnect storms with positions; no gap allowed
//	phxgate-bench floor …     the least server for the broadcast (or, -rooms, rooms) scenario
//	phxgate-bench compare A.json B.json
//
// # idle (the default, so loadtest.sh runs it without a subcommand)
//
// Opens up to -conns WebSocket connections to a gateway, joins each to one
// topic, and at checkpoints reads the gateway's resident memory and
// goroutine count from its admin endpoint (after forcing a GC), then
// prints a table and the least-squares RSS slope in bytes per connection
// (DESIGN.md §3 target: ≤ 1.5 KB per idle joined connection over 15,000
// connections).
//
//	go run ./clients/bench -url ws://127.0.0.1:4000/socket/websocket \
//	    -conns 15000 -topic room:load -admin http://127.0.0.1:4001 \
//	    -local-ips 127.0.0.1,127.0.0.2
//
// Each connection is held on the lean raw path (a gobwas dial, one join
// frame, its reply read once) with no goroutine per connection. One ticker
// goroutine sends heartbeats for all connections; their replies are left
// unread in kernel buffers.
//
// # broadcast
//
// -subs subscribers join -topic; one publisher joins too and pushes -event
// (default "shout", which the gateway's echo backend broadcasts to the
// topic) -rate times a second for -duration (or -count times). Each
// payload carries a sequence number and the send time (payload.go), so
// each subscriber measures latency (receive − send, same clock) into a
// log-linear histogram (hist.go) and tracks missing, duplicate and
// reordered numbers (seq.go). The publisher counts ok and error replies by
// reason: refusals (rate_limited, backend_overloaded, …) are results, not
// failures. With -server-pid, the server's CPU (utime+stime from /proc)
// is measured over the window from the first publish to the last
// delivery, and per delivery; before publishing, -baseline measures it
// idle. The tool's own CPU (all its processes) is reported too, to show
// whether it competed with the server for the cores.
//
//	phxgate-bench broadcast -url ws://127.0.0.1:4000/socket/websocket \
//	    -subs 15000 -rate 10 -duration 10s -server-pid $(pgrep phxgate) \
//	    -local-ips 127.0.0.1,127.0.0.2,127.0.0.3 -json
//
// Subscribers are read without a goroutine per connection: -loops
// goroutines (default GOMAXPROCS) each own an epoll instance and a share
// of the sockets, and parse frames in place from one read buffer
// (subs_linux.go). A process holds at most -per-process subscribers
// (≤ MaxPerProcess, since a process may have 20,000 open files here);
// past that the tool re-executes itself as `broadcast-worker` children
// that report over stdout as JSON lines, and merges their results
// (worker.go). Only loopback targets and sources are accepted.
//
// # rooms
//
// -clients subscribers spread evenly over the nodes of -urls (gateways
// sharing one broker) and over -rooms rooms (room:bench-<i>): subscriber i
// dials node i mod N and joins room ⌊i/N⌋ mod R, so every room has
// subscribers on every node. Each node gets one publisher socket per 100
// rooms (a socket's channel limit), joined to them; the run pushes -rate
// events per second in all, event k to room k mod R from the node
// (room + round) mod N, so each room is published from every node in turn
// and most deliveries cross the broker. Each room numbers its events from
// 0, and the payload carries that number and the send time as in
// broadcast. The summary gives joins, publishes, missing and duplicate
// deliveries per node, latency p50/p99/p999/max, and the CPU of each
// -pids process (gateways, redis-server) and of the tool over the window.
// It also checks the broker's promise that every subscriber of a room, on
// whatever node, gets the room's events in one order (a digest of each
// subscriber's order, compared within its room). "late" counts an event
// overtaken by a later one of its room: publishes from different nodes
// race, so that is no fault; a room whose subscribers disagree on the
// order is.
//
//	phxgate-bench rooms -urls ws://127.0.0.1:4000/socket/websocket,ws://127.0.0.1:4010/socket/websocket \
//	    -clients 15000 -rooms 100 -rate 1000 -duration 20s \
//	    -pids gw1=$(pgrep -n phxgate),redis=$(pgrep redis-server) \
//	    -local-ips 127.0.0.1,127.0.0.2,127.0.0.3
//
// clients/bench/redis.sh (make bench-redis) starts a redis-server and three
// gateways on it and runs this scenario.
//
// # churn, actions, resume
//
// Three scenarios that share one configuration (scen_config.go), one
// worker protocol (scen_share.go: the run is split into shares, one per
// process, of at most -per-process sockets each, each child a
// `scenario-worker` reporting over stdout), a progress bar on stderr (a
// bar redrawn in place on a terminal, a plain line every -progress
// otherwise), and one output: a summary on stdout, with -json one line,
// and with -out DIR the files result.json, summary.md,
// latency_over_time.png (p50/p90/p99/max per -interval) and
// latency_histogram.png (log-spaced bins), drawn with gonum.org/v1/plot.
//
//   - churn: each cycle dials, upgrades, joins (the latency measured, up
//     to the join reply), leaves and closes; cycles start at -rate with at
//     most -clients in flight; errors are counted by kind (dial, http_429,
//     join_<reason>, timeout …) and the achieved rate is reported.
//   - actions: -clients sockets joined to -rooms rooms push -event (echo:
//     the echo backend answers with the payload) at -rate in all, open
//     loop (a push goes out at its time whatever the earlier ones are
//     doing); push→reply latency, refusals by reason, pushes without a
//     reply.
//   - resume: -clients sockets joined with positions ({"offset": null});
//     a publisher in the orchestrator pushes -event (shout: broadcast) to
//     the rooms in turn; every -storm-every each process drops
//     -storm-fraction of its clients (socket closed, no leave), and each
//     rejoins after up to -storm-jitter with the position of the last
//     event it got. At the end every client must hold every event of its
//     room since its first join exactly once and in offset order; any
//     missing, skipped or duplicated event, epoch change or
//     recovered: false fails the run (exit status 1).
//
// clients/bench/scenarios.sh (make bench-scenario) starts a gateway from
// clients/bench/scenarios.yaml, the example config with the per-address
// limits raised, and runs one of them.
//
// # floor
//
// A loopback WebSocket server that does the least the broadcast scenario
// needs: ok replies to joins, heartbeats and pushes, and each broadcast
// encoded once into a shared log that one writer goroutine per CPU sweeps
// to its sockets, one write per socket per sweep (floor.go). Running the
// same scenario against it and against the gateway shows what the
// gateway's machinery costs; clients/bench/broadcast.sh (make
// bench-broadcast) does both and prints the comparison. With -rooms a
// broadcast reaches the sockets that joined its topic only, written at
// once by the goroutine that read the push, holding the room so that its
// subscribers agree on the order: the least server for the rooms
// scenario (FLOOR=1 make bench-redis).
//
// # Goroutines and bounds
//
// Every run is bounded by count and -timeout and closes every connection
// on exit. broadcast and rooms: -loops readers and, while ramping,
// -concurrency dialers per process; one publishing goroutine, one reader
// per publisher socket; one reader per worker child. floor: one accept loop, one reader per socket, one writer
// per CPU, all ended by its context or -timeout. churn: -clients cycle
// goroutines per run; actions and resume: one reader per socket, one
// pacing goroutine, one heartbeat goroutine per process, resume one storm
// loop per process; every load ends at its count or the run's deadline.
package main
