// Package gateway is phxgate's edge transport: the client listener, the
// HTTP upgrade to WebSocket, the epoll pollers that own every upgraded
// connection, frame reading and writing, per-socket write queues, idle and
// close timers, drain, and the admin listener (metrics, health, pprof).
//
// # Goroutines
//
// One accept goroutine feeds a bounded pool of handshake workers
// (Config.HandshakeWorkers); each worker reads the request head under
// Config.HandshakeTimeout and either upgrades it or hands it to the net/http
// server on the same port. Before a connection takes a worker, the accept
// goroutine counts it against its TCP peer's handshakes in progress
// (limits.ip_max_handshakes; IPv4 address or IPv6 /64; trusted_proxies
// exempt) and answers 429 at once past the cap, so silent connections from
// one address (slowloris) hold at most that many workers, not all of them.
// The slot is given back when the handshake ends, whichever way. After the 101 the file descriptor leaves Go's
// netpoller and belongs to one of Config.Pollers epoll pollers. There is no
// goroutine per connection: a poller goroutine reads, parses, calls the
// SocketHandler, flushes write queues with writev and runs the idle sweep
// for all of its connections. Every goroutine is owned by the Server and
// returns during Shutdown.
//
// # Concurrency contract
//
// The channels.Conn given to Options.Connect (Send, Close, ID) is safe for
// concurrent use and never blocks. SocketHandler methods run on the poller
// goroutine, one at a time per socket: they must not block (no network
// calls, no waiting on locks held across I/O), because every other socket
// of that poller waits behind them. Data passed to HandleText/HandleBinary
// is valid only until the call returns.
//
// # Seams
//
// Options.Admit sees every upgrade request (path, query, Origin,
// X-Forwarded-For, peer address, decoded params, serializer, authToken)
// after it was validated and before Connect runs and the 101 is written; it
// answers 0 or the HTTP status to refuse with, and may fill the player id
// and claims for Connect. Options.Connect builds the SocketHandler (the
// channels layer in production). Refusals are always an HTTP status with an
// empty body, as Phoenix answers.
//
// # Auth and limits (DESIGN.md §5)
//
// Without WithAdmit, the production admission runs (guard.go), in this
// order: check_origin (403); the per-IP handshake rate and open-socket cap
// (429, with Retry-After for the rate) and the node cap (503), keyed by the
// client IP (X-Forwarded-For believed only from trusted_proxies; IPv6 by
// /64); the token (connect param "token" or the phoenix.js authToken
// subprotocol; the param is removed before the backend sees the params):
// missing with auth.required → 401, present but invalid → 403 even when not
// required; then the per-player cap (429). With no auth key configured at
// all, auth is off: tokens are stripped and ignored. The verified identity
// reaches Connect (PlayerID, Claims, Identity); Request.Expires (exp +
// auth.leeway) is enforced by the poller's once-a-second sweep, which
// closes the socket with 1008 (no timer per socket). Join and event rate
// limits are keyed by player id, or for anonymous sockets by
// "ip:<client IP prefix>" (a /32 or a /64), so reconnecting resets nothing;
// heartbeats are limited per connection, so one socket heartbeating too fast
// never leaves a neighbour's heartbeats unanswered (which its client would
// take for a dead connection). The limiter and the per-IP state are swept on
// a ticker owned by the Server and stopped by Shutdown.
//
// # Closing
//
// Close queues a close frame (code, empty reason) behind the frames already
// queued; once it is written the write side is shut down and the fd is
// closed when the client's close frame or EOF arrives, or after
// Config.CloseTimeout. Closing with unread input would make the kernel send
// an RST that can destroy the close frame before the client reads it.
//
// # Lock order
//
// conn.mu, then poller.mu. In practice no code path holds both: Send marks
// a connection dirty under conn.mu, releases it, and only then queues it on
// the poller under poller.mu.
//
// The package is Linux-only (epoll, eventfd, writev).
package gateway
