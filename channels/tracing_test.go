package channels

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// fixedBackend answers every push with the same reply and allocates
// nothing, so that a push's allocations are phxgate's own.
type fixedBackend struct{ rep backends.Reply }

func (b *fixedBackend) Join(context.Context, *backends.Call) (*backends.Reply, error) {
	return &backends.Reply{}, nil
}
func (b *fixedBackend) HandleIn(context.Context, *backends.Call) (*backends.Reply, error) {
	return &b.rep, nil
}
func (b *fixedBackend) Leave(context.Context, *backends.Call, backends.LeaveReason) error {
	return nil
}

// pushEnv is a server with one socket joined to room:bench on a
// fixedBackend; tweak adjusts the config (tracing).
func pushEnv(tb testing.TB, tweak func(*Config)) (s *Socket, conn *discardConn) {
	tb.Helper()
	return pushEnvWith(tb, &fixedBackend{rep: backends.Reply{Status: "ok", Response: backends.Payload{Data: []byte(`{"ok":1}`)}}}, tweak)
}

func pushEnvWith(tb testing.TB, be backends.Backend, tweak func(*Config)) (s *Socket, conn *discardConn) {
	tb.Helper()
	router, err := NewRouter([]Route{{Pattern: "room:*", Backend: be}})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := NewConfig()
	cfg.NodeID = "n1"
	cfg.Workers = 2
	cfg.ChannelQueue, cfg.ChannelQueueHard = 1<<20, 1<<20
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := NewServer(cfg, router, newTestBroker(), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		_ = srv.Close(ctx)
	})
	conn = &discardConn{}
	s = srv.Connect(conn, ConnectInfo{Serializer: V2, Params: []byte(`{}`)})
	if err := s.HandleText([]byte(`["1","1","room:bench","phx_join",{}]`)); err != nil {
		tb.Fatal(err)
	}
	waitFor(tb, waitLong, "join reply", func() bool { return conn.n.Load() == 1 })
	return s, conn
}

var benchPush = []byte(`["1","2","room:bench","bet",{"amount":10,"pick":"high"}]`)

// pushOnce sends one push and spins (no allocation) until its reply is
// out, so that the worker's allocations fall inside the measurement.
func pushOnce(tb testing.TB, s *Socket, conn *discardConn) {
	want := conn.n.Load() + 1
	if err := s.HandleText(benchPush); err != nil {
		tb.Fatal(err)
	}
	for conn.n.Load() < want {
		runtime.Gosched()
	}
}

// pushAllocsBudget is the allocations of one forwarded push, poller and
// worker sides, reply included, with tracing off: the count measured
// before tracing existed. Tracing off must not add one.
const pushAllocsBudget = 13

func TestPushAllocsTracingOff(t *testing.T) {
	s, conn := pushEnv(t, nil)
	pushOnce(t, s, conn) // warm up the pools
	allocs := testing.AllocsPerRun(200, func() { pushOnce(t, s, conn) })
	t.Logf("%v allocs per forwarded push (tracing off)", allocs)
	if allocs != pushAllocsBudget {
		t.Errorf("%v allocs per forwarded push with tracing off, want %d", allocs, pushAllocsBudget)
	}
}

func BenchmarkPushTracingOff(b *testing.B) {
	s, conn := pushEnv(b, nil)
	b.ReportAllocs()
	for b.Loop() {
		pushOnce(b, s, conn)
	}
}

// ctxBackend records the span context each push reached the backend with.
type ctxBackend struct {
	fixedBackend
	got chan trace.SpanContext
}

func (b *ctxBackend) HandleIn(ctx context.Context, c *backends.Call) (*backends.Reply, error) {
	b.got <- trace.SpanContextFromContext(ctx)
	return &b.rep, nil
}

// TestPushSpans: by default a client's traceparent is untrusted input, so
// the push span starts a new trace and links to the client's span (the
// sampler decides on a trace id the node chose); with
// TrustClientTraceContext it is the parent.
func TestPushSpans(t *testing.T) {
	for _, trust := range []bool{false, true} {
		t.Run(fmt.Sprintf("trust=%v", trust), func(t *testing.T) { testPushSpans(t, trust) })
	}
}

func testPushSpans(t *testing.T, trust bool) {
	const (
		clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
		clientSpan  = "00f067aa0ba902b7"
	)
	cases := []struct {
		name       string
		payload    string
		wantClient bool // the client's span is the parent (trusted) or the link
	}{
		{"client traceparent", `{"amount":10,"traceparent":"00-` + clientTrace + `-` + clientSpan + `-01","tracestate":"k=v"}`, true},
		{"no traceparent", `{"amount":10}`, false},
		{"malformed traceparent", `{"amount":10,"traceparent":"00-zz-` + clientSpan + `-01"}`, false},
		{"all-zero trace id", `{"traceparent":"00-00000000000000000000000000000000-` + clientSpan + `-01"}`, false},
		{"not a string", `{"traceparent":{"a":1}}`, false},
		{"too long", `{"traceparent":"` + strings.Repeat("a", 600) + `"}`, false},
	}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	be := &ctxBackend{fixedBackend: fixedBackend{rep: backends.Reply{Status: "ok"}}, got: make(chan trace.SpanContext, 1)}
	s, conn := pushEnvWith(t, be, func(c *Config) {
		c.Tracer = tp.Tracer("test")
		c.TrustClientTraceContext = trust
	})
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := conn.n.Load() + 1
			mustHandle(t, s, `["1","`+strconv.Itoa(10+i)+`","room:bench","bet",`+tc.payload+`]`)
			var atBackend trace.SpanContext
			select {
			case atBackend = <-be.got:
			case <-time.After(waitLong):
				t.Fatal("the push did not reach the backend")
			}
			waitFor(t, waitLong, "reply", func() bool { return conn.n.Load() >= want })
			var span sdktrace.ReadOnlySpan
			waitFor(t, waitLong, "the push span", func() bool {
				for _, sp := range rec.Ended() {
					if sp.SpanContext().SpanID() == atBackend.SpanID() {
						span = sp
						return true
					}
				}
				return false
			})
			if span.Name() != "push" || span.SpanKind() != trace.SpanKindClient {
				t.Errorf("span %q kind %v, want push, client", span.Name(), span.SpanKind())
			}
			attrs := map[string]string{}
			for _, kv := range span.Attributes() {
				attrs[string(kv.Key)] = kv.Value.Emit()
			}
			if attrs["phx.topic"] != "room:bench" || attrs["phx.event"] != "bet" || attrs["phx.reply_status"] != "ok" {
				t.Errorf("attributes %v: want phx.topic=room:bench phx.event=bet phx.reply_status=ok", attrs)
			}
			for k, v := range attrs {
				if strings.Contains(v, "amount") || strings.Contains(v, "traceparent") || strings.Contains(k, "payload") {
					t.Errorf("attribute %s=%q carries the payload", k, v)
				}
			}
			isClient := func(sc trace.SpanContext) bool {
				return sc.TraceID().String() == clientTrace && sc.SpanID().String() == clientSpan && sc.IsRemote() && sc.TraceState().Get("k") == "v"
			}
			parent, links := span.Parent(), span.Links()
			switch {
			case !tc.wantClient:
				if parent.IsValid() || len(links) != 0 {
					t.Errorf("parent %v links %d, want a new root without links", parent.SpanID(), len(links))
				}
			case trust:
				if !isClient(parent) || span.SpanContext().TraceID().String() != clientTrace || len(links) != 0 {
					t.Errorf("trace %v parent %v links %d, want the client's %s/%s k=v as parent, no link", span.SpanContext().TraceID(), parent, len(links), clientTrace, clientSpan)
				}
			default:
				if parent.IsValid() || span.SpanContext().TraceID().String() == clientTrace {
					t.Errorf("trace %v parent %v, want a new server-side trace", span.SpanContext().TraceID(), parent)
				}
				if len(links) != 1 || !isClient(links[0].SpanContext) {
					t.Errorf("links %v, want one link to the client's %s/%s k=v", links, clientTrace, clientSpan)
				}
			}
		})
	}
}

// BenchmarkPushTracingOn: the same push, traced (every span sampled and
// ended into a recorder), for comparison with BenchmarkPushTracingOff.
func BenchmarkPushTracingOn(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tracetest.NewSpanRecorder()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	s, conn := pushEnv(b, func(c *Config) { c.Tracer = tp.Tracer("bench") })
	b.ReportAllocs()
	for b.Loop() {
		pushOnce(b, s, conn)
	}
}
