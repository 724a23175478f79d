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
	srv.metrics = newMetrics(prometheus.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 }, 1<<30)
	p := &poller{srv: srv, woken: true}
	return &conn{p: p}, p
}

// flushed emulates a completed flush between sends.
func flushed(c *conn, p *poller) {
	c.mu.Lock()
	if q := c.out; q != nil {
		before := q.charged
		q.takePong()
		p.queuedBytes.Add(q.charged - before)
		n := -int(q.off)
		for i := range q.n {
			n += len(q.at(i))
		}
		before = q.charged
		q.written(n)
		p.queuedBytes.Add(q.charged - before)
	}
	c.dirty, c.urgent = false, false
	c.mu.Unlock()
	p.mu.Lock()
	clear(p.urgent)
	p.urgent = p.urgent[:0]
	clear(p.bulk)
	p.bulk, p.bulkHead = p.bulk[:0], 0
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
	for range testConfig().WriteQueueMaxBytes/int(cost(len(frame))) + 1 {
		c.Send(frame)
	}
	if c.state.Load() != stateClosing || c.reason != "slow_consumer" {
		t.Fatalf("state %d reason %q, want closing/slow_consumer", c.state.Load(), c.reason)
	}
	if c.out.n != 1 || string(c.out.at(0)) != string(closeFrame(1013)) {
		t.Fatalf("queue = %d frames, want only the 1013 close frame", c.out.n)
	}
	if got, want := p.queuedBytes.Load(), cost(len(closeFrame(1013))); got != want {
		t.Fatalf("queued bytes = %d, want %d", got, want)
	}
	c.Send(frame) // dropped: the socket is closing
	if c.out.n != 1 {
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

// TestTinyFramesChargedTheirRealCost: a socket that never reads, sent
// frames of 2 bytes each (as pongs, short replies or refusals are), is
// closed as a slow consumer before what its queue really holds passes the
// cap by much: each frame is charged its bookkeeping, not only its bytes.
// Each accepted frame holds at least its ring slot (a 24-byte slice header)
// and its own smallest allocation (8 bytes).
func TestTinyFramesChargedTheirRealCost(t *testing.T) {
	c, _ := detachedConn(t)
	limit := testConfig().WriteQueueMaxBytes
	accepted := 0
	for {
		c.Send([]byte{0x8a, 0}) // a fresh 2-byte frame each time
		if c.state.Load() != stateOpen {
			break
		}
		accepted++
		if accepted > limit {
			t.Fatal("never closed")
		}
	}
	held := accepted * (24 + 8)
	t.Logf("%d frames accepted under a %d-byte cap: at least %d bytes held", accepted, limit, held)
	if held > limit*5/4 {
		t.Errorf("%d tiny frames accepted: at least %d bytes held for a %d-byte cap", accepted, held, limit)
	}
}
