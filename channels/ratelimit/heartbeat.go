package ratelimit

import (
	"math"
	"time"
)

// HeartbeatBucket is one connection's heartbeat limit: a token bucket of
// Config.HeartbeatsPerSecond and Config.HeartbeatBurst plus its refusal
// streak. Heartbeats are per connection by nature (phoenix.js sends one per
// socket every 30 s), so a shared bucket would let one fast socket starve
// its neighbours behind the same key (a NAT's IP prefix), whose clients take
// an unanswered heartbeat for a dead connection and reconnect.
//
// The caller embeds it in its per-connection state: 16 bytes, no map entry,
// no allocation, no lock. The zero value is a full bucket with no streak.
// It is not safe for concurrent use; calls for one connection must be
// serialized (channels handles a socket's frames one at a time).
type HeartbeatBucket struct {
	// debt is the tokens taken and not refilled yet (0 is a full bucket),
	// so that the zero value needs no initialisation.
	debt float32
	// last is when debt was last brought up to date.
	last stamp
	// streakStart is the first refusal of the current streak (0: none);
	// lastRefused is the latest refusal.
	streakStart, lastRefused stamp
}

// stamp is a coarse monotonic time: milliseconds since the Limiter was
// built, plus one so that 0 can mean "never". 32 bits keep the bucket
// small; they wrap every ~49.7 days, and differences are taken modulo 2^32,
// so only a connection silent for that long sees a wrong (shorter) gap.
type stamp uint32

// since is the milliseconds from s to t (t not before s, modulo 2^32).
func (t stamp) since(s stamp) int64 { return int64(uint32(t - s)) }

// hbSlack absorbs the float32 rounding of debt, so a client that waits its
// RetryAfter is answered; a thousandth of a heartbeat is no loophole.
const hbSlack = 1.0 / 1024

func (l *Limiter) stampOf(now time.Time) stamp {
	ms := max(now.Sub(l.epoch).Milliseconds(), 0)
	s := stamp(uint32(ms) + 1)
	if s == 0 {
		s = 1
	}
	return s
}

// AllowHeartbeat takes one token from the connection's heartbeat bucket b.
// A refusal is counted (phxgate_ratelimit_limited_total{kind="heartbeat"});
// Decision.Abusive means this connection has been refused continuously for
// Config.AbuseWindow, with no gap longer than Config.AbuseQuiet (millisecond
// resolution). The streak is the connection's own, not the player's: a
// heartbeat flood says nothing about the player's other sockets.
func (l *Limiter) AllowHeartbeat(b *HeartbeatBucket) Decision {
	now := l.stampOf(l.now())
	// A zero last (never used) gives a huge refill: the bucket stays full.
	debt := max(float64(b.debt)-float64(now.since(b.last))*l.hbPerMilli, 0)
	b.last = now
	if debt+1 <= l.hbBurst+hbSlack {
		b.debt = float32(debt + 1)
		return Decision{OK: true}
	}
	b.debt = float32(debt)
	missing := debt + 1 - l.hbBurst
	wait := time.Duration(math.Ceil(missing / l.hbPerMilli * float64(time.Millisecond)))
	d := Decision{RetryAfter: max(wait, time.Nanosecond)}
	l.limitedBy[KindHeartbeat].Inc()

	window, quiet := l.cfg.AbuseWindow.Milliseconds(), l.cfg.AbuseQuiet.Milliseconds()
	// Abusive already at the previous refusal of this streak: counted then.
	counted := false
	if b.streakStart == 0 || now.since(b.lastRefused) > quiet {
		b.streakStart = now
	} else {
		counted = b.lastRefused.since(b.streakStart) >= window
	}
	b.lastRefused = now
	if now.since(b.streakStart) >= window {
		d.Abusive = true
		if !counted {
			l.abusiveBy[KindHeartbeat].Inc()
		}
	}
	return d
}
