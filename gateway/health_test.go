//go:build linux

package gateway

import (
	"encoding/binary"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/phxgate/phxgate/pubsub/redistest"
)

// TestBrokerUpGaugeFollowsRedisKill: phxgate_pubsub_broker_up and
// phxgate_gateway_ready are 1 with Redis up, drop to 0 once a periodic
// check finds Redis killed (no scrape or /readyz call is needed to move
// them), and come back to 1 with Redis restarted.
func TestBrokerUpGaugeFollowsRedisKill(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	s := redisNode(t, rs.URL(), func(c *Config) {
		c.RedisTimeout = 300 * time.Millisecond
		c.ReadyCheckInterval = 100 * time.Millisecond
	})
	gauges := func() (up, ready float64) {
		reg := s.Registry()
		return counterValue(t, reg, "phxgate_pubsub_broker_up", ""), counterValue(t, reg, "phxgate_gateway_ready", "")
	}
	waitFor(t, 10*time.Second, func() bool { up, ready := gauges(); return up == 1 && ready == 1 }, "broker_up 1 and ready 1 with Redis up")
	rs.Kill()
	waitFor(t, 10*time.Second, func() bool { up, ready := gauges(); return up == 0 && ready == 0 }, "broker_up 0 and ready 0 with Redis killed")
	rs.Restart()
	waitFor(t, 20*time.Second, func() bool { up, ready := gauges(); return up == 1 && ready == 1 }, "broker_up 1 and ready 1 with Redis back")
}

// TestDrainGaugesWhileDraining scrapes a node in the middle of a slow drain:
// phxgate_gateway_draining is 1, the sockets left to close are fewer than
// at the start and more than none, and the drain duration grows while the
// drain runs; once it ends the remaining count is 0 and the duration stops.
func TestDrainGaugesWhileDraining(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := testConfig()
	cfg.Pollers = 2
	cfg.DrainBatch = 2 // 1 per poller
	cfg.DrainInterval = 100 * time.Millisecond
	cfg.ReadyCheckInterval = 100 * time.Millisecond
	s, err := Start(t.Context(), cfg, WithConnect(testConnect(&recorder{})), WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	reg := s.Registry()
	gauge := func(name string) float64 { return counterValue(t, reg, name, "") }
	const n = 20 // 10 steps per poller: about 1 s of drain
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = open(t, s.Addr())
	}
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == n }, "all sockets open")
	waitFor(t, 5*time.Second, func() bool { return gauge("phxgate_gateway_ready") == 1 }, "ready 1 before the drain")
	for _, name := range []string{"phxgate_gateway_draining", "phxgate_gateway_drain_remaining_connections", "phxgate_gateway_drain_duration_seconds"} {
		if v := gauge(name); v != 0 {
			t.Errorf("%s = %v before the drain, want 0", name, v)
		}
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { // answer the 1012 at once, as a browser does
			for {
				h, _, err := c.readFrame()
				if err != nil {
					return
				}
				if h.OpCode == ws.OpClose {
					break
				}
			}
			_, _ = c.conn.Write(clientFrame(0x88, true, binary.BigEndian.AppendUint16(nil, 1012), -1))
			_, _ = io.Copy(io.Discard, c.br)
		})
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := contextWithTimeout(20 * time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	var first float64
	waitFor(t, 10*time.Second, func() bool {
		left := gauge("phxgate_gateway_drain_remaining_connections")
		first = gauge("phxgate_gateway_drain_duration_seconds")
		return gauge("phxgate_gateway_draining") == 1 && left > 0 && left < n && first > 0
	}, "draining 1, some sockets closed and some left, a duration while draining")
	if v := gauge("phxgate_gateway_ready"); v != 0 {
		t.Errorf("phxgate_gateway_ready = %v while draining, want 0", v)
	}
	// The second sample must itself be taken mid-drain: once the drain
	// ends the final duration is always above first. Read the duration
	// first, then check the drain was still running after it.
	waitFor(t, 10*time.Second, func() bool {
		d := gauge("phxgate_gateway_drain_duration_seconds")
		return d > first && gauge("phxgate_gateway_draining") == 1 && gauge("phxgate_gateway_drain_remaining_connections") > 0
	}, "the duration growing while draining (draining 1, sockets left)")
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	if v := gauge("phxgate_gateway_drain_remaining_connections"); v != 0 {
		t.Errorf("phxgate_gateway_drain_remaining_connections = %v after the drain, want 0", v)
	}
	took := gauge("phxgate_gateway_drain_duration_seconds")
	if took < (9 * cfg.DrainInterval).Seconds() {
		t.Errorf("phxgate_gateway_drain_duration_seconds = %v, want at least %v (10 batches per poller)", took, (9 * cfg.DrainInterval).Seconds())
	}
	if again := gauge("phxgate_gateway_drain_duration_seconds"); again != took {
		t.Errorf("phxgate_gateway_drain_duration_seconds moved after the drain: %v then %v", took, again)
	}
	checkGoroutines(t, base)
}
