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
// server on the same port. After the 101 the file descriptor leaves Go's
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
