//go:build linux

package gateway

import (
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestDrainBatchAndInterval drains with drain_batch and drain_interval set:
// the 1012s come in batches of at most drain_batch, drain_interval apart,
// even though every client answers its close at once (each answer wakes a
// poller, which must not run the next batch early). The drain metrics count
// every socket and the time taken.
func TestDrainBatchAndInterval(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := testConfig()
	cfg.Pollers = 2
	cfg.DrainBatch = 10 // 5 per poller
	cfg.DrainInterval = 100 * time.Millisecond
	rec := &recorder{}
	s, err := Start(t.Context(), cfg, WithConnect(testConnect(rec)), WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = open(t, s.Addr())
	}
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == n }, "all sockets open")
	arrivals := make(chan closeSeen, n)
	var wg sync.WaitGroup
	for _, c := range clients {
		watchClose(&wg, c, arrivals, nil)
	}
	ctx, cancel := contextWithTimeout(20 * time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	seen := expectAll1012(t, n, arrivals)
	if t.Failed() {
		return
	}
	var times []time.Time
	for _, a := range seen {
		times = append(times, a.at)
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	// Each poller holds 20 sockets and closes 5 per step: 4 steps, 3
	// intervals between the first and the last. Only a lower bound: a
	// loaded machine can only stretch it.
	if span, want := times[n-1].Sub(times[0]), 3*cfg.DrainInterval; span < want {
		t.Errorf("1012s arrived within %v, want spread over at least %v (4 batches, %v apart)", span, want, cfg.DrainInterval)
	}
	if got := counterValue(t, s.Registry(), "phxgate_gateway_drain_closed_total", ""); got != n {
		t.Errorf("phxgate_gateway_drain_closed_total = %v, want %d", got, n)
	}
	if got := counterValue(t, s.Registry(), "phxgate_gateway_drain_duration_seconds", ""); got < (3 * cfg.DrainInterval).Seconds() {
		t.Errorf("phxgate_gateway_drain_duration_seconds = %v, want at least %v", got, (3 * cfg.DrainInterval).Seconds())
	}
	for _, p := range s.pollers {
		if p.drainBatch != 5 {
			t.Errorf("poller %d batch %d, want 5 (drain_batch 10 over 2 pollers)", p.idx, p.drainBatch)
		}
	}
	checkGoroutines(t, base)
}
