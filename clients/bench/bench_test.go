package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/gateway"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42
go_gc_duration_seconds{quantile="0"} 1e-05
process_resident_memory_bytes 1.2345678e+07
phxgate_x_total{reason="a"} 3 1700000000000
`
	tests := []struct {
		name string
		want []string
		vals map[string]float64
		err  error
	}{
		{"both", []string{metricRSS, metricGoroutines}, map[string]float64{metricRSS: 12345678, metricGoroutines: 42}, nil},
		{"missing", []string{"nope"}, nil, ErrMetricMissing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMetrics(strings.NewReader(text), tc.want...)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			for k, v := range tc.vals {
				if got[k] != v {
					t.Fatalf("%s = %v, want %v", k, got[k], v)
				}
			}
		})
	}
}

func TestSlope(t *testing.T) {
	tests := []struct {
		name    string
		samples []sample
		want    float64
		ok      bool
	}{
		{"exact line", []sample{{0, 1000, 0}, {100, 151000, 0}, {200, 301000, 0}}, 1500, true},
		{"noisy", []sample{{0, 0, 0}, {1, 1, 0}, {2, 1, 0}, {3, 2, 0}}, 0.6, true},
		{"one point", []sample{{0, 5, 0}}, 0, false},
		{"same x", []sample{{5, 1, 0}, {5, 2, 0}}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := slope(tc.samples)
			if ok != tc.ok || math.Abs(got-tc.want) > 1e-9 {
				t.Fatalf("slope = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	mod := func(f func(*Config)) Config { c := NewConfig(); f(&c); return c }
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", NewConfig(), true},
		{"no admin", mod(func(c *Config) { c.Admin = "" }), true},
		{"http url", mod(func(c *Config) { c.URL = "http://x/socket/websocket" }), false},
		{"zero conns", mod(func(c *Config) { c.Conns = 0 }), false},
		{"over max", mod(func(c *Config) { c.Conns = MaxConns + 1 }), false},
		{"too many for one ip", mod(func(c *Config) { c.Conns = maxPortsPerIP + 1 }), false},
		{"enough ips", mod(func(c *Config) {
			c.Conns = maxPortsPerIP + 1
			c.LocalIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)}
		}), true},
		{"empty topic", mod(func(c *Config) { c.Topic = "" }), false},
		{"negative rate", mod(func(c *Config) { c.Rate = -1 }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkConfigErr(t, tc.cfg.Validate(), tc.ok)
		})
	}
	if _, err := parseIPs("127.0.0.1, nope"); !errors.Is(err, ErrConfig) {
		t.Fatalf("parseIPs: %v", err)
	}
}

// TestRunAgainstGateway runs a small load against a real in-process
// gateway with its admin listener, end to end.
func TestRunAgainstGateway(t *testing.T) {
	cfg := gateway.NewConfig()
	cfg.APIListen = ""
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	cfg.Routes = []gateway.RouteConfig{{Topic: "room:*", Backend: "echo"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := gateway.Start(ctx, cfg, gateway.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })

	bc := NewConfig()
	bc.URL = "ws://" + srv.Addr().String() + "/socket/websocket"
	bc.Admin = "http://" + srv.AdminAddr().String()
	bc.Conns = 60
	bc.Checkpoint = 20
	bc.Rate = 10_000
	bc.Settle = time.Millisecond
	bc.Heartbeat = 10 * time.Millisecond
	// Spread over two loopback source addresses, as for 15k+ runs.
	bc.LocalIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)}
	var out bytes.Buffer
	res, err := run(ctx, bc, &out)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if res.Opened != 60 || res.Failed != 0 || len(res.Samples) != 4 {
		t.Fatalf("opened %d failed %d samples %d\n%s", res.Opened, res.Failed, len(res.Samples), out.String())
	}
	for i, s := range res.Samples {
		if s.Conns != 20*i || s.RSS <= 0 || s.Goroutines <= 0 {
			t.Fatalf("sample %d = %+v", i, s)
		}
	}
	summary(&out, res)
	if !strings.Contains(out.String(), "rss slope:") {
		t.Fatalf("no slope line:\n%s", out.String())
	}
	t.Log("\n" + out.String())
}

func TestRunJoinRefused(t *testing.T) {
	cfg := gateway.NewConfig()
	cfg.APIListen = ""
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.Routes = []gateway.RouteConfig{{Topic: "room:*", Backend: "echo"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := gateway.Start(ctx, cfg, gateway.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	bc := NewConfig()
	bc.URL = "ws://" + srv.Addr().String() + "/socket/websocket"
	bc.Admin = ""
	bc.Conns = 5
	bc.Rate = 10_000
	bc.JoinPayload = `{"deny":true}`
	var out bytes.Buffer
	res, err := run(ctx, bc, &out)
	if err != nil {
		t.Fatal(err)
	}
	if res.Opened != 0 || res.Failed != 5 {
		t.Fatalf("opened %d failed %d, want 0/5", res.Opened, res.Failed)
	}
}

// checkConfigErr fails unless err is nil when ok is set, and wraps
// ErrConfig when it is not.
func checkConfigErr(tb testing.TB, err error, ok bool) {
	tb.Helper()
	if (err == nil) != ok {
		tb.Fatalf("Validate() = %v, want ok=%v", err, ok)
	}
	if err != nil && !errors.Is(err, ErrConfig) {
		tb.Fatalf("%v does not wrap ErrConfig", err)
	}
}
