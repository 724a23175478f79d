//go:build linux

package gateway

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// health is the state behind the gauges that say whether a node can serve
// (phxgate_pubsub_broker_up, phxgate_gateway_ready) and how far a drain
// has got (phxgate_gateway_draining, _drain_remaining_connections,
// _drain_duration_seconds). The readiness gauges are set by a periodic
// check (watchReady), never by a scrape: a scrape must not wait for a
// broker that does not answer, nor add load to it.
type health struct {
	// brokerOK and checkOK are the last check's answers: the broker's
	// ping, and everything /readyz asks but the drain.
	brokerOK atomic.Bool
	checkOK  atomic.Bool
	// drainStart and drainTook are unix nanos and nanos; 0 before a drain
	// and while it runs, respectively.
	drainStart atomic.Int64
	drainTook  atomic.Int64
	stop       context.CancelFunc // ends watchReady
}

// registerHealth registers the readiness and drain gauges on reg.
func (s *Server) registerHealth(reg prometheus.Registerer) {
	h := &s.health
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "phxgate_gateway_ready",
			Help: "1 when /readyz would answer 200 (not draining, broker and route games reachable), else 0; checked every ready_check_interval.",
		}, func() float64 { return boolGauge(h.checkOK.Load() && !s.draining.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "phxgate_gateway_draining", Help: "1 from SIGTERM (the start of the drain) on, else 0.",
		}, func() float64 { return boolGauge(s.draining.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "phxgate_gateway_drain_remaining_connections", Help: "Sockets still open while draining (0 when not draining).",
		}, func() float64 {
			if !s.draining.Load() {
				return 0
			}
			return float64(s.Connections())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "phxgate_gateway_drain_duration_seconds", Help: "How long the drain has run: from SIGTERM until the last socket closed, growing while it runs (0 before a drain).",
		}, h.drainSeconds),
	)
	if s.proto != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "phxgate_pubsub_broker_up",
			Help: "1 when the broker (in-memory or Redis) answered its last ping, else 0; checked every ready_check_interval.",
		}, func() float64 { return boolGauge(h.brokerOK.Load()) }))
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// drainSeconds is the drain's duration so far, or the whole of it once the
// last socket closed.
func (h *health) drainSeconds() float64 {
	start := h.drainStart.Load()
	if start == 0 {
		return 0
	}
	if took := h.drainTook.Load(); took > 0 {
		return time.Duration(took).Seconds()
	}
	return time.Since(time.Unix(0, start)).Seconds()
}

// drainBegan and drainEnded mark the drain for the gauges.
func (h *health) drainBegan(at time.Time) { h.drainStart.Store(at.UnixNano()) }

func (h *health) drainEnded(took time.Duration) { h.drainTook.Store(max(int64(took), 1)) }

// readiness is what /readyz answers but the drain: nil when the node can
// serve. broker is the broker's own answer (nil without a protocol layer).
func (s *Server) readiness(ctx context.Context) (broker, ready error) {
	if p := s.proto; p != nil {
		// Not ready while the broker is unreachable: publishes and
		// joins would fail. Sockets stay connected meanwhile.
		bctx, cancel := context.WithTimeout(ctx, readyzBrokerTimeout)
		broker = p.BrokerReady(bctx)
		cancel()
		if broker != nil {
			return broker, errBroker{broker}
		}
	}
	// Not ready while a route's game is unreachable either: its joins and
	// pushes would fail. Sockets stay connected meanwhile.
	bctx, cancel := context.WithTimeout(ctx, readyzBrokerTimeout)
	defer cancel()
	return nil, s.backendsReady(bctx)
}

// errBroker is a failed broker check as /readyz words it.
type errBroker struct{ err error }

func (e errBroker) Error() string { return "broker: " + e.err.Error() }
func (e errBroker) Unwrap() error { return e.err }

// startReadyWatch runs the periodic check until Shutdown.
func (s *Server) startReadyWatch() {
	ctx, cancel := context.WithCancel(context.Background())
	s.health.stop = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watchReady(ctx, s.cfg.readyCheckInterval())
	}()
}

func (s *Server) watchReady(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		broker, err := s.readiness(ctx)
		if ctx.Err() != nil {
			return
		}
		s.health.brokerOK.Store(broker == nil)
		s.health.checkOK.Store(err == nil)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c Config) readyCheckInterval() time.Duration {
	if c.ReadyCheckInterval == 0 {
		return DefaultReadyCheckInterval
	}
	return c.ReadyCheckInterval
}
