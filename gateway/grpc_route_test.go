//go:build linux

package gateway

import (
	"context"
	"net"
	"sync"
	"testing"

	"github.com/gobwas/ws"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
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
