package phx

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// waitFor polls cond every few milliseconds until it holds or the timeout
// passes (no bare sleeps in tests).
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkGoroutines fails the test if goroutines have not returned to the
// count at the time of the call once the test's cleanups have run.
func checkGoroutines(tb testing.TB) {
	tb.Helper()
	base := runtime.NumGoroutine()
	tb.Cleanup(func() {
		waitFor(tb, 5*time.Second, "goroutines back to baseline", func() bool {
			return runtime.NumGoroutine() <= base
		})
	})
}

// fakeServer is a scriptable Phoenix V2 server for client behaviour tests
// that need faults a real gateway does not produce on demand.
type fakeServer struct {
	tb  testing.TB
	ln  net.Listener
	url string

	// ignoreHeartbeats makes the server stop answering heartbeats.
	ignoreHeartbeats atomic.Bool
	// refuseJoins makes joins get an error reply.
	refuseJoins atomic.Bool
	// ignoreJoins makes joins get no reply at all.
	ignoreJoins atomic.Bool

	mu        sync.Mutex
	conns     []*fakeConn
	uris      []string
	protocols []string
	frames    []fakeFrame
}

type fakeFrame struct {
	conn int
	op   ws.OpCode
	data string
}

type fakeConn struct {
	nc  net.Conn
	wmu sync.Mutex
}

func (fc *fakeConn) send(tb testing.TB, s string) {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	_ = wsutil.WriteServerText(fc.nc, []byte(s))
}

func (fc *fakeConn) close(code ws.StatusCode) {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	_ = ws.WriteFrame(fc.nc, ws.NewCloseFrame(ws.NewCloseFrameBody(code, "")))
	_ = fc.nc.Close()
}

func newFakeServer(tb testing.TB) *fakeServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	fs := &fakeServer{tb: tb, ln: ln, url: "ws://" + ln.Addr().String() + "/socket/websocket"}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { fs.serve(nc) })
		}
	})
	tb.Cleanup(func() {
		_ = ln.Close()
		fs.mu.Lock()
		for _, c := range fs.conns {
			_ = c.nc.Close()
		}
		fs.mu.Unlock()
		wg.Wait()
	})
	return fs
}

func (fs *fakeServer) serve(nc net.Conn) {
	var uri, proto string
	u := ws.Upgrader{
		OnRequest: func(b []byte) error { uri = string(b); return nil },
		ProtocolCustom: func(b []byte) (string, bool) {
			proto = string(b)
			return "phoenix", true
		},
	}
	if _, err := u.Upgrade(nc); err != nil {
		_ = nc.Close()
		return
	}
	fc := &fakeConn{nc: nc}
	fs.mu.Lock()
	idx := len(fs.conns)
	fs.conns = append(fs.conns, fc)
	fs.uris = append(fs.uris, uri)
	fs.protocols = append(fs.protocols, proto)
	fs.mu.Unlock()
	defer nc.Close()
	rw := struct {
		*fakeConnReader
		*fakeConnWriter
	}{&fakeConnReader{nc}, &fakeConnWriter{fc}}
	for {
		data, op, err := wsutil.ReadClientData(rw)
		if err != nil {
			return
		}
		fs.mu.Lock()
		fs.frames = append(fs.frames, fakeFrame{conn: idx, op: op, data: string(data)})
		fs.mu.Unlock()
		if op != ws.OpText {
			continue
		}
		var m [5]json.RawMessage
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		var event string
		_ = json.Unmarshal(m[3], &event)
		reply := func(status, resp string) {
			fc.send(fs.tb, "["+string(m[0])+","+string(m[1])+","+string(m[2])+`,"phx_reply",{"status":"`+status+`","response":`+resp+"}]")
		}
		switch {
		case event == "heartbeat" && !fs.ignoreHeartbeats.Load():
			reply("ok", "{}")
		case event == "phx_join" && fs.ignoreJoins.Load():
		case event == "phx_join" && fs.refuseJoins.Load():
			reply("error", `{"reason":"denied"}`)
		case event == "phx_join", event == "phx_leave", event == "echo":
			reply("ok", string(m[4]))
		}
	}
}

type fakeConnReader struct{ nc net.Conn }

func (r *fakeConnReader) Read(p []byte) (int, error) { return r.nc.Read(p) }

type fakeConnWriter struct{ fc *fakeConn }

func (w *fakeConnWriter) Write(p []byte) (int, error) {
	w.fc.wmu.Lock()
	defer w.fc.wmu.Unlock()
	return w.fc.nc.Write(p)
}

func (fs *fakeServer) conn(i int) *fakeConn {
	fs.tb.Helper()
	// The client may see the handshake answer before serve records it.
	waitFor(fs.tb, 3*time.Second, "server side of connection "+strconv.Itoa(i), func() bool { return fs.connCount() > i })
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.conns[i]
}

func (fs *fakeServer) connCount() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.conns)
}

// framesWith returns the frames received that contain substr.
func (fs *fakeServer) framesWith(substr string) []fakeFrame {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var out []fakeFrame
	for _, f := range fs.frames {
		if strings.Contains(f.data, substr) {
			out = append(out, f)
		}
	}
	return out
}

func fastOptions() Options {
	return Options{
		HeartbeatInterval: -1,
		Reconnect:         func(int) time.Duration { return 5 * time.Millisecond },
		Rejoin:            func(int) time.Duration { return 5 * time.Millisecond },
		Timeout:           2 * time.Second,
	}
}

func connectT(tb testing.TB, url string, opts Options) *Socket {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := Connect(ctx, url, opts)
	if err != nil {
		tb.Fatalf("Connect: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func joinT(tb testing.TB, ch *Channel) Reply {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := ch.Join(ctx)
	if err != nil {
		tb.Fatalf("Join %s: %v", ch.Topic(), err)
	}
	return r
}

func TestConnectURLAndAuthToken(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	var n atomic.Int32
	opts := fastOptions()
	opts.AuthToken = "1234"
	opts.Params = func() map[string]any { return map[string]any{"token": "t" + strconv.Itoa(int(n.Add(1)))} }
	s := connectT(t, fs.url, opts)
	_ = s
	fs.conn(0)
	fs.mu.Lock()
	uri, proto := fs.uris[0], fs.protocols[0]
	fs.mu.Unlock()
	if uri != "/socket/websocket?token=t1&vsn=2.0.0" {
		t.Fatalf("request URI %q", uri)
	}
	// phoenix.js: btoa("1234") without padding, standard alphabet.
	if proto != "phoenix, base64url.bearer.phx.MTIzNA" {
		t.Fatalf("subprotocol %q", proto)
	}
}

func TestRefsAndHeartbeat(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	opts := fastOptions()
	opts.HeartbeatInterval = 20 * time.Millisecond
	s := connectT(t, fs.url, opts)
	ch := s.Channel("room:a", nil)
	joinT(t, ch)
	if ch.JoinRef() != "1" {
		t.Fatalf("first join ref %q, want 1", ch.JoinRef())
	}
	r, err := ch.Call(context.Background(), "echo", map[string]int{"x": 1})
	if err != nil || !r.OK() || string(r.Response) != `{"x":1}` {
		t.Fatalf("echo: %+v %v", r, err)
	}
	waitFor(t, 2*time.Second, "three heartbeats", func() bool { return len(fs.framesWith(`"heartbeat"`)) >= 3 })
	// Every ref on the wire is a distinct decimal string from one counter.
	seen := map[int]bool{}
	fs.mu.Lock()
	frames := append([]fakeFrame(nil), fs.frames...)
	fs.mu.Unlock()
	for _, f := range frames {
		var m [5]json.RawMessage
		if err := json.Unmarshal([]byte(f.data), &m); err != nil {
			t.Fatal(err)
		}
		var ref string
		if err := json.Unmarshal(m[1], &ref); err != nil {
			t.Fatalf("ref %s is not a string", m[1])
		}
		n, err := strconv.Atoi(ref)
		if err != nil || seen[n] {
			t.Fatalf("ref %q not a fresh decimal", ref)
		}
		seen[n] = true
		if strings.Contains(f.data, "heartbeat") && f.data != `[null,"`+ref+`","phoenix","heartbeat",{}]` {
			t.Fatalf("heartbeat frame %s", f.data)
		}
	}
	if !s.Connected() {
		t.Fatal("answered heartbeats must keep the socket up")
	}
}

func TestHeartbeatTimeoutReconnectsAndRejoins(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	fs.ignoreHeartbeats.Store(true)
	opts := fastOptions()
	opts.HeartbeatInterval = 30 * time.Millisecond
	s := connectT(t, fs.url, opts)
	var joins atomic.Int32
	ch := s.Channel("room:a", func() any { return map[string]int32{"n": joins.Add(1)} })
	joinT(t, ch)
	waitFor(t, 3*time.Second, "a second connection", func() bool { return fs.connCount() >= 2 })
	fs.ignoreHeartbeats.Store(false)
	waitFor(t, 3*time.Second, "rejoin on the new connection", func() bool {
		for _, f := range fs.framesWith("phx_join") {
			if f.conn >= 1 && strings.Contains(f.data, `{"n":`) && !strings.Contains(f.data, `{"n":1}`) {
				return ch.State() == StateJoined
			}
		}
		return false
	})
}

func TestServerCloseCodes(t *testing.T) {
	tests := []struct {
		name      string
		code      ws.StatusCode
		reconnect bool
	}{
		{"1000 stops reconnecting", 1000, false},
		{"1001 kick reconnects", 1001, true},
		{"1012 drain reconnects", 1012, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			fs := newFakeServer(t)
			s := connectT(t, fs.url, fastOptions())
			closed := make(chan int, 1)
			s.OnClose(func(code int) { closed <- code })
			fs.conn(0).close(tc.code)
			select {
			case code := <-closed:
				if code != int(tc.code) {
					t.Fatalf("OnClose code %d, want %d", code, tc.code)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("no OnClose")
			}
			if tc.reconnect {
				waitFor(t, 3*time.Second, "reconnect", func() bool { return fs.connCount() == 2 && s.Connected() })
				return
			}
			// A reconnect would have been dialled within 5ms; give the
			// socket a chance to misbehave by pushing a ping round trip
			// through a second client instead of sleeping.
			other := connectT(t, fs.url, fastOptions())
			_ = other.Close()
			// The fake server may register the other client a moment
			// after it connected: wait for it, then nothing more.
			waitFor(t, 3*time.Second, "the other client registered", func() bool { return fs.connCount() >= 2 })
			if fs.connCount() != 2 || s.Connected() {
				t.Fatalf("socket reconnected after a server 1000 (conns=%d)", fs.connCount())
			}
		})
	}
}

func TestIsMemberDropsStaleJoinRef(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	s := connectT(t, fs.url, fastOptions())
	ch := s.Channel("room:a", nil)
	joinT(t, ch)
	var mu sync.Mutex
	var got []string
	ch.On("ev", func(m Message) {
		mu.Lock()
		got = append(got, string(m.Payload))
		mu.Unlock()
	})
	jr := ch.JoinRef()
	fc := fs.conn(0)
	fc.send(t, `["999",null,"room:a","ev",{"n":"stale"}]`)
	fc.send(t, `[null,null,"room:a","ev",{"n":"null"}]`)
	fc.send(t, `["",null,"room:a","ev",{"n":"empty"}]`)
	fc.send(t, `["`+jr+`",null,"room:a","ev",{"n":"current"}]`)
	fc.send(t, `[null,null,"room:b","ev",{"n":"other topic"}]`)
	fc.send(t, `[null,"p:EPOCH:1","room:a","ev",{"n":"end"}]`)
	waitFor(t, 2*time.Second, "the end marker", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0 && got[len(got)-1] == `{"n":"end"}`
	})
	mu.Lock()
	defer mu.Unlock()
	want := []string{`{"n":"null"}`, `{"n":"empty"}`, `{"n":"current"}`, `{"n":"end"}`}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("delivered %v, want %v", got, want)
	}
}

func TestServerErrorRejoinsAndCloseDoesNot(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	s := connectT(t, fs.url, fastOptions())
	ch := s.Channel("room:a", nil)
	joinT(t, ch)
	first := ch.JoinRef()
	fs.conn(0).send(t, `["`+first+`","`+first+`","room:a","phx_error",{"reason":"channel_crash"}]`)
	waitFor(t, 3*time.Second, "rejoin after phx_error", func() bool {
		return ch.State() == StateJoined && ch.JoinRef() != first
	})
	closed := make(chan struct{})
	ch.On(EventClose, func(Message) { close(closed) })
	second := ch.JoinRef()
	fs.conn(0).send(t, `["`+second+`","`+second+`","room:a","phx_close",{}]`)
	<-closed
	if ch.State() != StateClosed {
		t.Fatalf("state %s after phx_close", ch.State())
	}
	if _, err := ch.Call(context.Background(), "echo", nil); !errors.Is(err, ErrNotJoined) {
		t.Fatalf("push after phx_close: %v, want ErrNotJoined", err)
	}
	if n := len(fs.framesWith("phx_join")); n != 2 {
		t.Fatalf("%d joins sent, want 2 (no rejoin after phx_close)", n)
	}
}

func TestRefusedJoinKeepsRetrying(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	fs.refuseJoins.Store(true)
	s := connectT(t, fs.url, fastOptions())
	ch := s.Channel("room:a", nil)
	r, err := ch.Join(context.Background())
	if !errors.Is(err, ErrJoinRefused) || r.Status != "error" {
		t.Fatalf("Join = %+v, %v; want ErrJoinRefused", r, err)
	}
	waitFor(t, 3*time.Second, "rejoin attempts", func() bool { return len(fs.framesWith("phx_join")) >= 3 })
	fs.refuseJoins.Store(false)
	waitFor(t, 3*time.Second, "joined after retries", func() bool { return ch.State() == StateJoined })
	if err := ch.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ch.State() != StateClosed {
		t.Fatalf("state %s after Leave", ch.State())
	}
}

func TestBufferedPushSentAfterJoin(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	s := connectT(t, fs.url, fastOptions())
	ch := s.Channel("room:a", nil)
	if _, err := ch.Call(context.Background(), "echo", nil); !errors.Is(err, ErrNotJoined) {
		t.Fatalf("push before Join: %v, want ErrNotJoined", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); joinT(t, ch) }()
	waitFor(t, 2*time.Second, "joining", func() bool { return ch.State() != StateClosed })
	p := ch.Push("echo", map[string]string{"a": "b"})
	r, err := p.Wait(context.Background())
	<-done
	if err != nil || string(r.Response) != `{"a":"b"}` {
		t.Fatalf("buffered push: %+v %v", r, err)
	}
}

func TestBinaryPushNeedsV2(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	opts := fastOptions()
	opts.Vsn = VsnV1
	s := connectT(t, fs.url, opts)
	ch := s.Channel("room:a", nil)
	if _, err := ch.PushBinary("echo", []byte{1}).Wait(context.Background()); !errors.Is(err, ErrBinaryNeedsV2) {
		t.Fatalf("err = %v, want ErrBinaryNeedsV2", err)
	}
}

func TestOptionsVsn(t *testing.T) {
	if _, err := Connect(context.Background(), "ws://127.0.0.1:1/x", Options{Vsn: "2.1.0"}); err == nil {
		t.Fatal("vsn 2.1.0 accepted")
	}
}

func TestJoinTimeoutLeavesAndRejoins(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	fs.ignoreJoins.Store(true)
	s := connectT(t, fs.url, fastOptions())
	ch := s.Channel("room:a", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := ch.Join(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Join: %v, want deadline exceeded", err)
	}
	// phoenix.js: the timed-out join is left with its own join_ref.
	waitFor(t, 2*time.Second, "phx_leave for the timed-out join", func() bool {
		return len(fs.framesWith(`["1",`)) >= 1 && len(fs.framesWith("phx_leave")) >= 1 &&
			strings.HasPrefix(fs.framesWith("phx_leave")[0].data, `["1",`)
	})
	fs.ignoreJoins.Store(false)
	waitFor(t, 3*time.Second, "joined by a scheduled rejoin", func() bool { return ch.State() == StateJoined })
	if ch.JoinRef() == "1" {
		t.Fatal("rejoin reused the timed-out join ref")
	}
}

func TestClientCloseDoesNotReconnect(t *testing.T) {
	checkGoroutines(t)
	fs := newFakeServer(t)
	s := connectT(t, fs.url, fastOptions())
	ch := s.Channel("room:a", nil)
	joinT(t, ch)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.Connected() || ch.State() != StateClosed {
		t.Fatalf("after Close: connected=%v state=%s", s.Connected(), ch.State())
	}
	if _, err := ch.Call(context.Background(), "echo", nil); err == nil {
		t.Fatal("push on a closed socket succeeded")
	}
	if fs.connCount() != 1 {
		t.Fatalf("%d connections, want 1 (no reconnect after Close)", fs.connCount())
	}
}
