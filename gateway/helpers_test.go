//go:build linux

package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels"
	"github.com/prometheus/client_golang/prometheus"
)

// waitFor polls cond until it holds or timeout passes.
func waitFor(tb testing.TB, timeout time.Duration, cond func() bool, what string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// echoHandler is a small real SocketHandler: it echoes every message back
// and understands a few commands used to drive the tests.
type echoHandler struct {
	c    channels.Conn
	info channels.ConnectInfo
	rec  *recorder
}

type recorder struct {
	mu         sync.Mutex
	infos      []channels.ConnectInfo
	terminated []backends.LeaveReason
	stream     *testStream // the last stream: command
}

func (r *recorder) terminations() []backends.LeaveReason {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]backends.LeaveReason(nil), r.terminated...)
}

func (r *recorder) lastInfo() channels.ConnectInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.infos[len(r.infos)-1]
}

func serverFrame(op ws.OpCode, payload []byte) []byte {
	var b bytes.Buffer
	_ = ws.WriteFrame(&b, ws.NewFrame(op, true, payload))
	return b.Bytes()
}

func (h *echoHandler) HandleText(data []byte) error {
	s := string(data)
	switch {
	case s == "panic":
		panic("test panic")
	case s == "malformed":
		return &channels.CloseError{Code: channels.CloseInternalError, Reason: channels.ReasonMalformed, Err: channels.ErrMalformed}
	case s == "kick":
		h.c.Close(channels.CloseGoingAway, channels.ReasonKicked)
		return nil
	case strings.HasPrefix(s, "flood:"):
		// flood:N:SIZE queues N frames of SIZE bytes at once.
		parts := strings.Split(s, ":")
		n, _ := strconv.Atoi(parts[1])
		size, _ := strconv.Atoi(parts[2])
		frame := serverFrame(ws.OpBinary, bytes.Repeat([]byte("x"), size))
		for range n {
			h.c.Send(frame) // one shared frame, queued n times
		}
		return nil
	case strings.HasPrefix(strings.Trim(s, `["]`), "stream:"):
		// stream:N:SIZE (or ["stream:N:SIZE"], a long-poll text line)
		// queues "before", a stream of N text frames of SIZE bytes
		// (testStream, kept in h.rec.stream), then "after".
		parts := strings.Split(strings.Trim(s, `["]`), ":")
		n, _ := strconv.Atoi(parts[1])
		size, _ := strconv.Atoi(parts[2])
		wc, _ := h.c.(*conn)
		st := &testStream{c: wc, n: n, size: size}
		h.rec.mu.Lock()
		h.rec.stream = st
		h.rec.mu.Unlock()
		h.c.Send(serverFrame(ws.OpText, []byte("before")))
		h.c.(channels.StreamConn).SendStream(st)
		h.c.Send(serverFrame(ws.OpText, []byte("after")))
		return nil
	}
	h.c.Send(serverFrame(ws.OpText, data))
	return nil
}

func (h *echoHandler) HandleBinary(data []byte) error {
	h.c.Send(serverFrame(ws.OpBinary, data))
	return nil
}

func (h *echoHandler) Terminate(r backends.LeaveReason) {
	h.rec.mu.Lock()
	h.rec.terminated = append(h.rec.terminated, r)
	h.rec.mu.Unlock()
}

func testConnect(rec *recorder) ConnectFunc {
	return func(c channels.Conn, info channels.ConnectInfo) (SocketHandler, error) {
		rec.mu.Lock()
		rec.infos = append(rec.infos, info)
		rec.mu.Unlock()
		if strings.Contains(string(info.Params), `"refuse"`) {
			return nil, ErrRefused
		}
		return &echoHandler{c: c, info: info, rec: rec}, nil
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// counterValue reads a counter or gauge (with one label value, or none)
// from the registry.
func counterValue(tb testing.TB, reg *prometheus.Registry, name, label string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

type testServer struct {
	*Server
	rec *recorder
}

func testConfig() Config {
	cfg := NewConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	cfg.APIListen = "" // the tests of the Gateway service turn it on
	cfg.HandshakeWorkers = 8
	cfg.Pollers = 2
	cfg.MaxMessageSize = 4096
	// Transport tests open many sockets from 127.0.0.1 at once; the caps
	// have tests of their own (auth_test.go).
	cfg.Limits.IPMaxConns = 10_000
	cfg.Limits.IPHandshakeBurst = 10_000
	cfg.Limits.IPHandshakesPerSecond = 10_000
	return cfg
}

// admitAll bypasses the production admission (origin, caps, tokens) for the
// transport tests, which exercise the handshake with made-up tokens.
func admitAll(*Request) (int, Releaser) { return 0, nil }

func startServer(tb testing.TB, mod func(*Config), opts ...Option) *testServer {
	tb.Helper()
	cfg := testConfig()
	if mod != nil {
		mod(&cfg)
	}
	rec := &recorder{}
	all := append([]Option{WithConnect(testConnect(rec)), WithAdmit(admitAll), WithLogger(discardLogger())}, opts...)
	s, err := Start(context.Background(), cfg, all...)
	if err != nil {
		tb.Fatalf("Start: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			tb.Errorf("Shutdown: %v", err)
		}
	})
	return &testServer{Server: s, rec: rec}
}

// client is a raw TCP WebSocket client: handshake by hand, crafted frames.
type client struct {
	tb   testing.TB
	conn net.Conn
	br   *bufio.Reader
	resp *http.Response
}

func dialRaw(tb testing.TB, addr net.Addr) net.Conn {
	tb.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		tb.Fatalf("dial: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// handshake sends an upgrade for target with extra header lines and
// returns the client with the parsed response.
func handshake(tb testing.TB, addr net.Addr, target string, extra ...string) *client {
	tb.Helper()
	c := dialRaw(tb, addr)
	req := "GET " + target + " HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for _, h := range extra {
		req += h + "\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		tb.Fatalf("write handshake: %v", err)
	}
	return readUpgrade(tb, c)
}

func readUpgrade(tb testing.TB, c net.Conn) *client {
	tb.Helper()
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		tb.Fatalf("read handshake response: %v", err)
	}
	return &client{tb: tb, conn: c, br: br, resp: resp}
}

// open dials and requires a 101.
func open(tb testing.TB, addr net.Addr) *client {
	tb.Helper()
	c := handshake(tb, addr, "/socket/websocket?vsn=2.0.0")
	if c.resp.StatusCode != http.StatusSwitchingProtocols {
		tb.Fatalf("status = %d, want 101", c.resp.StatusCode)
	}
	return c
}

var testMask = [4]byte{0xa1, 0xb2, 0xc3, 0xd4}

// clientFrame builds a frame; declared overrides the length field when >= 0.
func clientFrame(b0 byte, masked bool, payload []byte, declared int64) []byte {
	f := []byte{b0}
	n := uint64(len(payload))
	if declared >= 0 {
		n = uint64(declared)
	}
	var mbit byte
	if masked {
		mbit = 0x80
	}
	switch {
	case n > 0xffff:
		f = append(f, mbit|127)
		f = binary.BigEndian.AppendUint64(f, n)
	case n >= 126:
		f = append(f, mbit|126)
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f = append(f, mbit|byte(n))
	}
	if masked {
		f = append(f, testMask[:]...)
		start := len(f)
		f = append(f, payload...)
		ws.Cipher(f[start:], testMask, 0)
		return f
	}
	return append(f, payload...)
}

func rawLen(n uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{0x82, 0x80 | 127}, n)
}

func (c *client) write(b []byte) {
	c.tb.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.tb.Fatalf("write: %v", err)
	}
}

func (c *client) sendText(s string) { c.write(clientFrame(0x81, true, []byte(s), -1)) }

// readFrame reads one server frame (server frames are never masked).
func (c *client) readFrame() (ws.Header, []byte, error) {
	h, err := ws.ReadHeader(c.br)
	if err != nil {
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server frame is masked")
	}
	if h.Length > 1<<24 {
		return h, nil, fmt.Errorf("absurd length %d", h.Length)
	}
	p := make([]byte, h.Length)
	_, err = io.ReadFull(c.br, p)
	return h, p, err
}

func (c *client) expectMessage(op ws.OpCode, want string) {
	c.tb.Helper()
	h, p, err := c.readFrame()
	if err != nil {
		c.tb.Fatalf("read frame: %v", err)
	}
	if h.OpCode != op || string(p) != want {
		c.tb.Fatalf("got op %v %q, want op %v %q", h.OpCode, p, op, want)
	}
}

// expectClose reads frames until a close frame and returns its code; it
// also checks the reason is empty and the server then ends the TCP stream.
func (c *client) expectClose(want uint16) {
	c.tb.Helper()
	for {
		h, p, err := c.readFrame()
		if err != nil {
			c.tb.Fatalf("waiting for close %d: %v", want, err)
		}
		if h.OpCode != ws.OpClose {
			continue
		}
		if len(p) != 2 {
			c.tb.Fatalf("close payload = %x, want a bare code (empty reason)", p)
		}
		if got := binary.BigEndian.Uint16(p); got != want {
			c.tb.Fatalf("close code = %d, want %d", got, want)
		}
		break
	}
	// Finish the closing handshake as a client would; the server then
	// closes the TCP connection.
	_, _ = c.conn.Write(clientFrame(0x88, true, binary.BigEndian.AppendUint16(nil, want), -1))
	if _, err := io.Copy(io.Discard, c.br); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.tb.Fatalf("server did not close the TCP connection after close %d", want)
		}
	}
}

// goroutines waits for the goroutine count to come back to base.
func checkGoroutines(tb testing.TB, base int) {
	tb.Helper()
	waitFor(tb, 5*time.Second, func() bool { return runtime.NumGoroutine() <= base }, fmt.Sprintf("goroutines back to %d (now %d)", base, runtime.NumGoroutine()))
}
