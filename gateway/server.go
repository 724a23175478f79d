//go:build linux

package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/channels/auth"
	"github.com/phxgate/phxgate/presence"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
)

// Server is a running gateway. Create it with Start; stop it with Shutdown.
type Server struct {
	cfg     Config
	opts    Options
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *metrics

	ln      net.Listener
	adminLn net.Listener
	apiLn   net.Listener
	api     *grpc.Server
	httpLn  *chanListener
	httpSrv *http.Server
	admin   *http.Server
	lp      *longPoll // <socket_path>/longpoll; nil when longpoll.enabled is off

	pollers []*poller
	// proto is the protocol layer when wired by Start from cfg.Routes (nil
	// with WithConnect).
	proto *channels.Server
	// health is behind the readiness and drain gauges (health.go).
	health health
	// presence is the presence tracker when a route has presence on.
	presence *presence.Tracker
	// started is when Start began (/stats uptime).
	started time.Time
	// backendStats are the route engines with counters, by spec (/stats).
	backendStats map[string]func() backends.CallStats
	// readyChecks are the route engines /readyz asks (readiness.go).
	readyChecks []*readyCheck
	// drainHooks start when a drain starts, alongside the paced closes,
	// bounded by drainHooksShare of the window (presence: the node's
	// players leave at once).
	drainHooks []func(context.Context)
	nextPoll   atomic.Uint64
	nextID     atomic.Uint64

	jobs     chan handshakeJob
	busy     atomic.Int64
	inFlight sync.Map // net.Conn → struct{}: handshakes to cut short at shutdown

	guard     *guard
	stopSweep chan struct{} // closed by Shutdown: stops the limits sweeper

	draining atomic.Bool
	wg       sync.WaitGroup // accept loop, workers, http servers, limits sweeper
	pollWG   sync.WaitGroup
	stopOnce sync.Once
	stopErr  error
}

// Start binds the listeners (port 0 is fine), starts the pollers, workers
// and admin listener, and returns once the server is accepting. Without
// WithConnect it wires the production channels server from cfg.Routes.
func Start(ctx context.Context, cfg Config, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var o Options
	for _, opt := range opts {
		opt(&o)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
		o.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if o.HTTP == nil {
		o.HTTP = http.NotFoundHandler()
	}
	s := &Server{cfg: cfg, opts: o, log: o.Logger.With("node", cfg.NodeID), reg: o.Registry, started: time.Now()}
	s.metrics = newMetrics(o.Registry, s.queuedBytes, func() float64 { return float64(s.busy.Load()) }, cfg.OutputBudgetBytes)
	g, err := newGuard(cfg, o.Registry, s.log)
	if err != nil {
		return nil, err
	}
	s.guard = g
	if cfg.LongPoll.Enabled {
		if s.lp, err = newLongPoll(s); err != nil {
			return nil, err
		}
	}
	if !g.authOn() {
		s.log.Info("auth is off (no auth.* key configured): every socket is anonymous, tokens are stripped and ignored")
	}
	if o.Admit == nil {
		s.opts.Admit = g.admit
	}
	if cfg.Dev {
		h, err := s.devHTTP(o.HTTP) // dev.go
		if err != nil {
			return nil, err
		}
		o.HTTP, s.opts.HTTP = h, h
		s.log.Warn("DEV MODE: NOT FOR PRODUCTION. /dev/token gives any player a token, the auth secret is generated at start, the demo page is served at /", "listen", cfg.Listen)
	}
	if cfg.Auth.JWKSURL != "" {
		// Fetch the key set now so the first players do not wait for it. An
		// identity provider that is down is not fatal: the verifier retries
		// on demand, spaced by auth.jwks_refresh_interval.
		lctx, cancel := context.WithTimeout(ctx, cmp.Or(cfg.Auth.JWKSTimeout, auth.DefaultJWKSTimeout))
		if err := g.verifier.LoadJWKS(lctx); err != nil {
			s.log.Warn("JWKS not loaded at start; tokens with a kid are refused until it loads", "err", err)
		}
		cancel()
	}
	// The pollers exist before the protocol layer, which spreads its
	// broadcasts over them (Fanout).
	n := cfg.Pollers
	if n == 0 {
		n = runtime.NumCPU()
	}
	for range n {
		p, err := newPoller(s, len(s.pollers))
		if err != nil {
			s.closePollers()
			return nil, err
		}
		s.pollers = append(s.pollers, p)
	}
	if o.Connect == nil {
		proto, connect, closers, err := defaultConnect(ctx, cfg, o.Registry, g, s)
		if err != nil {
			s.closePollers()
			return nil, err
		}
		s.proto = proto
		s.opts.Connect = connect
		s.opts.Closers = append(s.opts.Closers, closers...)
	}
	s.registerHealth(o.Registry)

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		s.closePollers()
		return nil, fmt.Errorf("%w: listen: %v", ErrConfig, err)
	}
	s.ln = ln
	if cfg.AdminListen != "" {
		aln, err := lc.Listen(ctx, "tcp", cfg.AdminListen)
		if err != nil {
			ln.Close()
			s.closePollers()
			return nil, fmt.Errorf("%w: admin_listen: %v", ErrConfig, err)
		}
		s.adminLn = aln
	}
	if cfg.APIListen != "" && s.proto != nil {
		apiLn, err := lc.Listen(ctx, "tcp", cfg.APIListen)
		if err != nil {
			ln.Close()
			if s.adminLn != nil {
				s.adminLn.Close()
			}
			s.closePollers()
			s.runClosers(context.Background())
			return nil, fmt.Errorf("%w: api_listen: %v", ErrConfig, err)
		}
		s.apiLn = apiLn
		s.api = s.newAPIServer()
		if cfg.APISecret == "" && !isLoopback(apiLn.Addr()) {
			s.log.Warn("api_listen is not on loopback and api_secret is empty: anyone who reaches it can broadcast, push and disconnect", "api", apiLn.Addr().String())
		}
	}
	for _, p := range s.pollers {
		s.pollWG.Add(1)
		p.running.Store(true)
		go func() {
			defer s.pollWG.Done()
			p.run()
		}()
	}

	s.httpLn = newChanListener(ln.Addr())
	s.httpSrv = &http.Server{
		Handler:           s.socketOnHTTP(s.withLongPoll(o.HTTP)),
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    MaxHandshakeBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.httpSrv.Serve(s.httpLn)
	}()
	if s.api != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			_ = s.api.Serve(s.apiLn)
		}()
	}
	if s.adminLn != nil {
		s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			_ = s.admin.Serve(s.adminLn)
		}()
	}

	if s.lp != nil {
		s.drainHooks = append(s.drainHooks, func(context.Context) { s.lp.drain(); s.lp.close() })
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.lp.run()
		}()
	}
	s.startReadyWatch()
	s.stopSweep = make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.sweepLimits()
	}()

	s.jobs = make(chan handshakeJob)
	for range cfg.HandshakeWorkers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.worker()
		}()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.acceptLoop()
	}()
	args := []any{"listen", ln.Addr().String(), "websocket", cfg.SocketPath + "/websocket", "pollers", n}
	if s.adminLn != nil {
		args = append(args, "admin", s.adminLn.Addr().String())
	}
	if s.apiLn != nil {
		args = append(args, "api", s.apiLn.Addr().String())
	}
	s.log.Info("phxgate listening", args...)
	return s, nil
}

// runClosers runs the Closers and returns the first error.
func (s *Server) runClosers(ctx context.Context) error {
	var first error
	for _, c := range s.opts.Closers {
		if err := c(ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// stopAPI stops the Gateway service: calls in progress get a second to
// finish (a Disconnect waits for the pollers, which are still running).
func (s *Server) stopAPI() {
	done := make(chan struct{})
	go func() {
		s.api.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(APIStopTimeout):
		s.api.Stop()
		<-done
	}
}

// APIAddr is the Gateway service's address (nil when disabled).
func (s *Server) APIAddr() net.Addr {
	if s.apiLn == nil {
		return nil
	}
	return s.apiLn.Addr()
}

// isLoopback reports whether addr is a loopback TCP address.
func isLoopback(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// closerFloor is the least time the Closers get at shutdown.
const closerFloor = CloserFloor

// httpIdleTimeout bounds a kept-alive plain HTTP connection between
// requests on the client port.
const httpIdleTimeout = 60 * time.Second

// Addr is the client listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// AdminAddr is the admin listener's address (nil when disabled).
func (s *Server) AdminAddr() net.Addr {
	if s.adminLn == nil {
		return nil
	}
	return s.adminLn.Addr()
}

// Registry is the registry the gateway's metrics are registered on.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Connections is the number of upgraded sockets currently open.
func (s *Server) Connections() int {
	var n int64
	for _, p := range s.pollers {
		n += p.open.Load()
	}
	return int(n)
}

func (s *Server) queuedBytes() float64 {
	var n int64
	for _, p := range s.pollers {
		n += p.queuedBytes.Load()
	}
	return float64(n)
}

// Lanes implements channels.Fanout: one lane per poller.
func (s *Server) Lanes() int { return len(s.pollers) }

// Dispatch implements channels.Fanout: the job runs on the poller that
// owns the lane's sockets, before its next flush.
func (s *Server) Dispatch(lane int, job channels.FanoutJob) { s.pollers[lane].dispatch(job) }

// overBudget reports whether the output queued to all sockets, plus what
// the protocol layer still holds for the pollers, has passed
// output_budget_bytes (channels.Config.Overloaded).
func (s *Server) overBudget() bool {
	var n int64
	for _, p := range s.pollers {
		n += p.queuedBytes.Load()
	}
	if s.proto != nil {
		n += s.proto.PendingBytes()
	}
	return n > s.cfg.OutputBudgetBytes
}

func (s *Server) pickPoller() *poller {
	return s.pollers[s.nextPoll.Add(1)%uint64(len(s.pollers))]
}

// handshakeJob is an accepted connection on its way to a worker, with the
// release of its per-peer handshake slot.
type handshakeJob struct {
	nc      net.Conn
	release func()
}

// acceptRefuseTimeout bounds the write of a 429 from the accept loop. The
// socket was just accepted, so its send buffer is empty and the short
// response goes out at once; the deadline only guards the accept loop
// against the unexpected.
const acceptRefuseTimeout = 100 * time.Millisecond

func (s *Server) acceptLoop() {
	defer close(s.jobs)
	var backoff time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			<-t.C
			continue
		}
		backoff = 0
		// The per-peer cap on handshakes in progress is checked here,
		// before the connection takes a worker: checks that need the
		// request head come too late against a client that sends nothing,
		// since its connections would already hold every worker.
		release, err := s.guard.beginHandshake(nc)
		if err != nil {
			s.metrics.handshakes.WithLabelValues(hsRejected).Inc()
			_ = nc.SetWriteDeadline(time.Now().Add(acceptRefuseTimeout))
			s.refuse(nc, http.StatusTooManyRequests)
			continue
		}
		s.jobs <- handshakeJob{nc: nc, release: release}
	}
}

// sweepLimits drops idle rate-limiter and per-IP state on a ticker, so
// their memory stays bounded even for keys that are never touched again.
func (s *Server) sweepLimits() {
	t := time.NewTicker(s.guard.sweepInterval())
	defer t.Stop()
	for {
		select {
		case <-s.stopSweep:
			return
		case <-t.C:
			s.guard.sweep()
		}
	}
}

func (s *Server) worker() {
	for j := range s.jobs {
		s.busy.Add(1)
		s.inFlight.Store(j.nc, struct{}{})
		// handshake returns when the handshake has ended whichever way:
		// upgraded, refused, timed out, or handed to net/http (whose own
		// timeouts govern the connection from then on).
		s.handshake(j.nc)
		j.release()
		s.inFlight.Delete(j.nc)
		s.busy.Add(-1)
	}
}

// Shutdown stops accepting, closes every socket with 1012 (drain), waits
// for them to go (bounded by ctx; stragglers are then cut), stops the
// pollers and listeners, and runs the Closers. Every goroutine started by
// Start has returned when Shutdown returns, but a drain hook that ignores
// its context: Shutdown waits for the hooks only until their share of the
// window (plus drainHooksGrace) and then goes on, returning an error
// wrapping ErrDrainHooksRunning.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { s.stopErr = s.shutdown(ctx) })
	return s.stopErr
}

func (s *Server) shutdown(ctx context.Context) error {
	drainStart := time.Now()
	s.health.drainBegan(drainStart)
	s.draining.Store(true)
	s.log.Info("draining", "connections", s.Connections(), "drain_batch", s.cfg.DrainBatch, "drain_interval", s.cfg.drainInterval())
	_ = s.ln.Close()
	// The 1012s go in batches: drain_batch per drain_interval (split over
	// the pollers), raised to what spreads them over the first half of the
	// window, counted from now; the rest is for the closing handshakes and
	// the Closers.
	var spread time.Duration
	var end time.Time
	if dl, ok := ctx.Deadline(); ok {
		spread = max(dl.Sub(drainStart)/2, 0)
		end = drainStart.Add(spread)
	}
	// The hooks start first (presence: the node's players leave at once,
	// so other nodes see the leaves without waiting for each socket's
	// turn), but the closes do not wait for them: a slow Redis must not
	// spend the window before the first 1012.
	hooks := s.runDrainHooks(ctx, drainStart)
	// Cut handshakes in progress: their deadline fires now.
	s.inFlight.Range(func(k, _ any) bool {
		_ = k.(net.Conn).SetDeadline(time.Now())
		return true
	})
	for i, p := range s.pollers {
		batch, every := pollerDrainShare(s.cfg.DrainBatch, len(s.pollers), i, s.cfg.drainInterval())
		p.drain(drainPlan{batch: batch, spread: spread, every: every, interval: s.cfg.drainInterval(), slot: i, slots: len(s.pollers), end: end})
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for s.Connections() > 0 || s.busy.Load() > 0 {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("gateway: shutdown: %d sockets cut: %w", s.Connections(), ctx.Err())
			break wait
		case <-tick.C:
		}
	}
	if herr := hooks.wait(); herr != nil {
		s.log.Error("drain hooks still running past their share of the window; going on without them", "running", hooks.running.Load(), "grace", drainHooksGrace)
		err = errors.Join(err, herr)
	}
	took := time.Since(drainStart)
	s.health.drainEnded(took)
	s.log.Info("sockets drained", "took", took, "closed_with_1012", s.metrics.drained.Load())
	close(s.stopSweep)
	s.health.stop()
	s.httpLn.Close()
	hctx, cancel := context.WithTimeout(context.Background(), HTTPShutdownTimeout)
	_ = s.httpSrv.Shutdown(hctx)
	cancel()
	_ = s.httpSrv.Close()
	if s.admin != nil {
		_ = s.admin.Close()
	}
	if s.api != nil {
		s.stopAPI()
	}
	s.wg.Wait() // accept loop, workers, the http and api servers
	s.closePollers()
	// The Closers get what is left of the drain window (the 1012s took
	// the first half), but never less than closerFloor: the Leaves queued
	// by the last closes still get a chance when the window ran out.
	cctx, cancel := ctx, context.CancelFunc(func() {})
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) < closerFloor {
		cctx, cancel = context.WithTimeout(context.Background(), closerFloor)
	}
	defer cancel()
	if cerr := s.runClosers(cctx); cerr != nil && err == nil {
		err = cerr
	}
	s.log.Info("stopped")
	return err
}

// closePollers stops the pollers (closing any socket left) and waits.
func (s *Server) closePollers() {
	for _, p := range s.pollers {
		if p.started() {
			p.stop()
		} else {
			p.closeFDs()
		}
	}
	s.pollWG.Wait()
}

// drainHooksShare is the part of the drain window (1/drainHooksShare)
// the drain hooks get; they run alongside the paced closes.
const drainHooksShare = 2

// drainHooksGrace is how long past the end of their context Shutdown
// still waits for the drain hooks to return.
const drainHooksGrace = 250 * time.Millisecond

// ErrDrainHooksRunning is wrapped by Shutdown's error when a drain hook
// had not returned drainHooksGrace after the end of its context: the
// drain went on without it.
var ErrDrainHooksRunning = errors.New("gateway: drain hooks still running")

// drainHooks is the drain hooks started by runDrainHooks.
type drainHooks struct {
	ctx     context.Context // the hooks' context
	done    chan struct{}   // closed when every hook has returned
	running atomic.Int64    // hooks not returned yet
}

// wait waits for the hooks until drainHooksGrace after the end of their
// context; an error wrapping ErrDrainHooksRunning when some are left.
func (h *drainHooks) wait() error {
	select {
	case <-h.done:
		return nil
	case <-h.ctx.Done():
	}
	grace := time.NewTimer(drainHooksGrace)
	defer grace.Stop()
	select {
	case <-h.done:
		return nil
	case <-grace.C:
		return fmt.Errorf("%w: %d past their share of the window", ErrDrainHooksRunning, h.running.Load())
	}
}

// runDrainHooks starts every drain hook at once, each with a context ending
// at 1/drainHooksShare of the window (ctx's deadline, counted from start).
func (s *Server) runDrainHooks(ctx context.Context, start time.Time) *drainHooks {
	hctx, cancel := ctx, context.CancelFunc(func() {})
	if dl, ok := ctx.Deadline(); ok {
		hctx, cancel = context.WithDeadline(ctx, start.Add(dl.Sub(start)/drainHooksShare))
	}
	hooks := &drainHooks{ctx: hctx, done: make(chan struct{})}
	hooks.running.Store(int64(len(s.drainHooks)))
	go func() {
		defer close(hooks.done)
		defer cancel()
		var wg sync.WaitGroup
		for _, h := range s.drainHooks {
			wg.Go(func() {
				defer hooks.running.Add(-1)
				h(hctx)
			})
		}
		wg.Wait()
		if hctx.Err() != nil && ctx.Err() == nil {
			s.log.Warn("drain hooks stopped at their share of the window", "share", fmt.Sprintf("1/%d", drainHooksShare))
		}
	}()
	return hooks
}

// Run starts a server, waits for ctx, then shuts down within
// Config.DrainTimeout.
func Run(ctx context.Context, cfg Config, opts ...Option) error {
	s, err := Start(ctx, cfg, opts...)
	if err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.drainTimeout())
	defer cancel()
	return s.Shutdown(sctx)
}

// readyzBrokerTimeout bounds the broker check of one /readyz.
const readyzBrokerTimeout = time.Second

func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		// ?local=1 (ReadyzLocalPath): only what is this node's own; the
		// shared dependencies stay in plain /readyz and the ready gauge.
		if r.URL.Query().Get("local") == "1" {
			_, _ = w.Write([]byte("ok (local)\n"))
			return
		}
		if _, err := s.readiness(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/stats", s.serveStats)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
