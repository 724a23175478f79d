package telemetry_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/backends/telemetry"
	"github.com/phxgate/phxgate/backends/telemetry/otlptest"
	"go.opentelemetry.io/otel/trace"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestEnabled(t *testing.T) {
	cases := []struct {
		name    string
		enabled bool
		env     map[string]string
		want    bool
	}{
		{"off by default", false, nil, false},
		{"config", true, nil, true},
		{"endpoint", false, map[string]string{telemetry.EnvEndpoint: "http://c:4318"}, true},
		{"traces endpoint", false, map[string]string{telemetry.EnvTracesEndpoint: "http://c:4318/v1/traces"}, true},
		{"sdk disabled wins", true, map[string]string{telemetry.EnvEndpoint: "http://c:4318", telemetry.EnvSDKDisabled: "true"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := telemetry.Enabled(tc.enabled, env(tc.env)); got != tc.want {
				t.Errorf("Enabled = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestProtocol(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		want    string
		wantKey string // in the error
	}{
		{"default", nil, "http/protobuf", ""},
		{"grpc", map[string]string{telemetry.EnvProtocol: "grpc"}, "grpc", ""},
		{"traces wins", map[string]string{telemetry.EnvProtocol: "grpc", telemetry.EnvTracesProtocol: "http/protobuf"}, "http/protobuf", ""},
		{"json refused", map[string]string{telemetry.EnvProtocol: "http/json"}, "", telemetry.EnvProtocol},
		{"junk refused", map[string]string{telemetry.EnvTracesProtocol: "udp"}, "", telemetry.EnvTracesProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := telemetry.Protocol(env(tc.env))
			if tc.wantKey != "" {
				if !errors.Is(err, telemetry.ErrConfig) || !strings.Contains(err.Error(), tc.wantKey) {
					t.Fatalf("err %v, want ErrConfig naming %s", err, tc.wantKey)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Protocol = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestSetupOffReturnsNil(t *testing.T) {
	tp, err := telemetry.Setup(context.Background(), false, "x", env(nil))
	if tp != nil || err != nil {
		t.Fatalf("Setup off = %v, %v; want nil, nil", tp, err)
	}
}

// Setup exports over both OTLP protocols to a real receiver, with the
// service name and resource attributes the SDK reads from the
// environment, and the sampler it reads too.
func TestSetupExports(t *testing.T) {
	rcv := otlptest.Start(t)
	cases := []struct {
		proto, endpoint, service, wantService string
	}{
		{"grpc", "http://" + rcv.GRPCAddr, "", "svc-default"},
		{"http/protobuf", rcv.HTTPURL, "from-env", "from-env"},
	}
	for _, tc := range cases {
		t.Run(tc.proto, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tc.endpoint)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tc.proto)
			t.Setenv("OTEL_SERVICE_NAME", tc.service)
			t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
			tp, err := telemetry.Setup(context.Background(), false, "svc-default", os.Getenv)
			if err != nil || tp == nil {
				t.Fatalf("Setup: %v, %v", tp, err)
			}
			_, span := tp.Tracer("t").Start(context.Background(), "span-"+tc.proto)
			span.End()
			if err := tp.Shutdown(context.Background()); err != nil { // flushes
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			spans, ok := rcv.WaitFor(ctx, func(ss []otlptest.Span) bool {
				for _, s := range ss {
					if s.Name == "span-"+tc.proto {
						return true
					}
				}
				return false
			})
			if !ok {
				t.Fatalf("span not received; got %+v", spans)
			}
			for _, s := range spans {
				if s.Name == "span-"+tc.proto && s.Service != tc.wantService {
					t.Errorf("service %q, want %q", s.Service, tc.wantService)
				}
			}
		})
	}
	t.Run("sampler from env", func(t *testing.T) {
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.HTTPURL)
		t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
		tp, err := telemetry.Setup(context.Background(), false, "s", os.Getenv)
		if err != nil {
			t.Fatal(err)
		}
		defer tp.Shutdown(context.Background())
		_, span := tp.Tracer("t").Start(context.Background(), "x")
		if span.SpanContext().IsSampled() {
			t.Error("sampled with OTEL_TRACES_SAMPLER=always_off")
		}
	})
}

// A line logged with a traced context carries its ids; others do not.
func TestLogHandler(t *testing.T) {
	var buf strings.Builder
	log := slog.New(telemetry.LogHandler(slog.NewTextHandler(&buf, nil))).With("conn", 7)
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	log.InfoContext(ctx, "traced")
	log.Info("untraced")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("lines %q", lines)
	}
	if !strings.Contains(lines[0], "trace_id=4bf92f3577b34da6a3ce929d0e0e4736") || !strings.Contains(lines[0], "span_id=00f067aa0ba902b7") || !strings.Contains(lines[0], "conn=7") {
		t.Errorf("traced line %q lacks its ids", lines[0])
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Errorf("untraced line %q has a trace id", lines[1])
	}
}
