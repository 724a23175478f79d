package gateway

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/phxgate/phxgate/channels/auth"
	"github.com/phxgate/phxgate/channels/ratelimit"
	"github.com/phxgate/phxgate/gateway/internal/admission"
	"github.com/phxgate/phxgate/presence"
	"github.com/phxgate/phxgate/pubsub"
	"gopkg.in/yaml.v3"
)

// Defaults and hard bounds. Every limit has a safe non-zero default.
const (
	// DefaultListen is the client listener (WebSocket and plain HTTP).
	DefaultListen = ":4000"
	// DefaultAdminListen is the ops listener (metrics, health, pprof). It is
	// loopback by default because pprof must not face the internet.
	DefaultAdminListen = "127.0.0.1:4001"
	// DefaultAPIListen is where games reach the Gateway gRPC service
	// (broadcast, push, disconnect). Loopback by default: anyone who can
	// reach it can broadcast to any topic.
	DefaultAPIListen = "127.0.0.1:4002"
	// DefaultSocketPath is the Phoenix socket mount; the WebSocket endpoint
	// is DefaultSocketPath + "/websocket", as in `socket "/socket", ...`.
	DefaultSocketPath = "/socket"
	// DefaultIdleTimeout closes a socket with no inbound data for this long
	// (Phoenix/Bandit: 60 s; phoenix.js heartbeats every 30 s).
	DefaultIdleTimeout = 60 * time.Second
	// DefaultHandshakeTimeout bounds the whole HTTP upgrade, from accept to
	// the 101, so a silent client cannot hold a handshake worker.
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultHandshakeWorkers bounds concurrent handshakes; when all are
	// busy, new connections wait in the kernel's accept backlog.
	DefaultHandshakeWorkers = 256
	// DefaultMaxMessageSize bounds one WebSocket message (after reassembly
	// of fragments), in bytes.
	DefaultMaxMessageSize = 64 << 10
	// DefaultWriteQueueMaxBytes bounds the bytes queued for one client;
	// past it the client is a slow consumer and is closed with 1013.
	DefaultWriteQueueMaxBytes = 1 << 20
	// DefaultOutputBudgetBytes bounds the output queued to all of a node's
	// sockets together (frame bytes plus per-frame overhead, as charged
	// against write_queue_max_bytes). Past it client pushes and broadcasts
	// are refused ("overloaded") until the queues drain below it, so a
	// room bigger than the node can write to costs at most this much
	// memory. 256 MiB is a few seconds of a saturated 2-core node's output
	// and far above what a healthy node holds (a few MiB).
	DefaultOutputBudgetBytes = 256 << 20
	// MaxHandshakeBytes bounds the HTTP request head of an upgrade (request
	// line and headers). Larger heads are refused with 431.
	MaxHandshakeBytes = 16 << 10
	// DefaultCloseTimeout bounds how long a closing socket may take to
	// flush its queue and close frame and for the client to finish, before
	// the fd is closed regardless.
	DefaultCloseTimeout = 2 * time.Second
	// DefaultDrainTimeout bounds a graceful shutdown (SIGTERM): the 1012
	// closes are spread over the first half, so that reconnecting clients
	// reach the other nodes gradually.
	DefaultDrainTimeout = 10 * time.Second
	// DefaultDrainInterval is the pause between two batches of drain
	// closes (drain_interval).
	DefaultDrainInterval = 50 * time.Millisecond
	// MaxDrainBatch bounds drain_batch.
	MaxDrainBatch = 1 << 20
	// DefaultReadyCheckInterval is how often the broker and the route
	// engines are asked whether they are reachable, for the
	// phxgate_pubsub_broker_up and phxgate_gateway_ready gauges
	// (ready_check_interval).
	DefaultReadyCheckInterval = 5 * time.Second
)

// Limit defaults that differ from the building blocks' own (ratelimit,
// admission). Anonymous sockets (auth not required) are keyed by client IP
// prefix, so one key may stand for a whole NAT of players: up to
// limits.ip_max_conns sockets. These defaults leave room for that while
// still stopping a flood; per-player keys (with auth) are the tighter case
// and stay well inside them.
const (
	// DefaultIPHandshakesPerSecond sustains a steady trickle of reconnects
	// from one address.
	DefaultIPHandshakesPerSecond = 10
	// DefaultIPHandshakeBurst lets every socket allowed from one address
	// (DefaultIPMaxConns) reconnect at once after a network blip.
	DefaultIPHandshakeBurst = admission.DefaultPerIPMaxConns
	// DefaultJoinsPerSecond and DefaultJoinBurst: a burst of one join per
	// socket of a full NAT, then a steady rate.
	DefaultJoinsPerSecond = 10
	DefaultJoinBurst      = admission.DefaultPerIPMaxConns
	// DefaultEventsPerSecond and DefaultEventBurst bound the default event
	// class: a game client sends a few actions per second; a burst of a few
	// hundred pushes fired without waiting for replies is still served.
	DefaultEventsPerSecond = 50
	DefaultEventBurst      = 250
	// DefaultHeartbeatsPerSecond and DefaultHeartbeatBurst are per
	// connection, whatever the key: phoenix.js sends one heartbeat every
	// 30 s, so this answers clients with far shorter intervals while still
	// refusing a heartbeat flood.
	DefaultHeartbeatsPerSecond = 10
	DefaultHeartbeatBurst      = 100
	// limitsSweepMin bounds how often the limiter and admission state are
	// swept, whatever the idle TTLs.
	limitsSweepMin = time.Second
)

// Config is the gateway configuration. The zero value is not valid; start
// from NewConfig.
type Config struct {
	// Listen is the client address (host:port; port 0 picks a free port).
	Listen string
	// AdminListen is the admin address; empty disables the admin listener.
	AdminListen string
	// APIListen is the address of the Gateway gRPC service games call;
	// empty disables it.
	APIListen string
	// APISecret, when set, must be sent by API callers as
	// "authorization: Bearer <secret>" metadata (at least 32 bytes).
	APISecret string
	// NodeID names this node in idempotency keys and presence; empty means
	// hostname-pid (filled by NewConfig).
	NodeID string
	// SocketPath is the Phoenix socket mount, e.g. "/socket"; the WebSocket
	// endpoint is SocketPath + "/websocket".
	SocketPath string
	// IdleTimeout closes a socket after this long without inbound data;
	// 0 disables it. Swept with one-second granularity.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds one HTTP upgrade; must be > 0.
	HandshakeTimeout time.Duration
	// HandshakeWorkers is the number of concurrent handshakes; must be > 0.
	HandshakeWorkers int
	// MaxMessageSize is the largest accepted WebSocket message in bytes,
	// summed across fragments; must be > 0. Larger messages close with 1009.
	MaxMessageSize int
	// WriteQueueMaxBytes is the per-socket outbound queue cap in bytes;
	// must be > 0. Past it the socket closes with 1013.
	WriteQueueMaxBytes int
	// OutputBudgetBytes is the node-wide bound on bytes queued to all
	// sockets (as charged against WriteQueueMaxBytes); must be > 0. While
	// the queues hold more, client pushes get {"reason":"overloaded"} and
	// broadcasts are refused (phxgate_overload_shed_total).
	OutputBudgetBytes int64
	// Pollers is the number of epoll pollers; 0 means runtime.NumCPU().
	Pollers int
	// CloseTimeout bounds a socket's closing handshake; 0 means
	// DefaultCloseTimeout.
	CloseTimeout time.Duration
	// DrainTimeout bounds the graceful shutdown done by Run; 0 means
	// DefaultDrainTimeout.
	DrainTimeout time.Duration
	// DrainBatch (drain_batch) is how many sockets the whole node closes
	// with 1012 per DrainInterval while draining; 0 means enough per batch
	// that every socket is closed within the first half of DrainTimeout
	// (at least 64 per poller, so small nodes drain at once).
	DrainBatch int
	// DrainInterval (drain_interval) is the pause between two batches of
	// drain closes; 0 means DefaultDrainInterval. Must be below
	// DrainTimeout.
	DrainInterval time.Duration
	// ReadyCheckInterval (ready_check_interval) is the period of the
	// readiness check behind the broker-up and ready gauges; 0 means
	// DefaultReadyCheckInterval. /readyz checks on every request anyway.
	ReadyCheckInterval time.Duration
	// RedisURL selects the Redis Streams broker (redis:// or rediss://
	// for TLS); empty with no RedisClusterAddrs is the embedded in-memory
	// broker (one node only).
	RedisURL string
	// RedisClusterAddrs (redis_cluster_addrs) selects Redis Cluster: the
	// host:port of some of its masters. RedisURL then only lends its
	// credentials and TLS.
	RedisClusterAddrs []string
	// RedisPrefix (redis_prefix) starts every Redis key and channel, so
	// that deployments can share a Redis; empty means "phx".
	RedisPrefix string
	// RedisTimeout (redis_timeout) bounds every Redis call; a publish
	// fails after it while Redis is unreachable. Zero means 2s.
	RedisTimeout time.Duration
	// HistoryTTL (history_ttl) is how long a topic's history outlives its
	// last publish (Redis; the memory engine: its last use). Zero means 10m.
	HistoryTTL time.Duration
	// HistoryBytes (history_bytes) bounds the payload bytes of one topic's
	// history; the oldest events go first. Zero means 8 MiB.
	HistoryBytes int
	// MaxReplay (max_replay) is the most events one resuming join is
	// replayed; a client that missed more gets recovered=false. Zero
	// means 1,000.
	MaxReplay int
	// ReplayBytes (replay_bytes) is the most payload bytes one resuming
	// join is replayed (past it: recovered=false), so a replay never
	// overflows the socket's write queue. Zero means half of
	// write_queue_max_bytes.
	ReplayBytes int
	// CheckOrigin (check_origin) lists allowed Origin values:
	// "https://app.example.com", "https://app.example.com:8443" or
	// "https://*.example.com"; scheme, host and port are compared. A
	// mismatch is refused with 403 before the upgrade. Empty allows all.
	CheckOrigin []string
	// RequireOrigin (require_origin) also refuses requests without an
	// Origin header when CheckOrigin is set. False lets non-browser clients
	// (which send none) through, as Phoenix does.
	RequireOrigin bool
	// TrustedProxies (trusted_proxies) are CIDRs or addresses of reverse
	// proxies whose X-Forwarded-For is believed. Empty: the TCP peer is the
	// client.
	TrustedProxies []string
	// Auth configures token verification (auth.*).
	Auth AuthConfig
	// Limits are the per-player rate limits and the connection caps
	// (limits.*).
	Limits LimitsConfig
	// LogFormat (log_format) is "json" (the default) or "text".
	LogFormat string
	// LogLevel (log_level) is "debug", "info" (the default), "warn" or
	// "error".
	LogLevel string
	// Presence bounds presence tracking on routes with presence on
	// (presence.*).
	Presence PresenceConfig
	// Otel (otel.*) turns tracing on; see tracing.go.
	Otel OtelConfig
	// LongPoll configures the long-poll transport (longpoll.*).
	LongPoll LongPollConfig
	// Routes maps topic patterns to backends, in order.
	Routes []RouteConfig
	// Dev (dev) is dev mode; see applyDev in dev.go. DevAssets
	// (dev_assets) is the directory of the demo page and its node_modules
	// (empty: clients/js). DevTokenTTL (dev_token_ttl) is the lifetime of
	// /dev/token's tokens (0s: 10m). DemoRound (demo_round) is the demo
	// game's betting window (0s: the game's 3s).
	Dev         bool
	DevAssets   string
	DevTokenTTL time.Duration
	DemoRound   time.Duration
}

// PresenceConfig is the presence package's Config (keys presence.*).
type PresenceConfig = presence.Config

// AuthConfig configures token verification; it is the auth package's
// Config (keys auth.*). Zero Required means anonymous sockets are allowed.
type AuthConfig = auth.Config

// LimitsConfig holds the keys under limits.*. Every field must be set
// (> 0): zero never means unlimited.
type LimitsConfig struct {
	// JoinsPerSecond and JoinBurst (limits.joins_per_second,
	// limits.join_burst) bound phx_join per player.
	JoinsPerSecond float64
	JoinBurst      int
	// Classes (limits.classes.<name>.{per_second,burst}) are the event
	// classes; a class given in the file replaces the default of the same
	// name, the others are kept.
	Classes map[string]ratelimit.ClassLimit
	// DefaultClass (limits.default_class) is the class of events a route
	// does not classify.
	DefaultClass string
	// HeartbeatsPerSecond and HeartbeatBurst (limits.heartbeats_per_second,
	// limits.heartbeat_burst) bound heartbeats per connection. Over it a
	// heartbeat gets no reply, which only that connection sees: clients
	// take an unanswered heartbeat for a dead connection, so sockets
	// sharing a key (a NAT's anonymous sockets) must not drain each other.
	HeartbeatsPerSecond float64
	HeartbeatBurst      int
	// AbuseWindow (limits.abuse_window): a player (for heartbeats: a
	// connection) refused continuously for this long is disconnected with
	// 1008.
	AbuseWindow time.Duration
	// AbuseQuiet (limits.abuse_quiet): a gap this long without refusals
	// ends a refusal streak; at most AbuseWindow.
	AbuseQuiet time.Duration
	// MaxEntries (limits.max_entries) bounds the players tracked by the
	// rate limiter; IdleTTL (limits.idle_ttl) forgets idle ones.
	MaxEntries int
	IdleTTL    time.Duration
	// IPHandshakesPerSecond and IPHandshakeBurst
	// (limits.ip_handshakes_per_second, limits.ip_handshake_burst) bound
	// upgrade attempts per client IP (IPv6: per /64); over it → 429.
	IPHandshakesPerSecond float64
	IPHandshakeBurst      int
	// IPMaxHandshakes (limits.ip_max_handshakes, default 16) caps the
	// handshakes in progress per TCP peer address (IPv6: per /64), counted
	// from accept, before a byte is read: over it the connection is
	// answered 429 at once, without taking a handshake worker, so one
	// address holding many silent connections cannot starve everyone else.
	// Peers in trusted_proxies are exempt (their clients are capped once
	// X-Forwarded-For is read). A normal handshake takes milliseconds, so
	// even a large NAT rarely has more than a few in progress. Must be ≥ 1.
	IPMaxHandshakes int
	// IPMaxConns (limits.ip_max_conns) and PlayerMaxConns
	// (limits.player_max_conns) cap open sockets per client IP and per
	// player (429); MaxConns (limits.max_conns) caps the node (503).
	IPMaxConns     int
	PlayerMaxConns int
	MaxConns       int
}

// RouteConfig is one topic route.
type RouteConfig struct {
	// Topic is a pattern: exact ("table:lobby") or prefix ("room:*").
	Topic string `yaml:"topic"`
	// Backend is echo | bench | demo | grpc://host:port | http(s)://url.
	Backend string `yaml:"backend"`
	// Presence turns presence tracking on for the route.
	Presence bool `yaml:"presence"`
	// History is the number of events kept per topic for replay; 0 = none.
	History int `yaml:"history"`
	// RateLimits (routes[].rate_limits) maps the route's events to
	// limits.classes: default_class for unlisted events (empty:
	// limits.default_class) and events.<event>: <class>.
	RateLimits ratelimit.Route `yaml:"rate_limits"`
	// LeaveGrace (routes[].leave_grace) holds a player's seat this long
	// when their socket drops without phx_leave (0s: Leave at once; at most
	// 10m); see channels.Route.LeaveGrace.
	LeaveGrace time.Duration `yaml:"leave_grace"`
}

func newLimitsConfig() LimitsConfig {
	rl := ratelimit.NewConfig()
	ad := admission.NewConfig()
	return LimitsConfig{
		JoinsPerSecond:        DefaultJoinsPerSecond,
		JoinBurst:             DefaultJoinBurst,
		Classes:               map[string]ratelimit.ClassLimit{ratelimit.DefaultClass: {PerSecond: DefaultEventsPerSecond, Burst: DefaultEventBurst}},
		DefaultClass:          ratelimit.DefaultClass,
		HeartbeatsPerSecond:   DefaultHeartbeatsPerSecond,
		HeartbeatBurst:        DefaultHeartbeatBurst,
		AbuseWindow:           rl.AbuseWindow,
		AbuseQuiet:            rl.AbuseQuiet,
		MaxEntries:            rl.MaxEntries,
		IdleTTL:               rl.IdleTTL,
		IPHandshakesPerSecond: DefaultIPHandshakesPerSecond,
		IPHandshakeBurst:      DefaultIPHandshakeBurst,
		IPMaxHandshakes:       ad.PerIPMaxHandshakes,
		IPMaxConns:            ad.PerIPMaxConns,
		PlayerMaxConns:        ad.PerPlayerMaxConns,
		MaxConns:              ad.MaxConns,
	}
}

func newAuthConfig() AuthConfig {
	a := auth.NewConfig()
	// Anonymous sockets are allowed unless the operator turns auth on: a
	// fresh install has no key to verify with.
	a.Required = false
	return a
}

// rateLimitConfig is the ratelimit package's view of c.Limits.
func (c Config) rateLimitConfig() ratelimit.Config {
	r := ratelimit.NewConfig()
	l := c.Limits
	r.JoinsPerSecond, r.JoinBurst = l.JoinsPerSecond, l.JoinBurst
	r.Classes, r.DefaultClass = l.Classes, l.DefaultClass
	r.HeartbeatsPerSecond, r.HeartbeatBurst = l.HeartbeatsPerSecond, l.HeartbeatBurst
	r.AbuseWindow, r.AbuseQuiet = l.AbuseWindow, l.AbuseQuiet
	r.MaxEntries, r.IdleTTL = l.MaxEntries, l.IdleTTL
	return r
}

// admissionConfig is the admission package's view of c.
func (c Config) admissionConfig() admission.Config {
	a := admission.NewConfig()
	a.CheckOrigin, a.RequireOrigin, a.TrustedProxies = c.CheckOrigin, c.RequireOrigin, c.TrustedProxies
	l := c.Limits
	a.PerIPHandshakesPerSecond, a.PerIPHandshakeBurst = l.IPHandshakesPerSecond, l.IPHandshakeBurst
	a.PerIPMaxConns, a.PerPlayerMaxConns, a.MaxConns = l.IPMaxConns, l.PlayerMaxConns, l.MaxConns
	a.PerIPMaxHandshakes = l.IPMaxHandshakes
	// The handshake bucket must outlive its refill time (admission checks
	// it); keep the default TTL unless the configured rate needs longer.
	if l.IPHandshakesPerSecond > 0 && l.IPHandshakeBurst > 0 {
		refill := float64(l.IPHandshakeBurst) / l.IPHandshakesPerSecond * float64(time.Second)
		if refill < float64(maxSaneDuration) {
			a.IdleTTL = max(a.IdleTTL, time.Duration(refill))
		}
	}
	return a
}

// NewConfig returns the defaults.
func NewConfig() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "phxgate"
	}
	return Config{
		Listen:             DefaultListen,
		AdminListen:        DefaultAdminListen,
		APIListen:          DefaultAPIListen,
		NodeID:             host + "-" + strconv.Itoa(os.Getpid()),
		SocketPath:         DefaultSocketPath,
		IdleTimeout:        DefaultIdleTimeout,
		HandshakeTimeout:   DefaultHandshakeTimeout,
		HandshakeWorkers:   DefaultHandshakeWorkers,
		MaxMessageSize:     DefaultMaxMessageSize,
		WriteQueueMaxBytes: DefaultWriteQueueMaxBytes,
		OutputBudgetBytes:  DefaultOutputBudgetBytes,
		CloseTimeout:       DefaultCloseTimeout,
		DrainTimeout:       DefaultDrainTimeout,
		Auth:               newAuthConfig(),
		Limits:             newLimitsConfig(),
		Presence:           presence.NewConfig(),
		LongPoll:           newLongPollConfig(),
		LogFormat:          "json",
		LogLevel:           "info",
	}
}

// ErrConfig is wrapped by every configuration error; the message names the
// offending key, e.g. "config: routes[1].backend: unknown backend".
var ErrConfig = errors.New("config")

func keyErr(key string, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, key, fmt.Sprintf(format, args...))
}

// configError rewords a building block's configuration error in the
// gateway's form ("config: <key>: <problem>") while both sentinels stay
// reachable with errors.Is.
type configError struct {
	msg   string
	cause error
}

func (e *configError) Error() string   { return e.msg }
func (e *configError) Unwrap() []error { return []error{ErrConfig, e.cause} }

func blockErr(err, sentinel error) error {
	msg := strings.TrimPrefix(err.Error(), sentinel.Error()+": ")
	return &configError{msg: ErrConfig.Error() + ": " + msg, cause: err}
}

// maxSaneDuration keeps durations from overflowing deadline arithmetic.
const maxSaneDuration = 24 * time.Hour

// Validate checks every field and names the first bad key.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return keyErr("listen", "%v", err)
	}
	if c.AdminListen != "" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			return keyErr("admin_listen", "%v", err)
		}
	}
	if c.NodeID == "" {
		return keyErr("node_id", "must not be empty")
	}
	if !strings.HasPrefix(c.SocketPath, "/") || strings.ContainsAny(c.SocketPath, "?# ") {
		return keyErr("socket_path", "must be an absolute path, got %q", c.SocketPath)
	}
	if c.IdleTimeout < 0 || c.IdleTimeout > maxSaneDuration {
		return keyErr("idle_timeout", "must be between 0s and %v", maxSaneDuration)
	}
	if c.HandshakeTimeout <= 0 || c.HandshakeTimeout > time.Minute {
		return keyErr("handshake_timeout", "must be between 0s (exclusive) and 1m")
	}
	if c.HandshakeWorkers <= 0 || c.HandshakeWorkers > 1<<16 {
		return keyErr("handshake_workers", "must be between 1 and 65536")
	}
	if c.MaxMessageSize <= 0 || c.MaxMessageSize > 64<<20 {
		return keyErr("max_message_size", "must be between 1 and 67108864 bytes")
	}
	if c.APISecret != "" && len(c.APISecret) < 32 {
		return keyErr("api_secret", "must be at least 32 bytes")
	}
	if c.WriteQueueMaxBytes <= 0 || c.WriteQueueMaxBytes > 1<<30 {
		return keyErr("write_queue_max_bytes", "must be between 1 and 1073741824 bytes")
	}
	if c.OutputBudgetBytes <= 0 || c.OutputBudgetBytes > 1<<40 {
		return keyErr("output_budget_bytes", "must be between 1 and 1099511627776 bytes")
	}
	if c.OutputBudgetBytes < int64(c.WriteQueueMaxBytes) {
		return keyErr("output_budget_bytes", "must be at least write_queue_max_bytes (%d)", c.WriteQueueMaxBytes)
	}
	if c.Pollers < 0 || c.Pollers > 1024 {
		return keyErr("pollers", "must be between 0 and 1024")
	}
	if c.CloseTimeout < 0 || c.CloseTimeout > time.Minute {
		return keyErr("close_timeout", "must be between 0s and 1m")
	}
	if c.DrainTimeout < 0 || c.DrainTimeout > time.Hour {
		return keyErr("drain_timeout", "must be between 0s and 1h")
	}
	if c.DrainBatch < 0 || c.DrainBatch > MaxDrainBatch {
		return keyErr("drain_batch", "must be between 0 and %d", MaxDrainBatch)
	}
	if c.DrainInterval < 0 || c.DrainInterval >= c.drainTimeout() {
		return keyErr("drain_interval", "must be between 0s and drain_timeout (%v)", c.drainTimeout())
	}
	if c.DrainInterval > 0 && c.DrainInterval < time.Millisecond {
		return keyErr("drain_interval", "must be at least 1ms (0s: %v)", DefaultDrainInterval)
	}
	if c.ReadyCheckInterval != 0 && (c.ReadyCheckInterval < 100*time.Millisecond || c.ReadyCheckInterval > time.Minute) {
		return keyErr("ready_check_interval", "must be between 100ms and 1m (0s: %v)", DefaultReadyCheckInterval)
	}
	if err := c.validateBroker(); err != nil {
		return err
	}
	if err := c.validateDev(); err != nil {
		return err
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return keyErr("log_format", "must be json or text, got %q", c.LogFormat)
	}
	if _, err := c.SlogLevel(); err != nil {
		return keyErr("log_level", "%v", err)
	}
	if err := c.Presence.Validate(); err != nil {
		switch p := c.Presence; {
		case p.Window < 0 || p.Window > 10*time.Second:
			return keyErr("presence.window", "must be between 0s and 10s")
		case p.MaxMetaBytes < 0 || p.MaxMetaBytes > 64<<10:
			return keyErr("presence.max_meta_bytes", "must be between 0 and 65536")
		case p.MaxMetasPerKey < 0 || p.MaxMetasPerKey > presence.MaxMetasPerKey:
			return keyErr("presence.max_metas_per_key", "must be between 0 and %d", presence.MaxMetasPerKey)
		case p.MaxPerTopic < 0 || p.MaxPerTopic > 1_000_000:
			return keyErr("presence.max_per_topic", "must be between 0 and 1000000")
		}
		return keyErr("presence", "%v", err)
	}
	if err := c.LongPoll.validate(); err != nil {
		return err
	}
	for i, o := range c.CheckOrigin {
		if o == "" {
			return keyErr(fmt.Sprintf("check_origin[%d]", i), "must not be empty")
		}
	}
	// The building blocks name the offending key themselves (auth.leeway,
	// limits.ip_max_conns, trusted_proxies[2] …).
	if err := c.Auth.Validate(); err != nil {
		return blockErr(err, auth.ErrConfig)
	}
	if c.Auth.MaxTokenBytes > MaxHandshakeBytes {
		return keyErr("auth.max_token_bytes", "must be at most %d (a larger token cannot fit in a request head)", MaxHandshakeBytes)
	}
	if c.Auth.JWKSRefreshInterval < 0 || c.Auth.JWKSRefreshInterval > maxSaneDuration {
		return keyErr("auth.jwks_refresh_interval", "must be between 0s and %v", maxSaneDuration)
	}
	rl := c.rateLimitConfig()
	if err := rl.Validate(); err != nil {
		return blockErr(err, ratelimit.ErrConfig)
	}
	if c.Limits.MaxEntries > 1<<24 {
		return keyErr("limits.max_entries", "must be at most %d", 1<<24)
	}
	if c.Limits.IdleTTL > maxSaneDuration {
		return keyErr("limits.idle_ttl", "must be at most %v", maxSaneDuration)
	}
	if err := c.admissionConfig().Validate(); err != nil {
		return blockErr(err, admission.ErrConfig)
	}
	for i, r := range c.Routes {
		if err := rl.ValidateRoute(r.RateLimits, fmt.Sprintf("routes[%d].rate_limits", i)); err != nil {
			return blockErr(err, ratelimit.ErrConfig)
		}
	}
	for i, r := range c.Routes {
		if r.Topic == "" {
			return keyErr(fmt.Sprintf("routes[%d].topic", i), "must not be empty")
		}
		if i := strings.IndexByte(r.Topic, '*'); i >= 0 && i != len(r.Topic)-1 {
			return keyErr(fmt.Sprintf("routes[%d].topic", i), "a wildcard is only allowed at the end, got %q", r.Topic)
		}
		if !knownBackend(r.Backend) {
			return keyErr(fmt.Sprintf("routes[%d].backend", i), "unknown backend %q (echo, bench, demo, grpc://host:port, http(s)://url, inproc:name)", r.Backend)
		}
		if r.History < 0 || r.History > pubsub.MaxHistorySize {
			return keyErr(fmt.Sprintf("routes[%d].history", i), "must be between 0 and %d (what a broker keeps per topic)", pubsub.MaxHistorySize)
		}
		if r.LeaveGrace < 0 || r.LeaveGrace > 10*time.Minute {
			return keyErr(fmt.Sprintf("routes[%d].leave_grace", i), "must be between 0s and 10m")
		}
	}
	return nil
}

// InprocPrefix names a route backend registered with WithBackend.
const InprocPrefix = "inproc:"

func knownBackend(spec string) bool {
	switch spec {
	case "echo", "bench", "demo":
		return true
	}
	for _, p := range []string{"grpc://", "grpcs://", "http://", "https://", InprocPrefix} {
		if strings.HasPrefix(spec, p) && len(spec) > len(p) {
			return true
		}
	}
	return false
}

func (c Config) drainTimeout() time.Duration {
	if c.DrainTimeout == 0 {
		return DefaultDrainTimeout
	}
	return c.DrainTimeout
}

func (c Config) drainInterval() time.Duration {
	if c.DrainInterval == 0 {
		return DefaultDrainInterval
	}
	return c.DrainInterval
}

func (c Config) closeTimeout() time.Duration {
	if c.CloseTimeout == 0 {
		return DefaultCloseTimeout
	}
	return c.CloseTimeout
}

// A setting is one configuration key with its three sources: a YAML node,
// and a string (flag or environment variable).
type setting struct {
	key    string
	usage  string
	isBool bool
	str    func(c *Config, s string) error
	node   func(c *Config, n *yaml.Node) error
}

func strSetting(key, usage string, f func(*Config) *string) setting {
	return setting{key: key, usage: usage,
		str:  func(c *Config, s string) error { *f(c) = s; return nil },
		node: func(c *Config, n *yaml.Node) error { return n.Decode(f(c)) },
	}
}

func durSetting(key, usage string, f func(*Config) *time.Duration) setting {
	set := func(c *Config, s string) error {
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*f(c) = d
		return nil
	}
	return setting{key: key, usage: usage, str: set,
		node: func(c *Config, n *yaml.Node) error {
			var s string
			if err := n.Decode(&s); err != nil {
				return err
			}
			return set(c, s)
		},
	}
}

func intSetting(key, usage string, f func(*Config) *int) setting {
	return setting{key: key, usage: usage,
		str: func(c *Config, s string) error {
			v, err := strconv.Atoi(s)
			if err != nil {
				return err
			}
			*f(c) = v
			return nil
		},
		node: func(c *Config, n *yaml.Node) error { return n.Decode(f(c)) },
	}
}

func int64Setting(key, usage string, f func(*Config) *int64) setting {
	return setting{key: key, usage: usage,
		str: func(c *Config, s string) error {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return err
			}
			*f(c) = v
			return nil
		},
		node: func(c *Config, n *yaml.Node) error { return n.Decode(f(c)) },
	}
}

func boolSetting(key, usage string, f func(*Config) *bool) setting {
	return setting{key: key, usage: usage, isBool: true,
		str: func(c *Config, s string) error {
			v, err := strconv.ParseBool(s)
			if err != nil {
				return err
			}
			*f(c) = v
			return nil
		},
		node: func(c *Config, n *yaml.Node) error { return n.Decode(f(c)) },
	}
}

func floatSetting(key, usage string, f func(*Config) *float64) setting {
	return setting{key: key, usage: usage,
		str: func(c *Config, s string) error {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return err
			}
			*f(c) = v
			return nil
		},
		node: func(c *Config, n *yaml.Node) error { return n.Decode(f(c)) },
	}
}

// listSetting is a YAML list, or a comma-separated flag/env value.
func listSetting(key, usage string, f func(*Config) *[]string) setting {
	return setting{key: key, usage: usage,
		str: func(c *Config, s string) error {
			var out []string
			for item := range strings.SplitSeq(s, ",") {
				if item = strings.TrimSpace(item); item != "" {
					out = append(out, item)
				}
			}
			*f(c) = out
			return nil
		},
		node: func(c *Config, n *yaml.Node) error {
			var out []string
			if err := n.Decode(&out); err != nil {
				return err
			}
			*f(c) = out
			return nil
		},
	}
}

// SlogLevel returns LogLevel as a slog level.
func (c *Config) SlogLevel() (slog.Level, error) {
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("must be debug, info, warn or error, got %q", c.LogLevel)
}

// NewLogger returns the logger the configuration asks for, writing to w.
func (c *Config) NewLogger(w io.Writer) *slog.Logger {
	lvl, _ := c.SlogLevel() // validated
	opts := &slog.HandlerOptions{Level: lvl}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// validateBroker checks the pubsub settings.
func (c *Config) validateBroker() error {
	if c.RedisURL != "" {
		u, err := url.Parse(c.RedisURL)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			return keyErr("redis_url", "must be redis://host:port[/db] or rediss://host:port[/db]")
		}
		if err := (pubsub.RedisConfig{URL: c.RedisURL}).Validate(); err != nil {
			return keyErr("redis_url", "%v", err)
		}
	}
	for i, a := range c.RedisClusterAddrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return keyErr(fmt.Sprintf("redis_cluster_addrs[%d]", i), "must be host:port, got %q", a)
		}
	}
	switch {
	case c.RedisTimeout < 0 || c.RedisTimeout > time.Minute:
		return keyErr("redis_timeout", "must be between 0s and 1m")
	case c.HistoryTTL < 0 || c.HistoryTTL > 7*24*time.Hour:
		return keyErr("history_ttl", "must be between 0s and 168h")
	case c.HistoryBytes < 0 || c.HistoryBytes > 1<<30:
		return keyErr("history_bytes", "must be between 0 and 1073741824")
	case c.MaxReplay < 0 || c.MaxReplay > pubsub.MaxHistorySize:
		return keyErr("max_replay", "must be between 0 and %d", pubsub.MaxHistorySize)
	case c.ReplayBytes < 0 || (c.ReplayBytes > c.WriteQueueMaxBytes && c.WriteQueueMaxBytes > 0):
		return keyErr("replay_bytes", "must be between 0 and write_queue_max_bytes (%d): a bigger replay would close the socket", c.WriteQueueMaxBytes)
	}
	return nil
}

func settings() []setting {
	return append([]setting{
		strSetting("listen", "client listen address", func(c *Config) *string { return &c.Listen }),
		strSetting("admin_listen", "admin listen address (metrics, health, pprof); empty disables", func(c *Config) *string { return &c.AdminListen }),
		strSetting("api_listen", "Gateway gRPC service for games (broadcast, push, disconnect); empty disables", func(c *Config) *string { return &c.APIListen }),
		strSetting("api_secret", "bearer secret API callers must send (at least 32 bytes; empty: none)", func(c *Config) *string { return &c.APISecret }),
		strSetting("node_id", "node id (default hostname-pid)", func(c *Config) *string { return &c.NodeID }),
		strSetting("socket_path", "Phoenix socket path; the WebSocket is at <path>/websocket", func(c *Config) *string { return &c.SocketPath }),
		durSetting("idle_timeout", "close sockets idle this long (0s disables)", func(c *Config) *time.Duration { return &c.IdleTimeout }),
		durSetting("handshake_timeout", "deadline for one HTTP upgrade", func(c *Config) *time.Duration { return &c.HandshakeTimeout }),
		intSetting("handshake_workers", "concurrent handshakes", func(c *Config) *int { return &c.HandshakeWorkers }),
		intSetting("max_message_size", "largest WebSocket message in bytes", func(c *Config) *int { return &c.MaxMessageSize }),
		intSetting("write_queue_max_bytes", "per-socket outbound queue cap in bytes", func(c *Config) *int { return &c.WriteQueueMaxBytes }),
		int64Setting("output_budget_bytes", "bytes queued to all sockets together before pushes and broadcasts are refused", func(c *Config) *int64 { return &c.OutputBudgetBytes }),
		intSetting("pollers", "epoll pollers (0 = number of CPUs)", func(c *Config) *int { return &c.Pollers }),
		durSetting("close_timeout", "deadline for a socket's closing handshake", func(c *Config) *time.Duration { return &c.CloseTimeout }),
		durSetting("drain_timeout", "graceful shutdown bound; 1012 closes are spread over its first half", func(c *Config) *time.Duration { return &c.DrainTimeout }),
		intSetting("drain_batch", "sockets closed with 1012 per drain_interval while draining (0: spread over half of drain_timeout)", func(c *Config) *int { return &c.DrainBatch }),
		durSetting("drain_interval", "pause between batches of drain closes (0s: 50ms)", func(c *Config) *time.Duration { return &c.DrainInterval }),
		durSetting("ready_check_interval", "period of the broker and backend check behind the ready gauges (0s: 5s)", func(c *Config) *time.Duration { return &c.ReadyCheckInterval }),
		strSetting("log_format", "json or text", func(c *Config) *string { return &c.LogFormat }),
		strSetting("log_level", "debug, info, warn or error", func(c *Config) *string { return &c.LogLevel }),
		strSetting("redis_url", "Redis URL, redis:// or rediss:// (empty: in-memory broker)", func(c *Config) *string { return &c.RedisURL }),
		listSetting("redis_cluster_addrs", "Redis Cluster masters host:port, comma-separated (selects Cluster)", func(c *Config) *[]string { return &c.RedisClusterAddrs }),
		strSetting("redis_prefix", "prefix of every Redis key and channel (empty: phx)", func(c *Config) *string { return &c.RedisPrefix }),
		durSetting("redis_timeout", "bound of every Redis call (0s: 2s)", func(c *Config) *time.Duration { return &c.RedisTimeout }),
		durSetting("history_ttl", "how long a topic's history outlives its last publish (0s: 10m)", func(c *Config) *time.Duration { return &c.HistoryTTL }),
		intSetting("history_bytes", "payload bytes kept per topic's history (0: 8 MiB)", func(c *Config) *int { return &c.HistoryBytes }),
		intSetting("max_replay", "most events one resuming join is replayed (0: 1000)", func(c *Config) *int { return &c.MaxReplay }),
		intSetting("replay_bytes", "most payload bytes one resuming join is replayed (0: half of write_queue_max_bytes)", func(c *Config) *int { return &c.ReplayBytes }),
		listSetting("check_origin", "allowed origins, comma-separated (empty allows all; https://*.example.com for subdomains)", func(c *Config) *[]string { return &c.CheckOrigin }),
		boolSetting("require_origin", "with check_origin, also refuse requests without an Origin header", func(c *Config) *bool { return &c.RequireOrigin }),
		listSetting("trusted_proxies", "CIDRs of reverse proxies whose X-Forwarded-For is believed, comma-separated", func(c *Config) *[]string { return &c.TrustedProxies }),
		boolSetting("auth.required", "refuse connects without a valid token (401 missing, 403 invalid)", func(c *Config) *bool { return &c.Auth.Required }),
		strSetting("auth.hs256_secret", "HS256 secret for tokens (at least 32 bytes)", func(c *Config) *string { return &c.Auth.HS256Secret }),
		strSetting("auth.hs384_secret", "HS384 secret for tokens (at least 48 bytes)", func(c *Config) *string { return &c.Auth.HS384Secret }),
		strSetting("auth.hs512_secret", "HS512 secret for tokens (at least 64 bytes)", func(c *Config) *string { return &c.Auth.HS512Secret }),
		listSetting("auth.public_key_files", "PEM files with RSA, ECDSA or Ed25519 public keys, comma-separated", func(c *Config) *[]string { return &c.Auth.PublicKeyFiles }),
		strSetting("auth.jwks_url", "JWKS URL (https; http only for loopback)", func(c *Config) *string { return &c.Auth.JWKSURL }),
		durSetting("auth.jwks_refresh_interval", "minimum time between two JWKS fetches", func(c *Config) *time.Duration { return &c.Auth.JWKSRefreshInterval }),
		durSetting("auth.jwks_timeout", "deadline of one JWKS fetch", func(c *Config) *time.Duration { return &c.Auth.JWKSTimeout }),
		durSetting("auth.leeway", "clock skew tolerated on exp and nbf", func(c *Config) *time.Duration { return &c.Auth.Leeway }),
		strSetting("auth.audience", "required token audience (empty: not checked)", func(c *Config) *string { return &c.Auth.Audience }),
		strSetting("auth.issuer", "required token issuer (empty: not checked)", func(c *Config) *string { return &c.Auth.Issuer }),
		intSetting("auth.max_token_bytes", "largest token accepted, in bytes, checked before parsing", func(c *Config) *int { return &c.Auth.MaxTokenBytes }),
		boolSetting("otel.enabled", "trace connects, joins and pushes over OTLP (also on when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set)", func(c *Config) *bool { return &c.Otel.Enabled }),
		durSetting("presence.window", "a topic's presence changes on one node within this window make one presence_diff", func(c *Config) *time.Duration { return &c.Presence.Window }),
		intSetting("presence.max_meta_bytes", "largest presence meta in bytes; a bigger one is refused (the join stands)", func(c *Config) *int { return &c.Presence.MaxMetaBytes }),
		intSetting("presence.max_metas_per_key", "connections of one player present on one topic", func(c *Config) *int { return &c.Presence.MaxMetasPerKey }),
		intSetting("presence.max_per_topic", "presences on one topic", func(c *Config) *int { return &c.Presence.MaxPerTopic }),
		floatSetting("limits.joins_per_second", "joins per player (anonymous: per client IP) per second", func(c *Config) *float64 { return &c.Limits.JoinsPerSecond }),
		intSetting("limits.join_burst", "joins allowed at once", func(c *Config) *int { return &c.Limits.JoinBurst }),
		{
			key: "limits.classes", usage: `event classes as "name=per_second:burst,..." (merged over the defaults)`,
			str:  parseClassesFlag,
			node: decodeClasses,
		},
		strSetting("limits.default_class", "class of events no route classifies", func(c *Config) *string { return &c.Limits.DefaultClass }),
		floatSetting("limits.heartbeats_per_second", "heartbeats per connection per second", func(c *Config) *float64 { return &c.Limits.HeartbeatsPerSecond }),
		intSetting("limits.heartbeat_burst", "heartbeats one connection may send at once", func(c *Config) *int { return &c.Limits.HeartbeatBurst }),
		durSetting("limits.abuse_window", "refused continuously this long: disconnect with 1008", func(c *Config) *time.Duration { return &c.Limits.AbuseWindow }),
		durSetting("limits.abuse_quiet", "a gap this long without refusals ends a refusal streak", func(c *Config) *time.Duration { return &c.Limits.AbuseQuiet }),
		intSetting("limits.max_entries", "players tracked by the rate limiter at most", func(c *Config) *int { return &c.Limits.MaxEntries }),
		durSetting("limits.idle_ttl", "rate limiter entries idle this long are forgotten", func(c *Config) *time.Duration { return &c.Limits.IdleTTL }),
		floatSetting("limits.ip_handshakes_per_second", "upgrade attempts per client IP (IPv6: /64) per second", func(c *Config) *float64 { return &c.Limits.IPHandshakesPerSecond }),
		intSetting("limits.ip_handshake_burst", "upgrade attempts per client IP allowed at once", func(c *Config) *int { return &c.Limits.IPHandshakeBurst }),
		intSetting("limits.ip_max_handshakes", "handshakes in progress per peer address (IPv6: /64), checked at accept; trusted_proxies exempt", func(c *Config) *int { return &c.Limits.IPMaxHandshakes }),
		intSetting("limits.ip_max_conns", "open sockets per client IP (IPv6: /64)", func(c *Config) *int { return &c.Limits.IPMaxConns }),
		intSetting("limits.player_max_conns", "open sockets per player", func(c *Config) *int { return &c.Limits.PlayerMaxConns }),
		intSetting("limits.max_conns", "open sockets on this node (over it: 503)", func(c *Config) *int { return &c.Limits.MaxConns }),
		boolSetting("dev", "dev mode: demo game, dev tokens and the demo page; NOT for production", func(c *Config) *bool { return &c.Dev }),
		strSetting("dev_assets", "dev mode: directory of the demo page and its node_modules (empty: clients/js)", func(c *Config) *string { return &c.DevAssets }),
		durSetting("dev_token_ttl", "dev mode: lifetime of /dev/token's tokens (0s: 10m)", func(c *Config) *time.Duration { return &c.DevTokenTTL }),
		durSetting("demo_round", "betting window of the demo game's rounds (0s: 3s)", func(c *Config) *time.Duration { return &c.DemoRound }),
		{
			key: "routes", usage: `routes as "pattern=backend[,presence][,history=N][,leave_grace=D];..."`,
			str:  func(c *Config, s string) error { return parseRoutesFlag(c, s) },
			node: decodeRoutes,
		},
	}, longPollSettings()...)
}

// setClass merges one class over the existing ones; the map is copied so
// that NewConfig's default map is never shared between configs.
func setClass(c *Config, name string, l ratelimit.ClassLimit) {
	m := make(map[string]ratelimit.ClassLimit, len(c.Limits.Classes)+1)
	for k, v := range c.Limits.Classes {
		m[k] = v
	}
	m[name] = l
	c.Limits.Classes = m
}

// parseClassesFlag reads "name=per_second:burst,..." (e.g.
// "default=20:40,chat=2:5").
func parseClassesFlag(c *Config, s string) error {
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, spec, ok := strings.Cut(item, "=")
		ps, bs, ok2 := strings.Cut(spec, ":")
		if !ok || !ok2 || name == "" {
			return fmt.Errorf("want name=per_second:burst, got %q", item)
		}
		rate, err := strconv.ParseFloat(ps, 64)
		if err != nil {
			return fmt.Errorf("class %q: per_second: %v", name, err)
		}
		burst, err := strconv.Atoi(bs)
		if err != nil {
			return fmt.Errorf("class %q: burst: %v", name, err)
		}
		setClass(c, name, ratelimit.ClassLimit{PerSecond: rate, Burst: burst})
	}
	return nil
}

// decodeClasses reads limits.classes: a mapping of class name to
// {per_second, burst}. A class given only in part keeps the rest of its
// default (or of the default class's values, for a new class).
func decodeClasses(c *Config, n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return keyErr("limits.classes", "line %d: want a mapping of class names", n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		name, body := n.Content[i].Value, n.Content[i+1]
		key := "limits.classes." + name
		if body.Kind != yaml.MappingNode {
			return keyErr(key, "line %d: want {per_second, burst}", body.Line)
		}
		l, ok := c.Limits.Classes[name]
		if !ok {
			l = ratelimit.ClassLimit{}
		}
		for j := 0; j+1 < len(body.Content); j += 2 {
			k, v := body.Content[j].Value, body.Content[j+1]
			var err error
			switch k {
			case "per_second":
				err = v.Decode(&l.PerSecond)
			case "burst":
				err = v.Decode(&l.Burst)
			default:
				return keyErr(key+"."+k, "unknown key (line %d)", body.Content[j].Line)
			}
			if err != nil {
				return keyErr(key+"."+k, "%v", err)
			}
		}
		setClass(c, name, l)
	}
	return nil
}

// decodeRateLimits reads routes[i].rate_limits.
func decodeRateLimits(key string, n *yaml.Node, r *ratelimit.Route) error {
	if n.Kind != yaml.MappingNode {
		return keyErr(key, "line %d: want a mapping (default_class, events)", n.Line)
	}
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, v := n.Content[j].Value, n.Content[j+1]
		switch k {
		case "default_class":
			if err := v.Decode(&r.DefaultClass); err != nil {
				return keyErr(key+".default_class", "%v", err)
			}
		case "events":
			if v.Kind != yaml.MappingNode {
				return keyErr(key+".events", "line %d: want a mapping of event name to class", v.Line)
			}
			r.Events = map[string]string{}
			for e := 0; e+1 < len(v.Content); e += 2 {
				var class string
				if err := v.Content[e+1].Decode(&class); err != nil {
					return keyErr(key+".events."+v.Content[e].Value, "%v", err)
				}
				r.Events[v.Content[e].Value] = class
			}
		default:
			return keyErr(key+"."+k, "unknown key (line %d)", n.Content[j].Line)
		}
	}
	return nil
}

// parseRoutesFlag reads the compact flag/env form of routes, e.g.
// "room:*=echo,history=100,class=chat,event.move=fast;bench:*=bench"
// (class: the route's default class; event.NAME: NAME's class).
func parseRoutesFlag(c *Config, s string) error {
	c.Routes = nil
	for i, item := range strings.Split(s, ";") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		topic, rest, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("route %d: want pattern=backend, got %q", i, item)
		}
		fields := strings.Split(rest, ",")
		r := RouteConfig{Topic: topic, Backend: fields[0]}
		for _, f := range fields[1:] {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "presence":
				r.Presence = v == "" || v == "true"
			case "history":
				n, err := strconv.Atoi(v)
				if err != nil {
					return fmt.Errorf("route %d: history: %v", i, err)
				}
				r.History = n
			case "leave_grace":
				d, err := time.ParseDuration(v)
				if err != nil {
					return fmt.Errorf("route %d: leave_grace: %v", i, err)
				}
				r.LeaveGrace = d
			case "class":
				r.RateLimits.DefaultClass = v
			default:
				if ev, ok := strings.CutPrefix(k, "event."); ok && ev != "" {
					if r.RateLimits.Events == nil {
						r.RateLimits.Events = map[string]string{}
					}
					r.RateLimits.Events[ev] = v
					continue
				}
				return fmt.Errorf("route %d: unknown option %q", i, k)
			}
		}
		c.Routes = append(c.Routes, r)
	}
	return nil
}

func decodeRoutes(c *Config, n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return fmt.Errorf("line %d: want a list of routes", n.Line)
	}
	c.Routes = nil
	for i, item := range n.Content {
		key := fmt.Sprintf("routes[%d]", i)
		if item.Kind != yaml.MappingNode {
			return keyErr(key, "line %d: want a mapping", item.Line)
		}
		var r RouteConfig
		for j := 0; j+1 < len(item.Content); j += 2 {
			k, v := item.Content[j].Value, item.Content[j+1]
			var err error
			switch k {
			case "topic":
				err = v.Decode(&r.Topic)
			case "backend":
				err = v.Decode(&r.Backend)
			case "presence":
				err = v.Decode(&r.Presence)
			case "history":
				err = v.Decode(&r.History)
			case "leave_grace":
				var str string
				if err = v.Decode(&str); err == nil {
					r.LeaveGrace, err = time.ParseDuration(str)
				}
			case "rate_limits":
				if err := decodeRateLimits(key+".rate_limits", v, &r.RateLimits); err != nil {
					return err
				}
			default:
				return keyErr(key+"."+k, "unknown key")
			}
			if err != nil {
				return keyErr(key+"."+k, "%v", err)
			}
		}
		c.Routes = append(c.Routes, r)
	}
	return nil
}

// EnvName is the environment variable for a key: PHXGATE_ + upper snake
// case, with nesting dots as underscores (auth.required → PHXGATE_AUTH_REQUIRED).
func EnvName(key string) string {
	return "PHXGATE_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// LoadConfig builds a Config from defaults, then the YAML file named by
// --config, then PHXGATE_* environment variables, then flags (flag > env >
// file > default), and validates it. getenv is os.Getenv in production.
func LoadConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	cfg := NewConfig()
	all := settings()
	fs := flag.NewFlagSet("phxgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "YAML configuration file")
	flagVals := map[string]string{}
	for _, s := range all {
		key := s.key
		if s.isBool {
			fs.BoolFunc(key, s.usage+" (env "+EnvName(key)+")", func(v string) error { flagVals[key] = v; return nil })
		} else {
			fs.Func(key, s.usage+" (env "+EnvName(key)+")", func(v string) error { flagVals[key] = v; return nil })
		}
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("%w: unexpected argument %q", ErrConfig, fs.Arg(0))
	}
	// Dev mode's settings are defaults: the file, env and flags still apply.
	if err := applyDevIfAsked(&cfg, flagVals["dev"], getenv(EnvName("dev"))); err != nil {
		return Config{}, err
	}
	if *configFile != "" {
		data, err := os.ReadFile(*configFile)
		if err != nil {
			return Config{}, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		if err := applyYAML(&cfg, data, all); err != nil {
			return Config{}, err
		}
	}
	for _, s := range all {
		if v := getenv(EnvName(s.key)); v != "" {
			if err := s.str(&cfg, v); err != nil {
				return Config{}, keyErr(s.key, "%s: %v", EnvName(s.key), err)
			}
		}
	}
	for _, s := range all {
		if v, ok := flagVals[s.key]; ok {
			if err := s.str(&cfg, v); err != nil {
				return Config{}, keyErr(s.key, "flag: %v", err)
			}
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// ParseYAML applies a YAML document to the defaults and validates it.
func ParseYAML(data []byte) (Config, error) {
	cfg := NewConfig()
	if err := applyYAML(&cfg, data, settings()); err != nil {
		return Config{}, err
	}
	return cfg, cfg.Validate()
}

// applyYAML walks the document key by key so that every error (unknown key,
// wrong type, bad duration) names the key it is about; yaml.v3's own errors
// name Go types instead.
func applyYAML(cfg *Config, data []byte, all []setting) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if len(doc.Content) == 0 {
		return nil // an empty file keeps the defaults
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("%w: the document must be a mapping", ErrConfig)
	}
	byKey := map[string]setting{}
	for _, s := range all {
		byKey[s.key] = s
	}
	var walk func(prefix string, m *yaml.Node) error
	walk = func(prefix string, m *yaml.Node) error {
		for i := 0; i+1 < len(m.Content); i += 2 {
			key := prefix + m.Content[i].Value
			v := m.Content[i+1]
			if s, ok := byKey[key]; ok {
				if err := s.node(cfg, v); err != nil {
					if errors.Is(err, ErrConfig) {
						return err
					}
					return keyErr(key, "%v", err)
				}
				continue
			}
			if (key == "auth" || key == "limits" || key == "otel" || key == "longpoll") && v.Kind == yaml.MappingNode {
				if err := walk(key+".", v); err != nil {
					return err
				}
				continue
			}
			return keyErr(key, "unknown key (line %d)", m.Content[i].Line)
		}
		return nil
	}
	return walk("", root)
}
