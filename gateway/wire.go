package gateway

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/pubsub"
	"github.com/prometheus/client_golang/prometheus"
)

// defaultConnect wires the production protocol layer: backends from the
// routes, the in-memory broker (history sized per route), the channels
// server with the guard's token verifier and rate limiter, spreading its
// broadcasts over gw's pollers. The returned closers stop the channels server then the broker.
func defaultConnect(_ context.Context, cfg Config, reg prometheus.Registerer, g *guard, gw *Server) (*channels.Server, ConnectFunc, []func(context.Context) error, error) {
	routes := make([]channels.Route, 0, len(cfg.Routes))
	// One engine per backend spec: routes naming the same backend share
	// its connection, breaker and bulkhead.
	engines := map[string]backends.Backend{}
	var closeEngines []io.Closer
	fail := func(err error) (*channels.Server, ConnectFunc, []func(context.Context) error, error) {
		for _, c := range closeEngines {
			_ = c.Close()
		}
		return nil, nil, nil, err
	}
	for i, rc := range cfg.Routes {
		b := engines[rc.Backend]
		var err error
		switch name, inproc := strings.CutPrefix(rc.Backend, InprocPrefix); {
		case b != nil:
		case inproc:
			if b = gw.opts.Backends[name]; b == nil {
				err = fmt.Errorf("no in-process backend %q registered (gateway.WithBackend)", name)
			}
		default:
			if b, err = backends.New(rc.Backend); err == nil {
				if c, ok := b.(io.Closer); ok {
					closeEngines = append(closeEngines, c)
				}
				if g, ok := b.(interface {
					Collector(prometheus.Labels) prometheus.Collector
				}); ok {
					label := rc.Backend
					if j := strings.IndexByte(label, '?'); j >= 0 {
						label = label[:j]
					}
					if rerr := reg.Register(g.Collector(prometheus.Labels{"backend": label})); rerr != nil {
						err = rerr
					}
				}
			}
		}
		if err != nil {
			return fail(keyErr(fmt.Sprintf("routes[%d].backend", i), "%v", err))
		}
		engines[rc.Backend] = b
		routes = append(routes, channels.Route{Pattern: rc.Topic, Backend: b, History: rc.History, Presence: rc.Presence, RateLimits: rc.RateLimits, LeaveGrace: rc.LeaveGrace})
	}
	router, err := channels.NewRouter(routes)
	if err != nil {
		return fail(fmt.Errorf("%w: routes: %v", ErrConfig, err))
	}
	mcfg := pubsub.NewMemoryConfig()
	mcfg.HistorySize = func(topic string) int {
		if r := router.Match(topic); r != nil {
			return r.History
		}
		return 0
	}
	broker := pubsub.NewMemory(mcfg)
	ccfg := channels.NewConfig()
	ccfg.NodeID = cfg.NodeID
	// The guard's verifier and limiter: join tokens are checked with the
	// same keys as connect tokens (ignored when auth is off), and a
	// player's join and event buckets are shared by the handshake-time key
	// and every socket (heartbeat buckets are each socket's own).
	if g.authOn() {
		ccfg.Verifier = g.verifier
	}
	ccfg.Limiter = g.limiter
	// Broadcasts are spread over the pollers, and the output budget sheds
	// pushes and broadcasts once the sockets' queues hold too much.
	ccfg.Fanout = gw
	ccfg.Overloaded = gw.overBudget
	srv, err := channels.NewServer(ccfg, router, broker, reg)
	if err != nil {
		_ = broker.Close()
		return fail(err)
	}
	connect := func(c channels.Conn, info channels.ConnectInfo) (SocketHandler, error) {
		// *channels.Socket is a SocketHandler as is; its *channels.CloseError
		// is understood by closeFor. No adapter keeps the socket small.
		return srv.Connect(c, info), nil
	}
	closers := []func(context.Context) error{
		// Every Leave queued by the closes runs within the drain window.
		srv.Close,
		func(context.Context) error { return broker.Close() },
		func(context.Context) error {
			var first error
			for _, c := range closeEngines {
				if err := c.Close(); err != nil && first == nil {
					first = err
				}
			}
			return first
		},
	}
	return srv, connect, closers, nil
}
