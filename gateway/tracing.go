package gateway

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// OtelConfig is the otel.* section. Tracing is on when Enabled is set or
// when the standard OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is; everything else (exporter
// protocol and endpoint, sampler, batching, service name, resource) comes
// from the standard OTEL_* variables, read by cmd/phxgate through
// internal/telemetry.
type OtelConfig struct {
	// Enabled turns tracing on even without an endpoint variable (the
	// exporter then sends to its default, localhost:4318 or :4317).
	Enabled bool `yaml:"enabled" usage:"trace connects, joins and pushes over OTLP (also on when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set)"`
	// TrustClientContext makes the "traceparent" a client puts in a join
	// or push payload the parent of that call's span. False (the default):
	// clients are untrusted, the span starts a new trace (sampled on a
	// trace id the node chose) and links to the client's span.
	TrustClientContext bool `yaml:"trust_client_context" usage:"a client's payload traceparent is the parent of its join/push span (default: a new trace with a link to it)"`
}

// tracerName names phxgate's tracer (the instrumentation scope).
const tracerName = "github.com/phxgate/phxgate"

// WithTracerProvider turns tracing on: connects, joins and pushes
// forwarded to backends get spans from tp, and their trace context goes
// to the backends. Without it (or with nil) nothing is traced and nothing
// is allocated for tracing.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *Options) { o.TracerProvider = tp }
}

// tracer returns phxgate's tracer, or nil when tracing is off.
func (o *Options) tracer() trace.Tracer {
	if o.TracerProvider == nil {
		return nil
	}
	return o.TracerProvider.Tracer(tracerName)
}

// Span and attributes of a WebSocket connect. The connect params (a
// token among them) are never recorded.
const (
	spanConnect   = "connect"
	attrConnID    = "phx.conn_id"
	attrHTTPCode  = "http.response.status_code"
	connectFailed = "connect refused or failed"
)

// startConnectSpan starts the span of one handshake (upgrade, connect
// hook, registration with a poller). Only called with tracing on.
func (s *Server) startConnectSpan(id uint64) (context.Context, trace.Span) {
	return s.opts.tracer().Start(context.Background(), spanConnect,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.Int64(attrConnID, int64(id))))
}

// endConnectSpan ends a connect span: refused is the HTTP status the
// upgrade was refused with (0: not refused), ok whether the socket was
// upgraded and handed to a poller.
func endConnectSpan(span trace.Span, refused int, ok bool) {
	if refused != 0 {
		span.SetAttributes(attribute.Int(attrHTTPCode, refused))
	}
	if !ok {
		span.SetStatus(codes.Error, connectFailed)
	}
	span.End()
}
