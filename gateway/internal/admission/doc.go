// Package admission makes the checks that run before a WebSocket upgrade
// (DESIGN.md §3, §5): the Origin allow-list, the client address behind
// trusted proxies, the handshakes in progress per peer address, the per-IP
// handshake rate, and the concurrent-connection caps per IP, per player and
// in total.
//
// A refusal is a *Refusal carrying the HTTP status to answer with (403 for a
// bad origin, 429 for per-IP and per-player caps, 503 for the global cap)
// and a reason label; the gateway answers with an empty body, never a
// half-open socket.
//
// Flow, per handshake:
//
//	release, err := c.BeginHandshake(peer) // at accept, before reading: 429
//	defer release()                        // when the handshake ends
//	ip := c.ClientIP(peer, xff)
//	if err := c.CheckOrigin(origin); err != nil { answer 403 }
//	t, err := c.Admit(ip)            // handshake rate, per-IP and global caps
//	id := verify token ...
//	err = t.BindPlayer(id.PlayerID)  // per-player cap
//	... upgrade; on any failure, or when the socket closes: t.Release()
//
// IPv4 clients are keyed by address, IPv6 clients by their /64 (by default):
// one subscriber usually holds a whole /64, so keying by address would let
// one host open 2^64 "different" clients.
//
// Concurrency: a *Controller is safe for concurrent use; one mutex guards its
// counters (handshakes are far rarer than frames, so it is not contended). A
// *Ticket belongs to one connection; Release is idempotent and safe to call
// from any goroutine. No method blocks or does I/O. Lock order: Ticket.mu,
// then Controller.mu.
package admission
