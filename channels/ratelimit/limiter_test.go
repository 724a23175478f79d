package ratelimit

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// testConfig: joins 1/s burst 2, default class 10/s burst 5, chat 1/s burst
// 1, heartbeats 1/s burst 2, abuse after 5 s of refusals.
func testConfig() Config {
	c := NewConfig()
	c.JoinsPerSecond, c.JoinBurst = 1, 2
	c.Classes = map[string]ClassLimit{
		DefaultClass: {PerSecond: 10, Burst: 5},
		"chat":       {PerSecond: 1, Burst: 1},
	}
	c.HeartbeatsPerSecond, c.HeartbeatBurst = 1, 2
	c.AbuseWindow, c.AbuseQuiet = 5*time.Second, time.Second
	c.IdleTTL = time.Minute
	return c
}

func newTestLimiter(tb testing.TB, cfg Config) (*Limiter, *fakeClock, *prometheus.Registry) {
	tb.Helper()
	clock := &fakeClock{now: t0}
	cfg.Now = clock.Now
	reg := prometheus.NewRegistry()
	l, err := New(cfg, reg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return l, clock, reg
}

func metricValue(tb testing.TB, reg *prometheus.Registry, name, label, value string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestBurstOverLimitGetsRetryAfter(t *testing.T) {
	cases := []struct {
		name      string
		allow     func(l *Limiter, hb *HeartbeatBucket) Decision
		burst     int
		wantRetry time.Duration
		kind      string
	}{
		{"join flood", func(l *Limiter, _ *HeartbeatBucket) Decision { return l.AllowJoin("p1") }, 2, time.Second, "join"},
		{"default class flood", func(l *Limiter, _ *HeartbeatBucket) Decision { return l.AllowEvent("p1", "") }, 5, 100 * time.Millisecond, "event"},
		{"unknown class falls back to default", func(l *Limiter, _ *HeartbeatBucket) Decision { return l.AllowEvent("p1", "nope") }, 5, 100 * time.Millisecond, "event"},
		{"chat flood", func(l *Limiter, _ *HeartbeatBucket) Decision { return l.AllowEvent("p1", "chat") }, 1, time.Second, "event"},
		{"heartbeat flood", func(l *Limiter, hb *HeartbeatBucket) Decision { return l.AllowHeartbeat(hb) }, 2, time.Second, "heartbeat"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, clock, reg := newTestLimiter(t, testConfig())
			var hb HeartbeatBucket
			for i := range tc.burst {
				if d := tc.allow(l, &hb); !d.OK {
					t.Fatalf("call %d within burst refused: %+v", i, d)
				}
			}
			d := tc.allow(l, &hb)
			if d.OK || d.RetryAfter <= 0 || d.RetryAfter > tc.wantRetry || d.Abusive {
				t.Fatalf("over burst: %+v, want refused with 0 < RetryAfter ≤ %v", d, tc.wantRetry)
			}
			if ms := d.RetryAfterMillis(); ms < 1 || ms > tc.wantRetry.Milliseconds() {
				t.Fatalf("RetryAfterMillis = %d", ms)
			}
			// Waiting exactly RetryAfterMillis is enough.
			clock.Advance(time.Duration(d.RetryAfterMillis()) * time.Millisecond)
			if d := tc.allow(l, &hb); !d.OK {
				t.Fatalf("after RetryAfter: %+v", d)
			}
			if got := metricValue(t, reg, "phxgate_ratelimit_limited_total", "kind", tc.kind); got != 1 {
				t.Fatalf("limited_total{kind=%s} = %v, want 1", tc.kind, got)
			}
		})
	}
}

func TestSustainedAbuseIsAbusive(t *testing.T) {
	cases := []struct {
		name        string
		every       time.Duration // one chat event per tick
		duration    time.Duration
		wantAbusive bool
	}{
		// chat is 1/s: ten a second is abuse once it lasts 5 s.
		{"flood at 10x the rate for 6 s", 100 * time.Millisecond, 6 * time.Second, true},
		{"flood at 2x the rate for 6 s", 500 * time.Millisecond, 6 * time.Second, true},
		{"flood for 4 s is not yet abuse", 100 * time.Millisecond, 4 * time.Second, false},
		{"at the rate is never abuse", time.Second, 30 * time.Second, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, clock, reg := newTestLimiter(t, testConfig())
			abusive := false
			for elapsed := time.Duration(0); elapsed <= tc.duration; elapsed += tc.every {
				d := l.AllowEvent("p1", "chat")
				abusive = abusive || d.Abusive
				if d.Abusive && d.OK {
					t.Fatal("an allowed event marked abusive")
				}
				clock.Advance(tc.every)
			}
			if abusive != tc.wantAbusive {
				t.Fatalf("abusive = %v, want %v", abusive, tc.wantAbusive)
			}
			want := 0.0
			if tc.wantAbusive {
				want = 1 // counted once per streak
			}
			if got := metricValue(t, reg, "phxgate_ratelimit_abusive_total", "kind", "event"); got != want {
				t.Fatalf("abusive_total = %v, want %v", got, want)
			}
		})
	}
}

func TestBurstThenBackOffIsNotAbuse(t *testing.T) {
	l, clock, _ := newTestLimiter(t, testConfig())
	// Five bursts of refusals, each followed by obeying retry_after for
	// longer than the quiet gap: each burst starts a new streak.
	for range 5 {
		for range 10 {
			if d := l.AllowEvent("p1", "chat"); d.Abusive {
				t.Fatal("a client that backs off was marked abusive")
			}
		}
		clock.Advance(1500 * time.Millisecond) // > AbuseQuiet (1 s)
	}
}

func TestKeyedByPlayer(t *testing.T) {
	l, clock, _ := newTestLimiter(t, testConfig())
	for range 2 {
		l.AllowJoin("alice")
	}
	if d := l.AllowJoin("alice"); d.OK {
		t.Fatal("alice over her join burst was allowed")
	}
	t.Run("another player is unaffected", func(t *testing.T) {
		if d := l.AllowJoin("bob"); !d.OK {
			t.Fatalf("bob refused: %+v", d)
		}
	})
	t.Run("reconnect with the same player id keeps the drained bucket", func(t *testing.T) {
		// A reconnect is just the same id arriving from a new socket:
		// nothing in the limiter is per connection.
		clock.Advance(100 * time.Millisecond)
		if d := l.AllowJoin("alice"); d.OK {
			t.Fatal("alice's bucket was reset by reconnecting")
		}
	})
	t.Run("classes are separate buckets", func(t *testing.T) {
		l.AllowEvent("carol", "chat")
		if d := l.AllowEvent("carol", "chat"); d.OK {
			t.Fatal("second chat allowed")
		}
		if d := l.AllowEvent("carol", DefaultClass); !d.OK {
			t.Fatal("default class refused because chat is exhausted")
		}
	})
}

func TestEvictionBoundsMemory(t *testing.T) {
	t.Run("max entries under a flood of player ids", func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxEntries = 1000
		l, _, reg := newTestLimiter(t, cfg)
		for i := range 50_000 {
			l.AllowEvent(fmt.Sprintf("player-%d", i), "chat")
			if l.Len() > cfg.MaxEntries {
				t.Fatalf("after %d players: %d entries > %d", i+1, l.Len(), cfg.MaxEntries)
			}
		}
		if got := metricValue(t, reg, "phxgate_ratelimit_entries", "", ""); int(got) != l.Len() {
			t.Fatalf("entries gauge %v != Len %d", got, l.Len())
		}
		if got := metricValue(t, reg, "phxgate_ratelimit_evictions_total", "reason", "capacity"); got < 49_000 {
			t.Fatalf("capacity evictions = %v", got)
		}
	})
	t.Run("least recently seen goes first", func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxEntries = 3 // one shard
		l, clock, _ := newTestLimiter(t, cfg)
		l.AllowJoin("a")
		l.AllowJoin("a") // a's bucket is now empty
		l.AllowJoin("b")
		l.AllowJoin("c")
		clock.Advance(time.Millisecond)
		l.AllowEvent("a", "") // touch a: b is now the oldest
		l.AllowJoin("d")      // evicts b
		if d := l.AllowJoin("a"); d.OK {
			t.Fatal("a was evicted instead of the least recently seen")
		}
		if l.Len() != 3 {
			t.Fatalf("Len = %d", l.Len())
		}
	})
	t.Run("idle entries are swept", func(t *testing.T) {
		l, clock, reg := newTestLimiter(t, testConfig())
		for i := range 100 {
			l.AllowJoin(fmt.Sprintf("p%d", i))
		}
		clock.Advance(30 * time.Second)
		l.AllowJoin("p0") // keeps p0 alive
		clock.Advance(30 * time.Second)
		if n := l.Sweep(); n != 99 {
			t.Fatalf("Sweep evicted %d, want 99", n)
		}
		if l.Len() != 1 {
			t.Fatalf("Len = %d, want 1", l.Len())
		}
		if got := metricValue(t, reg, "phxgate_ratelimit_evictions_total", "reason", "idle"); got != 99 {
			t.Fatalf("idle evictions = %v", got)
		}
	})
	t.Run("idle entries go lazily without Sweep", func(t *testing.T) {
		cfg := testConfig()
		cfg.MaxEntries = 100 // one shard, so every call sees the tail
		l, clock, _ := newTestLimiter(t, cfg)
		for i := range 50 {
			l.AllowJoin(fmt.Sprintf("p%d", i))
		}
		clock.Advance(2 * time.Minute)
		for range 10 {
			l.AllowJoin("new")
		}
		if l.Len() != 1 {
			t.Fatalf("Len = %d, want 1 after lazy eviction", l.Len())
		}
	})
}

func TestConcurrentUse(t *testing.T) {
	cfg := testConfig()
	cfg.MaxEntries = 512
	l, clock, _ := newTestLimiter(t, cfg)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			var hb HeartbeatBucket // one connection per goroutine
			for i := range 2000 {
				p := fmt.Sprintf("p%d", (g*7919+i)%1000)
				l.AllowEvent(p, "chat")
				l.AllowJoin(p)
				l.AllowHeartbeat(&hb)
				if i%100 == 0 {
					clock.Advance(time.Second)
					l.Sweep()
				}
			}
		})
	}
	wg.Wait()
	if l.Len() > cfg.MaxEntries {
		t.Fatalf("Len %d > %d", l.Len(), cfg.MaxEntries)
	}
}

func TestAllowDoesNotAllocate(t *testing.T) {
	l, _, _ := newTestLimiter(t, testConfig())
	l.AllowEvent("p1", "chat")
	var hb HeartbeatBucket
	allocs := testing.AllocsPerRun(1000, func() {
		l.AllowEvent("p1", "chat") // mostly refused: the slow path
		l.AllowHeartbeat(&hb)
	})
	if allocs != 0 {
		t.Fatalf("Allow allocates %v times per call for a known player", allocs)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name    string
		mutate  func(*Config)
		wantKey string
	}{
		{"defaults", func(c *Config) {}, ""},
		{"zero joins is not unlimited", func(c *Config) { c.JoinsPerSecond = 0 }, "joins_per_second"},
		{"zero join burst", func(c *Config) { c.JoinBurst = 0 }, "join_burst"},
		{"zero heartbeat rate", func(c *Config) { c.HeartbeatsPerSecond = 0 }, "heartbeats_per_second"},
		{"no classes", func(c *Config) { c.Classes = nil }, "classes"},
		{"class rate zero", func(c *Config) { c.Classes["chat"] = ClassLimit{Burst: 1} }, "classes.chat.per_second"},
		{"class burst zero", func(c *Config) { c.Classes["chat"] = ClassLimit{PerSecond: 1} }, "classes.chat.burst"},
		{"unknown default class", func(c *Config) { c.DefaultClass = "x" }, "default_class"},
		{"zero abuse window", func(c *Config) { c.AbuseWindow = 0 }, "abuse_window"},
		{"quiet longer than window", func(c *Config) { c.AbuseQuiet = time.Minute }, "abuse_quiet"},
		{"zero max entries", func(c *Config) { c.MaxEntries = 0 }, "max_entries"},
		{"too many entries", func(c *Config) { c.MaxEntries = MaxMaxEntries + 1 }, "max_entries"},
		{"idle ttl past a day", func(c *Config) { c.IdleTTL = MaxIdleTTL + time.Second }, "idle_ttl"},
		{"idle ttl shorter than a refill", func(c *Config) {
			c.Classes["slow"] = ClassLimit{PerSecond: 0.001, Burst: 10}
		}, "idle_ttl"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := NewConfig()
			tc.mutate(&c)
			err := c.Validate()
			if tc.wantKey == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			// Keys are relative to the limits section; the loader adds "limits.".
			if !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), ErrConfig.Error()+": "+tc.wantKey+":") {
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.wantKey)
			}
		})
	}
}

func TestRouteClasses(t *testing.T) {
	cfg := testConfig()
	r := Route{DefaultClass: DefaultClass, Events: map[string]string{"say": "chat", "move": "chat"}}
	if err := cfg.ValidateRoute(r, "routes[0].rate_limits"); err != nil {
		t.Fatal(err)
	}
	if r.ClassOf("say") != "chat" || r.ClassOf("fire") != DefaultClass {
		t.Fatal("ClassOf")
	}
	bad := Route{Events: map[string]string{"say": "nope"}}
	if err := cfg.ValidateRoute(bad, "routes[1].rate_limits"); err == nil || !strings.Contains(err.Error(), "routes[1].rate_limits.events.say") {
		t.Fatalf("ValidateRoute = %v", err)
	}
}
