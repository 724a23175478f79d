package phx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phxgate/phxgate/gateway"
)

// startGateway runs a real in-process gateway: echo on room:*, bench on
// bench:*, and returns its WebSocket URL.
func startGateway(tb testing.TB) string {
	tb.Helper()
	cfg := gateway.NewConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.APIListen = ""
	cfg.Routes = []gateway.RouteConfig{
		{Topic: "room:*", Backend: "echo", History: 100},
		{Topic: "bench:*", Backend: "bench"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, err := gateway.Start(ctx, cfg, gateway.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		tb.Fatalf("gateway.Start: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return "ws://" + srv.Addr().String() + "/socket/websocket"
}

// proxy is an in-process TCP proxy whose connections can be cut, to drop a
// client's connection the way a network failure does.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newProxy(tb testing.TB, target string) *proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			p.wg.Go(func() { _, _ = io.Copy(up, c); _ = up.Close() })
			p.wg.Go(func() { _, _ = io.Copy(c, up); _ = c.Close() })
		}
	})
	tb.Cleanup(func() {
		_ = ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// wsURLVia rewrites a gateway URL to go through the proxy.
func wsURLVia(gwURL string, p *proxy) string {
	host := strings.TrimPrefix(gwURL, "ws://")
	host = host[:strings.IndexByte(host, '/')]
	return strings.Replace(gwURL, host, p.ln.Addr().String(), 1)
}

// inbox collects the messages of one event.
type inbox struct {
	mu   sync.Mutex
	msgs []Message
}

func (b *inbox) add(m Message) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m)
	b.mu.Unlock()
}

func (b *inbox) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.msgs)
}

func (b *inbox) get(i int) Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.msgs[i]
}

func callT(tb testing.TB, ch *Channel, event string, payload any) Reply {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := ch.Call(ctx, event, payload)
	if err != nil {
		tb.Fatalf("%s %s: %v", ch.Topic(), event, err)
	}
	return r
}

func assertJSON(tb testing.TB, got json.RawMessage, want string) {
	tb.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		tb.Fatalf("bad JSON %s: %v", got, err)
	}
	_ = json.Unmarshal([]byte(want), &w)
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if !bytes.Equal(gb, wb) {
		tb.Fatalf("got %s, want %s", got, want)
	}
}

func TestGatewayEcho(t *testing.T) {
	url := startGateway(t)
	for _, vsn := range []string{VsnV1, VsnV2} {
		t.Run(vsn, func(t *testing.T) {
			checkGoroutines(t)
			opts := fastOptions()
			opts.Vsn = vsn
			s := connectT(t, url, opts)
			ch := s.Channel("room:echo", func() any { return map[string]any{"hello": "world"} })
			r := joinT(t, ch)
			assertJSON(t, r.Response, `{}`)

			t.Run("echo", func(t *testing.T) {
				r := callT(t, ch, "echo", map[string]any{"a": 1, "s": "é/x"})
				if !r.OK() {
					t.Fatalf("status %q", r.Status)
				}
				assertJSON(t, r.Response, `{"a":1,"s":"é/x"}`)
			})
			t.Run("shout reaches the sender before its reply", func(t *testing.T) {
				var box inbox
				var replied atomic.Bool
				var shoutBeforeReply atomic.Bool
				ch.On("shout", func(m Message) {
					shoutBeforeReply.Store(!replied.Load())
					box.add(m)
				})
				r := callT(t, ch, "shout", map[string]string{"m": "hi"})
				replied.Store(true)
				assertJSON(t, r.Response, `{}`)
				waitFor(t, 3*time.Second, "shout broadcast", func() bool { return box.len() == 1 })
				m := box.get(0)
				assertJSON(t, m.Payload, `{"m":"hi"}`)
				if m.Ref != nil || m.JoinRef != "" {
					t.Fatalf("broadcast carries refs %v/%q; want null", m.Ref, m.JoinRef)
				}
				if !shoutBeforeReply.Load() {
					t.Fatal("shout arrived after the reply")
				}
			})
			t.Run("noreply", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				defer cancel()
				if _, err := ch.Call(ctx, "noreply", nil); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("noreply: err = %v, want a timeout", err)
				}
			})
			t.Run("unknown event", func(t *testing.T) {
				r := callT(t, ch, "dance", nil)
				if r.Status != "error" {
					t.Fatalf("status %q", r.Status)
				}
				assertJSON(t, r.Response, `{"reason":"unknown event"}`)
			})
			t.Run("crash then rejoin", func(t *testing.T) {
				var errs inbox
				ch.On(EventError, errs.add)
				before := ch.JoinRef()
				p := ch.Push("crash", nil)
				waitFor(t, 3*time.Second, "phx_error", func() bool { return errs.len() == 1 })
				assertJSON(t, errs.get(0).Payload, `{"reason":"channel_crash"}`)
				waitFor(t, 5*time.Second, "rejoined", func() bool {
					return ch.State() == StateJoined && ch.JoinRef() != before
				})
				if _, err := p.Wait(context.Background()); !errors.Is(err, ErrChannelClosed) {
					t.Fatalf("crash push: %v, want ErrChannelClosed", err)
				}
				callT(t, ch, "echo", nil)
			})
			t.Run("leave", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := ch.Leave(ctx); err != nil {
					t.Fatal(err)
				}
				if ch.State() != StateClosed {
					t.Fatalf("state %s", ch.State())
				}
				if _, err := ch.Call(ctx, "echo", nil); !errors.Is(err, ErrNotJoined) {
					t.Fatalf("push after leave: %v", err)
				}
			})
			t.Run("deny", func(t *testing.T) {
				d := s.Channel("room:deny", func() any { return map[string]bool{"deny": true} })
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				r, err := d.Join(ctx)
				if !errors.Is(err, ErrJoinRefused) {
					t.Fatalf("Join: %v, want ErrJoinRefused", err)
				}
				assertJSON(t, r.Response, `{"reason":"denied"}`)
				_ = d.Leave(ctx)
			})
		})
	}
}

func TestGatewayBinary(t *testing.T) {
	checkGoroutines(t)
	url := startGateway(t)
	s := connectT(t, url, fastOptions())
	ch := s.Channel("room:bin", nil)
	joinT(t, ch)
	data := []byte{0, 1, 2, 0xff, 'x'}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := ch.PushBinary("echo", data).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != "ok" || !bytes.Equal(r.Binary, data) || r.Response != nil {
		t.Fatalf("binary echo: %+v", r)
	}
	var box inbox
	ch.On("shout", box.add)
	if _, err := ch.PushBinary("shout", data).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "binary shout", func() bool { return box.len() == 1 })
	if m := box.get(0); !bytes.Equal(m.Binary, data) || m.Payload != nil {
		t.Fatalf("binary broadcast %+v", m)
	}
}

func TestGatewayBench(t *testing.T) {
	checkGoroutines(t)
	url := startGateway(t)
	s := connectT(t, url, fastOptions())
	// The shootout clients join with a null payload.
	ch := s.Channel("bench:1", func() any { return json.RawMessage("null") })
	joinT(t, ch)
	r := callT(t, ch, "echo", json.RawMessage(`{"body":{"n":1}}`))
	assertJSON(t, r.Response, `{"type":"echo","body":{"n":1}}`)
	var box inbox
	ch.On("broadcast", box.add)
	r = callT(t, ch, "broadcast", json.RawMessage(`{"body":"x"}`))
	assertJSON(t, r.Response, `{"type":"broadcastResult","body":"x"}`)
	waitFor(t, 3*time.Second, "broadcast", func() bool { return box.len() == 1 })
	assertJSON(t, box.get(0).Payload, `{"type":"broadcast","body":"x"}`)
}

// TestGatewayReconnectRejoinResumes cuts the connection under a joined,
// position-tracking channel; the client reconnects, rejoins with params
// re-evaluated to its last position, and is replayed what it missed.
func TestGatewayReconnectRejoinResumes(t *testing.T) {
	for _, vsn := range []string{VsnV1, VsnV2} {
		t.Run(vsn, func(t *testing.T) {
			checkGoroutines(t)
			url := startGateway(t)
			px := newProxy(t, strings.TrimPrefix(url[:strings.Index(url, "/socket")], "ws://"))
			opts := fastOptions()
			opts.Vsn = vsn
			var connects atomic.Int32
			opts.Params = func() map[string]any { return map[string]any{"n": connects.Add(1)} }
			s := connectT(t, wsURLVia(url, px), opts)

			var (
				mu      sync.Mutex
				lastPos any // nil: from now
				got     []string
			)
			ch := s.Channel("room:resume", func() any {
				mu.Lock()
				defer mu.Unlock()
				return map[string]any{"offset": lastPos}
			})
			ch.On("shout", func(m Message) {
				mu.Lock()
				defer mu.Unlock()
				if m.Ref != nil {
					lastPos = *m.Ref
				}
				var p struct{ I int }
				_ = json.Unmarshal(m.Payload, &p)
				got = append(got, string(rune('0'+p.I)))
			})
			r := joinT(t, ch)
			var jr struct {
				Position string `json:"position"`
			}
			if err := json.Unmarshal(r.Response, &jr); err != nil || !strings.HasPrefix(jr.Position, "p:") {
				t.Fatalf("join reply %s lacks a position", r.Response)
			}
			callT(t, ch, "shout", map[string]int{"i": 1})
			waitFor(t, 3*time.Second, "first shout", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })

			px.cut()
			// Seen as the channel leaving Joined, or as the reconnect's
			// params being asked for: a fast reconnect and rejoin can
			// come and go between two looks at the state.
			waitFor(t, 3*time.Second, "disconnect seen", func() bool { return ch.State() != StateJoined || connects.Load() >= 2 })
			// Another client publishes while ours is away.
			other := connectT(t, url, fastOptions())
			och := other.Channel("room:resume", nil)
			joinT(t, och)
			callT(t, och, "shout", map[string]int{"i": 2})
			callT(t, och, "shout", map[string]int{"i": 3})

			waitFor(t, 5*time.Second, "reconnected and rejoined", func() bool {
				return s.Connected() && ch.State() == StateJoined
			})
			waitFor(t, 3*time.Second, "missed events replayed", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) == 3
			})
			callT(t, och, "shout", map[string]int{"i": 4})
			waitFor(t, 3*time.Second, "live event after replay", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) == 4
			})
			mu.Lock()
			defer mu.Unlock()
			if strings.Join(got, "") != "1234" {
				t.Fatalf("events %v, want 1 2 3 4 exactly once in order", got)
			}
			if connects.Load() < 2 {
				t.Fatalf("params evaluated %d times, want one per connect", connects.Load())
			}
		})
	}
}
