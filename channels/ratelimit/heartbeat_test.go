package ratelimit

import (
	"math"
	"testing"
	"time"
	"unsafe"
)

// The bucket lives in every socket: it must stay small.
func TestHeartbeatBucketSize(t *testing.T) {
	if n := unsafe.Sizeof(HeartbeatBucket{}); n > 16 {
		t.Fatalf("HeartbeatBucket is %d bytes, want ≤ 16", n)
	}
}

// Each connection has its own heartbeat bucket: one flooding connection
// leaves the others of the same player (or IP prefix) answered, and the
// limiter tracks no entry for heartbeats.
func TestHeartbeatPerConnection(t *testing.T) {
	l, clock, reg := newTestLimiter(t, testConfig()) // heartbeats 1/s, burst 2
	var flooder, neighbour HeartbeatBucket
	refused := 0
	for range 50 {
		if !l.AllowHeartbeat(&flooder).OK {
			refused++
		}
		clock.Advance(10 * time.Millisecond)
	}
	if refused == 0 {
		t.Fatal("a flood of 50 heartbeats in 0.5 s was never refused")
	}
	for i := range 2 {
		if d := l.AllowHeartbeat(&neighbour); !d.OK {
			t.Fatalf("neighbour's heartbeat %d refused: %+v", i, d)
		}
	}
	if got := metricValue(t, reg, "phxgate_ratelimit_limited_total", "kind", "heartbeat"); got != float64(refused) {
		t.Fatalf("limited_total{kind=heartbeat} = %v, want %d", got, refused)
	}
	if l.Len() != 0 {
		t.Fatalf("Len = %d: heartbeats created limiter entries", l.Len())
	}
	// A drained player streak does not reach the heartbeats either.
	for range 10 {
		l.AllowJoin("p1")
	}
	var fresh HeartbeatBucket
	if d := l.AllowHeartbeat(&fresh); !d.OK {
		t.Fatalf("heartbeat refused after the player's joins were: %+v", d)
	}
}

func TestHeartbeatRefill(t *testing.T) {
	l, clock, _ := newTestLimiter(t, testConfig()) // 1/s, burst 2
	var hb HeartbeatBucket
	l.AllowHeartbeat(&hb)
	l.AllowHeartbeat(&hb)
	d := l.AllowHeartbeat(&hb)
	if d.OK || d.RetryAfter != time.Second {
		t.Fatalf("third heartbeat at once: %+v, want refused, RetryAfter 1s", d)
	}
	clock.Advance(999 * time.Millisecond)
	if l.AllowHeartbeat(&hb).OK {
		t.Fatal("answered before a token refilled")
	}
	clock.Advance(time.Millisecond)
	if !l.AllowHeartbeat(&hb).OK {
		t.Fatal("refused after a token refilled")
	}
	// A long silence refills up to the burst, not beyond.
	clock.Advance(time.Hour)
	for i := range 2 {
		if !l.AllowHeartbeat(&hb).OK {
			t.Fatalf("heartbeat %d after a long silence refused", i)
		}
	}
	if l.AllowHeartbeat(&hb).OK {
		t.Fatal("the bucket refilled past its burst")
	}
}

func TestHeartbeatAbuse(t *testing.T) {
	cases := []struct {
		name        string
		every       time.Duration
		duration    time.Duration
		wantAbusive bool
	}{
		// heartbeats are 1/s, abuse after 5 s of refusals, quiet gap 1 s.
		{"flood at 100/s for 6 s", 10 * time.Millisecond, 6 * time.Second, true},
		{"flood at 2x the rate for 7 s", 500 * time.Millisecond, 7 * time.Second, true},
		{"flood for 4 s is not yet abuse", 10 * time.Millisecond, 4 * time.Second, false},
		{"at the rate is never abuse", time.Second, 30 * time.Second, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, clock, reg := newTestLimiter(t, testConfig())
			var hb HeartbeatBucket
			var firstAbusive time.Duration = -1
			for elapsed := time.Duration(0); elapsed <= tc.duration; elapsed += tc.every {
				d := l.AllowHeartbeat(&hb)
				if d.Abusive && d.OK {
					t.Fatal("an answered heartbeat marked abusive")
				}
				if d.Abusive && firstAbusive < 0 {
					firstAbusive = elapsed
				}
				clock.Advance(tc.every)
			}
			if (firstAbusive >= 0) != tc.wantAbusive {
				t.Fatalf("abusive at %v, want abusive %v", firstAbusive, tc.wantAbusive)
			}
			want := 0.0
			if tc.wantAbusive {
				want = 1 // counted once per streak
				if firstAbusive < 5*time.Second {
					t.Fatalf("abusive after %v, before the abuse window", firstAbusive)
				}
			}
			if got := metricValue(t, reg, "phxgate_ratelimit_abusive_total", "kind", "heartbeat"); got != want {
				t.Fatalf("abusive_total{kind=heartbeat} = %v, want %v", got, want)
			}
		})
	}
	t.Run("a quiet gap ends the streak", func(t *testing.T) {
		l, clock, _ := newTestLimiter(t, testConfig())
		var hb HeartbeatBucket
		for range 5 {
			for range 300 { // 3 s of flood, refused after the burst
				if l.AllowHeartbeat(&hb).Abusive {
					t.Fatal("abusive although every streak was shorter than the window")
				}
				clock.Advance(10 * time.Millisecond)
			}
			clock.Advance(1500 * time.Millisecond) // > AbuseQuiet (1 s)
		}
	})
}

// Stamps are 32-bit milliseconds; gaps across the wrap are still right.
func TestHeartbeatStampWraps(t *testing.T) {
	if got := stamp(5).since(stamp(math.MaxUint32 - 4)); got != 10 {
		t.Fatalf("since across the wrap = %d, want 10", got)
	}
	l, clock, _ := newTestLimiter(t, testConfig())
	l.epoch = l.epoch.Add(-(1<<32 - 500) * time.Millisecond) // wraps 0.5 s from now
	var hb HeartbeatBucket
	l.AllowHeartbeat(&hb)
	l.AllowHeartbeat(&hb)
	clock.Advance(time.Second) // across the wrap
	if !l.AllowHeartbeat(&hb).OK {
		t.Fatal("refill across the stamp wrap lost")
	}
	if l.AllowHeartbeat(&hb).OK {
		t.Fatal("refill across the stamp wrap overflowed")
	}
}
