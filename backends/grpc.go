package backends

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/backends/telemetry"
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

// Bounds of the gRPC engine's own options (the shared ones are in
// limits.go).
const (
	grpcMinKeepalive = 10 * time.Second // gRPC raises anything lower to 10s
	grpcMaxKeepalive = 2 * time.Hour
	grpcMinKATimeout = time.Second
	grpcMaxKATimeout = 10 * time.Minute
)

// Reconnection of the shared connection after it broke: a game restarting
// should be reached again within a couple of seconds, not gRPC's default
// two minutes.
const (
	grpcReconnectBase  = 100 * time.Millisecond
	grpcReconnectMax   = 2 * time.Second
	grpcConnectTimeout = 5 * time.Second
)

// GRPCConfig configures the gRPC engine. NewGRPCConfig returns the
// defaults; New fills one in from a grpc:// or grpcs:// URL.
type GRPCConfig struct {
	// Target is the game's GameBackend server, host:port.
	Target string
	// TLS dials with TLS, checking the server against the system's roots.
	TLS bool
	// CallLimits: deadline, caps, retries, breaker, message size.
	CallLimits
	// Keepalive is the interval of the keepalive pings sent while calls are
	// in flight; KeepaliveTimeout how long a ping may go unanswered before
	// the connection is dropped. Both must be > 0 (Keepalive ≥ 10s).
	Keepalive        time.Duration
	KeepaliveTimeout time.Duration

	// For tests: the breaker's clock (time.Now when nil) and the roots of
	// grpcs (the system's when nil).
	now     func() time.Time
	rootCAs *x509.CertPool
}

// NewGRPCConfig returns the defaults for target (host:port).
func NewGRPCConfig(target string) GRPCConfig {
	return GRPCConfig{
		Target: target,
		CallLimits: CallLimits{
			Timeout:         DefaultGRPCTimeout,
			MaxInflight:     DefaultGRPCMaxInflight,
			MaxQueue:        DefaultGRPCMaxQueue,
			Retries:         DefaultGRPCRetries,
			Backoff:         DefaultGRPCBackoff,
			BreakerFailures: DefaultGRPCBreakerFailures,
			BreakerCooldown: DefaultGRPCBreakerCooldown,
			MaxMessage:      DefaultGRPCMaxMessage,
		},
		Keepalive:        DefaultGRPCKeepalive,
		KeepaliveTimeout: DefaultGRPCKeepaliveTimeout,
	}
}

// Validate reports the first field out of its bounds, naming it by its URL
// option, with an error wrapping ErrBadSpec.
func (c GRPCConfig) Validate() error {
	if err := checkTarget(c.Target); err != nil {
		return err
	}
	if err := c.CallLimits.check("grpc"); err != nil {
		return err
	}
	checks := []struct {
		name   string
		ok     bool
		val    any
		bounds string
	}{
		{"keepalive", c.Keepalive >= grpcMinKeepalive && c.Keepalive <= grpcMaxKeepalive, c.Keepalive, fmt.Sprintf("%v..%v", grpcMinKeepalive, grpcMaxKeepalive)},
		{"keepalive_timeout", c.KeepaliveTimeout >= grpcMinKATimeout && c.KeepaliveTimeout <= grpcMaxKATimeout, c.KeepaliveTimeout, fmt.Sprintf("%v..%v", grpcMinKATimeout, grpcMaxKATimeout)},
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
var grpcOptions = map[string]optionSetter[GRPCConfig]{
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
	if err := applyOptions("grpc", u.RawQuery, grpcOptions, &c); err != nil {
		return GRPCConfig{}, err
	}
	if err := c.Validate(); err != nil {
		return GRPCConfig{}, err
	}
	return c, nil
}

// GRPCStats is a snapshot of a gRPC engine's counters and gauges.
type GRPCStats = CallStats

// GRPC is the gRPC engine: it forwards Join, HandleIn and Leave to a game's
// GameBackend service over one shared connection, with a deadline per
// call, retries on UNAVAILABLE, a circuit breaker and a cap on the calls in
// flight. It is safe for concurrent use; Close releases the connection.
type GRPC struct {
	cfg    GRPCConfig
	conn   *grpc.ClientConn
	client backendv1.GameBackendClient
	r      *runner
	once   sync.Once
	errC   error
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
		r:      newRunner(cfg.CallLimits, cfg.now, classifyGRPC),
	}, nil
}

// Config returns the engine's configuration.
func (g *GRPC) Config() GRPCConfig { return g.cfg }

// Close shuts the connection down; calls in flight fail with ErrUnavailable
// (cause ErrClosed), and so does every later call. Close is idempotent.
func (g *GRPC) Close() error {
	g.once.Do(func() {
		g.r.close()
		if g.conn != nil { // nil in process (NewInprocGRPC)
			g.errC = g.conn.Close()
		}
	})
	return g.errC
}

// Stats returns a snapshot of the engine's counters and gauges.
func (g *GRPC) Stats() GRPCStats { return g.r.stats() }

// Join implements Backend.
func (g *GRPC) Join(ctx context.Context, c *Call) (*Reply, error) {
	if c == nil {
		return nil, g.r.fail(&CallError{Op: opJoin, Kind: ErrBackend, Err: errNilCall})
	}
	req := &backendv1.JoinRequest{
		Call:           toProtoCall(c),
		ResumePosition: c.ResumePosition,
		Recoverable:    c.Recoverable,
		Rejoin:         c.Rejoin,
		RejoinConnId:   c.RejoinConnID,
		RejoinJoinRef:  c.RejoinJoinRef,
	}
	var resp *backendv1.JoinResponse
	// The call's span (none when tracing is off) continues in the game.
	ctx = telemetry.InjectGRPC(ctx)
	err := g.r.run(ctx, opJoin, func(ctx context.Context) error {
		var err error
		resp, err = g.client.Join(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	r, err := fromProtoReply(resp.GetReply(), resp.GetBroadcasts(), resp.GetPushes(), resp.GetStop())
	if err != nil {
		return nil, g.r.malformed(opJoin, err)
	}
	r.PresenceMeta = resp.GetPresenceMeta()
	r.SnapshotPosition = resp.GetSnapshotPosition()
	g.r.succeeded()
	return r, nil
}

// HandleIn implements Backend.
func (g *GRPC) HandleIn(ctx context.Context, c *Call) (*Reply, error) {
	if c == nil {
		return nil, g.r.fail(&CallError{Op: opHandleIn, Kind: ErrBackend, Err: errNilCall})
	}
	req := &backendv1.HandleInRequest{Call: toProtoCall(c)}
	var resp *backendv1.HandleInResponse
	// The call's span (none when tracing is off) continues in the game.
	ctx = telemetry.InjectGRPC(ctx)
	err := g.r.run(ctx, opHandleIn, func(ctx context.Context) error {
		var err error
		resp, err = g.client.HandleIn(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	r, err := fromProtoReply(resp.GetReply(), resp.GetBroadcasts(), resp.GetPushes(), resp.GetStop())
	if err != nil {
		return nil, g.r.malformed(opHandleIn, err)
	}
	g.r.succeeded()
	return r, nil
}

// Leave implements Backend.
func (g *GRPC) Leave(ctx context.Context, c *Call, reason LeaveReason) error {
	if c == nil {
		return g.r.fail(&CallError{Op: opLeave, Kind: ErrBackend, Err: errNilCall})
	}
	req := &backendv1.LeaveRequest{Call: toProtoCall(c), Reason: toProtoLeaveReason(reason)}
	// The call's span (none when tracing is off) continues in the game.
	ctx = telemetry.InjectGRPC(ctx)
	err := g.r.run(ctx, opLeave, func(ctx context.Context) error {
		_, err := g.client.Leave(ctx, req)
		return err
	})
	if err != nil {
		return err
	}
	g.r.succeeded()
	return nil
}

// classifyGRPC maps an attempt's error to its outcome and its class.
func classifyGRPC(err error) (o outcome, kind error) {
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

// Collector returns a Prometheus collector of the engine's Stats, its
// metrics carrying labels (say, the route), so that several engines can be
// registered side by side. Nothing is registered here.
func (g *GRPC) Collector(labels prometheus.Labels) prometheus.Collector {
	return newCallCollector("grpc", g.Stats, labels)
}

var (
	_ Backend   = (*GRPC)(nil)
	_ io.Closer = (*GRPC)(nil)
)
