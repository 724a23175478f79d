//go:build linux

package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/phxgate/phxgate/backends"
)

// attack opens a socket, writes the crafted bytes, requires the exact close
// code, and then checks the server still serves a fresh socket.
func attack(t *testing.T, s *testServer, crafted []byte, want uint16) {
	t.Helper()
	c := open(t, s.Addr())
	c.write(crafted)
	c.expectClose(want)
	stillServes(t, s)
}

func stillServes(t *testing.T, s *testServer) {
	t.Helper()
	c := open(t, s.Addr())
	c.sendText("still alive")
	c.expectMessage(ws.OpText, "still alive")
}

func TestUnmaskedClientFrame(t *testing.T) {
	s := startServer(t, nil)
	attack(t, s, clientFrame(0x81, false, []byte("hi"), -1), 1002)
}

func TestReservedBitsSet(t *testing.T) {
	s := startServer(t, nil)
	for _, rsv := range []byte{0x40, 0x20, 0x10} {
		attack(t, s, clientFrame(0x81|rsv, true, []byte("hi"), -1), 1002)
	}
}

func TestUnknownOpcode(t *testing.T) {
	s := startServer(t, nil)
	for _, op := range []byte{0x3, 0x7, 0xb, 0xf} {
		attack(t, s, clientFrame(0x80|op, true, nil, -1), 1002)
	}
}

func TestOversizedMessageSingleFrame(t *testing.T) {
	s := startServer(t, nil) // max_message_size 4096 in tests
	// The header alone is enough: the declared length is refused before a
	// payload byte is read.
	attack(t, s, clientFrame(0x82, true, nil, 4097)[:8], 1009)
	// And with the whole payload sent.
	attack(t, s, clientFrame(0x82, true, make([]byte, 5000), -1), 1009)
}

func TestOversizedMessageManySmallFragments(t *testing.T) {
	s := startServer(t, nil)
	var b []byte
	b = append(b, clientFrame(0x02, true, make([]byte, 100), -1)...)
	for range 4096/100 + 1 {
		b = append(b, clientFrame(0x00, true, make([]byte, 100), -1)...)
	}
	attack(t, s, b, 1009)
}

func TestControlFrameOver125Bytes(t *testing.T) {
	s := startServer(t, nil)
	attack(t, s, clientFrame(0x89, true, make([]byte, 126), -1), 1002)
}

func TestFragmentedControlFrame(t *testing.T) {
	s := startServer(t, nil)
	attack(t, s, clientFrame(0x09, true, []byte("p"), -1), 1002)
}

func TestContinuationWithoutStart(t *testing.T) {
	s := startServer(t, nil)
	attack(t, s, clientFrame(0x80, true, []byte("x"), -1), 1002)
}

func TestNewDataFrameInsideFragmentedMessage(t *testing.T) {
	s := startServer(t, nil)
	attack(t, s, append(clientFrame(0x01, true, []byte("a"), -1), clientFrame(0x81, true, []byte("b"), -1)...), 1002)
}

func TestHeaderDeclaring2Pow63Bytes(t *testing.T) {
	s := startServer(t, nil)
	tests := []struct {
		name string
		n    uint64
		want uint16
	}{
		{name: "2^63 (MSB set, invalid per RFC 6455)", n: 1 << 63, want: 1002},
		{name: "2^63-1", n: 1<<63 - 1, want: 1009},
		{name: "2^64-1", n: 1<<64 - 1, want: 1002},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			attack(t, s, append(rawLen(tt.n), testMask[:]...), tt.want)
			runtime.ReadMemStats(&after)
			// Two sockets and their handshakes run in that window; a
			// declared-size allocation would be exabytes (or a panic).
			if d := after.TotalAlloc - before.TotalAlloc; d > 8<<20 {
				t.Errorf("allocated %d bytes during the attack", d)
			}
		})
	}
}

func TestInvalidUTF8TextFrame(t *testing.T) {
	s := startServer(t, nil)
	attack(t, s, clientFrame(0x81, true, []byte{'o', 'k', 0xff}, -1), 1007)
	// Split across fragments too: the whole message is validated.
	attack(t, s, append(clientFrame(0x01, true, []byte{0xe2, 0x82}, -1), clientFrame(0x80, true, []byte{'A'}, -1)...), 1007)
}

func TestBadClientClose(t *testing.T) {
	s := startServer(t, nil)
	tests := []struct {
		name    string
		payload []byte
		want    uint16
	}{
		{name: "one byte payload", payload: []byte{3}, want: 1002},
		{name: "code 999", payload: binary.BigEndian.AppendUint16(nil, 999), want: 1002},
		{name: "code 1005 is never on the wire", payload: binary.BigEndian.AppendUint16(nil, 1005), want: 1002},
		{name: "code 5000", payload: binary.BigEndian.AppendUint16(nil, 5000), want: 1002},
		{name: "invalid utf8 reason", payload: append(binary.BigEndian.AppendUint16(nil, 1000), 0xff), want: 1007},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			attack(t, s, clientFrame(0x88, true, tt.payload, -1), tt.want)
		})
	}
}

func TestClientCloseIsEchoed(t *testing.T) {
	s := startServer(t, nil)
	tests := []struct {
		name    string
		payload []byte
		want    uint16
	}{
		{name: "no code answers 1000", payload: nil, want: 1000},
		{name: "1000", payload: binary.BigEndian.AppendUint16(nil, 1000), want: 1000},
		{name: "1001 with reason", payload: append(binary.BigEndian.AppendUint16(nil, 1001), "bye"...), want: 1001},
		{name: "4000 application code", payload: binary.BigEndian.AppendUint16(nil, 4000), want: 4000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := open(t, s.Addr())
			c.write(clientFrame(0x88, true, tt.payload, -1))
			c.expectClose(tt.want)
		})
	}
	waitFor(t, 5*time.Second, func() bool { return len(s.rec.terminations()) == 4 }, "4 terminations")
	for _, r := range s.rec.terminations() {
		if r != backends.LeaveDisconnected {
			t.Errorf("terminate reason %q, want %q", r, backends.LeaveDisconnected)
		}
	}
}

func TestHandshakeNeverCompletes(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.HandshakeTimeout = 200 * time.Millisecond
		c.HandshakeWorkers = 1
	})
	// Occupy the only worker with a half-sent request.
	c := dialRaw(t, s.Addr())
	_, _ = io.WriteString(c, "GET /socket/websocket HTTP/1.1\r\nHost: x\r\n")
	// The client's own deadline is 10 s: EOF (not a timeout) means the
	// server's handshake deadline fired and it hung up.
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("want EOF from the server, got %v", err)
	}
	// The worker is free again.
	stillServes(t, s)
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, s.Registry(), "phxgate_gateway_handshakes_total", "timeout") == 1
	}, "timeout counted")
}

func TestPartialFrameThenSilence(t *testing.T) {
	s := startServer(t, func(c *Config) { c.IdleTimeout = time.Second })
	c := open(t, s.Addr())
	// Half a header, then nothing: the idle sweep closes it with 1002.
	c.write(clientFrame(0x81, true, []byte("hello"), -1)[:3])
	c.expectClose(1002)
	waitFor(t, 5*time.Second, func() bool {
		tr := s.rec.terminations()
		return len(tr) == 1 && tr[0] == backends.LeaveTimedOut
	}, "terminate with timed_out")
	stillServes(t, s)
}

func TestIdleTimeoutResetByData(t *testing.T) {
	s := startServer(t, func(c *Config) { c.IdleTimeout = 2 * time.Second })
	c := open(t, s.Addr())
	// Keep talking for longer than the idle timeout; the socket stays.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		c.sendText("tick")
		c.expectMessage(ws.OpText, "tick")
		_ = c.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, _, err := c.readFrame(); err == nil {
			t.Fatal("unexpected frame while idle")
		}
		c.br.Reset(c.conn)
		_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
}

// TestIdleTimeoutDisabled: idle_timeout 0 disables the idle close, so a
// socket that sends nothing outlives several sweeps (the sweep is what
// would close it) and still works afterwards.
func TestIdleTimeoutDisabled(t *testing.T) {
	s := startServer(t, func(c *Config) { c.IdleTimeout = 0 })
	c := open(t, s.Addr())
	// Silent for two sweeps and a half: any frame, EOF or reset means the
	// server acted on the idle socket; only the read deadline may end this.
	_ = c.conn.SetReadDeadline(time.Now().Add(2*sweepInterval + sweepInterval/2))
	h, _, err := c.readFrame()
	var ne net.Error
	if err == nil {
		t.Fatalf("idle socket got a frame (opcode %v) with idle_timeout 0", h.OpCode)
	}
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("idle socket ended with idle_timeout 0: %v", err)
	}
	c.br.Reset(c.conn)
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	c.sendText("tick")
	c.expectMessage(ws.OpText, "tick")
	if n := s.Connections(); n != 1 {
		t.Fatalf("Connections() = %d, want 1", n)
	}
}

func TestSlowConsumer(t *testing.T) {
	s := startServer(t, func(c *Config) { c.WriteQueueMaxBytes = 64 << 10 })
	c := open(t, s.Addr())
	// The client never reads; the server queues 100 × 4 KiB, over the cap.
	for range 64 {
		c.sendText("flood:100:4000")
	}
	waitFor(t, 10*time.Second, func() bool {
		return counterValue(t, s.Registry(), "phxgate_slow_consumers_total", "") >= 1
	}, "a slow consumer")
	// Now read: we get some data frames and then exactly 1013.
	c.expectClose(1013)
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == 0 }, "socket released")
	if q := s.queuedBytes(); q != 0 {
		t.Errorf("write queue bytes = %v after close, want 0", q)
	}
	stillServes(t, s)
}

// TestWriteStallClosesAClientThatStopsReading: a client that stops
// reading while its output stays under write_queue_max_bytes (here far
// under: the queue may hold 64 MiB) is closed with 1013 once nothing has
// been written to it for write_stall_timeout, and everything it held is
// released.
func TestWriteStallClosesAClientThatStopsReading(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.WriteQueueMaxBytes = 64 << 20
		c.WriteStallTimeout = time.Second
	})
	c := open(t, s.Addr())
	// 20 MB: more than the kernel's buffers on both ends hold, so the
	// rest waits in the queue, which nothing drains.
	c.sendText("flood:5000:4000")
	waitFor(t, 5*time.Second, func() bool { return s.queuedBytes() > 0 }, "output queued")
	waitFor(t, 20*time.Second, func() bool {
		return counterValue(t, s.Registry(), "phxgate_slow_consumers_total", "") >= 1
	}, "the stalled socket closed as a slow consumer")
	if q := s.queuedBytes(); q != 0 {
		t.Errorf("write queue bytes = %v after the close, want 0", q)
	}
	c.expectClose(1013)
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == 0 }, "socket released")
	stillServes(t, s)
}

// A client reading slowly but steadily is not stalled: every write that
// takes bytes restarts the clock.
func TestWriteStallSparesASlowReader(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.WriteQueueMaxBytes = 64 << 20
		c.WriteStallTimeout = time.Second
	})
	c := open(t, s.Addr())
	c.sendText("flood:5000:4000")
	waitFor(t, 5*time.Second, func() bool { return s.queuedBytes() > 0 }, "output queued")
	// Read it all over about 3 s, well past the timeout in total, with no
	// pause near it.
	_ = c.conn.SetDeadline(time.Now().Add(60 * time.Second))
	buf := make([]byte, 64<<10)
	total, want := 0, 5000*(4000+4)
	for total < want {
		n, err := c.br.Read(buf)
		if err != nil {
			t.Fatalf("read after %d of %d bytes: %v", total, want, err)
		}
		total += n
		time.Sleep(10 * time.Millisecond) // a slow reader, on purpose
	}
	if n := counterValue(t, s.Registry(), "phxgate_slow_consumers_total", ""); n != 0 {
		t.Fatalf("slow consumers = %v, want 0", n)
	}
}

func TestHandlerPanicClosesOnlyThatSocket(t *testing.T) {
	s := startServer(t, nil)
	other := open(t, s.Addr())
	c := open(t, s.Addr())
	c.sendText("panic")
	c.expectClose(1011)
	other.sendText("fine")
	other.expectMessage(ws.OpText, "fine")
}

func TestMalformedPhoenixMessageCloses1011(t *testing.T) {
	s := startServer(t, nil)
	c := open(t, s.Addr())
	c.sendText("malformed")
	c.expectClose(1011)
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, s.Registry(), "phxgate_gateway_disconnects_total", "malformed_message") == 1
	}, "disconnect reason malformed_message")
}

func TestServerInitiatedCloseAfterQueuedFrames(t *testing.T) {
	s := startServer(t, nil)
	c := open(t, s.Addr())
	c.sendText("one")
	c.sendText("kick")
	c.expectMessage(ws.OpText, "one")
	c.expectClose(1001)
}

func TestPingPongAndFragments(t *testing.T) {
	s := startServer(t, nil)
	c := open(t, s.Addr())
	c.write(clientFrame(0x89, true, []byte("ping!"), -1))
	c.expectMessage(ws.OpPong, "ping!")
	c.write(clientFrame(0x8a, true, []byte("unsolicited"), -1)) // ignored
	var b []byte
	b = append(b, clientFrame(0x01, true, []byte("hel"), -1)...)
	b = append(b, clientFrame(0x89, true, nil, -1)...)
	b = append(b, clientFrame(0x00, true, []byte("lo "), -1)...)
	b = append(b, clientFrame(0x80, true, []byte("wörld"), -1)...)
	// Byte by byte, to exercise partial headers and payloads.
	for i := range b {
		c.write(b[i : i+1])
	}
	c.expectMessage(ws.OpPong, "")
	c.expectMessage(ws.OpText, "hello wörld")
	c.write(clientFrame(0x82, true, []byte{0, 1, 2}, -1))
	c.expectMessage(ws.OpBinary, "\x00\x01\x02")
}

// TestFramesSentWithTheHandshake covers a client that pipelines its first
// frame right behind the upgrade request.
func TestFramesSentWithTheHandshake(t *testing.T) {
	s := startServer(t, nil)
	conn := dialRaw(t, s.Addr())
	req := "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	_, _ = conn.Write(append([]byte(req), clientFrame(0x81, true, []byte("early"), -1)...))
	c := readUpgrade(t, conn)
	c.expectMessage(ws.OpText, "early")
}

func TestManyFramesFromAnotherGoroutineStayInOrder(t *testing.T) {
	s := startServer(t, func(c *Config) { c.WriteQueueMaxBytes = 16 << 20 })
	c := open(t, s.Addr())
	c.sendText("flood:20000:10")
	n := 0
	for n < 20000 {
		h, p, err := c.readFrame()
		if err != nil {
			t.Fatalf("after %d frames: %v", n, err)
		}
		if h.OpCode != ws.OpBinary || !bytes.Equal(p, []byte("xxxxxxxxxx")) {
			t.Fatalf("frame %d: op %v %q", n, h.OpCode, p)
		}
		n++
	}
	c.sendText("end")
	c.expectMessage(ws.OpText, "end")
}

func TestShutdownDrainsWith1012(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := testConfig()
	rec := &recorder{}
	s, err := Start(t.Context(), cfg, WithConnect(testConnect(rec)), WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, rec: rec}
	clients := make([]*client, 5)
	for i := range clients {
		clients[i] = open(t, ts.Addr())
	}
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == 5 }, "5 sockets")
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(t.Context()) }()
	for _, c := range clients {
		c.expectClose(1012)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	tr := rec.terminations()
	if len(tr) != 5 {
		t.Fatalf("terminations = %v, want 5", tr)
	}
	for _, r := range tr {
		if r != backends.LeaveDrained {
			t.Errorf("reason %q, want drained", r)
		}
	}
	if _, err := net.Dial("tcp", s.Addr().String()); err == nil {
		t.Error("listener still accepting after Shutdown")
	}
	for _, c := range clients {
		c.conn.Close()
	}
	checkGoroutines(t, base)
}

func TestShutdownCutsStragglers(t *testing.T) {
	cfg := testConfig()
	rec := &recorder{}
	s, err := Start(t.Context(), cfg, WithConnect(testConnect(rec)), WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	c := open(t, s.Addr()) // never reads nor answers the close
	defer c.conn.Close()
	// Registered with a poller first: a socket still being handed over
	// when the drain starts is closed with the pollers, not cut.
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == 1 }, "1 socket")
	ctx, cancel := contextWithTimeout(50 * time.Millisecond)
	defer cancel()
	// The client never completes the closing handshake, so the drain
	// cannot finish in time: Shutdown reports the deadline and cuts it.
	err = s.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == 0 }, "the straggler cut")
	if got := len(rec.terminations()); got != 1 {
		t.Fatalf("terminations = %d, want 1", got)
	}
}

func TestAttackSurvivalUnderLoad(t *testing.T) {
	// Every attack in a row on one server; afterwards it is healthy and
	// holds no sockets or queued bytes.
	s := startServer(t, nil)
	attacks := map[string][]byte{
		"unmasked": clientFrame(0x81, false, []byte("x"), -1),
		"rsv":      clientFrame(0xc1, true, nil, -1),
		"opcode":   clientFrame(0x83, true, nil, -1),
		"huge":     append(rawLen(1<<63-1), testMask[:]...),
		"utf8":     clientFrame(0x81, true, []byte{0xc0}, -1),
		"garbage":  []byte(strings.Repeat("\xff", 100)),
	}
	for name, b := range attacks {
		t.Run(name, func(t *testing.T) {
			c := open(t, s.Addr())
			c.write(b)
			_, _ = io.Copy(io.Discard, c.conn)
		})
	}
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == 0 }, "all sockets closed")
	stillServes(t, s)
}

// TestShutdownSpreadsDrainInBatches drains more sockets than one batch with
// a deadline, exercising the paced path: every socket still gets 1012, in
// more than one batch, and the 1012s arrive spread over drain ticks rather
// than all at once.
func TestShutdownSpreadsDrainInBatches(t *testing.T) {
	cfg := testConfig()
	cfg.Pollers = 1
	rec := &recorder{}
	s, err := Start(t.Context(), cfg, WithConnect(testConnect(rec)), WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	const n = 3*minDrainBatch + 5
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = open(t, s.Addr())
	}
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == n }, "all sockets open")
	// Each client records when its close arrives and answers it only once
	// every close has arrived: an answer wakes the poller, which would run
	// the next batch early and hide the pacing this test looks for.
	arrivals := make(chan closeSeen, n)
	release := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		watchClose(&wg, c, arrivals, release)
	}
	ctx, cancel := contextWithTimeout(8 * time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	seen := expectAll1012(t, n, arrivals)
	close(release)
	wg.Wait()
	if t.Failed() {
		return
	}
	var first, last time.Time
	for _, a := range seen {
		if first.IsZero() || a.at.Before(first) {
			first = a.at
		}
		if a.at.After(last) {
			last = a.at
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := len(rec.terminations()); got != n {
		t.Fatalf("terminations = %d, want %d", got, n)
	}
	// With 4 s of spread the batch is minDrainBatch, so n sockets take
	// four batches, three ticks apart. Only a lower bound on the timing
	// (at least one tick), which a loaded machine can only make longer.
	// The poller has exited (Shutdown waited for it), so its batch size
	// can be read.
	if b := s.pollers[0].drainBatch; b <= 0 || b >= n {
		t.Fatalf("drain batch %d, want in (0, %d): more than one batch", b, n)
	}
	if span := last.Sub(first); span < DefaultDrainInterval {
		t.Fatalf("1012s arrived within %v, want spread over at least one drain interval (%v)", span, DefaultDrainInterval)
	}
}

// TestSlotReuseKeepsSocketsApart closes some sockets and opens new ones
// (which reuse the freed poller slots), then checks every socket still gets
// only its own frames.
func TestSlotReuseKeepsSocketsApart(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Pollers = 1 })
	var live []*client
	for i := range 20 {
		c := open(t, s.Addr())
		if i%2 == 1 {
			c.write(clientFrame(0x88, true, nil, -1))
			c.expectClose(1000)
			continue
		}
		live = append(live, c)
	}
	waitFor(t, 5*time.Second, func() bool { return s.Connections() == 10 }, "10 sockets left")
	for range 10 {
		live = append(live, open(t, s.Addr()))
	}
	for i, c := range live {
		c.sendText(strings.Repeat("m", i+1))
	}
	for i, c := range live {
		c.expectMessage(ws.OpText, strings.Repeat("m", i+1))
	}
}
