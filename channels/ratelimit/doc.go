// Package ratelimit holds the per-player rate limits of DESIGN.md §5: joins
// per second, events per second per event class, and heartbeats, each a
// token bucket (golang.org/x/time/rate).
//
// Buckets are keyed by player id, never by connection, so a player who
// reconnects (or opens more tabs) keeps the buckets already drained. A
// refused call returns a Decision with RetryAfter (the wait until a token is
// available, for the `retry_after_ms` reply); a player who keeps being
// refused for Config.AbuseWindow gets Decision.Abusive, and the caller closes
// the socket with 1008. The refusal streak is one per player, across joins,
// events and heartbeats: flooding one kind after another is still one
// sustained flood. A streak ends after a gap longer than Config.AbuseQuiet
// without refusals, so a client that honours retry_after_ms is never
// abusive.
//
// Callers key anonymous sockets (auth not required) by something other than
// the empty string, e.g. "conn:<id>"; all empty keys would share one bucket.
//
// Heartbeats are limited per player too (one bucket shared by all of a
// player's sockets). That keeps the state in one place and bounded by the
// number of players; the default rate leaves room for many sockets per player
// at phoenix.js's one heartbeat per 30 s.
//
// Memory is bounded: at most Config.MaxEntries players are tracked (the least
// recently seen is evicted first when full) and entries idle for
// Config.IdleTTL are dropped, lazily on access and by Sweep. IdleTTL is
// validated to exceed the time any bucket takes to refill, so evicting an
// idle entry never hands a player a fuller bucket than waiting would have.
//
// Concurrency: a *Limiter is safe for concurrent use. Its methods never block
// and do not allocate for a known player. State is sharded by player id; each
// shard has one mutex and no method holds two.
package ratelimit
