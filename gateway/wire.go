package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/backends/examples/dice/game"
	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/presence"
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
	// The demo game broadcasts its rounds through the channels server,
	// which exists only once the routes (and so the game) do.
	demoOut := &lateBroadcaster{}
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
		case rc.Backend == specDemo:
			var c io.Closer
			b, c, err = newDemo(demoOut, gw, reg)
			if err == nil {
				closeEngines = append(closeEngines, c)
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
		gw.trackReady(rc.Backend, b)
		if st, ok := b.(interface{ Stats() backends.CallStats }); ok {
			if gw.backendStats == nil {
				gw.backendStats = map[string]func() backends.CallStats{}
			}
			label := rc.Backend
			if j := strings.IndexByte(label, '?'); j >= 0 {
				label = label[:j] // options may hold a secret
			}
			gw.backendStats[label] = st.Stats
		}
		routes = append(routes, channels.Route{Pattern: rc.Topic, Backend: b, History: rc.History, Presence: rc.Presence, RateLimits: rc.RateLimits, LeaveGrace: rc.LeaveGrace})
	}
	router, err := channels.NewRouter(routes)
	if err != nil {
		return fail(fmt.Errorf("%w: routes: %v", ErrConfig, err))
	}
	broker, err := newBroker(cfg, router, reg)
	if err != nil {
		return fail(err)
	}
	ccfg := cfg.channelsConfig()
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
	ccfg.Tracer = gw.opts.tracer()
	ccfg.TrustClientTraceContext = cfg.Otel.TrustClientContext
	ccfg.Logger = gw.log
	tracker, closePresence, err := newPresence(cfg, broker, reg, gw)
	if err != nil {
		_ = broker.Close()
		return fail(err)
	}
	if tracker != nil {
		ccfg.Presence = tracker
		gw.drainHooks = append(gw.drainHooks, tracker.Drain)
		gw.presence = tracker
	}
	srv, err := channels.NewServer(ccfg, router, broker, reg)
	if err != nil {
		_ = broker.Close()
		return fail(err)
	}
	demoOut.srv.Store(srv)
	if tracker != nil {
		tracker.OnLost = srv.RefreshPresence
	}
	connect := func(c channels.Conn, info channels.ConnectInfo) (SocketHandler, error) {
		// *channels.Socket is a SocketHandler as is; its *channels.CloseError
		// is understood by closeFor. No adapter keeps the socket small.
		return srv.Connect(c, info), nil
	}
	closers := []func(context.Context) error{
		// Every Leave queued by the closes runs within the drain window.
		srv.Close,
		closePresence,
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

// newPresence builds the presence tracker when a route has presence on
// (nil otherwise), on the broker's Redis when there is one. Its diffs are
// ephemeral events of the room, published straight to the broker (the
// output budget must not drop them: a lost diff leaves clients with a
// wrong list). The returned closer takes the node out of the cluster's
// presence after the drain removed its presences.
func newPresence(cfg Config, broker pubsub.Broker, reg prometheus.Registerer, gw *Server) (*presence.Tracker, func(context.Context) error, error) {
	noop := func(context.Context) error { return nil }
	on := false
	for _, r := range cfg.Routes {
		on = on || r.Presence
	}
	if !on {
		return nil, noop, nil
	}
	if msg, attrs := cfg.presenceSizeWarning(); msg != "" {
		gw.log.Warn(msg, attrs...)
	}
	cfg.Presence.MaxDiffBytes = presenceDiffBytes(cfg.WriteQueueMaxBytes)
	pub := func(ctx context.Context, topic string, payload []byte) error {
		_, err := broker.Publish(ctx, topic, pubsub.Message{Event: "presence_diff", Payload: payload, Ephemeral: true})
		return err
	}
	rb, shared := broker.(*pubsub.Redis)
	if !shared {
		t := presence.NewTracker(cfg.Presence, presence.NewMemory(), pub, gw.log)
		if reg != nil {
			_ = reg.Register(t.Collector())
		}
		return t, noop, nil
	}
	var t *presence.Tracker
	store, err := presence.NewRedis(presence.RedisConfig{Client: rb.Client(), Prefix: cfg.RedisPrefix,
		NodeID: cfg.NodeID, Timeout: cfg.Presence.Timeout, Log: gw.log, OnReap: func() { t.CountCleanup() }})
	if err != nil {
		return nil, nil, keyErr("node_id", "%v", err)
	}
	t = presence.NewTracker(cfg.Presence, store, pub, gw.log)
	t.Control = func(ctx context.Context, topic string, payload []byte) error {
		_, err := broker.Publish(ctx, topic, pubsub.Message{Event: presence.ControlEvent, Payload: payload, Ephemeral: true})
		return err
	}
	if err := store.Start(t.Leaves, t.Restored); err != nil {
		return nil, nil, keyErr("redis_url", "presence: %v", err)
	}
	if reg != nil {
		_ = reg.Register(t.Collector())
	}
	return t, func(context.Context) error { return store.Close() }, nil
}

// specDemo is the built-in demo game's backend spec: the example dice game
// (backends/examples/dice) compiled in, on table:* topics.
const specDemo = "demo"

// newDemo starts the dice game in process, served through the same engine
// as a remote gRPC game (deadline, bulkhead, breaker, metrics), its round
// results broadcast through out.
func newDemo(out *lateBroadcaster, gw *Server, reg prometheus.Registerer) (backends.Backend, io.Closer, error) {
	gcfg := game.NewConfig()
	if gw.cfg.DemoRound > 0 {
		gcfg.Window = gw.cfg.DemoRound
	}
	g, err := game.New(gcfg, game.Options{Broadcaster: out, Logger: gw.log})
	if err != nil {
		return nil, nil, err
	}
	b := backends.NewInprocGRPC(g)
	if reg != nil {
		if err := reg.Register(b.Collector(prometheus.Labels{"backend": specDemo})); err != nil {
			_ = b.Close()
			g.Close()
			return nil, nil, err
		}
	}
	return b, closerFunc(func() error {
		_ = b.Close()
		g.Close()
		return nil
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// lateBroadcaster publishes the demo game's round results through the
// channels server, once it exists.
type lateBroadcaster struct {
	srv atomic.Pointer[channels.Server]
}

// Broadcast implements game.Broadcaster. The payload is copied: the game
// may reuse it once this returns.
func (b *lateBroadcaster) Broadcast(ctx context.Context, topic, event string, payload []byte) error {
	s := b.srv.Load()
	if s == nil {
		return errors.New("demo: the gateway is not started")
	}
	_, err := s.Publish(ctx, topic, pubsub.Message{Event: event, Payload: bytes.Clone(payload)})
	return err
}
