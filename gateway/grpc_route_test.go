//go:build linux

package gateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gobwas/ws"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/channels/ratelimit"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gameServer is a GameBackend served over real gRPC on loopback.
type gameServer struct {
	backendv1.UnimplementedGameBackendServer
	mu     sync.Mutex
	leaves []string
}

func (g *gameServer) Join(context.Context, *backendv1.JoinRequest) (*backendv1.JoinResponse, error) {
	return &backendv1.JoinResponse{Reply: &backendv1.Reply{Status: "ok", Response: &backendv1.Payload{Data: []byte(`{"seat":1}`)}}}, nil
}

func (g *gameServer) HandleIn(_ context.Context, r *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
	c := r.GetCall()
	switch c.GetEvent() {
	case "shout":
		return &backendv1.HandleInResponse{
			Reply:      &backendv1.Reply{Status: "ok"},
			Broadcasts: []*backendv1.Broadcast{{Event: "shout", Payload: c.GetPayload()}},
		}, nil
	case "internal":
		return nil, status.Error(codes.Internal, "bug in the game")
	case "down":
		return nil, status.Error(codes.Unavailable, "restarting")
	}
	return &backendv1.HandleInResponse{Reply: &backendv1.Reply{Status: "ok", Response: c.GetPayload()}}, nil
}

func (g *gameServer) Leave(_ context.Context, r *backendv1.LeaveRequest) (*backendv1.LeaveResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.leaves = append(g.leaves, r.GetCall().GetTopic()+" "+r.GetReason().String())
	return &backendv1.LeaveResponse{}, nil
}

// TestGRPCRoute: a route on grpc:// reaches a real gRPC game: join, an
// action, a broadcast to the sender before its reply; the game's failures
// become error replies with their reasons and keep the channel; a game
// that is gone answers backend_unavailable while a route on another
// backend is unaffected; the engine's metrics are served.
func TestGRPCRoute(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	game := &gameServer{}
	gs := grpc.NewServer()
	backendv1.RegisterGameBackendServer(gs, game)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	s := prodServer(t, func(c *Config) {
		c.Auth.HS256Secret = ""
		c.Routes = []RouteConfig{
			{Topic: "game:*", Backend: "grpc://" + ln.Addr().String() + "?timeout=2s&retries=1&backoff=1ms&breaker_failures=100"},
			{Topic: "room:*", Backend: "echo"},
		}
	})
	c := rawSocket(t, s, "", "room:a")
	c.sendText(`["2","2","game:1","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["2","2","game:1","phx_reply",{"response":{"seat":1},"status":"ok"}]`)
	c.sendText(`["2","3","game:1","bet",{"amount":5}]`)
	c.expectMessage(ws.OpText, `["2","3","game:1","phx_reply",{"response":{"amount":5},"status":"ok"}]`)
	c.sendText(`["2","4","game:1","shout",{"hi":1}]`)
	c.expectMessage(ws.OpText, `[null,null,"game:1","shout",{"hi":1}]`)
	c.expectMessage(ws.OpText, `["2","4","game:1","phx_reply",{"response":{},"status":"ok"}]`)
	c.sendText(`["2","5","game:1","internal",{}]`)
	c.expectMessage(ws.OpText, `["2","5","game:1","phx_reply",{"response":{"reason":"backend_error"},"status":"error"}]`)
	c.sendText(`["2","6","game:1","down",{}]`)
	c.expectMessage(ws.OpText, `["2","6","game:1","phx_reply",{"response":{"reason":"backend_unavailable"},"status":"error"}]`)
	if n := sumCounter(t, s.Registry(), "phxgate_backend_grpc_retries_total", "backend", "grpc://"+ln.Addr().String()); n != 1 {
		t.Errorf("retries counted %v, want 1 (retries=1 on UNAVAILABLE)", n)
	}

	gs.Stop() // the game is gone
	c.sendText(`["2","7","game:1","bet",{}]`)
	c.expectMessage(ws.OpText, `["2","7","game:1","phx_reply",{"response":{"reason":"backend_unavailable"},"status":"error"}]`)
	c.sendText(`["1","8","room:a","echo",{"still":"here"}]`)
	c.expectMessage(ws.OpText, `["1","8","room:a","phx_reply",{"response":{"still":"here"},"status":"ok"}]`)
}

// cutProxy forwards TCP connections to a backend until cut closes every
// connection it holds; new connections are served again afterwards.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, b)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(b, c); b.Close() }()
			go func() { _, _ = io.Copy(c, b); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// ledgerGame applies each idempotency key once and answers a repeated key
// with the first answer. Its first bet is applied and then the connection
// is cut before the answer leaves (cutFirst).
type ledgerGame struct {
	backendv1.UnimplementedGameBackendServer
	mu       sync.Mutex
	applied  map[string]string // key → answer
	debits   int
	keys     []string
	cutFirst func()
}

func (g *ledgerGame) Join(context.Context, *backendv1.JoinRequest) (*backendv1.JoinResponse, error) {
	return &backendv1.JoinResponse{Reply: &backendv1.Reply{Status: "ok"}}, nil
}

func (g *ledgerGame) HandleIn(_ context.Context, r *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
	key := r.GetCall().GetIdempotencyKey()
	g.mu.Lock()
	g.keys = append(g.keys, key)
	answer, seen := g.applied[key]
	if !seen {
		g.debits++
		answer = fmt.Sprintf(`{"bet_id":"b%d"}`, g.debits)
		g.applied[key] = answer
	}
	cut := g.cutFirst
	g.cutFirst = nil
	g.mu.Unlock()
	if cut != nil {
		cut() // applied, and the answer never reaches phxgate
	}
	return &backendv1.HandleInResponse{Reply: &backendv1.Reply{Status: "ok", Response: &backendv1.Payload{Data: []byte(answer)}}}, nil
}

func (g *ledgerGame) Leave(context.Context, *backendv1.LeaveRequest) (*backendv1.LeaveResponse, error) {
	return &backendv1.LeaveResponse{}, nil
}

// TestRetryAfterCutConnectionAppliesOnce: the connection to the game is
// cut after the game applied a bet but before its answer got back; phxgate
// retries with the same idempotency key, the game answers from its ledger,
// the client gets the original answer, and the bet was debited once. A
// bet the client resends with its own idempotency_key from a second socket
// (as after a reconnect), on this node or another, is applied once too.
func TestRetryAfterCutConnectionAppliesOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	game := &ledgerGame{applied: map[string]string{}}
	gs := grpc.NewServer()
	backendv1.RegisterGameBackendServer(gs, game)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	proxy := newCutProxy(t, ln.Addr().String())
	game.cutFirst = proxy.cut

	s := prodServer(t, func(c *Config) {
		c.Routes = []RouteConfig{{Topic: "table:*", Backend: "grpc://" + proxy.ln.Addr().String() + "?timeout=5s&retries=3&backoff=5ms"}}
	})
	token := hsToken(t, claims("alice"))
	c := rawSocket(t, s, token, "table:1")
	c.sendText(`["1","2","table:1","bet",{"amount":5}]`)
	c.expectMessage(ws.OpText, `["1","2","table:1","phx_reply",{"response":{"bet_id":"b1"},"status":"ok"}]`)
	game.mu.Lock()
	keys, debits := slices.Clone(game.keys), game.debits
	game.mu.Unlock()
	if debits != 1 || len(keys) != 2 || keys[0] != keys[1] {
		t.Fatalf("debits %d, keys %v: want one debit and the same key twice", debits, keys)
	}

	// The client's own key, resent from another socket with another ref.
	c.sendText(`["1","3","table:1","bet",{"amount":7,"idempotency_key":"bet-42"}]`)
	c.expectMessage(ws.OpText, `["1","3","table:1","phx_reply",{"response":{"bet_id":"b2"},"status":"ok"}]`)
	c2 := rawSocket(t, s, token, "table:1")
	c2.sendText(`["1","9","table:1","bet",{"amount":7,"idempotency_key":"bet-42"}]`)
	c2.expectMessage(ws.OpText, `["1","9","table:1","phx_reply",{"response":{"bet_id":"b2"},"status":"ok"}]`)
	// And from another node (a second gateway before the same game), as
	// after a reconnect that a load balancer sent elsewhere.
	other := prodServer(t, func(c *Config) {
		c.Routes = []RouteConfig{{Topic: "table:*", Backend: "grpc://" + ln.Addr().String()}}
	})
	c3 := rawSocket(t, other, token, "table:1")
	c3.sendText(`["1","4","table:1","bet",{"amount":7,"idempotency_key":"bet-42"}]`)
	c3.expectMessage(ws.OpText, `["1","4","table:1","phx_reply",{"response":{"bet_id":"b2"},"status":"ok"}]`)
	game.mu.Lock()
	defer game.mu.Unlock()
	if game.debits != 2 {
		t.Fatalf("debits %d, want 2 (the bet resent on this node and on another applied once)", game.debits)
	}
}

// orderGame records the pushes it gets per topic; a push "wait" on one
// topic blocks until a push "go" arrives on another, which only works if
// two channels' calls run at the same time.
type orderGame struct {
	backendv1.UnimplementedGameBackendServer
	mu   sync.Mutex
	seen map[string][]string
	gate chan struct{}
}

func (g *orderGame) Join(context.Context, *backendv1.JoinRequest) (*backendv1.JoinResponse, error) {
	return &backendv1.JoinResponse{Reply: &backendv1.Reply{Status: "ok"}}, nil
}

func (g *orderGame) HandleIn(ctx context.Context, r *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
	c := r.GetCall()
	switch c.GetEvent() {
	case "wait":
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, status.Error(codes.DeadlineExceeded, "never released")
		}
	case "go":
		close(g.gate)
	default:
		g.mu.Lock()
		g.seen[c.GetTopic()] = append(g.seen[c.GetTopic()], string(c.GetPayload().GetData()))
		g.mu.Unlock()
	}
	return &backendv1.HandleInResponse{Reply: &backendv1.Reply{Status: "ok"}}, nil
}

func (g *orderGame) Leave(context.Context, *backendv1.LeaveRequest) (*backendv1.LeaveResponse, error) {
	return &backendv1.LeaveResponse{}, nil
}

// TestGRPCOrderAndConcurrency: 1,000 numbered pushes on one channel reach
// the game in the order sent; calls of two channels run concurrently.
func TestGRPCOrderAndConcurrency(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	game := &orderGame{seen: map[string][]string{}, gate: make(chan struct{})}
	gs := grpc.NewServer()
	backendv1.RegisterGameBackendServer(gs, game)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	s := prodServer(t, func(c *Config) {
		c.Limits.Classes = map[string]ratelimit.ClassLimit{"default": {PerSecond: 1e6, Burst: 1e6}}
		c.Routes = []RouteConfig{{Topic: "table:*", Backend: "grpc://" + ln.Addr().String()}}
	})
	c := rawSocket(t, s, "", "table:1")
	c.sendText(`["2","2","table:2","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["2","2","table:2","phx_reply",{"response":{},"status":"ok"}]`)

	// table:1 blocks until table:2's call runs.
	c.sendText(`["1","3","table:1","wait",{}]`)
	c.sendText(`["2","4","table:2","go",{}]`)
	for range 2 {
		if msg := c.readV2(); !strings.Contains(string(msg[4]), `"status":"ok"`) {
			t.Fatalf("concurrent channels: %s", msg)
		}
	}

	const n, batch = 1000, 200 // batches stay under the channel queue (256)
	for from := 0; from < n; from += batch {
		var frames []byte
		for i := from; i < from+batch; i++ {
			frames = append(frames, clientFrame(0x81, true, fmt.Appendf(nil, `["1","%d","table:1","n",{"i":%d}]`, 10+i, i), -1)...)
		}
		c.write(frames)
		for i := from; i < from+batch; i++ {
			msg := c.readV2()
			if string(msg[1]) != fmt.Sprintf(`"%d"`, 10+i) || !strings.Contains(string(msg[4]), `"status":"ok"`) {
				t.Fatalf("reply %d: %s", i, msg)
			}
		}
	}
	game.mu.Lock()
	defer game.mu.Unlock()
	got := game.seen["table:1"]
	if len(got) != n {
		t.Fatalf("the game got %d pushes, want %d", len(got), n)
	}
	for i, p := range got {
		if p != fmt.Sprintf(`{"i":%d}`, i) {
			t.Fatalf("push %d reached the game as %s: out of order", i, p)
		}
	}
}
