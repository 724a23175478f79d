package gateway

import (
	"context"
	"fmt"
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
	for i, rc := range cfg.Routes {
		var b backends.Backend
		var err error
		if name, ok := strings.CutPrefix(rc.Backend, InprocPrefix); ok {
			if b = gw.opts.Backends[name]; b == nil {
				err = fmt.Errorf("no in-process backend %q registered (gateway.WithBackend)", name)
			}
		} else {
			b, err = backends.New(rc.Backend)
		}
		if err != nil {
			return nil, nil, nil, keyErr(fmt.Sprintf("routes[%d].backend", i), "%v", err)
		}
		routes = append(routes, channels.Route{Pattern: rc.Topic, Backend: b, History: rc.History, Presence: rc.Presence, RateLimits: rc.RateLimits})
	}
	router, err := channels.NewRouter(routes)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: routes: %v", ErrConfig, err)
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
		return nil, nil, nil, err
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
	}
	return srv, connect, closers, nil
}
