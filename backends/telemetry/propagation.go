package telemetry

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

// W3C Trace Context header (and gRPC metadata) names.
const (
	TraceparentKey = "traceparent"
	TracestateKey  = "tracestate"
)

// tc is the only propagation format phxgate speaks: W3C Trace Context.
var tc propagation.TraceContext

// InjectGRPC returns ctx with the traceparent (and tracestate) of the
// span in ctx added to its outgoing gRPC metadata; ctx itself when it
// holds no span (tracing off costs nothing).
func InjectGRPC(ctx context.Context) context.Context {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	md := metadata.MD{}
	tc.Inject(ctx, mdCarrier(md))
	return metadata.NewOutgoingContext(ctx, metadata.Join(outgoing(ctx), md))
}

func outgoing(ctx context.Context) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md
}

// ExtractGRPC returns ctx with the remote span context carried by the
// incoming gRPC metadata (invalid or missing ones are ignored).
func ExtractGRPC(ctx context.Context) context.Context {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ctx
	}
	return tc.Extract(ctx, mdCarrier(md))
}

// Inject sets the traceparent (and tracestate) headers of the span in ctx
// through set; nothing when ctx holds no span.
func Inject(ctx context.Context, c propagation.TextMapCarrier) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	tc.Inject(ctx, c)
}

// Remote parses a client's traceparent and tracestate values into a
// remote span context; ok is false when traceparent is malformed.
func Remote(traceparent, tracestate string) (sc trace.SpanContext, ok bool) {
	c := pair{tp: traceparent, ts: tracestate}
	sc = trace.SpanContextFromContext(tc.Extract(context.Background(), &c))
	return sc, sc.IsValid()
}

// pair carries a client's two values for Remote.
type pair struct{ tp, ts string }

func (p *pair) Get(k string) string {
	switch k {
	case TraceparentKey:
		return p.tp
	case TracestateKey:
		return p.ts
	}
	return ""
}
func (p *pair) Set(string, string) {}
func (p *pair) Keys() []string     { return []string{TraceparentKey, TracestateKey} }

// mdCarrier adapts gRPC metadata (lower-case keys) to the propagator.
type mdCarrier metadata.MD

func (m mdCarrier) Get(k string) string {
	if v := metadata.MD(m).Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (m mdCarrier) Set(k, v string) { metadata.MD(m).Set(k, v) }
func (m mdCarrier) Keys() []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}
