// Package ratelimit holds the rate limits of DESIGN.md §5: joins per second
// and events per second per event class, per player, each a token bucket
// (golang.org/x/time/rate); and heartbeats, per connection.
//
// Join and event buckets are keyed by player id, never by connection, so a
// player who reconnects (or opens more tabs) keeps the buckets already
// drained. A refused call returns a Decision with RetryAfter (the wait until
// a token is available, for the `retry_after_ms` reply); a player who keeps
// being refused for Config.AbuseWindow gets Decision.Abusive, and the caller
// closes the socket with 1008. The refusal streak is one per player, across
// joins and events: flooding one kind after another is still one sustained
// flood. A streak ends after a gap longer than Config.AbuseQuiet without
// refusals, so a client that honours retry_after_ms is never abusive.
//
// Callers key anonymous sockets (auth not required) by something other than
// the empty string, e.g. "conn:<id>"; all empty keys would share one bucket.
//
// Heartbeats are limited per connection: each socket has its own bucket and
// refusal streak (HeartbeatBucket, 16 bytes held by the caller in its
// per-connection state), with the same AbuseWindow and AbuseQuiet. A
// heartbeat is a liveness probe of one connection, and a client takes an
// unanswered one for a dead connection: with a shared bucket, one socket
// heartbeating too fast would make its neighbours behind the same key (every
// anonymous socket behind one NAT) reconnect. Heartbeat buckets are not
// entries: they cost the limiter no memory and are never evicted.
//
// Memory is bounded: at most Config.MaxEntries players are tracked (the least
// recently seen is evicted first when full) and entries idle for
// Config.IdleTTL are dropped, lazily on access and by Sweep. IdleTTL is
// validated to exceed the time any per-player bucket takes to refill, so
// evicting an idle entry never hands a player a fuller bucket than waiting
// would have.
//
// Concurrency: a *Limiter is safe for concurrent use. Its methods never block
// and do not allocate for a known player. State is sharded by player id; each
// shard has one mutex and no method holds two. AllowHeartbeat takes no lock:
// its state is the caller's HeartbeatBucket, which the caller must not use
// from two goroutines at once.
package ratelimit
