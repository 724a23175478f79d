package game

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// fakeGateway is phxgate's Gateway service as far as the game needs it:
// Broadcast records each request on got and answers with err.
type fakeGateway struct {
	backendv1.UnimplementedGatewayServer
	got chan *backendv1.BroadcastRequest
	err error
}

func (f *fakeGateway) Broadcast(ctx context.Context, r *backendv1.BroadcastRequest) (*backendv1.BroadcastResponse, error) {
	select {
	case f.got <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	return &backendv1.BroadcastResponse{Position: "p:1:1"}, nil
}

// serveGRPC serves what register registers on a free port of 127.0.0.1
// and stops it at cleanup.
func serveGRPC(tb testing.TB, register func(*grpc.Server)) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer()
	register(srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	tb.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

func dial(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestGRPCRoundTrip plays a round through real gRPC both ways: phxgate's
// calls reach the game's server, and the result reaches a Gateway server.
func TestGRPCRoundTrip(t *testing.T) {
	gw := &fakeGateway{got: make(chan *backendv1.BroadcastRequest, 16)}
	gwAddr := serveGRPC(t, func(s *grpc.Server) { backendv1.RegisterGatewayServer(s, gw) })

	clk := newFakeClock()
	g, err := New(NewConfig(), Options{
		Broadcaster: NewGatewayBroadcaster(backendv1.NewGatewayClient(dial(t, gwAddr))),
		Clock:       clk,
		Roll:        func() int { return 5 },
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	addr := serveGRPC(t, func(s *grpc.Server) { backendv1.RegisterGameBackendServer(s, g) })
	client := backendv1.NewGameBackendClient(dial(t, addr))
	ctx := context.Background()

	for _, p := range []string{"alice", "bob"} {
		res, err := client.Join(ctx, &backendv1.JoinRequest{Call: call("table:7", p, "phx_join", newKey(), []byte("{}"))})
		if err != nil {
			t.Fatalf("Join %s: %v", p, err)
		}
		var j joinReply
		decode(t, res.GetReply().GetResponse().GetData(), &j)
		if res.GetReply().GetStatus() != StatusOK || j.Balance != 1000 || j.Round.ID != 1 || j.Round.State != StateBetting {
			t.Fatalf("Join %s: %s %s", p, res.GetReply().GetStatus(), res.GetReply().GetResponse().GetData())
		}
	}
	res, err := client.Join(ctx, &backendv1.JoinRequest{Call: call("lobby", "carol", "phx_join", newKey(), nil)})
	if err != nil {
		t.Fatal(err)
	}
	wantError(t, res.GetReply(), ReasonBadTopic)

	bet := func(player, key, payload string) *backendv1.Reply {
		t.Helper()
		res, err := client.HandleIn(ctx, &backendv1.HandleInRequest{Call: call("table:7", player, EventBet, key, []byte(payload))})
		if err != nil {
			t.Fatalf("HandleIn: %v", err)
		}
		return res.GetReply()
	}
	first := bet("alice", "player:alice:bet-1", `{"amount":100,"pick":"high","idempotency_key":"bet-1"}`)
	again := bet("alice", "player:alice:bet-1", `{"amount":100,"pick":"high","idempotency_key":"bet-1"}`)
	if first.GetStatus() != StatusOK || string(again.GetResponse().GetData()) != string(first.GetResponse().GetData()) {
		t.Fatalf("bet %s %s, retry %s", first.GetStatus(), first.GetResponse().GetData(), again.GetResponse().GetData())
	}
	if r := bet("bob", newKey(), `{"amount":300,"pick":"low"}`); r.GetStatus() != StatusOK {
		t.Fatalf("bob's bet: %s %s", r.GetStatus(), r.GetResponse().GetData())
	}
	wantError(t, bet("bob", newKey(), `{"amount":800,"pick":"low"}`), ReasonInsufficientFunds)

	clk.WaitTimers(t, 1)
	clk.Advance(DefaultWindow)
	var got *backendv1.BroadcastRequest
	select {
	case got = <-gw.got:
	case <-ctxTimeout(t):
		t.Fatal("no round_result reached the Gateway")
	}
	if got.GetTopic() != "table:7" || got.GetEvent() != EventRoundResult || got.GetPayload().GetBinary() {
		t.Fatalf("Gateway got %s %s", got.GetTopic(), got.GetEvent())
	}
	var r roundResult
	decode(t, got.GetPayload().GetData(), &r)
	if r.Round != 1 || r.Roll != 5 || len(r.Payouts) != 1 || r.Payouts["alice"] != 200 {
		t.Fatalf("round result %s, want round 1, roll 5, alice paid 200", got.GetPayload().GetData())
	}
	wantBalance(t, g, "alice", 1100)
	wantBalance(t, g, "bob", 700)

	g.mu.RLock()
	tb := g.tables["table:7"]
	g.mu.RUnlock()
	for _, p := range []string{"alice", "bob"} {
		if _, err := client.Leave(ctx, &backendv1.LeaveRequest{
			Call:   call("table:7", p, "phx_leave", newKey(), nil),
			Reason: backendv1.LeaveReason_LEAVE_REASON_DISCONNECTED,
		}); err != nil {
			t.Fatalf("Leave %s: %v", p, err)
		}
	}
	waitClosed(t, tb.done, "the table stops after the last Leave over gRPC")
	if _, err := client.Join(ctx, &backendv1.JoinRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Join without a call: %v, want InvalidArgument", err)
	}
}

// ctxTimeout returns a channel closed after waitLong.
func ctxTimeout(tb testing.TB) <-chan struct{} {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	tb.Cleanup(cancel)
	return ctx.Done()
}

func TestGatewayBroadcasterClassifiesFailures(t *testing.T) {
	cases := []struct {
		name      string
		err       error
		permanent bool
	}{
		{"ok", nil, false},
		{"unavailable", status.Error(codes.Unavailable, "draining"), false},
		{"exhausted", status.Error(codes.ResourceExhausted, "slow down"), false},
		{"unimplemented", status.Error(codes.Unimplemented, "no Gateway yet"), true},
		{"invalid", status.Error(codes.InvalidArgument, "bad topic"), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			gw := &fakeGateway{got: make(chan *backendv1.BroadcastRequest, 1), err: tc.err}
			addr := serveGRPC(t, func(s *grpc.Server) { backendv1.RegisterGatewayServer(s, gw) })
			b := NewGatewayBroadcaster(backendv1.NewGatewayClient(dial(t, addr)))
			err := b.Broadcast(context.Background(), "table:1", EventRoundResult, []byte(`{"round":1}`))
			if (err == nil) != (tc.err == nil) || errors.Is(err, ErrPermanent) != tc.permanent {
				t.Fatalf("Broadcast: %v, want error %v (permanent %v)", err, tc.err, tc.permanent)
			}
			if r := <-gw.got; r.GetTopic() != "table:1" || string(r.GetPayload().GetData()) != `{"round":1}` {
				t.Fatalf("Gateway got %v", r)
			}
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := lis.Addr().String()
		_ = lis.Close()
		b := NewGatewayBroadcaster(backendv1.NewGatewayClient(dial(t, addr)))
		err = b.Broadcast(context.Background(), "table:1", EventRoundResult, []byte(`{}`))
		if status.Code(err) != codes.Unavailable || errors.Is(err, ErrPermanent) {
			t.Fatalf("Broadcast to a closed port: %v, want a transient Unavailable", err)
		}
	})
}
