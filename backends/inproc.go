package backends

import (
	"context"
	"time"

	"google.golang.org/grpc"

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

func (c serverClient) Join(ctx context.Context, in *backendv1.JoinRequest, _ ...grpc.CallOption) (*backendv1.JoinResponse, error) {
	return c.s.Join(ctx, in)
}

func (c serverClient) HandleIn(ctx context.Context, in *backendv1.HandleInRequest, _ ...grpc.CallOption) (*backendv1.HandleInResponse, error) {
	return c.s.HandleIn(ctx, in)
}

func (c serverClient) Leave(ctx context.Context, in *backendv1.LeaveRequest, _ ...grpc.CallOption) (*backendv1.LeaveResponse, error) {
	return c.s.Leave(ctx, in)
}
