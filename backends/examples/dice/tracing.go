package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/phxgate/phxgate/backends/examples/dice/game"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/backends/telemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// serviceName is the game's service name unless OTEL_SERVICE_NAME (or
// service.name in OTEL_RESOURCE_ATTRIBUTES) says otherwise.
const (
	serviceName = "dice"
	tracerName  = "github.com/phxgate/phxgate/backends/examples/dice"
	// flushTimeout bounds the export of the spans queued at exit.
	flushTimeout = 5 * time.Second
)

// traceCalls is a server interceptor giving each GameBackend call a
// server span, the child of the span phxgate sent in the call's metadata
// (traceparent, tracestate). A bet is named "bet"; other calls by their
// method. Payloads and tokens are not recorded.
func traceCalls(tr trace.Tracer) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx = telemetry.ExtractGRPC(ctx)
		name, call := "handle_in", (*backendv1.Call)(nil)
		switch r := req.(type) {
		case *backendv1.JoinRequest:
			name, call = "join", r.GetCall()
		case *backendv1.LeaveRequest:
			name, call = "leave", r.GetCall()
		case *backendv1.HandleInRequest:
			call = r.GetCall()
			if call.GetEvent() == game.EventBet {
				name = game.EventBet
			}
		default:
			name = info.FullMethod
		}
		ctx, span := tr.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(
				attribute.String("rpc.method", info.FullMethod),
				attribute.String("phx.topic", call.GetTopic()),
				attribute.String("phx.event", call.GetEvent()),
			))
		defer span.End()
		resp, err := handler(ctx, req)
		if err != nil {
			span.SetStatus(codes.Error, status.Code(err).String())
		}
		return resp, err
	}
}

// flushTraces exports the spans still queued.
func flushTraces(tp *sdktrace.TracerProvider, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		log.Warn("dice: flushing traces failed", "err", err)
	}
}
