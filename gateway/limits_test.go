//go:build linux

package gateway

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
	"github.com/phxgate/phxgate/channels/ratelimit"
	"github.com/phxgate/phxgate/clients/phx"
	"github.com/prometheus/client_golang/prometheus"
)

// prodServer starts a gateway wired as in production (channels server,
// echo backends, admission, verifier and limiter), with the HS256 test
// secret.
func prodServer(tb testing.TB, mod func(*Config), opts ...Option) *Server {
	tb.Helper()
	cfg := testConfig()
	cfg.Auth.HS256Secret = testSecret
	cfg.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo"}}
	if mod != nil {
		mod(&cfg)
	}
	s, err := Start(context.Background(), cfg, append([]Option{WithLogger(discardLogger())}, opts...)...)
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
	return s
}

// sumCounter adds the values of every series of name whose label has value.
func sumCounter(tb testing.TB, reg *prometheus.Registry, name, label, value string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

func phxConnect(tb testing.TB, s *Server, opts phx.Options) *phx.Socket {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A refused join is not retried during the test: the backend-call
	// counts stay exact.
	opts.Rejoin = func(int) time.Duration { return time.Hour }
	opts.HeartbeatInterval = -1
	sock, err := phx.Connect(ctx, wsURL(s), opts)
	if err != nil {
		tb.Fatalf("phx.Connect: %v", err)
	}
	tb.Cleanup(func() { _ = sock.Close() })
	return sock
}

func join(tb testing.TB, sock *phx.Socket, topic string, payload map[string]any) (phx.Reply, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var params func() any
	if payload != nil {
		params = func() any { return payload }
	}
	return sock.Channel(topic, params).Join(ctx)
}

// TestJoinAuthorization: a topics claim (from a connect token given as a
// param or as authToken, or from a join-payload token) allows its topics
// and answers any other join with exactly {"reason":"unauthorized"},
// without calling the backend.
func TestJoinAuthorization(t *testing.T) {
	s := prodServer(t, nil)
	reg := s.Registry()
	backendJoins := func() float64 { return sumCounter(t, reg, "phxgate_backend_calls_total", "op", "join") }
	limited := jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "topics": []string{"room:lobby", "room:team-*"}}
	tok := hsToken(t, limited)

	requireUnauthorized := func(t *testing.T, r phx.Reply, err error) {
		t.Helper()
		if !errors.Is(err, phx.ErrJoinRefused) || r.Status != "error" || string(r.Response) != `{"reason":"unauthorized"}` {
			t.Fatalf("join = %+v (%s), %v; want error {\"reason\":\"unauthorized\"}", r, r.Response, err)
		}
	}
	sockets := []struct {
		name    string
		opts    phx.Options
		payload map[string]any
	}{
		{name: "connect param", opts: phx.Options{Params: func() map[string]any { return map[string]any{"token": tok} }}},
		{name: "authToken", opts: phx.Options{AuthToken: tok, Vsn: phx.VsnV1}},
		{name: "join payload", payload: map[string]any{"token": tok}},
	}
	for _, sc := range sockets {
		t.Run(sc.name, func(t *testing.T) {
			sock := phxConnect(t, s, sc.opts)
			for _, topic := range []string{"room:lobby", "room:team-red"} {
				if r, err := join(t, sock, topic, sc.payload); err != nil || r.Status != "ok" {
					t.Fatalf("join %s = %+v, %v; want ok", topic, r, err)
				}
			}
			before := backendJoins()
			forbidden := []string{"room:secret", "room:lobby2", "room:team"}
			if sc.payload == nil {
				// Unrouted and forbidden: unauthorized too, so the reply
				// does not reveal which topics are routed.
				forbidden = append(forbidden, "lobby:room:lobby")
			}
			for _, topic := range forbidden {
				r, err := join(t, sock, topic, sc.payload)
				requireUnauthorized(t, r, err)
			}
			if after := backendJoins(); after != before {
				t.Fatalf("forbidden joins called the backend %v times", after-before)
			}
		})
	}
	t.Run("invalid join token", func(t *testing.T) {
		sock := phxConnect(t, s, phx.Options{})
		before := backendJoins()
		for _, bad := range []any{"not.a.token", unsignedToken(t, limited), 42} {
			r, err := join(t, sock, "room:lobby", map[string]any{"token": bad})
			requireUnauthorized(t, r, err)
		}
		if after := backendJoins(); after != before {
			t.Fatalf("refused joins called the backend %v times", after-before)
		}
	})
	t.Run("join token applies to its channel only", func(t *testing.T) {
		// Anonymous socket: a join with a token is limited by that token's
		// topics, a join without one is not limited by them.
		sock := phxConnect(t, s, phx.Options{})
		if r, err := join(t, sock, "room:anything", nil); err != nil || r.Status != "ok" {
			t.Fatalf("anonymous join = %+v, %v", r, err)
		}
		r, err := join(t, sock, "room:other", map[string]any{"token": tok})
		requireUnauthorized(t, r, err)
	})
	if n := sumCounter(t, reg, "phxgate_channels_joins_total", "result", "unauthorized"); n != 4+4+3+3+1 {
		t.Errorf("unauthorized joins counted %v, want %d", n, 4+4+3+3+1)
	}
}

// rawSocket opens a V2 socket with a token param and joins topic.
func rawSocket(tb testing.TB, s *Server, token, topic string) *client {
	tb.Helper()
	target := "/socket/websocket?vsn=2.0.0"
	if token != "" {
		target = tokenTarget(token)
	}
	c := attempt(tb, nil, s.Addr(), target)
	if c.status() != http.StatusSwitchingProtocols {
		tb.Fatalf("status = %d, want 101", c.status())
	}
	c.sendText(`["1","1","` + topic + `","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["1","1","`+topic+`","phx_reply",{"response":{},"status":"ok"}]`)
	return c
}

// readReply reads the next text frame as a V2 message.
func (c *client) readV2() []json.RawMessage {
	c.tb.Helper()
	h, p, err := c.readFrame()
	if err != nil {
		c.tb.Fatalf("read: %v", err)
	}
	if h.OpCode != ws.OpText {
		c.tb.Fatalf("got op %v %x, want a text frame", h.OpCode, p)
	}
	var msg []json.RawMessage
	if err := json.Unmarshal(p, &msg); err != nil || len(msg) != 5 {
		c.tb.Fatalf("bad V2 frame %s: %v", p, err)
	}
	return msg
}

func rateLimitedConfig(c *Config) {
	c.Limits.Classes = map[string]ratelimit.ClassLimit{
		"default": {PerSecond: 1000, Burst: 1000},
		// Slow enough that nothing refills during the test.
		"slow": {PerSecond: 0.1, Burst: 3},
	}
	c.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo",
		RateLimits: ratelimit.Route{DefaultClass: "slow", Events: map[string]string{"shout": "default"}}}}
}

// TestEventRateLimits: a burst over the class limit is answered with
// rate_limited and retry_after_ms, in order with the channel's other
// replies; reconnecting does not reset the player's bucket; another player
// and another event class are unaffected.
func TestEventRateLimits(t *testing.T) {
	s := prodServer(t, rateLimitedConfig)
	alice := hsToken(t, claims("alice"))
	c := rawSocket(t, s, alice, "room:a")
	const n = 8
	for i := range n {
		c.sendText(fmt.Sprintf(`["1","%d","room:a","echo",{"i":%d}]`, i+2, i))
	}
	for i := range n {
		msg := c.readV2()
		if want := fmt.Sprintf(`"%d"`, i+2); string(msg[1]) != want || string(msg[3]) != `"phx_reply"` {
			t.Fatalf("reply %d: %s, want the reply to ref %s (in order)", i, msg, want)
		}
		var r struct {
			Status   string `json:"status"`
			Response struct {
				Reason       string `json:"reason"`
				RetryAfterMS int64  `json:"retry_after_ms"`
				I            *int   `json:"i"`
			} `json:"response"`
		}
		if err := json.Unmarshal(msg[4], &r); err != nil {
			t.Fatal(err)
		}
		switch {
		case i < 3 && (r.Status != "ok" || r.Response.I == nil || *r.Response.I != i):
			t.Fatalf("push %d: %s, want ok (within the burst)", i, msg[4])
		case i >= 3 && (r.Status != "error" || r.Response.Reason != "rate_limited" || r.Response.RetryAfterMS < 1):
			t.Fatalf("push %d: %s, want rate_limited with retry_after_ms", i, msg[4])
		}
		if i >= 3 && !isRateLimited(msg[4]) {
			t.Fatalf("push %d: %s: unexpected shape", i, msg[4])
		}
	}
	// Another class on the same channel still passes.
	c.sendText(`["1","20","room:a","shout",{"x":1}]`)
	c.expectMessage(ws.OpText, `[null,null,"room:a","shout",{"x":1}]`)
	c.expectMessage(ws.OpText, `["1","20","room:a","phx_reply",{"response":{},"status":"ok"}]`)
	c.conn.Close()

	// Reconnecting (same player) resets nothing.
	c2 := rawSocket(t, s, alice, "room:b")
	c2.sendText(`["1","2","room:b","echo",{}]`)
	if msg := c2.readV2(); !strings.Contains(string(msg[4]), `"rate_limited"`) {
		t.Fatalf("after reconnect: %s, want rate_limited", msg[4])
	}
	// Another player is unaffected.
	bob := rawSocket(t, s, hsToken(t, claims("bob")), "room:a")
	bob.sendText(`["1","2","room:a","echo",{}]`)
	bob.expectMessage(ws.OpText, `["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`)

	if got := counterValue(t, s.Registry(), "phxgate_ratelimit_limited_total", "event"); got != n-3+1 {
		t.Errorf("limited events counted %v, want %d", got, n-3+1)
	}
}

// isRateLimited checks the exact shape of a rate_limited reply payload
// (Phoenix writes "response" before "status").
func isRateLimited(p []byte) bool {
	const prefix, suffix = `{"response":{"reason":"rate_limited","retry_after_ms":`, `},"status":"error"}`
	s := string(p)
	if !strings.HasPrefix(s, prefix) || !strings.HasSuffix(s, suffix) {
		return false
	}
	n := strings.TrimSuffix(strings.TrimPrefix(s, prefix), suffix)
	v, err := strconv.Atoi(n)
	return err == nil && v >= 1
}

// TestRateAbuseCloses1008: a player who keeps pushing past the limit, or a
// connection that keeps heartbeating past its own, for the abuse window is
// disconnected with 1008. Heartbeats are limited per connection, so another
// socket of the same player still has its heartbeats answered.
func TestRateAbuseCloses1008(t *testing.T) {
	for _, tc := range []struct {
		name       string
		frame      func(i int) []byte
		perConnHBs bool
	}{
		{name: "events", frame: func(i int) []byte { return fmt.Appendf(nil, `["1","%d","room:a","echo",{}]`, i+2) }},
		{name: "heartbeats", frame: func(i int) []byte { return fmt.Appendf(nil, `[null,"%d","phoenix","heartbeat",{}]`, i+2) }, perConnHBs: true},
	} {
		t.Run(tc.name, func(t *testing.T) { testRateAbuse(t, tc.frame, tc.perConnHBs) })
	}
}

func testRateAbuse(t *testing.T, frame func(i int) []byte, bystanderHeartbeats bool) {
	const window = time.Second
	s := prodServer(t, func(c *Config) {
		rateLimitedConfig(c)
		c.Limits.HeartbeatsPerSecond = 0.1
		c.Limits.HeartbeatBurst = 1
		c.Limits.AbuseWindow = window
		c.Limits.AbuseQuiet = 500 * time.Millisecond
	})
	token := hsToken(t, claims("mallory"))
	bystander := rawSocket(t, s, token, "room:b")
	c := rawSocket(t, s, token, "room:a")
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	closed := make(chan uint16, 1)
	go func() {
		defer close(closed)
		for {
			h, p, err := c.readFrame()
			if err != nil {
				return
			}
			if h.OpCode == ws.OpClose && len(p) == 2 {
				closed <- binary.BigEndian.Uint16(p)
				return
			}
		}
	}()
	start := time.Now()
	// Pushes at a steady 50/s, far past 0.1/s.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case code, ok := <-closed:
			if !ok || code != 1008 {
				t.Fatalf("closed with %d (ok=%v), want 1008", code, ok)
			}
			if d := time.Since(start); d < window {
				t.Fatalf("closed after %v, before the abuse window (%v)", d, window)
			}
			waitFor(t, 5*time.Second, func() bool {
				return counterValue(t, s.Registry(), "phxgate_gateway_disconnects_total", "rate_abuse") == 1
			}, "the rate_abuse disconnect counted")
			if bystanderHeartbeats {
				// The same player's other socket: its heartbeat bucket is
				// its own, full, and its streak never started.
				bystander.sendText(`[null,"b1","phoenix","heartbeat",{}]`)
				bystander.expectMessage(ws.OpText, `[null,"b1","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
			}
			return
		case <-tick.C:
			if _, err := c.conn.Write(clientFrame(0x81, true, frame(i), -1)); err != nil {
				t.Fatalf("write after %v: %v", time.Since(start), err)
			}
		}
	}
}

// TestHeartbeatLimit: heartbeats over a connection's limit get no reply
// (counted); the socket stays usable. The limit is per connection: another
// socket with the same rate key (the same player, or an anonymous socket
// from the same address) still has every heartbeat answered.
func TestHeartbeatLimit(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		c.Limits.HeartbeatsPerSecond = 0.1
		c.Limits.HeartbeatBurst = 2
	})
	carol := hsToken(t, claims("carol"))
	for _, tc := range []struct{ name, token string }{
		{"same player", carol},
		{"anonymous, same address", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counterValue(t, s.Registry(), "phxgate_ratelimit_limited_total", "heartbeat")
			c := rawSocket(t, s, tc.token, "room:a")
			neighbour := rawSocket(t, s, tc.token, "room:b")
			for i := range 5 {
				c.sendText(fmt.Sprintf(`[null,"h%d","phoenix","heartbeat",{}]`, i))
			}
			c.sendText(`["1","9","room:a","echo",{"after":true}]`)
			c.expectMessage(ws.OpText, `[null,"h0","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
			c.expectMessage(ws.OpText, `[null,"h1","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
			c.expectMessage(ws.OpText, `["1","9","room:a","phx_reply",{"response":{"after":true},"status":"ok"}]`)
			if got := counterValue(t, s.Registry(), "phxgate_ratelimit_limited_total", "heartbeat") - before; got != 3 {
				t.Fatalf("limited heartbeats = %v, want 3", got)
			}
			for i := range 2 {
				ref := fmt.Sprintf("n%d", i)
				neighbour.sendText(`[null,"` + ref + `","phoenix","heartbeat",{}]`)
				neighbour.expectMessage(ws.OpText, `[null,"`+ref+`","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
			}
		})
	}
}

// TestJoinRateLimit: joins past the player's join burst are refused with
// rate_limited before the backend is called.
func TestJoinRateLimit(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		c.Limits.JoinsPerSecond = 0.1
		c.Limits.JoinBurst = 2
	})
	c := rawSocket(t, s, hsToken(t, claims("dave")), "room:j1")
	c.sendText(`["2","2","room:j2","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["2","2","room:j2","phx_reply",{"response":{},"status":"ok"}]`)
	c.sendText(`["3","3","room:j3","phx_join",{}]`)
	msg := c.readV2()
	if string(msg[0]) != `"3"` || !isRateLimited(msg[4]) {
		t.Fatalf("third join: %s", msg)
	}
	if got := sumCounter(t, s.Registry(), "phxgate_channels_joins_total", "result", "rate_limited"); got != 1 {
		t.Fatalf("rate-limited joins = %v, want 1", got)
	}
}

// TestTokenExpiryClosesPhoenixSocket: the production path (channels on
// top) stops pushing to a socket whose token expired: phoenix.js would see
// 1008 and reconnect with fresh params.
func TestTokenExpiryClosesPhoenixSocket(t *testing.T) {
	s := prodServer(t, func(c *Config) { c.Auth.Leeway = 0 })
	exp := time.Unix(time.Now().Add(time.Second).Unix()+1, 0)
	c := rawSocket(t, s, hsToken(t, jwt.MapClaims{"sub": "erin", "exp": exp.Unix()}), "room:x")
	_ = c.conn.SetDeadline(exp.Add(5 * time.Second))
	for {
		h, p, err := c.readFrame()
		if err != nil {
			t.Fatalf("waiting for the close: %v", err)
		}
		if h.OpCode == ws.OpClose {
			if code := binary.BigEndian.Uint16(p); code != 1008 {
				t.Fatalf("close %d, want 1008", code)
			}
			// Within the 1 s sweep, plus room for a loaded -race run: 5 s
			// in all, which the read deadline above also allows.
			if late := time.Since(exp); late > 5*time.Second {
				t.Fatalf("closed %v after exp, want within 5 s (a 1 s sweep, leeway 0)", late)
			}
			break
		}
		t.Fatalf("unexpected frame before the close: %q", p)
	}
}

// TestProductionWiringStopsEverything: the limits sweeper and the channels
// server started by the production wiring are gone after Shutdown.
func TestProductionWiringStopsEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := testConfig()
	cfg.Auth.HS256Secret = testSecret
	cfg.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo"}}
	s, err := Start(context.Background(), cfg, WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	c := rawSocket(t, s, hsToken(t, claims("frank")), "room:a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	c.conn.Close()
	checkGoroutines(t, base)
}
