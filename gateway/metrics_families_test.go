//go:build linux

package gateway

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricFamilies is every phxgate_ family a node serves with any route
// (the README's Metrics section lists the same names). Families that exist
// only with a feature on are in featureFamilies.
var metricFamilies = []string{
	// gateway: sockets, handshakes, frames, drain
	"phxgate_gateway_connections",
	"phxgate_gateway_handshakes_total",
	"phxgate_gateway_connect_refused_total",
	"phxgate_gateway_disconnects_total",
	"phxgate_gateway_drain_closed_total",
	"phxgate_gateway_drain_duration_seconds",
	"phxgate_gateway_draining",
	"phxgate_gateway_drain_remaining_connections",
	"phxgate_gateway_ready",
	"phxgate_handshakes_in_flight",
	"phxgate_frames_in_total",
	"phxgate_frames_out_total",
	"phxgate_bytes_in_total",
	"phxgate_bytes_out_total",
	"phxgate_write_syscalls_total",
	"phxgate_write_queue_bytes",
	"phxgate_output_budget_bytes",
	"phxgate_slow_consumers_total",
	"phxgate_handler_panics_total",
	// long-poll transport (on by default)
	"phxgate_longpoll_sessions",
	"phxgate_longpoll_sessions_created_total",
	"phxgate_longpoll_sessions_closed_total",
	"phxgate_longpoll_sessions_refused_total",
	"phxgate_longpoll_polls_total",
	"phxgate_longpoll_posts_total",
	"phxgate_longpoll_posts_reading",
	"phxgate_longpoll_posts_waiting",
	"phxgate_longpoll_messages_dropped_total",
	"phxgate_longpoll_other_requests_total",
	// admission and auth
	"phxgate_admission_connections",
	"phxgate_admission_ip_evictions_total",
	"phxgate_admission_tracked_ips",
	"phxgate_auth_jwks_keys",
	"phxgate_auth_jwks_refreshes_total",
	"phxgate_auth_verifications_total",
	// rate limits
	"phxgate_ratelimit_abusive_total",
	"phxgate_ratelimit_entries",
	"phxgate_ratelimit_evictions_total",
	"phxgate_ratelimit_limited_total",
	// channels and backends
	"phxgate_channels_joined",
	"phxgate_channels_joins_total",
	"phxgate_messages_in_total",
	"phxgate_channel_flood_closes_total",
	"phxgate_dropped_frames_total",
	"phxgate_overload_shed_total",
	"phxgate_backend_calls_total",
	"phxgate_backend_call_duration_seconds",
	"phxgate_backend_overloaded_total",
	"phxgate_backend_panics_total",
	"phxgate_leaves_total",
	"phxgate_leaves_lost_total",
	"phxgate_leave_grace_seats",
	"phxgate_reply_broadcasts_lost_total",
	"phxgate_resume_buffer_overflows_total",
	"phxgate_resumes_total",
	"phxgate_replayed_events_total",
	"phxgate_presence_state_refreshes_total",
	"phxgate_presence_state_too_large_total",
	"phxgate_presence_state_streams_total",
	"phxgate_presence_state_pieces_total",
	"phxgate_presence_stream_bytes",
	"phxgate_presence_state_overtaken_total",
	"phxgate_presence_state_refresh_retries_total",
	// pubsub (either broker)
	"phxgate_pubsub_broker_up",
	"phxgate_pubsub_broadcasts_total",
	"phxgate_broadcast_fanout_total",
	"phxgate_publish_errors_total",
	"phxgate_pubsub_continuity_losses_total",
	"phxgate_pubsub_delivery_latency_seconds",
	"phxgate_pubsub_duplicates_dropped_total",
	"phxgate_pubsub_filled_events_total",
	"phxgate_pubsub_gap_fills_total",
	"phxgate_pubsub_own_delivery_timeouts_total",
}

// featureFamilies are the prefixes of families served only with a feature
// on: the Redis broker, presence, a gRPC or webhook route.
var featureFamilies = []string{
	"phxgate_pubsub_redis_",
	"phxgate_presence_",
	"phxgate_backend_grpc_",
	"phxgate_backend_webhook_",
}

// scrape parses a node's /metrics with the Prometheus text parser.
func scrape(tb testing.TB, s *Server) map[string]*dto.MetricFamily {
	tb.Helper()
	resp, err := http.Get("http://" + s.AdminAddr().String() + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		tb.Fatalf("/metrics does not parse: %v", err)
	}
	return mfs
}

// sample is the value of name's series whose label has value (any series
// when label is empty); -1 when the series is not served.
func sample(mfs map[string]*dto.MetricFamily, name, label, value string) float64 {
	mf := mfs[name]
	if mf == nil {
		return -1
	}
	for _, m := range mf.GetMetric() {
		ok := label == ""
		for _, l := range m.GetLabel() {
			ok = ok || (l.GetName() == label && l.GetValue() == value)
		}
		if ok {
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return -1
}

// TestMetricsFamiliesServed scrapes a running node: every family of
// metricFamilies is served, every phxgate_ family served is listed, the
// label values known in advance are there at zero before any traffic, and
// the counters move as clients connect, join, push, get rate-limited and
// disconnect.
func TestMetricsFamiliesServed(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		c.Auth.HS256Secret = ""
		c.Limits.JoinBurst = 3
		c.Limits.JoinsPerSecond = 0.01
	})
	mfs := scrape(t, s)
	for _, name := range metricFamilies {
		if mfs[name] == nil {
			t.Errorf("/metrics does not serve %s", name)
		}
	}
	for name := range mfs {
		if !strings.HasPrefix(name, "phxgate_") {
			continue
		}
		listed := false
		for _, n := range metricFamilies {
			listed = listed || n == name
		}
		for _, p := range featureFamilies {
			listed = listed || strings.HasPrefix(name, p)
		}
		if !listed {
			t.Errorf("/metrics serves %s, which metricFamilies does not list", name)
		}
	}
	zero := []struct{ name, label, value string }{
		{"phxgate_gateway_disconnects_total", "reason", "client_closed"},
		{"phxgate_gateway_disconnects_total", "reason", "drain"},
		{"phxgate_channels_joins_total", "result", "ok"},
		{"phxgate_channels_joins_total", "result", "rate_limited"},
		{"phxgate_messages_in_total", "kind", "event"},
		{"phxgate_messages_in_total", "kind", "heartbeat"},
		{"phxgate_backend_calls_total", "result", "unavailable"},
		{"phxgate_backend_overloaded_total", "limit", "pool"},
		{"phxgate_dropped_frames_total", "reason", "binary_on_v1"},
		{"phxgate_auth_verifications_total", "result", "expired"},
		{"phxgate_admission_ip_evictions_total", "reason", "idle"},
		{"phxgate_leaves_total", "reason", "drained"},
	}
	for _, z := range zero {
		if v := sample(mfs, z.name, z.label, z.value); v != 0 {
			t.Errorf("%s{%s=%q} = %v before any traffic, want served at 0", z.name, z.label, z.value, v)
		}
	}

	c := rawSocket(t, s, "", "room:a") // connect and join
	c.sendText(`["1","2","room:a","echo",{"n":1}]`)
	c.expectMessage(ws.OpText, `["1","2","room:a","phx_reply",{"response":{"n":1},"status":"ok"}]`)
	c.sendText(`[null,"3","phoenix","heartbeat",{}]`)
	c.expectMessage(ws.OpText, `[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
	for i := range 4 { // the join burst of 3 is spent after 2 of them
		ref := fmt.Sprint(10 + i)
		c.sendText(`["` + ref + `","` + ref + `","room:r` + ref + `","phx_join",{}]`)
		_ = c.readV2()
	}
	mfs = scrape(t, s)
	for _, m := range []struct {
		name, label, value string
		want               float64
	}{
		{"phxgate_gateway_connections", "", "", 1},
		{"phxgate_gateway_handshakes_total", "result", "ok", 1},
		{"phxgate_channels_joins_total", "result", "ok", 3},
		{"phxgate_channels_joins_total", "result", "rate_limited", 2}, // the first join took one of the burst
		{"phxgate_messages_in_total", "kind", "event", 1},
		{"phxgate_messages_in_total", "kind", "heartbeat", 1},
		{"phxgate_messages_in_total", "kind", "join", 5},
		{"phxgate_channels_joined", "", "", 3},
	} {
		if got := sample(mfs, m.name, m.label, m.value); got != m.want {
			t.Errorf("%s{%s=%q} = %v, want %v", m.name, m.label, m.value, got, m.want)
		}
	}
	if got := sample(mfs, "phxgate_ratelimit_limited_total", "kind", "join"); got < 1 {
		t.Errorf("phxgate_ratelimit_limited_total{kind=join} = %v, want at least 1", got)
	}
	for _, name := range []string{"phxgate_frames_in_total", "phxgate_frames_out_total", "phxgate_bytes_in_total", "phxgate_bytes_out_total"} {
		if got := sample(mfs, name, "", ""); got <= 0 {
			t.Errorf("%s = %v after traffic, want > 0", name, got)
		}
	}

	c.write(clientFrame(0x88, true, []byte{0x03, 0xe8}, -1)) // close 1000
	waitFor(t, 5*time.Second, func() bool {
		mfs := scrape(t, s)
		return sample(mfs, "phxgate_gateway_disconnects_total", "reason", "client_closed") == 1 &&
			sample(mfs, "phxgate_gateway_connections", "", "") == 0 &&
			sample(mfs, "phxgate_leaves_total", "reason", "disconnected") == 3
	}, "the disconnect, and a Leave for each of the 3 channels, counted")
}
