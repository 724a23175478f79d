package channels

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"testing"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/backends/telemetry"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// failingBackend joins and fails every push.
type failingBackend struct{ fixedBackend }

func (b *failingBackend) HandleIn(context.Context, *backends.Call) (*backends.Reply, error) {
	return nil, errors.New("the game refused the bet")
}

// logBuffer is a log destination the test reads while workers write.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the JSON log lines whose msg is msg.
func (b *logBuffer) lines(tb testing.TB, msg string) []map[string]any {
	tb.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			tb.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestFailedPushLogCarriesTraceID: the line logged for a push whose
// backend call failed carries the push span's trace_id and span_id (the
// client's trace, since the push names a traceparent) when the logger
// reads the context, and no trace ids when tracing is off.
func TestFailedPushLogCarriesTraceID(t *testing.T) {
	const clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	push := `["1","7","room:bench","bet",{"traceparent":"00-` + clientTrace + `-00f067aa0ba902b7-01"}]`
	for _, traced := range []bool{true, false} {
		t.Run(map[bool]string{true: "traced", false: "tracing off"}[traced], func(t *testing.T) {
			out := &logBuffer{}
			logger := slog.New(telemetry.LogHandler(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})))
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			s, _ := pushEnvWith(t, &failingBackend{}, func(c *Config) {
				c.Logger = logger
				if traced {
					c.Tracer = tp.Tracer("test")
				}
			})
			mustHandle(t, s, push)
			var lines []map[string]any
			waitFor(t, waitLong, "the failed push logged", func() bool {
				lines = out.lines(t, "backend call failed")
				return len(lines) > 0
			})
			l := lines[0]
			if l["topic"] != "room:bench" || l["event"] != "bet" || l["op"] != opHandleIn || l["result"] != "error" || l["level"] != "DEBUG" {
				t.Errorf("log line %v: want topic room:bench, event bet, op handle_in, result error, level DEBUG", l)
			}
			if !traced {
				if l["trace_id"] != nil || l["span_id"] != nil {
					t.Errorf("log line %v carries trace ids with tracing off", l)
				}
				return
			}
			var span sdktrace.ReadOnlySpan
			waitFor(t, waitLong, "the push span", func() bool {
				for _, sp := range rec.Ended() {
					if sp.Name() == spanPush {
						span = sp
						return true
					}
				}
				return false
			})
			// The client's traceparent is a link, not the parent: the log
			// line names the node's own trace.
			if l["trace_id"] != span.SpanContext().TraceID().String() || l["trace_id"] == clientTrace {
				t.Errorf("trace_id %v, want the push span's own %v (not the client's %s)", l["trace_id"], span.SpanContext().TraceID(), clientTrace)
			}
			if l["span_id"] != span.SpanContext().SpanID().String() {
				t.Errorf("span_id %v, want the push span's %v", l["span_id"], span.SpanContext().SpanID())
			}
		})
	}
}
