//go:build linux

package gateway

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Tests of poller.wait: an idle poller parks, and a deadline due sooner
// than the one set is brought forward.

// newIdlePoller is a poller of its own (not started) with the given sweep
// interval, counting its passes.
func newIdlePoller(t *testing.T, sweep time.Duration) (*poller, *atomic.Int64) {
	t.Helper()
	srv := &Server{cfg: testConfig(), log: discardLogger()}
	srv.metrics = newMetrics(prometheus.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 }, 1<<30)
	p, err := newPoller(srv, 0)
	if err != nil {
		t.Fatal(err)
	}
	p.sweepEvery = sweep
	var passes atomic.Int64
	p.hookTaken = func() { passes.Add(1) }
	return p, &passes
}

// runPoller runs p until the test ends.
func runPoller(t *testing.T, p *poller) {
	done := make(chan struct{})
	p.running.Store(true)
	go func() {
		defer close(done)
		p.run()
	}()
	t.Cleanup(func() {
		p.stop()
		<-done
	})
}

// An idle poller parks: one pass per sweep, not a spin (a deadline that
// has passed must be moved, and the wait must block).
func TestIdlePollerParks(t *testing.T) {
	p, passes := newIdlePoller(t, 20*time.Millisecond)
	runPoller(t, p)
	time.Sleep(50 * time.Millisecond)
	before := passes.Load()
	time.Sleep(400 * time.Millisecond)
	if n := passes.Load() - before; n > 60 {
		t.Fatalf("%d passes in 400 ms with a 20 ms sweep: the idle poller spins", n)
	}
}

// A drain step due sooner than the deadline already set (the sweep, an
// hour here) brings the deadline forward: the paced drain does not wait
// for the sweep.
func TestDrainPaceBringsDeadlineForward(t *testing.T) {
	p, _ := newIdlePoller(t, time.Hour)
	var conns []*conn
	for i := range 3 {
		fd, _ := socketPair(t)
		c := &conn{id: uint64(i + 1), p: p, fd: int32(fd), handler: nopHandler{}}
		conns = append(conns, c)
		if !p.register(c, nil) {
			t.Fatal("register refused")
		}
	}
	runPoller(t, p)
	waitFor(t, 3*time.Second, func() bool { return p.open.Load() == 3 }, "registered")
	time.Sleep(50 * time.Millisecond) // parked, deadline an hour away
	start := time.Now()
	p.drain(drainPlan{batch: 1, every: 30 * time.Millisecond})
	waitFor(t, 3*time.Second, func() bool {
		for _, c := range conns {
			if c.state.Load() == stateOpen {
				return false
			}
		}
		return true
	}, "every socket closed by the paced drain")
	t.Logf("drained 3 sockets at 1 per 30 ms in %v", time.Since(start))
}
