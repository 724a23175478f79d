// Command bench is phxgate's connection-holding load tool. It opens up to
// -conns WebSocket connections to a gateway, joins each to one topic, and at
// checkpoints reads the gateway's resident memory and goroutine count from
// its admin endpoint (after forcing a GC), then prints a table and the
// least-squares RSS slope in bytes per connection (DESIGN.md §3 target:
// ≤ 1.5 KB per idle joined connection over 15,000 connections).
//
//	go run ./clients/bench -url ws://127.0.0.1:4000/socket/websocket \
//	    -conns 15000 -topic room:load -admin http://127.0.0.1:4001 \
//	    -local-ips 127.0.0.1,127.0.0.2
//
// Each connection is held on the lean raw path (a gobwas dial, one join
// frame, its reply read once) with no goroutine per connection: the point is
// to measure the gateway, not a client library. One ticker goroutine sends
// heartbeats for all connections so none reaches the gateway's idle
// timeout; their replies are left unread in kernel buffers (a few bytes per
// interval).
//
// Goroutines: -concurrency dial workers while ramping, one pacer, one
// heartbeat ticker. The run is bounded by -conns (≤ MaxConns) and -timeout,
// and stops by itself; every connection is closed on exit.
package main
