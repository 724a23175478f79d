//go:build linux

package gateway

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/phxgate/phxgate/channels"
)

// testStream is a channels.FrameStream of n text frames of size bytes
// ("piece <i> xxx…"). On a conn it checks, at each Next, that nothing is
// queued before it and records the most the queue held.
type testStream struct {
	c       *conn
	n, size int
	i       int
	nexts   atomic.Int32
	closes  atomic.Int32
	early   atomic.Int32 // Next called with frames still queued before the stream
	maxHeld atomic.Int64 // the most the queue charged at a Next
}

func (s *testStream) Next() []byte {
	s.nexts.Add(1)
	if s.c != nil { // called with c.mu held
		if !s.c.out.streamAtFront() {
			s.early.Add(1)
		}
		if h := s.c.out.charged; h > s.maxHeld.Load() {
			s.maxHeld.Store(h)
		}
	}
	if s.i >= s.n {
		return nil
	}
	p := []byte("piece " + strconv.Itoa(s.i) + " ")
	p = append(p, strings.Repeat("x", max(0, s.size-len(p)))...)
	s.i++
	return serverFrame(ws.OpText, p)
}

func (s *testStream) Close() { s.closes.Add(1) }

// A stream keeps its place: frames queued before it go first, frames
// queued after it wait for its last frame, and the writer asks for each
// frame only once everything before it is written, so the queue holds
// one frame of the stream at a time (plus what waits behind it).
func TestStreamKeepsOrderAndIsPaced(t *testing.T) {
	s := startServer(t, nil)
	c := open(t, s.Addr())
	const n, size = 64, 8000
	c.sendText(fmt.Sprintf("stream:%d:%d", n, size))
	c.expectMessage(ws.OpText, "before")
	for i := range n {
		_, p, err := c.readFrame()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(p), "piece "+strconv.Itoa(i)+" ") || len(p) != size {
			t.Fatalf("frame %d: %.20q (%d bytes), want piece %d", i, p, len(p), i)
		}
	}
	c.expectMessage(ws.OpText, "after")
	s.rec.mu.Lock()
	st := s.rec.stream
	s.rec.mu.Unlock()
	waitFor(t, 5*time.Second, func() bool { return st.closes.Load() == 1 }, "the stream closed")
	if e := st.early.Load(); e != 0 {
		t.Errorf("Next called %d times with frames queued before the stream", e)
	}
	// At a Next the queue holds the stream's place and what waits behind
	// it ("after"), never a piece: the previous one is written.
	if h := st.maxHeld.Load(); h > 3*entryOverhead+64 {
		t.Errorf("the queue held %d bytes at a Next, want only the places of the stream and of what waits behind it", h)
	}
	if got := st.nexts.Load(); got != n+1 {
		t.Errorf("Next called %d times, want %d", got, n+1)
	}
	c.sendText("ping")
	c.expectMessage(ws.OpText, "ping")
	waitFor(t, 5*time.Second, func() bool { return queuedBytes(s) == 0 }, "the queues empty")
}

func queuedBytes(s *testServer) int64 {
	var n int64
	for _, p := range s.pollers {
		n += p.queuedBytes.Load()
	}
	return n
}

// Frames queued behind a stream that does not advance (the client does
// not read) count against write_queue_max_bytes: past it the socket is a
// slow consumer, closed with 1013, and the stream is closed once.
func TestFramesBehindAStreamCountTowardsTheQueueCap(t *testing.T) {
	c, p := detachedConn(t)
	st := &testStream{n: 1 << 20, size: 100}
	c.SendStream(st)
	frame := make([]byte, 1024)
	limit := testConfig().WriteQueueMaxBytes
	sent := 0
	for c.state.Load() == stateOpen {
		c.Send(frame)
		if sent++; sent > limit {
			t.Fatal("never closed")
		}
	}
	if want := (int64(limit)-entryOverhead)/cost(len(frame)) + 1; int64(sent) != want {
		t.Errorf("closed at frame %d, want %d (the stream's place and the frames behind it count)", sent, want)
	}
	if c.reason != channels.ReasonSlowConsumer || c.out.n != 1 || string(c.out.at(0)) != string(closeFrame(1013)) {
		t.Fatalf("reason %q, %d queued; want slow_consumer and only the 1013 close frame", c.reason, c.out.n)
	}
	if st.closes.Load() != 1 || st.nexts.Load() != 0 {
		t.Fatalf("stream: %d closes, %d nexts; want 1, 0", st.closes.Load(), st.nexts.Load())
	}
	if got, want := p.queuedBytes.Load(), cost(len(closeFrame(1013))); got != want {
		t.Fatalf("queued bytes = %d, want %d", got, want)
	}
	st2 := &testStream{n: 1}
	c.SendStream(st2) // closing: closed at once, never queued
	if st2.closes.Load() != 1 || c.out.n != 1 {
		t.Fatalf("SendStream on a closing socket: %d closes, %d queued", st2.closes.Load(), c.out.n)
	}
}

// A client that stops reading in the middle of a stream while the
// stream's frames are small: the stream stalls (nothing more is made
// than the socket takes), and when the socket closes the stream is
// closed, once.
func TestStreamClosedWithItsSocket(t *testing.T) {
	s := startServer(t, nil)
	c := open(t, s.Addr())
	c.sendText("stream:1000000:60000") // 60 GB if it were made at once
	c.expectMessage(ws.OpText, "before")
	var st *testStream
	waitFor(t, 5*time.Second, func() bool {
		s.rec.mu.Lock()
		defer s.rec.mu.Unlock()
		st = s.rec.stream
		return st != nil && st.nexts.Load() > 2
	}, "the stream started")
	// The client reads nothing more: the socket buffers fill and the
	// stream stalls.
	stalled := func() bool {
		a := st.nexts.Load()
		time.Sleep(50 * time.Millisecond)
		return st.nexts.Load() == a
	}
	waitFor(t, 10*time.Second, stalled, "the stream stalled")
	if n := st.nexts.Load(); n > 200 {
		t.Fatalf("%d frames made for a client that stopped reading", n)
	}
	c.conn.Close()
	waitFor(t, 10*time.Second, func() bool { return st.closes.Load() == 1 }, "the stream closed with its socket")
	waitFor(t, 5*time.Second, func() bool { return queuedBytes(s) == 0 }, "the queues empty")
	if st.closes.Load() != 1 {
		t.Fatalf("closed %d times", st.closes.Load())
	}
}

// A long-poll session takes a stream a share of longpoll.max_buffer_bytes
// per poll (a quarter): a stream larger than the whole buffer arrives in
// order over several polls, with what was sent before and after it in
// place, and the stream is closed once.
func TestLongPollStreamOverSeveralPolls(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.LongPoll.Window = 5 * time.Second
		c.LongPoll.MaxBufferBytes = 64 << 10
	})
	tok := lpStart(t, ts.Server, "vsn=2.0.0")
	const n, size = 40, 4000 // 160 KB: more than the session's whole buffer
	lpPost(t, ts.Server, tok, fmt.Sprintf(`["stream:%d:%d"]`, n, size))
	var got []string
	polls := 0
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < n+2 && time.Now().Before(deadline) {
		a := lpGet(t, ts.Server, tok)
		if a.body.Status != 200 {
			continue
		}
		polls++
		bytes := 0
		for _, m := range a.body.Messages {
			bytes += len(m)
		}
		if bytes > 16<<10+size {
			t.Errorf("one poll took %d bytes, want at most a quarter of the buffer and one frame", bytes)
		}
		got = append(got, a.body.Messages...)
	}
	if len(got) != n+2 || got[0] != "before" || got[n+1] != "after" {
		t.Fatalf("got %d messages (first %.20q, last %.20q), want before, %d pieces, after", len(got), got[0], got[len(got)-1], n)
	}
	for i := range n {
		if !strings.HasPrefix(got[1+i], "piece "+strconv.Itoa(i)+" ") {
			t.Fatalf("message %d: %.20q", 1+i, got[1+i])
		}
	}
	if polls < 4 {
		t.Errorf("%d polls for %d bytes, want the stream paced over several", polls, n*size)
	}
	ts.rec.mu.Lock()
	st := ts.rec.stream
	ts.rec.mu.Unlock()
	if st.closes.Load() != 1 {
		t.Fatalf("stream closed %d times", st.closes.Load())
	}
}
