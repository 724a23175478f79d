package gateway

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/channels/auth"
	"github.com/phxgate/phxgate/channels/ratelimit"
	"github.com/phxgate/phxgate/gateway/internal/admission"
	"github.com/phxgate/phxgate/gateway/internal/configload"
	"github.com/phxgate/phxgate/presence"
	"github.com/phxgate/phxgate/pubsub"
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
	// DefaultWriteStallTimeout is how long a socket's queued output may
	// go without a byte written before the socket is closed as a slow
	// consumer (1013). Without it a client that stops reading but keeps
	// sending heartbeats would hold its queue (and a presence state
	// being sent to it in pieces, with its share of the node's budget)
	// for as long as it likes, since paced output never overflows
	// write_queue_max_bytes.
	DefaultWriteStallTimeout = 30 * time.Second
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
// from NewConfig. Every field is a key: its yaml tag is the key's name
// (also a flag, --name, and an environment variable, PHXGATE_NAME), and a
// section (auth, limits, presence, channels, otel, longpoll) is the Config
// type of the package that owns it; see gateway/internal/configload.
type Config struct {
	// Listen is the client address (host:port; port 0 picks a free port).
	Listen string `yaml:"listen" usage:"client listen address"`
	// AdminListen is the admin address; empty disables the admin listener.
	AdminListen string `yaml:"admin_listen" usage:"admin listen address (metrics, health, pprof); empty disables"`
	// APIListen is the address of the Gateway gRPC service games call;
	// empty disables it.
	APIListen string `yaml:"api_listen" usage:"Gateway gRPC service for games (broadcast, push, disconnect); empty disables"`
	// APISecret, when set, must be sent by API callers as
	// "authorization: Bearer <secret>" metadata (at least 32 bytes).
	APISecret string `yaml:"api_secret" usage:"bearer secret API callers must send (at least 32 bytes; empty: none)"`
	// NodeID names this node in idempotency keys and presence; empty means
	// hostname-pid (filled by NewConfig).
	NodeID string `yaml:"node_id" usage:"node id (default hostname-pid)"`
	// SocketPath is the Phoenix socket mount, e.g. "/socket"; the WebSocket
	// endpoint is SocketPath + "/websocket".
	SocketPath string `yaml:"socket_path" usage:"Phoenix socket path; the WebSocket is at <path>/websocket"`
	// IdleTimeout closes a socket after this long without inbound data;
	// 0 disables it. Swept with one-second granularity.
	IdleTimeout time.Duration `yaml:"idle_timeout" usage:"close sockets idle this long (0s disables)"`
	// HandshakeTimeout bounds one HTTP upgrade; must be > 0.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout" usage:"deadline for one HTTP upgrade"`
	// HandshakeWorkers is the number of concurrent handshakes; must be > 0.
	HandshakeWorkers int `yaml:"handshake_workers" usage:"concurrent handshakes"`
	// MaxMessageSize is the largest accepted WebSocket message in bytes,
	// summed across fragments; must be > 0. Larger messages close with 1009.
	MaxMessageSize int `yaml:"max_message_size" usage:"largest WebSocket message in bytes"`
	// WriteQueueMaxBytes is the per-socket outbound queue cap in bytes;
	// must be > 0. Past it the socket closes with 1013.
	WriteQueueMaxBytes int `yaml:"write_queue_max_bytes" usage:"per-socket outbound queue cap in bytes"`
	// OutputBudgetBytes is the node-wide bound on bytes queued to all
	// sockets (as charged against WriteQueueMaxBytes); must be > 0. While
	// the queues hold more, client pushes get {"reason":"overloaded"} and
	// broadcasts are refused (phxgate_overload_shed_total).
	OutputBudgetBytes int64 `yaml:"output_budget_bytes" usage:"bytes queued to all sockets together before pushes and broadcasts are refused"`
	// Pollers is the number of epoll pollers; 0 means runtime.NumCPU().
	Pollers int `yaml:"pollers" usage:"epoll pollers (0 = number of CPUs)"`
	// CloseTimeout bounds a socket's closing handshake; 0 means
	// DefaultCloseTimeout.
	CloseTimeout time.Duration `yaml:"close_timeout" usage:"deadline for a socket's closing handshake"`
	// WriteStallTimeout (write_stall_timeout) closes a socket with 1013
	// once it has had output queued this long without a byte of it
	// written (checked once a second); 1s to 1h, 0 means
	// DefaultWriteStallTimeout.
	WriteStallTimeout time.Duration `yaml:"write_stall_timeout" usage:"close a socket whose queued output has not moved for this long (1013)"`
	// DrainTimeout bounds the graceful shutdown done by Run; 0 means
	// DefaultDrainTimeout.
	DrainTimeout time.Duration `yaml:"drain_timeout" usage:"graceful shutdown bound; 1012 closes are spread over its first half"`
	// DrainBatch (drain_batch) is how many sockets the whole node closes
	// with 1012 per DrainInterval while draining, split over the pollers
	// (below the number of pollers, each closes one socket every
	// ceil(pollers/DrainBatch) intervals; the pollers take turns). It is
	// raised when too small to close every socket within the first half
	// of DrainTimeout, one batch per DrainInterval then. 0 means
	// just enough for that (at least 64 per poller, so small nodes drain
	// at once).
	DrainBatch int `yaml:"drain_batch" usage:"sockets closed with 1012 per drain_interval while draining (0: spread over half of drain_timeout)"`
	// DrainInterval (drain_interval) is the pause between two batches of
	// drain closes; 0 means DefaultDrainInterval. Must be below
	// DrainTimeout.
	DrainInterval time.Duration `yaml:"drain_interval" usage:"pause between batches of drain closes (0s: 50ms)"`
	// ReadyCheckInterval (ready_check_interval) is the period of the
	// readiness check behind the broker-up and ready gauges; 0 means
	// DefaultReadyCheckInterval. /readyz checks on every request anyway.
	ReadyCheckInterval time.Duration `yaml:"ready_check_interval" usage:"period of the readiness check behind phxgate_pubsub_broker_up and phxgate_gateway_ready (0s: 5s)"`
	// LogFormat (log_format) is "json" (the default) or "text".
	LogFormat string `yaml:"log_format" usage:"json or text"`
	// LogLevel (log_level) is "debug", "info" (the default), "warn" or
	// "error".
	LogLevel string `yaml:"log_level" usage:"debug, info, warn or error"`
	// BrokerConfig selects and tunes the pubsub engine (top-level keys
	// redis_url, history_ttl …; see broker.go).
	BrokerConfig `yaml:",inline"`
	// Origins: check_origin, require_origin and trusted_proxies (the
	// admission package's top-level keys).
	admission.Origins `yaml:",inline"`
	// Auth configures token verification (auth.*).
	Auth AuthConfig `yaml:"auth"`
	// Limits are the per-player rate limits and the connection caps
	// (limits.*).
	Limits LimitsConfig `yaml:"limits"`
	// Presence bounds presence tracking on routes with presence on
	// (presence.*).
	Presence PresenceConfig `yaml:"presence"`
	// Channels tunes the protocol layer (channels.*): channels per socket,
	// the backend worker pool and its queues, the call deadline.
	Channels channels.Config `yaml:"channels"`
	// Otel (otel.*) turns tracing on; see tracing.go.
	Otel OtelConfig `yaml:"otel"`
	// LongPoll configures the long-poll transport (longpoll.*).
	LongPoll LongPollConfig `yaml:"longpoll"`
	// Routes maps topic patterns to backends, in order.
	Routes Routes `yaml:"routes" usage:"routes as \"pattern=backend[,presence][,history=N][,leave_grace=D][,class=C][,event.E=C];...\""`
	// Dev (dev) is dev mode; see applyDev in dev.go. It is a flag and
	// PHXGATE_DEV only: a file that sets it is refused. DevAssets
	// (dev_assets) is the directory of the demo page and its node_modules
	// (empty: clients/js). DevTokenTTL (dev_token_ttl) is the lifetime of
	// /dev/token's tokens (0s: 10m). DemoRound (demo_round) is the demo
	// game's betting window (0s: the game's 3s).
	Dev         bool          `yaml:"dev,noyaml" usage:"dev mode: demo game, dev tokens and the demo page, on loopback only; NOT for production"`
	DevAssets   string        `yaml:"dev_assets" usage:"dev mode: directory of the demo page and its node_modules (empty: clients/js)"`
	DevTokenTTL time.Duration `yaml:"dev_token_ttl" usage:"dev mode: lifetime of /dev/token's tokens (0s: 10m)"`
	DemoRound   time.Duration `yaml:"demo_round" usage:"betting window of the demo game's rounds (0s: 3s)"`
	// devSecret is the hs256_secret applyDev drew: the only one dev mode
	// signs with (validateDev).
	devSecret string
}

// PresenceConfig is the presence package's Config (keys presence.*).
type PresenceConfig = presence.Config

// AuthConfig configures token verification; it is the auth package's
// Config (keys auth.*). Zero Required means anonymous sockets are allowed.
type AuthConfig = auth.Config

// LimitsConfig holds the keys under limits.*: the rate limiter's Config
// (joins, event classes, heartbeats, abuse) and the admission limits
// (per-IP, per-player and node caps), each validated by its package. Every
// field must be set: zero never means unlimited.
type LimitsConfig struct {
	ratelimit.Config `yaml:",inline"`
	admission.Limits `yaml:",inline"`
}

// RouteConfig is one topic route.
type RouteConfig struct {
	// Topic is a pattern: exact ("table:lobby") or prefix ("room:*").
	Topic string `yaml:"topic"`
	// Backend is echo | bench | demo | grpc(s)://host:port | http(s)://url
	// | inproc:name, with options (backends/doc.go).
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

// Routes are the routes, in order (key routes).
type Routes []RouteConfig

// Set reads the compact flag and environment form of routes, e.g.
// "room:*=echo,history=100,class=chat,event.move=fast;bench:*=bench"
// (class: the route's default class; event.NAME: NAME's class).
func (rs *Routes) Set(s string) error {
	var out Routes
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
			var err error
			switch k {
			case "presence":
				r.Presence = v == "" || v == "true"
			case "history":
				r.History, err = strconv.Atoi(v)
			case "leave_grace":
				r.LeaveGrace, err = time.ParseDuration(v)
			case "class":
				r.RateLimits.DefaultClass = v
			default:
				ev, ok := strings.CutPrefix(k, "event.")
				if !ok || ev == "" {
					return fmt.Errorf("route %d: unknown option %q", i, k)
				}
				if r.RateLimits.Events == nil {
					r.RateLimits.Events = map[string]string{}
				}
				r.RateLimits.Events[ev] = v
			}
			if err != nil {
				return fmt.Errorf("route %d: %s: %v", i, k, err)
			}
		}
		out = append(out, r)
	}
	*rs = out
	return nil
}

func newLimitsConfig() LimitsConfig {
	l := LimitsConfig{Config: ratelimit.NewConfig(), Limits: admission.NewLimits()}
	l.JoinsPerSecond, l.JoinBurst = DefaultJoinsPerSecond, DefaultJoinBurst
	l.Classes = ratelimit.Classes{ratelimit.DefaultClass: {PerSecond: DefaultEventsPerSecond, Burst: DefaultEventBurst}}
	l.HeartbeatsPerSecond, l.HeartbeatBurst = DefaultHeartbeatsPerSecond, DefaultHeartbeatBurst
	l.IPHandshakesPerSecond, l.IPHandshakeBurst = DefaultIPHandshakesPerSecond, DefaultIPHandshakeBurst
	return l
}

func newAuthConfig() AuthConfig {
	a := auth.NewConfig()
	// Anonymous sockets are allowed unless the operator turns auth on: a
	// fresh install has no key to verify with.
	a.Required = false
	return a
}

// admissionConfig is the admission controller's Config: its two sections.
func (c Config) admissionConfig() admission.Config {
	return admission.Config{Origins: c.Origins, Limits: c.Limits.Limits}
}

// channelsConfig is the channels server's Config: the channels section
// plus the top-level keys it shares (node_id, max_replay, replay_bytes,
// and write_queue_max_bytes for the size of presence_state pieces).
func (c Config) channelsConfig() channels.Config {
	cc := c.Channels
	cc.NodeID = c.NodeID
	if c.MaxReplay > 0 {
		cc.MaxReplay = c.MaxReplay
	}
	cc.ReplayBytes = c.WriteQueueMaxBytes / 2
	cc.PresencePieceBytes = presenceDiffBytes(c.WriteQueueMaxBytes)
	if c.ReplayBytes > 0 {
		cc.ReplayBytes = c.ReplayBytes
	}
	return cc
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
		WriteStallTimeout:  DefaultWriteStallTimeout,
		DrainTimeout:       DefaultDrainTimeout,
		Auth:               newAuthConfig(),
		Limits:             newLimitsConfig(),
		Presence:           presence.NewConfig(),
		Channels:           channels.NewConfig(),
		LongPoll:           newLongPollConfig(),
		LogFormat:          "json",
		LogLevel:           "info",
	}
}

// ErrConfig is wrapped by every configuration error; the message names the
// offending key, e.g. "config: routes[1].backend: unknown backend".
var ErrConfig = configload.ErrConfig

func keyErr(key string, format string, args ...any) error {
	return configload.KeyErr(key, format, args...)
}

// apiSecretPlaceholder marks the example api_secret of the deploy
// manifests, long enough to pass the length check.
const apiSecretPlaceholder = "REPLACE"

// maxSaneDuration keeps durations from overflowing deadline arithmetic.
const maxSaneDuration = 24 * time.Hour

// Validate checks every field and names the first bad key. A config it
// accepts is one Start can build (every backend spec is parsed by its
// engine, the broker's config by its engine's Validate); what it cannot
// know (an inproc: backend not registered, an unreachable Redis or game)
// fails Start, again naming the key.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return keyErr("listen", "%v", err)
	}
	if c.AdminListen != "" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			return keyErr("admin_listen", "%v", err)
		}
	}
	if c.APIListen != "" {
		if _, _, err := net.SplitHostPort(c.APIListen); err != nil {
			return keyErr("api_listen", "%v", err)
		}
	}
	if c.NodeID == "" {
		return keyErr("node_id", "must not be empty")
	}
	if !strings.HasPrefix(c.SocketPath, "/") || strings.ContainsAny(c.SocketPath, "?# ") {
		return keyErr("socket_path", "must be an absolute path, got %q", c.SocketPath)
	}
	switch {
	case c.IdleTimeout < 0 || c.IdleTimeout > maxSaneDuration:
		return keyErr("idle_timeout", "must be between 0s and %v", maxSaneDuration)
	case c.HandshakeTimeout <= 0 || c.HandshakeTimeout > time.Minute:
		return keyErr("handshake_timeout", "must be between 0s (exclusive) and 1m")
	case c.HandshakeWorkers <= 0 || c.HandshakeWorkers > 1<<16:
		return keyErr("handshake_workers", "must be between 1 and 65536")
	case c.MaxMessageSize <= 0 || c.MaxMessageSize > 64<<20:
		return keyErr("max_message_size", "must be between 1 and 67108864 bytes")
	case c.APISecret != "" && len(c.APISecret) < 32:
		return keyErr("api_secret", "must be at least 32 bytes")
	case strings.Contains(c.APISecret, apiSecretPlaceholder):
		return keyErr("api_secret", "is the deploy manifests' placeholder (it contains %q): set a random one, e.g. openssl rand -hex 32", apiSecretPlaceholder)
	case c.WriteQueueMaxBytes <= 0 || c.WriteQueueMaxBytes > 1<<30:
		return keyErr("write_queue_max_bytes", "must be between 1 and 1073741824 bytes")
	case c.OutputBudgetBytes <= 0 || c.OutputBudgetBytes > 1<<40:
		return keyErr("output_budget_bytes", "must be between 1 and 1099511627776 bytes")
	case c.OutputBudgetBytes < int64(c.WriteQueueMaxBytes):
		return keyErr("output_budget_bytes", "must be at least write_queue_max_bytes (%d)", c.WriteQueueMaxBytes)
	case c.Pollers < 0 || c.Pollers > 1024:
		return keyErr("pollers", "must be between 0 and 1024")
	case c.CloseTimeout < 0 || c.CloseTimeout > time.Minute:
		return keyErr("close_timeout", "must be between 0s and 1m")
	case c.WriteStallTimeout != 0 && (c.WriteStallTimeout < time.Second || c.WriteStallTimeout > time.Hour):
		return keyErr("write_stall_timeout", "must be between 1s and 1h (0: the default, 30s)")
	case c.DrainTimeout < 0 || c.DrainTimeout > time.Hour:
		return keyErr("drain_timeout", "must be between 0s and 1h")
	case c.DrainBatch < 0 || c.DrainBatch > MaxDrainBatch:
		return keyErr("drain_batch", "must be between 0 and %d", MaxDrainBatch)
	case c.DrainInterval < 0 || c.DrainInterval >= c.drainTimeout():
		return keyErr("drain_interval", "must be between 0s and drain_timeout (%v)", c.drainTimeout())
	case c.DrainInterval > 0 && c.DrainInterval < time.Millisecond:
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
	if err := c.LongPoll.validate(); err != nil {
		return err
	}
	// Each section's package names its keys relative to the section.
	if err := configload.Section("presence.", c.Presence.Validate(), presence.ErrInvalidConfig); err != nil {
		return err
	}
	if err := configload.Section("channels.", c.channelsConfig().Validate(), channels.ErrBadConfig); err != nil {
		return err
	}
	if err := configload.Section("auth.", c.Auth.Validate(), auth.ErrConfig); err != nil {
		return err
	}
	if c.Auth.MaxTokenBytes > MaxHandshakeBytes {
		return keyErr("auth.max_token_bytes", "must be at most %d (a larger token cannot fit in a request head)", MaxHandshakeBytes)
	}
	if err := configload.Section("", c.Origins.Validate(), admission.ErrConfig); err != nil {
		return err
	}
	if err := configload.Section("limits.", c.Limits.Config.Validate(), ratelimit.ErrConfig); err != nil {
		return err
	}
	if err := configload.Section("limits.", c.Limits.Limits.Validate(), admission.ErrConfig); err != nil {
		return err
	}
	return c.validateRoutes()
}

func (c Config) validateRoutes() error {
	for i, r := range c.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		if r.Topic == "" {
			return keyErr(key+".topic", "must not be empty")
		}
		if j := strings.IndexByte(r.Topic, '*'); j >= 0 && j != len(r.Topic)-1 {
			return keyErr(key+".topic", "a wildcard is only allowed at the end, got %q", r.Topic)
		}
		if err := checkBackend(r.Backend); err != nil {
			return keyErr(key+".backend", "%v", err)
		}
		if r.History < 0 || r.History > pubsub.MaxHistorySize {
			return keyErr(key+".history", "must be between 0 and %d (what a broker keeps per topic)", pubsub.MaxHistorySize)
		}
		if r.LeaveGrace < 0 || r.LeaveGrace > 10*time.Minute {
			return keyErr(key+".leave_grace", "must be between 0s and 10m")
		}
		if err := c.Limits.ValidateRoute(r.RateLimits, key+".rate_limits"); err != nil {
			return configload.Section("", err, ratelimit.ErrConfig)
		}
	}
	return nil
}

// InprocPrefix names a route backend registered with WithBackend.
const InprocPrefix = "inproc:"

// checkBackend accepts what defaultConnect can build: the gateway's own
// specs (demo, inproc:name) and whatever the backends registry accepts,
// parsed by the engine itself. An inproc: name is only known at Start
// (WithBackend).
func checkBackend(spec string) error {
	if spec == specDemo {
		return nil
	}
	if name, ok := strings.CutPrefix(spec, InprocPrefix); ok {
		if name == "" {
			return fmt.Errorf("inproc: needs a name (inproc:NAME, registered with WithBackend)")
		}
		return nil
	}
	err := backends.CheckSpec(spec)
	if errors.Is(err, backends.ErrUnknownBackend) {
		return fmt.Errorf("unknown backend %q (echo, bench, demo, grpc://host:port, grpcs://host:port, http(s)://url, inproc:name)", spec)
	}
	return err
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

func (c Config) writeStallTimeout() time.Duration {
	if c.WriteStallTimeout == 0 {
		return DefaultWriteStallTimeout
	}
	return c.WriteStallTimeout
}

func (c Config) closeTimeout() time.Duration {
	if c.CloseTimeout == 0 {
		return DefaultCloseTimeout
	}
	return c.CloseTimeout
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

// configKeys are Config's keys, read from its fields once.
var configKeys = configload.New[Config]()

// EnvName is the environment variable for a key: PHXGATE_ + upper snake
// case, with nesting dots as underscores (auth.required → PHXGATE_AUTH_REQUIRED).
func EnvName(key string) string { return configload.EnvName(key) }

// LoadConfig builds a Config from defaults, then the YAML file named by
// --config, then PHXGATE_* environment variables, then flags (flag > env >
// file > default), and validates it. getenv is os.Getenv in production.
func LoadConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	cfg := NewConfig()
	fs := flag.NewFlagSet("phxgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "YAML configuration file")
	flagVals := map[string]string{}
	configKeys.Flags(fs, flagVals)
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
		if err := configKeys.ApplyYAML(&cfg, data); err != nil {
			return Config{}, err
		}
	}
	if err := configKeys.ApplyEnv(&cfg, getenv); err != nil {
		return Config{}, err
	}
	if err := configKeys.ApplyFlags(&cfg, flagVals); err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// ParseYAML applies a YAML document to the defaults and validates it.
func ParseYAML(data []byte) (Config, error) {
	cfg := NewConfig()
	if err := configKeys.ApplyYAML(&cfg, data); err != nil {
		return Config{}, err
	}
	return cfg, cfg.Validate()
}
