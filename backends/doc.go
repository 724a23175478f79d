// Package backends holds the game-backend contract (Backend) and its
// engines: in-process ones (echo, bench) and the gRPC hook; the HTTP
// webhook comes later. New builds an engine from a route's backend spec.
//
// Goroutine safety: every Backend is safe for concurrent use. The channels
// layer calls one channel's methods one at a time, in the client's order,
// and different channels concurrently.
//
// What must not block: nothing here runs on a poller goroutine (backend
// calls go through a worker pool), but engines must honour ctx so a slow
// backend cannot pin a worker past its deadline. The in-process engines
// never block.
//
// Failures: an engine's errors are classified by ErrUnavailable,
// ErrTimeout, ErrOverloaded and ErrBackend (a *CallError carries the class
// and the cause); ReplyReason turns one into the reason of the error reply
// the client gets: backend_unavailable, backend_timeout,
// backend_overloaded or backend_error.
//
// Resources: a backend that holds any (the gRPC engine's connection)
// implements io.Closer. Its owner closes it at shutdown, once no call can
// be made; calls after Close fail with ErrUnavailable.
//
// # The gRPC engine
//
// The spec grpc://host:port (plain text) or grpcs://host:port (TLS, the
// server checked against the system's roots) forwards every call to the
// GameBackend service of backends/proto/phxgate/backend/v1/backend.proto
// over one shared connection. Options go in the query, e.g.
//
//	grpc://127.0.0.1:5000?timeout=3s&max_inflight=256&retries=2
//
// Durations are Go durations (250ms, 3s, 1m); every option has a safe
// non-zero default and bounds, and a value out of them, an unknown option or
// one given twice is refused with an error wrapping ErrBadSpec that names
// the option:
//
//	timeout=3s           deadline of each call, retries and waiting for a
//	                     slot included, on top of the caller's (1ms..5m)
//	max_inflight=256     calls sent and not yet answered (1..65536)
//	max_queue=1024       calls waiting for one of those slots; past it a
//	                     call fails at once with ErrOverloaded, and so does
//	                     one whose deadline passes while it waits
//	                     (0 = no waiting, ..1048576)
//	retries=2            times a call failing with UNAVAILABLE is resent,
//	                     the same request with the same idempotency key,
//	                     within the deadline (0 = never, ..10); no other
//	                     failure is retried
//	backoff=25ms         base wait before a retry: the n-th waits a random
//	                     time between half and all of backoff·2ⁿ⁻¹, at most
//	                     8·backoff (1ms..10s)
//	breaker_failures=5   consecutive calls failing with UNAVAILABLE or
//	                     DEADLINE_EXCEEDED that open the circuit breaker
//	                     (1..65536)
//	breaker_cooldown=5s  how long the open breaker fails calls fast with
//	                     ErrUnavailable (cause ErrCircuitOpen) before one
//	                     probe goes through: its success closes the breaker,
//	                     its failure opens it again (1ms..1h)
//	keepalive=30s        the connection is pinged once it has been silent
//	                     this long with calls in flight (10s..2h); only a
//	                     timeout above it makes that happen, and then the
//	                     game's server must permit pings at that rate
//	                     (gRPC servers permit one per 5 minutes by default)
//	keepalive_timeout=10s  how long a ping may go unanswered before the
//	                     connection is dropped (1s..10m)
//	max_message=4194304  largest request or response, in bytes (1024..
//	                     67108864); a bigger response fails the call as
//	                     RESOURCE_EXHAUSTED, i.e. ErrOverloaded
//
// Status codes map to classes as follows: UNAVAILABLE (after the retries)
// → ErrUnavailable; DEADLINE_EXCEEDED → ErrTimeout; RESOURCE_EXHAUSTED →
// ErrOverloaded; anything else, and a response that breaks the contract (a
// broadcast or push without an event), → ErrBackend. A stop value the
// engine does not know keeps the channel. Only UNAVAILABLE and
// DEADLINE_EXCEEDED count against the breaker; any answer from the game,
// even an error, counts for it.
//
// A broken connection is re-established in the background, waiting 100ms
// then up to 2s between attempts. GRPC.Stats returns the engine's counters
// and GRPC.Collector exposes them to Prometheus under labels of the
// caller's choosing; nothing is registered globally.
package backends
