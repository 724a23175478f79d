// Package backends holds the game-backend contract (Backend) and its
// engines: in-process ones (echo, bench), the gRPC hook and the HTTP
// webhook. New builds an engine from a route's backend spec.
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
// Resources: a backend that holds any (the gRPC engine's connection, the
// webhook engine's connection pool) implements io.Closer. Its owner closes it at shutdown, once no call can
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
//
// # The webhook engine
//
// The spec http://host[:port][/path] or https://host[:port][/path] POSTs
// every call as JSON to the game's <url>/join, <url>/handle_in and
// <url>/leave, with the guarantees of the gRPC engine (deadline,
// retries with the same request and key, breaker, bulkhead). https is
// expected in production, the server checked against the system's roots;
// plain http is the operator's choice, for a game on the same host or a
// private network. The query holds the engine's options, so the game's
// URL cannot have one of its own:
//
//	https://game.internal/phxgate?secret_env=PHXGATE_WEBHOOK_SECRET&timeout=3s
//
// Options are refused as for the gRPC engine (bounds, unknown, twice):
//
//	secret_env=NAME      the environment variable holding the signing
//	                     secret, read once by New: at least 32 bytes, say
//	                     32 random bytes in hex. Required unless unsigned
//	                     is set; a secret never goes in the URL itself
//	unsigned=false       true sends requests unsigned: it must be asked
//	                     for, and never together with secret_env
//	timeout=3s, max_inflight=256, max_queue=1024, retries=2,
//	backoff=25ms, breaker_failures=5, breaker_cooldown=5s
//	                     as for the gRPC engine, "unavailable" meaning the
//	                     statuses and failures mapped to ErrUnavailable
//	                     below
//	max_message=4194304  largest request or response body, in bytes
//	                     (1024..67108864); a request over it is not sent,
//	                     a response over it is not read: either fails the
//	                     call with ErrBackend (not ErrOverloaded as in the
//	                     gRPC engine: sending it again will not help)
//
// Every request carries, besides Content-Type: application/json,
//
//	X-Phxgate-Timestamp: 1767225600        sending time, Unix seconds
//	X-Phxgate-Signature: v1=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>
//	Idempotency-Key: i1:42:1:1             the body's call.idempotency_key
//
// (no signature when unsigned; no Idempotency-Key when the key is not
// printable ASCII: the signed body is authoritative). A join's body:
//
//	{"call":{"node_id":"node-a","conn_id":"1099511627783","player_id":"p9",
//	  "claims":{"sub":"p9"},"params":{"vsn":"2.0.0"},"topic":"room:1",
//	  "event":"phx_join","join_ref":"3","ref":"4",
//	  "payload":{"data":{"seat":2},"binary":false},"idempotency_key":"i1:42:1:1"},
//	 "resume_position":"","recoverable":false,"rejoin":false}
//
// A handle_in's is {"call":{…}}, a leave's {"call":{…},"reason":"left"}.
// The fields are those of backend.proto's messages, under their names,
// except that conn_id is a decimal string (as in proto's JSON mapping: a
// JSON number loses precision past 2⁵³); claims (null when none) and
// params are embedded JSON; a payload is {"data":<the JSON value
// itself>,"binary":false}, or for a binary frame {"data":"<base64,
// standard alphabet, padded>","binary":true}; and enums are the lower-case
// names of their values without prefix: reasons left, disconnected,
// kicked, timeout, drained, expired, crashed, duplicate_join, unspecified;
// stops none, normal, error. A join or handle_in is answered with a 2xx
// and a JSON object:
//
//	{"reply":{"status":"ok","response":{"data":{"hand":[1,2]}}},
//	 "broadcasts":[{"topic":"lobby","event":"joined","payload":{"data":{"who":"p9"}}}],
//	 "pushes":[{"event":"state","payload":{"data":"CQg=","binary":true}}],
//	 "stop":"none","presence_meta":{"status":"seated"},"snapshot_position":"5-20"}
//
// Any field may be left out ({} is no reply, the channel kept; a missing
// payload or data is {}); presence_meta (an object) and
// snapshot_position count on a join only; unknown fields are ignored,
// and an unknown stop keeps the channel. A leave is answered with any
// 2xx, its body ignored.
//
// A game checks a request before acting on it: VerifyWebhook does it in
// Go. Elsewhere: compute the HMAC-SHA256, keyed with the secret, of the
// timestamp header, ".", and the body's raw bytes; compare its hex, in
// constant time, with each "v1=" entry of the comma-separated signature
// header; refuse a timestamp more than 5 minutes from the local clock;
// take the key from the signed body. The signature covers the timestamp
// and body, not the path: a game remembers the keys it has applied, for
// at least the skew, whatever the path, so that a captured request
// replayed anywhere is applied at most once.
//
// Answers map to classes as follows:
//
//	2xx with a body as above            success
//	502, 503, 504; connection refused,  ErrUnavailable, retried; counts
//	reset or closed; DNS or TLS failure against the breaker
//	no complete answer by the deadline  ErrTimeout; counts against the
//	                                    breaker
//	429                                 ErrOverloaded
//	any other status (3xx, as redirects ErrBackend
//	are not followed, 4xx, 500, …); a
//	body not of the types above, a
//	broadcast or push without event,
//	binary data not base64, a body
//	over max_message
//
// Any answer, even an error, counts for the breaker. Each engine keeps one
// pool of connections: as many idle as max_inflight, for 90s; dialling
// and the TLS handshake within 5s each; TLS 1.2 or later, HTTP/2 when the
// server offers it; no proxy from the environment. Bodies are read whole
// (up to max_message) so connections are reused. Go's HTTP client may
// itself resend a request, at once, when a kept-alive connection the game
// had closed fails as it is used: the same request, with the same key.
// Webhook.Stats and Webhook.Collector (phxgate_backend_webhook_*) mirror
// the gRPC engine's.
package backends
