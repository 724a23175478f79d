package backends

import (
	"context"
	"net/http"
	"testing"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

// tracedCtx holds a sampled span context with a tracestate.
func tracedCtx(tb testing.TB) context.Context {
	tb.Helper()
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ts, err := trace.ParseTraceState("k=v")
	if err != nil {
		tb.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, TraceState: ts})
	return trace.ContextWithSpanContext(context.Background(), sc)
}

const wantTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// The trace context of a call reaches a gRPC game in its metadata, on
// every method; a call without one carries none.
func TestGRPCCarriesTraceContext(t *testing.T) {
	got := make(chan metadata.MD, 3)
	g := &game{}
	g.join = func(ctx context.Context, _ *backendv1.JoinRequest) (*backendv1.JoinResponse, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		got <- md
		return &backendv1.JoinResponse{}, nil
	}
	g.handleIn = func(ctx context.Context, _ *backendv1.HandleInRequest) (*backendv1.HandleInResponse, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		got <- md
		return &backendv1.HandleInResponse{}, nil
	}
	addr, _ := serveGame(t, g, "127.0.0.1:0")
	e := newEngine(t, "grpc://"+addr, nil)
	for _, traced := range []bool{true, false} {
		ctx := context.Background()
		if traced {
			ctx = tracedCtx(t)
		}
		if _, err := e.Join(ctx, fullCall()); err != nil {
			t.Fatal(err)
		}
		if _, err := e.HandleIn(ctx, fullCall()); err != nil {
			t.Fatal(err)
		}
		for _, op := range []string{"join", "handle_in"} {
			md := <-got
			tp, ts := md.Get("traceparent"), md.Get("tracestate")
			switch {
			case traced && (len(tp) != 1 || tp[0] != wantTraceparent || len(ts) != 1 || ts[0] != "k=v"):
				t.Errorf("%s: traceparent %q tracestate %q, want %q and k=v", op, tp, ts, wantTraceparent)
			case !traced && (len(tp) != 0 || len(ts) != 0):
				t.Errorf("%s untraced: traceparent %q tracestate %q, want none", op, tp, ts)
			}
		}
	}
}

// The trace context of a call reaches a webhook game in its headers.
func TestWebhookCarriesTraceContext(t *testing.T) {
	g := &hookGame{}
	base, _ := serveHook(t, g)
	w := newHook(t, base+"?unsigned=true", nil)
	if _, err := w.HandleIn(tracedCtx(t), fullCall()); err != nil {
		t.Fatal(err)
	}
	if _, err := w.HandleIn(context.Background(), fullCall()); err != nil {
		t.Fatal(err)
	}
	reqs := g.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	check := func(h http.Header, tp, ts string) {
		t.Helper()
		if h.Get("Traceparent") != tp || h.Get("Tracestate") != ts {
			t.Errorf("traceparent %q tracestate %q, want %q %q", h.Get("Traceparent"), h.Get("Tracestate"), tp, ts)
		}
	}
	check(reqs[0].header, wantTraceparent, "k=v")
	check(reqs[1].header, "", "")
}
