package backends

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// URL schemes of the gRPC engine: grpc://host:port in plain text,
// grpcs://host:port over TLS checked against the system's roots.
const (
	SchemeGRPC  = "grpc"
	SchemeGRPCS = "grpcs"
)

// Defaults of the gRPC engine's options (see doc.go for the URL syntax).
const (
	DefaultGRPCTimeout          = 3 * time.Second
	DefaultGRPCMaxInflight      = 256
	DefaultGRPCMaxQueue         = 1024
	DefaultGRPCRetries          = 2
	DefaultGRPCBackoff          = 25 * time.Millisecond
	DefaultGRPCBreakerFailures  = 5
	DefaultGRPCBreakerCooldown  = 5 * time.Second
	DefaultGRPCKeepalive        = 30 * time.Second
	DefaultGRPCKeepaliveTimeout = 10 * time.Second
	DefaultGRPCMaxMessage       = 4 << 20
)

// Bounds of the gRPC engine's options. Past them a spec is refused rather
// than clamped, so a typo cannot silently turn a limit off.
const (
	grpcMinTimeout   = time.Millisecond
	grpcMaxTimeout   = 5 * time.Minute
	grpcMaxInflight  = 1 << 16
	grpcMaxQueue     = 1 << 20
	grpcMaxRetries   = 10
	grpcMaxBackoff   = 10 * time.Second
	grpcMaxFailures  = 1 << 16
	grpcMaxCooldown  = time.Hour
	grpcMinKeepalive = 10 * time.Second // gRPC raises anything lower to 10s
	grpcMaxKeepalive = 2 * time.Hour
	grpcMinKATimeout = time.Second
	grpcMaxKATimeout = 10 * time.Minute
	grpcMinMessage   = 1 << 10
	grpcMaxMessage   = 64 << 20
	// A retry waits at most this many times the backoff option.
	grpcBackoffCapFactor = 8
)

// Reconnection of the shared connection after it broke: a game restarting
// should be reached again within a couple of seconds, not gRPC's default
// two minutes.
const (
	grpcReconnectBase  = 100 * time.Millisecond
	grpcReconnectMax   = 2 * time.Second
	grpcConnectTimeout = 5 * time.Second
)

// Names of the calls, as in CallError.Op.
const (
	opJoin     = "join"
	opHandleIn = "handle_in"
	opLeave    = "leave"
)

var (
	// ErrBadSpec is returned by New for a backend spec an engine claims but
	// cannot accept (a bad URL, an unknown option, a value out of range).
	ErrBadSpec = errors.New("backends: bad backend spec")
	// ErrCircuitOpen is the cause of an ErrUnavailable failure that was
	// never sent because the backend's circuit breaker is open.
	ErrCircuitOpen = errors.New("backends: circuit open")
	// ErrClosed is the cause of an ErrUnavailable failure of a call made
	// on, or cut short by, a closed engine.
	ErrClosed = errors.New("backends: backend closed")

	errQueueFull = errors.New("calls in flight and waiting at their caps")
	errQueueWait = errors.New("no call slot freed before the deadline")
	errMalformed = errors.New("malformed response")
	errNilCall   = errors.New("nil call")
)

// GRPCConfig configures the gRPC engine. NewGRPCConfig returns the
// defaults; New fills one in from a grpc:// or grpcs:// URL.
type GRPCConfig struct {
	// Target is the game's GameBackend server, host:port.
	Target string
	// TLS dials with TLS, checking the server against the system's roots.
	TLS bool
	// Timeout bounds each call, retries and any wait for a slot included,
	// on top of the caller's own deadline. Must be > 0.
	Timeout time.Duration
	// MaxInflight caps the calls sent and not yet answered. Must be > 0.
	MaxInflight int
	// MaxQueue caps the calls waiting for a slot; past it a call fails at
	// once with ErrOverloaded. Zero means no waiting at all.
	MaxQueue int
	// Retries is how many times a call that failed with UNAVAILABLE is
	// sent again (same request, same idempotency key). Zero: never.
	Retries int
	// Backoff is the base wait before a retry; the n-th retry waits a
	// random time between half and all of Backoff·2ⁿ⁻¹ (at most 8·Backoff),
	// and is not made when the deadline would pass first. Must be > 0.
	Backoff time.Duration
	// BreakerFailures consecutive calls failing with UNAVAILABLE or
	// DEADLINE_EXCEEDED open the circuit breaker. Must be > 0.
	BreakerFailures int
	// BreakerCooldown is how long an open breaker fails calls fast before
	// it lets one probe through. Must be > 0.
	BreakerCooldown time.Duration
	// Keepalive is the interval of the keepalive pings sent while calls are
	// in flight; KeepaliveTimeout how long a ping may go unanswered before
	// the connection is dropped. Both must be > 0 (Keepalive ≥ 10s).
	Keepalive        time.Duration
	KeepaliveTimeout time.Duration
	// MaxMessage caps the size in bytes of a request and of a response.
	// Must be > 0.
	MaxMessage int

	// For tests: the breaker's clock (time.Now when nil) and the roots of
	// grpcs (the system's when nil).
	now     func() time.Time
	rootCAs *x509.CertPool
}

// NewGRPCConfig returns the defaults for target (host:port).
func NewGRPCConfig(target string) GRPCConfig {
	return GRPCConfig{
		Target:           target,
		Timeout:          DefaultGRPCTimeout,
		MaxInflight:      DefaultGRPCMaxInflight,
		MaxQueue:         DefaultGRPCMaxQueue,
		Retries:          DefaultGRPCRetries,
		Backoff:          DefaultGRPCBackoff,
		BreakerFailures:  DefaultGRPCBreakerFailures,
		BreakerCooldown:  DefaultGRPCBreakerCooldown,
		Keepalive:        DefaultGRPCKeepalive,
		KeepaliveTimeout: DefaultGRPCKeepaliveTimeout,
		MaxMessage:       DefaultGRPCMaxMessage,
	}
}

// Validate reports the first field out of its bounds, naming it by its URL
// option, with an error wrapping ErrBadSpec.
func (c GRPCConfig) Validate() error {
	if err := checkTarget(c.Target); err != nil {
		return err
	}
	checks := []struct {
		name   string
		ok     bool
		val    any
		bounds string
	}{
		{"timeout", c.Timeout >= grpcMinTimeout && c.Timeout <= grpcMaxTimeout, c.Timeout, fmt.Sprintf("%v..%v", grpcMinTimeout, grpcMaxTimeout)},
		{"max_inflight", c.MaxInflight >= 1 && c.MaxInflight <= grpcMaxInflight, c.MaxInflight, fmt.Sprintf("1..%d", grpcMaxInflight)},
		{"max_queue", c.MaxQueue >= 0 && c.MaxQueue <= grpcMaxQueue, c.MaxQueue, fmt.Sprintf("0..%d", grpcMaxQueue)},
		{"retries", c.Retries >= 0 && c.Retries <= grpcMaxRetries, c.Retries, fmt.Sprintf("0..%d", grpcMaxRetries)},
		{"backoff", c.Backoff >= time.Millisecond && c.Backoff <= grpcMaxBackoff, c.Backoff, fmt.Sprintf("1ms..%v", grpcMaxBackoff)},
		{"breaker_failures", c.BreakerFailures >= 1 && c.BreakerFailures <= grpcMaxFailures, c.BreakerFailures, fmt.Sprintf("1..%d", grpcMaxFailures)},
		{"breaker_cooldown", c.BreakerCooldown >= time.Millisecond && c.BreakerCooldown <= grpcMaxCooldown, c.BreakerCooldown, fmt.Sprintf("1ms..%v", grpcMaxCooldown)},
		{"keepalive", c.Keepalive >= grpcMinKeepalive && c.Keepalive <= grpcMaxKeepalive, c.Keepalive, fmt.Sprintf("%v..%v", grpcMinKeepalive, grpcMaxKeepalive)},
		{"keepalive_timeout", c.KeepaliveTimeout >= grpcMinKATimeout && c.KeepaliveTimeout <= grpcMaxKATimeout, c.KeepaliveTimeout, fmt.Sprintf("%v..%v", grpcMinKATimeout, grpcMaxKATimeout)},
		{"max_message", c.MaxMessage >= grpcMinMessage && c.MaxMessage <= grpcMaxMessage, c.MaxMessage, fmt.Sprintf("%d..%d", grpcMinMessage, grpcMaxMessage)},
	}
	for _, ch := range checks {
		if !ch.ok {
			return fmt.Errorf("%w: grpc option %q: %v is out of range %s", ErrBadSpec, ch.name, ch.val, ch.bounds)
		}
	}
	return nil
}

func checkTarget(target string) error {
	host, port, err := net.SplitHostPort(target)
	if err != nil || host == "" {
		return fmt.Errorf("%w: grpc target %q: want host:port", ErrBadSpec, target)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%w: grpc target %q: bad port %q", ErrBadSpec, target, port)
	}
	return nil
}

// grpcOptions are the URL query options, each setting one field.
var grpcOptions = map[string]func(c *GRPCConfig, v string) error{
	"timeout":           durationOpt(func(c *GRPCConfig) *time.Duration { return &c.Timeout }),
	"max_inflight":      intOpt(func(c *GRPCConfig) *int { return &c.MaxInflight }),
	"max_queue":         intOpt(func(c *GRPCConfig) *int { return &c.MaxQueue }),
	"retries":           intOpt(func(c *GRPCConfig) *int { return &c.Retries }),
	"backoff":           durationOpt(func(c *GRPCConfig) *time.Duration { return &c.Backoff }),
	"breaker_failures":  intOpt(func(c *GRPCConfig) *int { return &c.BreakerFailures }),
	"breaker_cooldown":  durationOpt(func(c *GRPCConfig) *time.Duration { return &c.BreakerCooldown }),
	"keepalive":         durationOpt(func(c *GRPCConfig) *time.Duration { return &c.Keepalive }),
	"keepalive_timeout": durationOpt(func(c *GRPCConfig) *time.Duration { return &c.KeepaliveTimeout }),
	"max_message":       intOpt(func(c *GRPCConfig) *int { return &c.MaxMessage }),
}

func durationOpt(field func(*GRPCConfig) *time.Duration) func(*GRPCConfig, string) error {
	return func(c *GRPCConfig, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 3s or 250ms", v)
		}
		*field(c) = d
		return nil
	}
}

func intOpt(field func(*GRPCConfig) *int) func(*GRPCConfig, string) error {
	return func(c *GRPCConfig, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not an integer", v)
		}
		*field(c) = n
		return nil
	}
}

// isGRPCSpec reports whether spec is a grpc:// or grpcs:// URL.
func isGRPCSpec(spec string) bool {
	scheme, _, ok := strings.Cut(spec, "://")
	return ok && (strings.EqualFold(scheme, SchemeGRPC) || strings.EqualFold(scheme, SchemeGRPCS))
}

// ParseGRPCSpec reads a grpc://host:port?option=value&… or grpcs:// spec
// into a validated config. Errors wrap ErrBadSpec and name the option.
func ParseGRPCSpec(spec string) (GRPCConfig, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return GRPCConfig{}, fmt.Errorf("%w: %v", ErrBadSpec, err)
	}
	var c GRPCConfig
	switch u.Scheme {
	case SchemeGRPC, SchemeGRPCS:
		c = NewGRPCConfig(u.Host)
		c.TLS = u.Scheme == SchemeGRPCS
	default:
		return GRPCConfig{}, fmt.Errorf("%w: scheme %q: want grpc or grpcs", ErrBadSpec, u.Scheme)
	}
	switch {
	case u.User != nil:
		return GRPCConfig{}, fmt.Errorf("%w: grpc spec: credentials in the URL are not supported", ErrBadSpec)
	case u.Path != "" && u.Path != "/":
		return GRPCConfig{}, fmt.Errorf("%w: grpc spec: unexpected path %q", ErrBadSpec, u.Path)
	case u.Fragment != "":
		return GRPCConfig{}, fmt.Errorf("%w: grpc spec: unexpected fragment %q", ErrBadSpec, u.Fragment)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return GRPCConfig{}, fmt.Errorf("%w: grpc spec: query: %v", ErrBadSpec, err)
	}
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names) // the first bad option reported is always the same
	for _, name := range names {
		set, ok := grpcOptions[name]
		if !ok {
			return GRPCConfig{}, fmt.Errorf("%w: grpc option %q is unknown (known: %s)", ErrBadSpec, name, knownGRPCOptions())
		}
		if vs := q[name]; len(vs) != 1 {
			return GRPCConfig{}, fmt.Errorf("%w: grpc option %q is given %d times", ErrBadSpec, name, len(vs))
		}
		if err := set(&c, q.Get(name)); err != nil {
			return GRPCConfig{}, fmt.Errorf("%w: grpc option %q: %v", ErrBadSpec, name, err)
		}
	}
	if err := c.Validate(); err != nil {
		return GRPCConfig{}, err
	}
	return c, nil
}

func knownGRPCOptions() string {
	names := make([]string, 0, len(grpcOptions))
	for name := range grpcOptions {
		names = append(names, name)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// BreakerState is the state of a circuit breaker.
type BreakerState int32

const (
	// BreakerClosed lets every call through.
	BreakerClosed BreakerState = iota
	// BreakerOpen fails every call fast until the cool-down has passed.
	BreakerOpen
	// BreakerHalfOpen lets one probe through; the others fail fast.
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half_open"
	default:
		return "BreakerState(" + strconv.Itoa(int(s)) + ")"
	}
}

// GRPCStats is a snapshot of a gRPC engine's counters (totals since New)
// and gauges.
type GRPCStats struct {
	// Outcomes of the calls made, one per call whatever its retries.
	OK, Unavailable, Timeouts, Overloaded, Errors uint64
	// Attempts counts the requests sent, first tries and retries.
	Attempts uint64
	// Retries counts the requests sent again after UNAVAILABLE.
	Retries uint64
	// Breaker is the breaker's state; BreakerOpens counts its openings;
	// BreakerRejected the calls it failed fast.
	Breaker         BreakerState
	BreakerOpens    uint64
	BreakerRejected uint64
	// BulkheadRejected counts the calls refused because MaxInflight calls
	// were in flight and MaxQueue waiting, or because no slot freed before
	// their deadline.
	BulkheadRejected uint64
	// InFlight is the calls holding a slot; Queued the calls waiting.
	InFlight, Queued int
}

// GRPC is the gRPC engine: it forwards Join, HandleIn and Leave to a game's
// GameBackend service over one shared connection, with a deadline per
// call, retries on UNAVAILABLE, a circuit breaker and a cap on the calls in
// flight. It is safe for concurrent use; Close releases the connection.
type GRPC struct {
	cfg    GRPCConfig
	conn   *grpc.ClientConn
	client backendv1.GameBackendClient
	br     breaker
	// slots holds one token per call in flight (cap MaxInflight).
	slots  chan struct{}
	queued atomic.Int64
	closed atomic.Bool
	once   sync.Once
	errC   error

	ok, unavail, timeouts, overloaded, errs atomic.Uint64
	attempts, retries, bulkheadRejected     atomic.Uint64
}

// NewGRPC validates cfg and sets up the connection to cfg.Target. It does
// not wait for the game to be reachable: calls made while it is not fail
// with ErrUnavailable (or ErrTimeout while a connection attempt hangs).
func NewGRPC(cfg GRPCConfig) (*GRPC, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	creds := insecure.NewCredentials()
	if cfg.TLS {
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.rootCAs})
	}
	conn, err := grpc.NewClient("dns:///"+cfg.Target,
		grpc.WithTransportCredentials(creds),
		grpc.WithUserAgent("phxgate"),
		// Retries are ours (same request, within the deadline, counted by
		// the breaker); no service config from DNS may add its own.
		grpc.WithDisableRetry(),
		grpc.WithDisableServiceConfig(),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:    cfg.Keepalive,
			Timeout: cfg.KeepaliveTimeout,
			// Pings only while calls are in flight: servers refuse idle
			// pings by default (too_many_pings).
			PermitWithoutStream: false,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  grpcReconnectBase,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   grpcReconnectMax,
			},
			MinConnectTimeout: grpcConnectTimeout,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(cfg.MaxMessage),
			grpc.MaxCallSendMsgSize(cfg.MaxMessage),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: grpc target %q: %v", ErrBadSpec, cfg.Target, err)
	}
	// Connect now so the first join does not pay for the handshake.
	conn.Connect()
	return &GRPC{
		cfg:    cfg,
		conn:   conn,
		client: backendv1.NewGameBackendClient(conn),
		br:     breaker{threshold: cfg.BreakerFailures, cooldown: cfg.BreakerCooldown, now: cfg.now},
		slots:  make(chan struct{}, cfg.MaxInflight),
	}, nil
}

// Config returns the engine's configuration.
func (g *GRPC) Config() GRPCConfig { return g.cfg }

// Close shuts the connection down; calls in flight fail with ErrUnavailable
// (cause ErrClosed), and so does every later call. Close is idempotent.
func (g *GRPC) Close() error {
	g.once.Do(func() {
		g.closed.Store(true)
		g.errC = g.conn.Close()
	})
	return g.errC
}

// Stats returns a snapshot of the engine's counters and gauges.
func (g *GRPC) Stats() GRPCStats {
	state, opens, rejected := g.br.stats()
	return GRPCStats{
		OK:               g.ok.Load(),
		Unavailable:      g.unavail.Load(),
		Timeouts:         g.timeouts.Load(),
		Overloaded:       g.overloaded.Load(),
		Errors:           g.errs.Load(),
		Attempts:         g.attempts.Load(),
		Retries:          g.retries.Load(),
		Breaker:          state,
		BreakerOpens:     opens,
		BreakerRejected:  rejected,
		BulkheadRejected: g.bulkheadRejected.Load(),
		InFlight:         len(g.slots),
		Queued:           int(g.queued.Load()),
	}
}

// Join implements Backend.
func (g *GRPC) Join(ctx context.Context, c *Call) (*Reply, error) {
	if c == nil {
		return nil, g.fail(&CallError{Op: opJoin, Kind: ErrBackend, Err: errNilCall})
	}
	req := &backendv1.JoinRequest{
		Call:           toProtoCall(c),
		ResumePosition: c.ResumePosition,
		Recoverable:    c.Recoverable,
		Rejoin:         c.Rejoin,
	}
	var resp *backendv1.JoinResponse
	err := g.invoke(ctx, opJoin, func(ctx context.Context) error {
		var err error
		resp, err = g.client.Join(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	r, err := fromProtoReply(resp.GetReply(), resp.GetBroadcasts(), resp.GetPushes(), resp.GetStop())
	if err != nil {
		return nil, g.malformed(opJoin, err)
	}
	r.PresenceMeta = resp.GetPresenceMeta()
	r.SnapshotPosition = resp.GetSnapshotPosition()
	g.ok.Add(1)
	return r, nil
}

// HandleIn implements Backend.
func (g *GRPC) HandleIn(ctx context.Context, c *Call) (*Reply, error) {
	if c == nil {
		return nil, g.fail(&CallError{Op: opHandleIn, Kind: ErrBackend, Err: errNilCall})
	}
	req := &backendv1.HandleInRequest{Call: toProtoCall(c)}
	var resp *backendv1.HandleInResponse
	err := g.invoke(ctx, opHandleIn, func(ctx context.Context) error {
		var err error
		resp, err = g.client.HandleIn(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	r, err := fromProtoReply(resp.GetReply(), resp.GetBroadcasts(), resp.GetPushes(), resp.GetStop())
	if err != nil {
		return nil, g.malformed(opHandleIn, err)
	}
	g.ok.Add(1)
	return r, nil
}

// Leave implements Backend.
func (g *GRPC) Leave(ctx context.Context, c *Call, reason LeaveReason) error {
	if c == nil {
		return g.fail(&CallError{Op: opLeave, Kind: ErrBackend, Err: errNilCall})
	}
	req := &backendv1.LeaveRequest{Call: toProtoCall(c), Reason: toProtoLeaveReason(reason)}
	err := g.invoke(ctx, opLeave, func(ctx context.Context) error {
		_, err := g.client.Leave(ctx, req)
		return err
	})
	if err != nil {
		return err
	}
	g.ok.Add(1)
	return nil
}

// invoke runs one call: breaker, bulkhead, then up to 1+Retries attempts,
// all within the call's deadline. It returns nil or a counted *CallError;
// a nil result is counted by the caller once the response is checked.
func (g *GRPC) invoke(ctx context.Context, op string, attempt func(context.Context) error) error {
	if g.closed.Load() {
		return g.fail(&CallError{Op: op, Kind: ErrUnavailable, Err: ErrClosed})
	}
	if err := ctx.Err(); err != nil {
		// The caller gave up before the call began: nothing to tell the
		// breaker about the backend.
		kind := ErrBackend
		if errors.Is(err, context.DeadlineExceeded) {
			kind = ErrTimeout
		}
		return g.fail(&CallError{Op: op, Kind: kind, Err: err})
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	ticket, ok := g.br.allow()
	if !ok {
		return g.fail(&CallError{Op: op, Kind: ErrUnavailable, Err: ErrCircuitOpen})
	}
	if err := g.acquire(ctx); err != nil {
		g.br.done(ticket, outcomeNeutral)
		g.bulkheadRejected.Add(1)
		return g.fail(&CallError{Op: op, Kind: ErrOverloaded, Err: err})
	}
	defer func() { <-g.slots }()
	var err error
	for n := 0; ; n++ {
		g.attempts.Add(1)
		err = attempt(ctx)
		if err == nil || n == g.cfg.Retries || status.Code(err) != codes.Unavailable || g.closed.Load() {
			break
		}
		if !g.wait(ctx, n) {
			break
		}
		g.retries.Add(1)
	}
	outcome, kind := classify(err)
	if g.closed.Load() && kind != nil {
		kind, outcome, err = ErrUnavailable, outcomeNeutral, errors.Join(ErrClosed, err)
	}
	g.br.done(ticket, outcome)
	if kind == nil {
		return nil
	}
	return g.fail(&CallError{Op: op, Kind: kind, Err: err})
}

// acquire takes a slot, waiting in the bounded queue when none is free.
func (g *GRPC) acquire(ctx context.Context) error {
	select {
	case g.slots <- struct{}{}:
		return nil
	default:
	}
	if g.queued.Add(1) > int64(g.cfg.MaxQueue) {
		g.queued.Add(-1)
		return errQueueFull
	}
	defer g.queued.Add(-1)
	select {
	case g.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", errQueueWait, ctx.Err())
	}
}

// wait sleeps before retry n+1 and reports whether it should be made: not
// when the deadline would pass first.
func (g *GRPC) wait(ctx context.Context, n int) bool {
	d := g.cfg.Backoff << min(n, 3)
	if most := g.cfg.Backoff * grpcBackoffCapFactor; d > most {
		d = most
	}
	d = d/2 + rand.N(d/2+1)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// outcome is what a call tells the breaker.
type outcome uint8

const (
	// outcomeNeutral: nothing learnt about the backend (the caller gave
	// up, the call never went out).
	outcomeNeutral outcome = iota
	// outcomeSuccess: the backend answered, even with an error.
	outcomeSuccess
	// outcomeFailure: the backend could not be reached or did not answer.
	outcomeFailure
)

// classify maps a call's final error to its outcome and its class.
func classify(err error) (o outcome, kind error) {
	if err == nil {
		return outcomeSuccess, nil
	}
	switch status.Code(err) {
	case codes.Unavailable:
		return outcomeFailure, ErrUnavailable
	case codes.DeadlineExceeded:
		return outcomeFailure, ErrTimeout
	case codes.ResourceExhausted:
		return outcomeSuccess, ErrOverloaded
	case codes.Canceled:
		return outcomeNeutral, ErrBackend
	default:
		return outcomeSuccess, ErrBackend
	}
}

// fail counts a failed call by its class and returns it.
func (g *GRPC) fail(e *CallError) error {
	switch e.Kind {
	case ErrUnavailable:
		g.unavail.Add(1)
	case ErrTimeout:
		g.timeouts.Add(1)
	case ErrOverloaded:
		g.overloaded.Add(1)
	default:
		g.errs.Add(1)
	}
	return e
}

func (g *GRPC) malformed(op string, err error) error {
	return g.fail(&CallError{Op: op, Kind: ErrBackend, Err: fmt.Errorf("%w: %w", errMalformed, err)})
}

func toProtoCall(c *Call) *backendv1.Call {
	return &backendv1.Call{
		NodeId:         c.NodeID,
		ConnId:         c.ConnID,
		PlayerId:       c.PlayerID,
		Claims:         c.Claims,
		Params:         c.Params,
		Topic:          c.Topic,
		Event:          c.Event,
		JoinRef:        c.JoinRef,
		Ref:            c.Ref,
		Payload:        toProtoPayload(c.Payload),
		IdempotencyKey: c.IdempotencyKey,
	}
}

func toProtoPayload(p Payload) *backendv1.Payload {
	return &backendv1.Payload{Data: p.Data, Binary: p.Binary}
}

// fromProtoPayload reads a payload; a missing one is empty (JSON {}).
func fromProtoPayload(p *backendv1.Payload) Payload {
	return Payload{Data: p.GetData(), Binary: p.GetBinary()}
}

func toProtoLeaveReason(r LeaveReason) backendv1.LeaveReason {
	switch r {
	case LeaveLeft:
		return backendv1.LeaveReason_LEAVE_REASON_LEFT
	case LeaveDisconnected:
		return backendv1.LeaveReason_LEAVE_REASON_DISCONNECTED
	case LeaveKicked:
		return backendv1.LeaveReason_LEAVE_REASON_KICKED
	case LeaveTimedOut:
		return backendv1.LeaveReason_LEAVE_REASON_TIMEOUT
	case LeaveDrained:
		return backendv1.LeaveReason_LEAVE_REASON_DRAINED
	case LeaveExpired:
		return backendv1.LeaveReason_LEAVE_REASON_EXPIRED
	case LeaveCrashed:
		return backendv1.LeaveReason_LEAVE_REASON_CRASHED
	case LeaveDuplicate:
		return backendv1.LeaveReason_LEAVE_REASON_DUPLICATE_JOIN
	default:
		return backendv1.LeaveReason_LEAVE_REASON_UNSPECIFIED
	}
}

// fromProtoStop reads a stop; a value this version does not know keeps
// the channel, as the contract says.
func fromProtoStop(s backendv1.Stop) Stop {
	switch s {
	case backendv1.Stop_STOP_NORMAL:
		return StopNormal
	case backendv1.Stop_STOP_ERROR:
		return StopCrash
	default:
		return StopNone
	}
}

// fromProtoReply builds a Reply from a response's parts, any of which may
// be missing. A broadcast or push without an event is a contract breach.
func fromProtoReply(rep *backendv1.Reply, bs []*backendv1.Broadcast, ps []*backendv1.Push, stop backendv1.Stop) (*Reply, error) {
	r := &Reply{
		Status:   rep.GetStatus(),
		Response: fromProtoPayload(rep.GetResponse()),
		Stop:     fromProtoStop(stop),
	}
	if len(bs) > 0 {
		r.Broadcasts = make([]Message, len(bs))
		for i, b := range bs {
			if b.GetEvent() == "" {
				return nil, fmt.Errorf("broadcast %d has no event", i)
			}
			r.Broadcasts[i] = Message{Topic: b.GetTopic(), Event: b.GetEvent(), Payload: fromProtoPayload(b.GetPayload())}
		}
	}
	if len(ps) > 0 {
		r.Pushes = make([]Message, len(ps))
		for i, p := range ps {
			if p.GetEvent() == "" {
				return nil, fmt.Errorf("push %d has no event", i)
			}
			r.Pushes[i] = Message{Event: p.GetEvent(), Payload: fromProtoPayload(p.GetPayload())}
		}
	}
	return r, nil
}

// breaker is a consecutive-failure circuit breaker. Every state change
// bumps gen; a call's result counts only against the state it was let
// through in, so a slow call from before an opening cannot close it.
type breaker struct {
	threshold int
	cooldown  time.Duration
	now       func() time.Time

	mu       sync.Mutex
	state    BreakerState
	gen      uint64
	failures int       // consecutive, while closed
	until    time.Time // while open: when a probe may go
	probing  bool      // while half-open: the probe is out
	opens    uint64
	rejected uint64
}

// ticket is what allow hands a call and done takes back.
type ticket struct {
	gen   uint64
	probe bool
}

// allow lets a call through, or refuses it while the breaker is open or
// its probe is out.
func (b *breaker) allow() (ticket, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerOpen:
		if b.now().Before(b.until) {
			b.rejected++
			return ticket{}, false
		}
		b.state = BreakerHalfOpen
		b.gen++
	case BreakerClosed:
		return ticket{gen: b.gen}, true
	}
	if b.probing {
		b.rejected++
		return ticket{}, false
	}
	b.probing = true
	return ticket{gen: b.gen, probe: true}, true
}

// done records a let-through call's outcome.
func (b *breaker) done(t ticket, o outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.gen != b.gen {
		return
	}
	if t.probe {
		b.probing = false
	}
	switch o {
	case outcomeSuccess:
		b.failures = 0
		if b.state != BreakerClosed {
			b.state = BreakerClosed
			b.gen++
		}
	case outcomeFailure:
		b.failures++
		if b.state == BreakerHalfOpen || b.failures >= b.threshold {
			b.state = BreakerOpen
			b.until = b.now().Add(b.cooldown)
			b.failures = 0
			b.gen++
			b.opens++
		}
	}
}

func (b *breaker) stats() (BreakerState, uint64, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, b.opens, b.rejected
}

// Collector returns a Prometheus collector of the engine's Stats, its
// metrics carrying labels (say, the route), so that several engines can be
// registered side by side. Nothing is registered here.
func (g *GRPC) Collector(labels prometheus.Labels) prometheus.Collector {
	d := func(name, help string, varLabels ...string) *prometheus.Desc {
		return prometheus.NewDesc("phxgate_backend_grpc_"+name, help, varLabels, labels)
	}
	return &grpcCollector{
		g:         g,
		calls:     d("calls_total", "Backend calls by result.", "result"),
		attempts:  d("attempts_total", "Requests sent to the backend, retries included."),
		retries:   d("retries_total", "Requests sent again after UNAVAILABLE."),
		state:     d("breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open."),
		opens:     d("breaker_opens_total", "Times the circuit breaker opened."),
		bRejected: d("breaker_rejected_total", "Calls failed fast by the open circuit breaker."),
		hRejected: d("bulkhead_rejected_total", "Calls refused at the cap on calls in flight and waiting."),
		inflight:  d("inflight_calls", "Calls in flight."),
		queued:    d("queued_calls", "Calls waiting for a slot."),
	}
}

type grpcCollector struct {
	g                                                            *GRPC
	calls, attempts, retries, state, opens, bRejected, hRejected *prometheus.Desc
	inflight, queued                                             *prometheus.Desc
}

func (c *grpcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.calls, c.attempts, c.retries, c.state, c.opens, c.bRejected, c.hRejected, c.inflight, c.queued} {
		ch <- d
	}
}

func (c *grpcCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.Stats()
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter(c.calls, s.OK, "ok")
	counter(c.calls, s.Unavailable, "unavailable")
	counter(c.calls, s.Timeouts, "timeout")
	counter(c.calls, s.Overloaded, "overloaded")
	counter(c.calls, s.Errors, "error")
	counter(c.attempts, s.Attempts)
	counter(c.retries, s.Retries)
	gauge(c.state, float64(s.Breaker))
	counter(c.opens, s.BreakerOpens)
	counter(c.bRejected, s.BreakerRejected)
	counter(c.hRejected, s.BulkheadRejected)
	gauge(c.inflight, float64(s.InFlight))
	gauge(c.queued, float64(s.Queued))
}

var (
	_ Backend   = (*GRPC)(nil)
	_ io.Closer = (*GRPC)(nil)
)
