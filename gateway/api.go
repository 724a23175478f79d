//go:build linux

package gateway

import (
	"context"
	"crypto/subtle"
	"errors"
	"strings"

	"github.com/phxgate/phxgate/backends"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/presence"
	"github.com/phxgate/phxgate/pubsub"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// apiServer is the Gateway service games call (api_listen): broadcast to a
// topic, push to a player, disconnect a player or a connection. Presence
// calls answer UNAVAILABLE until presence exists.
type apiServer struct {
	backendv1.UnimplementedGatewayServer
	s *Server
}

// newAPIServer builds the gRPC server of the Gateway service. With
// api_secret set, every call must carry "authorization: Bearer <secret>".
func (s *Server) newAPIServer() *grpc.Server {
	var opts []grpc.ServerOption
	if secret := s.cfg.APISecret; secret != "" {
		want := []byte("Bearer " + secret)
		opts = append(opts, grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			got := md.Get("authorization")
			if len(got) != 1 || subtle.ConstantTimeCompare([]byte(got[0]), want) != 1 {
				return nil, status.Error(codes.Unauthenticated, "missing or wrong api secret")
			}
			return h(ctx, req)
		}))
	}
	g := grpc.NewServer(opts...)
	backendv1.RegisterGatewayServer(g, &apiServer{s: s})
	return g
}

func payloadOf(p *backendv1.Payload) backends.Payload {
	return backends.Payload{Data: p.GetData(), Binary: p.GetBinary()}
}

// Broadcast implements backendv1.GatewayServer.
func (a *apiServer) Broadcast(ctx context.Context, r *backendv1.BroadcastRequest) (*backendv1.BroadcastResponse, error) {
	if r.GetTopic() == "" || r.GetEvent() == "" {
		return nil, status.Error(codes.InvalidArgument, "topic and event are required")
	}
	p := payloadOf(r.GetPayload())
	pos, err := a.s.proto.Publish(ctx, r.GetTopic(), pubsub.Message{
		Event: r.GetEvent(), Payload: p.Data, Binary: p.Binary, IdempotencyKey: r.GetIdempotencyKey()})
	switch {
	case errors.Is(err, pubsub.ErrBadIdempotencyKey):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, channels.ErrOverloaded):
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	case err != nil:
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &backendv1.BroadcastResponse{Position: pos.String()}, nil
}

// Push implements backendv1.GatewayServer.
func (a *apiServer) Push(_ context.Context, r *backendv1.PushRequest) (*backendv1.PushResponse, error) {
	if r.GetPlayerId() == "" || r.GetTopic() == "" || r.GetEvent() == "" {
		return nil, status.Error(codes.InvalidArgument, "player_id, topic and event are required")
	}
	n := a.s.proto.PushTo(r.GetTopic(), r.GetPlayerId(), r.GetEvent(), payloadOf(r.GetPayload()))
	return &backendv1.PushResponse{Delivered: uint32(n)}, nil
}

// Disconnect implements backendv1.GatewayServer: the sockets are closed
// with 1001 (kicked), and their channels get Leave with reason kicked.
func (a *apiServer) Disconnect(ctx context.Context, r *backendv1.DisconnectRequest) (*backendv1.DisconnectResponse, error) {
	if n := r.GetNodeId(); n != "" && n != a.s.cfg.NodeID {
		return &backendv1.DisconnectResponse{}, nil // another node's connection
	}
	player, conn := r.GetPlayerId(), r.GetConnId()
	if player == "" && conn == 0 {
		return nil, status.Error(codes.InvalidArgument, "player_id or conn_id is required")
	}
	n, err := a.s.kick(ctx, player, conn)
	if err != nil {
		return nil, status.FromContextError(err).Err()
	}
	a.s.log.Info("disconnected by the api", "player_id", player, "conn", conn, "reason", strings.TrimSpace(r.GetReason()), "sockets", n)
	return &backendv1.DisconnectResponse{Disconnected: uint32(n)}, nil
}

// ListPresence implements backendv1.GatewayServer: who is present on a
// topic across the cluster, one entry per player with one meta per
// connection. UNAVAILABLE when no route tracks presence.
func (a *apiServer) ListPresence(ctx context.Context, r *backendv1.ListPresenceRequest) (*backendv1.ListPresenceResponse, error) {
	t := a.s.presence
	if t == nil {
		return nil, status.Error(codes.Unavailable, "no route of this gateway tracks presence")
	}
	if r.GetTopic() == "" {
		return nil, status.Error(codes.InvalidArgument, "topic is required")
	}
	ps, err := t.List(ctx, r.GetTopic())
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &backendv1.ListPresenceResponse{}
	idx := map[string]*backendv1.PresenceEntry{}
	for _, p := range ps {
		e := idx[p.Key]
		if e == nil {
			e = &backendv1.PresenceEntry{PlayerId: p.Key}
			idx[p.Key] = e
			resp.Entries = append(resp.Entries, e)
		}
		e.Metas = append(e.Metas, p.Meta)
	}
	return resp, nil
}

// UpdatePresence implements backendv1.GatewayServer: every meta of the
// player on the topic, on every node, becomes meta (with a new phx_ref
// and phx_ref_prev), announced as one presence_diff. NOT_FOUND when the
// player is not present there.
func (a *apiServer) UpdatePresence(ctx context.Context, r *backendv1.UpdatePresenceRequest) (*backendv1.UpdatePresenceResponse, error) {
	t := a.s.presence
	if t == nil {
		return nil, status.Error(codes.Unavailable, "no route of this gateway tracks presence")
	}
	if r.GetTopic() == "" || r.GetPlayerId() == "" {
		return nil, status.Error(codes.InvalidArgument, "topic and player_id are required")
	}
	n, err := t.Update(ctx, r.GetTopic(), r.GetPlayerId(), r.GetMeta())
	switch {
	case errors.Is(err, presence.ErrRefused):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, status.Error(codes.Unavailable, err.Error())
	case n == 0:
		return nil, status.Error(codes.NotFound, "the player is not present on the topic")
	}
	return &backendv1.UpdatePresenceResponse{}, nil
}

// kick closes with 1001 every socket of player (non-empty) or the socket
// with id conn (non-zero). Each poller scans its own sockets, on its own
// goroutine; the count is what they closed.
func (s *Server) kick(ctx context.Context, player string, conn uint64) (int, error) {
	results := make(chan int, len(s.pollers))
	for _, p := range s.pollers {
		p.dispatch(jobFunc(func() { results <- p.kickLocal(player, conn) }))
	}
	n := 0
	for range s.pollers {
		select {
		case k := <-results:
			n += k
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
	return n, nil
}

// kickLocal closes this poller's matching sockets (poller goroutine, or the
// caller once the poller has exited: then there are none).
func (p *poller) kickLocal(player string, conn uint64) int {
	if !p.running.Load() {
		return 0
	}
	n := 0
	for _, c := range p.conns {
		if c == nil || c.state.Load() != stateOpen {
			continue
		}
		match := conn != 0 && c.id == conn
		if !match && player != "" {
			if ps, ok := c.handler.(interface{ ServesPlayer(string) bool }); ok && ps.ServesPlayer(player) {
				match = true
			}
		}
		if match {
			c.closeWith(uint16(channels.CloseGoingAway), channels.ReasonKicked)
			n++
		}
	}
	return n
}

// jobFunc is a channels.FanoutJob made of a function.
type jobFunc func()

func (f jobFunc) RunFanout() { f() }
