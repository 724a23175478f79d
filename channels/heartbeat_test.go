package channels

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/phxgate/phxgate/channels/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
)

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// heartbeatEnv is a server with a limiter on a test clock: heartbeats 1/s
// per connection, burst 2; abuse after 5 s of refusals (quiet gap 1 s).
func heartbeatEnv(t *testing.T) (*testEnv, *testClock, *prometheus.Registry) {
	t.Helper()
	clock := &testClock{now: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)}
	rc := ratelimit.NewConfig()
	rc.HeartbeatsPerSecond, rc.HeartbeatBurst = 1, 2
	rc.AbuseWindow, rc.AbuseQuiet = 5*time.Second, time.Second
	rc.Now = clock.Now
	reg := prometheus.NewRegistry()
	lim, err := ratelimit.New(rc, reg)
	if err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, func(c *Config) { c.Limiter = lim })
	return env, clock, reg
}

// connectFrom connects an anonymous socket keyed by its address, as the
// gateway keys every anonymous socket behind one IP prefix.
func connectFrom(t *testing.T, env *testEnv, rateKey string) (*Socket, *fakeConn) {
	t.Helper()
	c := newFakeConn(t)
	return env.srv.Connect(c, ConnectInfo{Serializer: V2, Params: []byte(`{}`), RateKey: rateKey}), c
}

func heartbeat(ref string) string { return `[null,"` + ref + `","phoenix","heartbeat",{}]` }

func heartbeatReply(ref string) string {
	return `[null,"` + ref + `","phoenix","phx_reply",{"response":{},"status":"ok"}]`
}

func limitedHeartbeats(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "phxgate_ratelimit_limited_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "kind" && lp.GetValue() == "heartbeat" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A socket flooding heartbeats has its excess unanswered (and counted); a
// neighbour from the same address (same rate key) keeps getting every
// heartbeat answered, at phoenix.js's pace or faster.
func TestHeartbeatLimitPerConnection(t *testing.T) {
	env, clock, reg := heartbeatEnv(t)
	const addr = "ip:192.0.2.7"
	flooder, fc := connectFrom(t, env, addr)
	neighbour, nc := connectFrom(t, env, addr)

	sent := 0
	for tick := range 40 { // 4 s: the flooder sends 100/s, the neighbour 1/s
		for range 10 {
			if err := flooder.HandleText([]byte(heartbeat(fmt.Sprint("f", sent)))); err != nil {
				t.Fatalf("flooder's heartbeat %d: %v", sent, err)
			}
			sent++
		}
		if tick%10 == 0 {
			mustHandle(t, neighbour, heartbeat(fmt.Sprint("n", tick)))
		}
		clock.Advance(100 * time.Millisecond)
	}

	var want []string
	for tick := 0; tick < 40; tick += 10 {
		want = append(want, heartbeatReply(fmt.Sprint("n", tick)))
	}
	if got := nc.texts(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("neighbour got %q, want every heartbeat answered: %q", got, want)
	}
	// The flooder gets its burst (2) plus one per second of refill (3 in
	// the 3.9 s between its first and last heartbeat).
	answered := fc.texts()
	if len(answered) != 5 {
		t.Fatalf("flooder: %d of %d heartbeats answered, want 5: %q", len(answered), sent, answered)
	}
	for i, ref := range []string{"f0", "f1"} {
		if answered[i] != heartbeatReply(ref) {
			t.Fatalf("flooder reply %d = %s, want the burst's %s", i, answered[i], ref)
		}
	}
	if got := limitedHeartbeats(t, reg); got != float64(sent-5) {
		t.Fatalf("limited heartbeats = %v, want %d", got, sent-5)
	}
}

// A connection heartbeating past its limit for the abuse window is closed
// with 1008; its neighbour from the same address is not affected.
func TestHeartbeatFloodCloses1008(t *testing.T) {
	env, clock, _ := heartbeatEnv(t)
	const addr = "ip:192.0.2.7"
	flooder, _ := connectFrom(t, env, addr)
	neighbour, nc := connectFrom(t, env, addr)

	var err error
	start := clock.Now()
	for i := 0; err == nil; i++ {
		if clock.Now().Sub(start) > time.Minute {
			t.Fatal("a minute of heartbeat flood did not close the socket")
		}
		err = flooder.HandleText([]byte(heartbeat(fmt.Sprint(i))))
		clock.Advance(20 * time.Millisecond)
	}
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != ClosePolicyViolation || ce.Reason != ReasonRateAbuse {
		t.Fatalf("flood ended with %v, want a 1008 rate_abuse CloseError", err)
	}
	// Refused from the third heartbeat (40 ms in) on; the window is 5 s.
	if d := clock.Now().Sub(start); d < 5*time.Second {
		t.Fatalf("closed after %v, before the abuse window", d)
	}
	mustHandle(t, neighbour, heartbeat("n1"))
	if got := nc.texts(); len(got) != 1 || got[0] != heartbeatReply("n1") {
		t.Fatalf("neighbour after the flood: %q", got)
	}
}

// Without a limiter every heartbeat is answered.
func TestHeartbeatNoLimiter(t *testing.T) {
	env := newTestEnv(t, nil)
	sock, conn := env.connect(t, V2)
	for i := range 100 {
		mustHandle(t, sock, heartbeat(fmt.Sprint(i)))
	}
	if n := conn.count(); n != 100 {
		t.Fatalf("%d of 100 heartbeats answered", n)
	}
}
