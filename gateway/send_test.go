//go:build linux

package gateway

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// detachedConn is a conn on a poller that is never run (woken stays set,
// so no eventfd is written): enough to measure the Send path alone.
func detachedConn(tb testing.TB) (*conn, *poller) {
	tb.Helper()
	srv := &Server{cfg: testConfig(), log: discardLogger()}
	srv.metrics = newMetrics(prometheus.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 })
	p := &poller{srv: srv, woken: true}
	return &conn{p: p, queue: make([][]byte, 0, maxRetainedQueueCap)}, p
}

// flushed emulates a completed flush between sends.
func flushed(c *conn, p *poller) {
	c.mu.Lock()
	clear(c.queue)
	c.queue = c.queue[:0]
	p.queuedBytes.Add(-int64(c.queued))
	c.queued, c.dirty = 0, false
	c.mu.Unlock()
	p.mu.Lock()
	clear(p.dirty)
	p.dirty = p.dirty[:0]
	p.mu.Unlock()
}

// TestSendDoesNotAllocate pins the per-subscriber cost of a broadcast: a
// shared frame is queued by reference, with no copy and no allocation.
func TestSendDoesNotAllocate(t *testing.T) {
	c, p := detachedConn(t)
	frame := make([]byte, 200)
	c.Send(frame) // warm the poller's dirty list
	flushed(c, p)
	allocs := testing.AllocsPerRun(1000, func() {
		c.Send(frame)
		c.Send(frame)
		flushed(c, p)
	})
	if allocs != 0 {
		t.Fatalf("Send allocates %v times per two frames, want 0", allocs)
	}
}

func TestSendOverQueueCapClosesWith1013(t *testing.T) {
	c, p := detachedConn(t)
	frame := make([]byte, 1024)
	for range testConfig().WriteQueueMaxBytes/len(frame) + 1 {
		c.Send(frame)
	}
	if c.state.Load() != stateClosing || c.reason != "slow_consumer" {
		t.Fatalf("state %d reason %q, want closing/slow_consumer", c.state.Load(), c.reason)
	}
	if len(c.queue) != 1 || string(c.queue[0]) != string(closeFrame(1013)) {
		t.Fatalf("queue = %d frames, want only the 1013 close frame", len(c.queue))
	}
	if got := p.queuedBytes.Load(); got != int64(len(closeFrame(1013))) {
		t.Fatalf("queued bytes = %d", got)
	}
	c.Send(frame) // dropped: the socket is closing
	if len(c.queue) != 1 {
		t.Fatal("Send after close queued a frame")
	}
}

func BenchmarkSend(b *testing.B) {
	c, p := detachedConn(b)
	frame := make([]byte, 200)
	b.ReportAllocs()
	for b.Loop() {
		for range 8 {
			c.Send(frame)
		}
		flushed(c, p)
	}
}
