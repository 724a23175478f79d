package channels

import (
	"context"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/backends/telemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Span names and attributes of the backend calls. The names are fixed
// (an event name is client input: it goes in an attribute, not in the
// name, so span names stay few). Payloads, tokens, claims and params are
// never recorded.
const (
	spanJoin = "join"
	spanPush = "push"

	attrTopic  = "phx.topic"
	attrEvent  = "phx.event"
	attrConnID = "phx.conn_id"
	attrStatus = "phx.reply_status"
)

// startCallSpan starts the span of a join or a push forwarded to the
// backend. The trace context the client sent in the payload (top-level
// "traceparent" and "tracestate" strings, see README "Tracing"), if any
// and well formed, is untrusted input: by default the span starts a new
// server-side trace (so the sampler decides on a trace id the node
// chose) and links to the client's span; with trustClient it is the
// parent instead.
func startCallSpan(ctx context.Context, tr trace.Tracer, op string, call *backends.Call, trustClient bool) (context.Context, trace.Span) {
	opts := make([]trace.SpanStartOption, 0, 4)
	if !call.Payload.Binary {
		if sc, ok := clientTraceContext(call.Payload.Data); ok {
			if trustClient {
				ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
			} else {
				opts = append(opts, trace.WithNewRoot(), trace.WithLinks(trace.Link{SpanContext: sc}))
			}
		}
	}
	name := spanPush
	if op == opJoin {
		name = spanJoin
	}
	opts = append(opts,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String(attrTopic, call.Topic),
			attribute.String(attrEvent, call.Event),
			attribute.Int64(attrConnID, int64(call.ConnID)),
		))
	return tr.Start(ctx, name, opts...)
}

// endCallSpan records the call's outcome and ends its span. A failed call
// records the error's class, not the backend's message (which may echo
// the payload).
func endCallSpan(span trace.Span, rep *backends.Reply, err error) {
	switch {
	case err != nil:
		span.SetStatus(codes.Error, callResult(err))
	case rep != nil && rep.Status != "":
		span.SetAttributes(attribute.String(attrStatus, rep.Status))
	}
	span.End()
}

// maxTraceHeader bounds the traceparent and tracestate values read from a
// payload (W3C: tracestate ≤ 512 bytes; traceparent is 55).
const maxTraceHeader = 512

// clientTraceContext reads the top-level "traceparent" (and
// "tracestate") strings of a JSON payload object. Anything malformed is
// ignored: the push is traced from a new root.
func clientTraceContext(payload []byte) (trace.SpanContext, bool) {
	var tp, ts string
	objectMembers(payload, func(key, val []byte, _, _ int) bool {
		switch string(key) {
		case telemetry.TraceparentKey:
			tp = jsonShortString(val)
		case telemetry.TracestateKey:
			ts = jsonShortString(val)
		}
		return true
	})
	if tp == "" {
		return trace.SpanContext{}, false
	}
	return telemetry.Remote(tp, ts)
}

// jsonShortString returns the JSON string val unquoted, or "" when val is
// not a string or is longer than maxTraceHeader.
func jsonShortString(val []byte) string {
	if len(val) < 2 || val[0] != '"' || len(val) > maxTraceHeader+2 {
		return ""
	}
	end, esc, ok := scanString(val, 0)
	if !ok || end != len(val) {
		return ""
	}
	s, ok := stringValue(val, esc)
	if !ok {
		return ""
	}
	return string(s)
}
