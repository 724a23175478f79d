package backends

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
)

// NewInprocGRPC returns an engine that calls a GameBackend service
// implementation in this process, with everything the gRPC engine gives a
// remote game but the network: the same requests, idempotency keys,
// deadline, bulkhead, breaker and metrics. A game written against the
// proto can so be compiled into phxgate (the built-in demo is the example
// dice game served this way). The limits are the gRPC engine's defaults.
// Close does not close srv.
func NewInprocGRPC(srv backendv1.GameBackendServer) *GRPC {
	cfg := NewGRPCConfig("inproc")
	cfg.now = time.Now
	return &GRPC{cfg: cfg, client: serverClient{srv}, r: newRunner(cfg.CallLimits, cfg.now, classifyGRPC)}
}

// serverClient is a GameBackendClient that calls a server directly.
type serverClient struct{ s backendv1.GameBackendServer }

// A panic in the game is answered as a gRPC Internal error, as a remote
// server's would be: the engine's runner then settles the call (a breaker
// probe that panicked must not leave the breaker waiting for ever).
func recovered(err *error) {
	if p := recover(); p != nil {
		*err = status.Errorf(codes.Internal, "game panicked: %v", p)
	}
}

func (c serverClient) Join(ctx context.Context, in *backendv1.JoinRequest, _ ...grpc.CallOption) (r *backendv1.JoinResponse, err error) {
	defer recovered(&err)
	return c.s.Join(ctx, in)
}

func (c serverClient) HandleIn(ctx context.Context, in *backendv1.HandleInRequest, _ ...grpc.CallOption) (r *backendv1.HandleInResponse, err error) {
	defer recovered(&err)
	return c.s.HandleIn(ctx, in)
}

func (c serverClient) Leave(ctx context.Context, in *backendv1.LeaveRequest, _ ...grpc.CallOption) (r *backendv1.LeaveResponse, err error) {
	defer recovered(&err)
	return c.s.Leave(ctx, in)
}
