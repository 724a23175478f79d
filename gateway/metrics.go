package gateway

import (
	"sync/atomic"

	"github.com/phxgate/phxgate/channels"
	"github.com/prometheus/client_golang/prometheus"
)

// Handshake results, the label values of phxgate_gateway_handshakes_total.
const (
	hsOK         = "ok"
	hsRejected   = "rejected"    // refused with a 4xx (vsn, params, admission, connect)
	hsBadRequest = "bad_request" // malformed upgrade
	hsTimeout    = "timeout"     // handshake_timeout passed
	hsTooLarge   = "too_large"   // request head over MaxHandshakeBytes
	hsError      = "error"       // I/O error
	hsHTTP       = "http"        // not the socket path: served by net/http
)

var allDisconnectReasons = []channels.DisconnectReason{
	channels.ReasonClientClosed, channels.ReasonConnReset, channels.ReasonIdleTimeout,
	channels.ReasonProtocolError, channels.ReasonInvalidUTF8, channels.ReasonTooBig,
	channels.ReasonMalformed, channels.ReasonSlowConsumer, channels.ReasonKicked,
	channels.ReasonTokenExpired, channels.ReasonRateAbuse, channels.ReasonDrain,
	channels.ReasonInternal,
}

type metrics struct {
	connections   prometheus.Gauge
	handshakes    *prometheus.CounterVec
	framesIn      prometheus.Counter
	framesOut     prometheus.Counter
	writes        prometheus.Counter
	bytesIn       prometheus.Counter
	bytesOut      prometheus.Counter
	disconnects   *prometheus.CounterVec
	slowConsumers prometheus.Counter
	panics        prometheus.Counter
	drainClosed   prometheus.Counter
	// drained mirrors drainClosed for the shutdown log line.
	drained atomic.Int64
}

// addDrained counts n sockets closed with 1012 by a drain.
func (m *metrics) addDrained(n int) {
	m.drainClosed.Add(float64(n))
	m.drained.Add(int64(n))
}

func newMetrics(reg prometheus.Registerer, queued func() float64, busy func() float64, budget int64) *metrics {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "phxgate_gateway_connections", Help: "Open WebSocket connections.",
		}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_gateway_handshakes_total", Help: "Connections accepted on the client port, by handshake result.",
		}, []string{"result"}),
		framesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_frames_in_total", Help: "WebSocket data messages and control frames received.",
		}),
		framesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_frames_out_total", Help: "WebSocket frames fully written.",
		}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_write_syscalls_total", Help: "writev calls made to sockets (frames queued together leave in one).",
		}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_bytes_in_total", Help: "Bytes read from upgraded sockets.",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_bytes_out_total", Help: "Bytes written to upgraded sockets.",
		}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_gateway_disconnects_total", Help: "Closed sockets by reason.",
		}, []string{"reason"}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_slow_consumers_total", Help: "Sockets closed with 1013 because their write queue passed write_queue_max_bytes.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_handler_panics_total", Help: "Panics recovered from socket handlers (the socket is closed with 1011).",
		}),
		drainClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_gateway_drain_closed_total", Help: "Sockets closed with 1012 by a drain (in batches of drain_batch every drain_interval).",
		}),
	}
	for _, r := range []string{hsOK, hsRejected, hsBadRequest, hsTimeout, hsTooLarge, hsError, hsHTTP} {
		m.handshakes.WithLabelValues(r)
	}
	for _, r := range allDisconnectReasons {
		m.disconnects.WithLabelValues(string(r))
	}
	reg.MustRegister(m.connections, m.handshakes, m.framesIn, m.framesOut, m.writes, m.bytesIn,
		m.bytesOut, m.disconnects, m.slowConsumers, m.panics, m.drainClosed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "phxgate_write_queue_bytes", Help: "Bytes queued for writing across all sockets, with the per-frame overhead charged against write_queue_max_bytes and output_budget_bytes.",
		}, queued),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "phxgate_output_budget_bytes", Help: "output_budget_bytes: past it pushes and broadcasts are refused.",
		}, func() float64 { return float64(budget) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "phxgate_handshakes_in_flight", Help: "Handshake workers busy (bounded by handshake_workers).",
		}, busy),
	)
	return m
}
