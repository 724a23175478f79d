//go:build linux

package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/backends/telemetry"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
)

// syncBuffer is a log destination read by the test while the node writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// find returns the first JSON line whose msg is msg, or nil.
func (b *syncBuffer) find(tb testing.TB, msg string) map[string]any {
	tb.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			tb.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if m["msg"] == msg {
			return m
		}
	}
	return nil
}

// TestTracedPushLogLine: a node logging through the same handler as
// cmd/phxgate with tracing on; a push that names a traceparent fails at a
// real gRPC game, and the line the node logs for it carries the push
// span's trace_id and span_id, with the connection id. The trace is the
// client's only with otel.trust_client_context; by default it is the
// node's own, linked to the client's span.
func TestTracedPushLogLine(t *testing.T) {
	for _, trust := range []bool{false, true} {
		t.Run(fmt.Sprintf("trust_client_context=%v", trust), func(t *testing.T) { testTracedPushLogLine(t, trust) })
	}
}

func testTracedPushLogLine(t *testing.T, trust bool) {
	const clientTrace = "0af7651916cd43dd8448eb211c80319c"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	backendv1.RegisterGameBackendServer(gs, &gameServer{})
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	out := &syncBuffer{}
	logger := slog.New(telemetry.LogHandler(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})))
	s := prodServer(t, func(c *Config) {
		c.Auth.HS256Secret = ""
		c.Otel.TrustClientContext = trust
		c.Routes = []RouteConfig{{Topic: "game:*", Backend: "grpc://" + ln.Addr().String() + "?timeout=2s&retries=1&backoff=1ms"}}
	}, WithLogger(logger), WithTracerProvider(tp))
	c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0")
	c.sendText(`["1","1","game:1","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["1","1","game:1","phx_reply",{"response":{"seat":1},"status":"ok"}]`)
	c.sendText(`["1","2","game:1","internal",{"traceparent":"00-` + clientTrace + `-b7ad6b7169203331-01"}]`)
	c.expectMessage(ws.OpText, `["1","2","game:1","phx_reply",{"response":{"reason":"backend_error"},"status":"error"}]`)

	var line map[string]any
	waitFor(t, 5*time.Second, func() bool { line = out.find(t, "backend call failed"); return line != nil }, "the failed push logged")
	var span sdktrace.ReadOnlySpan
	waitFor(t, 5*time.Second, func() bool {
		for _, sp := range rec.Ended() {
			if sp.Name() == "push" {
				span = sp
				return true
			}
		}
		return false
	}, "the push span ended")
	if line["trace_id"] != span.SpanContext().TraceID().String() {
		t.Errorf("log line %v: trace_id want the push span's %v", line, span.SpanContext().TraceID())
	}
	if got := span.SpanContext().TraceID().String(); (got == clientTrace) != trust {
		t.Errorf("push span's trace %s with trust_client_context %v (client's %s)", got, trust, clientTrace)
	}
	if links := span.Links(); !trust && (len(links) != 1 || links[0].SpanContext.TraceID().String() != clientTrace) {
		t.Errorf("push span's links %v, want one to the client's trace %s", links, clientTrace)
	}
	if line["span_id"] != span.SpanContext().SpanID().String() {
		t.Errorf("log line %v: span_id want the push span's %v", line, span.SpanContext().SpanID())
	}
	if line["event"] != "internal" || line["topic"] != "game:1" || line["conn"] == nil || line["node"] != s.cfg.NodeID {
		t.Errorf("log line %v: want event internal, topic game:1, the conn and node ids", line)
	}
}
