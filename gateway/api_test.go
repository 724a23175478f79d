//go:build linux

package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const testAPISecret = "an-api-secret-of-at-least-32-bytes!"

// apiClient dials the gateway's Gateway service.
func apiClient(t *testing.T, s *Server) backendv1.GatewayClient {
	t.Helper()
	cc, err := grpc.NewClient(s.APIAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return backendv1.NewGatewayClient(cc)
}

func withSecret(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+testAPISecret)
}

// TestGatewayAPI: a game broadcasts to a topic (getting its position),
// pushes to one player's sockets on a topic, and disconnects a player
// (1001, Leave with reason kicked); calls without the secret are refused;
// presence answers UNAVAILABLE until it exists.
func TestGatewayAPI(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		c.APIListen = "127.0.0.1:0"
		c.APISecret = testAPISecret
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo", History: 10}}
	})
	api := apiClient(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alice := hsToken(t, claims("alice"))
	a1 := rawSocket(t, s, alice, "room:a")
	a2 := rawSocket(t, s, alice, "room:a")
	bob := rawSocket(t, s, hsToken(t, claims("bob")), "room:a")

	if _, err := api.Broadcast(ctx, &backendv1.BroadcastRequest{Topic: "room:a", Event: "x"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("broadcast without the secret: %v, want Unauthenticated", err)
	}
	ctx = withSecret(ctx)
	br, err := api.Broadcast(ctx, &backendv1.BroadcastRequest{Topic: "room:a", Event: "round", Payload: &backendv1.Payload{Data: []byte(`{"r":1}`)}})
	if err != nil || !strings.HasPrefix(br.GetPosition(), "p:") || !strings.HasSuffix(br.GetPosition(), ":1") {
		t.Fatalf("broadcast: %v %v, want position p:<epoch>:1", br, err)
	}
	for _, c := range []*client{a1, a2, bob} {
		c.expectMessage(ws.OpText, `[null,null,"room:a","round",{"r":1}]`)
	}
	pr, err := api.Push(ctx, &backendv1.PushRequest{PlayerId: "alice", Topic: "room:a", Event: "bonus", Payload: &backendv1.Payload{Data: []byte(`{"n":5}`)}})
	if err != nil || pr.GetDelivered() != 2 {
		t.Fatalf("push: %v %v, want 2 delivered", pr, err)
	}
	for _, c := range []*client{a1, a2} {
		c.expectMessage(ws.OpText, `["1",null,"room:a","bonus",{"n":5}]`)
	}
	if _, err := api.Broadcast(ctx, &backendv1.BroadcastRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty broadcast: %v, want InvalidArgument", err)
	}
	if _, err := api.ListPresence(ctx, &backendv1.ListPresenceRequest{Topic: "room:a"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("presence: %v, want Unavailable", err)
	}
	dr, err := api.Disconnect(ctx, &backendv1.DisconnectRequest{Target: &backendv1.DisconnectRequest_PlayerId{PlayerId: "alice"}, Reason: "banned"})
	if err != nil || dr.GetDisconnected() != 2 {
		t.Fatalf("disconnect: %v %v, want 2", dr, err)
	}
	a1.expectClose(1001)
	a2.expectClose(1001)
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, s.Registry(), "phxgate_gateway_disconnects_total", "kicked") == 2
	}, "two kicked disconnects counted")
	bob.sendText(`["1","5","room:a","echo",{"still":1}]`)
	bob.expectMessage(ws.OpText, `["1","5","room:a","phx_reply",{"response":{"still":1},"status":"ok"}]`)
	if dr, err := api.Disconnect(ctx, &backendv1.DisconnectRequest{Target: &backendv1.DisconnectRequest_ConnId{ConnId: 1 << 40}}); err != nil || dr.GetDisconnected() != 0 {
		t.Fatalf("disconnect of an unknown connection: %v %v", dr, err)
	}
}
