package gateway

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults and hard bounds. Every limit has a safe non-zero default.
const (
	// DefaultListen is the client listener (WebSocket and plain HTTP).
	DefaultListen = ":4000"
	// DefaultAdminListen is the ops listener (metrics, health, pprof). It is
	// loopback by default because pprof must not face the internet.
	DefaultAdminListen = "127.0.0.1:4001"
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
)

// Config is the gateway configuration. The zero value is not valid; start
// from NewConfig.
type Config struct {
	// Listen is the client address (host:port; port 0 picks a free port).
	Listen string
	// AdminListen is the admin address; empty disables the admin listener.
	AdminListen string
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
	// Pollers is the number of epoll pollers; 0 means runtime.NumCPU().
	Pollers int
	// CloseTimeout bounds a socket's closing handshake; 0 means
	// DefaultCloseTimeout.
	CloseTimeout time.Duration
	// DrainTimeout bounds the graceful shutdown done by Run; 0 means
	// DefaultDrainTimeout.
	DrainTimeout time.Duration
	// RedisURL selects the Redis Streams broker; empty is the embedded
	// in-memory broker. Not supported yet: must be empty.
	RedisURL string
	// CheckOrigin lists allowed Origin values; empty allows all. Accepted,
	// enforced by the admission layer (not yet).
	CheckOrigin []string
	// Auth configures connect tokens.
	Auth AuthConfig
	// Routes maps topic patterns to backends, in order.
	Routes []RouteConfig
}

// AuthConfig configures connect-token checks (enforced by a later issue).
type AuthConfig struct {
	// Required refuses connects without a valid token.
	Required bool
	// HS256Secret is the shared secret for HS256 tokens; empty means none.
	HS256Secret string
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
		NodeID:             host + "-" + strconv.Itoa(os.Getpid()),
		SocketPath:         DefaultSocketPath,
		IdleTimeout:        DefaultIdleTimeout,
		HandshakeTimeout:   DefaultHandshakeTimeout,
		HandshakeWorkers:   DefaultHandshakeWorkers,
		MaxMessageSize:     DefaultMaxMessageSize,
		WriteQueueMaxBytes: DefaultWriteQueueMaxBytes,
		CloseTimeout:       DefaultCloseTimeout,
		DrainTimeout:       DefaultDrainTimeout,
	}
}

// ErrConfig is wrapped by every configuration error; the message names the
// offending key, e.g. "config: routes[1].backend: unknown backend".
var ErrConfig = errors.New("config")

func keyErr(key string, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, key, fmt.Sprintf(format, args...))
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
	if c.WriteQueueMaxBytes <= 0 || c.WriteQueueMaxBytes > 1<<30 {
		return keyErr("write_queue_max_bytes", "must be between 1 and 1073741824 bytes")
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
	if c.RedisURL != "" {
		return keyErr("redis_url", "the Redis broker is not available in this build; leave it empty for the in-memory broker")
	}
	for i, o := range c.CheckOrigin {
		if o == "" {
			return keyErr(fmt.Sprintf("check_origin[%d]", i), "must not be empty")
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
			return keyErr(fmt.Sprintf("routes[%d].backend", i), "unknown backend %q (echo, bench, demo, grpc://host:port, http(s)://url)", r.Backend)
		}
		if r.History < 0 || r.History > 1<<20 {
			return keyErr(fmt.Sprintf("routes[%d].history", i), "must be between 0 and 1048576")
		}
	}
	return nil
}

func knownBackend(spec string) bool {
	switch spec {
	case "echo", "bench", "demo":
		return true
	}
	for _, p := range []string{"grpc://", "http://", "https://"} {
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

func settings() []setting {
	return []setting{
		strSetting("listen", "client listen address", func(c *Config) *string { return &c.Listen }),
		strSetting("admin_listen", "admin listen address (metrics, health, pprof); empty disables", func(c *Config) *string { return &c.AdminListen }),
		strSetting("node_id", "node id (default hostname-pid)", func(c *Config) *string { return &c.NodeID }),
		strSetting("socket_path", "Phoenix socket path; the WebSocket is at <path>/websocket", func(c *Config) *string { return &c.SocketPath }),
		durSetting("idle_timeout", "close sockets idle this long (0s disables)", func(c *Config) *time.Duration { return &c.IdleTimeout }),
		durSetting("handshake_timeout", "deadline for one HTTP upgrade", func(c *Config) *time.Duration { return &c.HandshakeTimeout }),
		intSetting("handshake_workers", "concurrent handshakes", func(c *Config) *int { return &c.HandshakeWorkers }),
		intSetting("max_message_size", "largest WebSocket message in bytes", func(c *Config) *int { return &c.MaxMessageSize }),
		intSetting("write_queue_max_bytes", "per-socket outbound queue cap in bytes", func(c *Config) *int { return &c.WriteQueueMaxBytes }),
		intSetting("pollers", "epoll pollers (0 = number of CPUs)", func(c *Config) *int { return &c.Pollers }),
		durSetting("close_timeout", "deadline for a socket's closing handshake", func(c *Config) *time.Duration { return &c.CloseTimeout }),
		durSetting("drain_timeout", "graceful shutdown bound; 1012 closes are spread over its first half", func(c *Config) *time.Duration { return &c.DrainTimeout }),
		strSetting("redis_url", "Redis URL (empty: in-memory broker)", func(c *Config) *string { return &c.RedisURL }),
		{
			key: "check_origin", usage: "allowed origins, comma-separated (empty allows all)",
			str: func(c *Config, s string) error {
				c.CheckOrigin = nil
				for o := range strings.SplitSeq(s, ",") {
					if o = strings.TrimSpace(o); o != "" {
						c.CheckOrigin = append(c.CheckOrigin, o)
					}
				}
				return nil
			},
			node: func(c *Config, n *yaml.Node) error { return n.Decode(&c.CheckOrigin) },
		},
		boolSetting("auth.required", "refuse connects without a valid token", func(c *Config) *bool { return &c.Auth.Required }),
		strSetting("auth.hs256_secret", "HS256 secret for connect tokens", func(c *Config) *string { return &c.Auth.HS256Secret }),
		{
			key: "routes", usage: `routes as "pattern=backend[,presence][,history=N];..."`,
			str:  func(c *Config, s string) error { return parseRoutesFlag(c, s) },
			node: decodeRoutes,
		},
	}
}

// parseRoutesFlag reads the compact flag/env form of routes, e.g.
// "room:*=echo,history=100;bench:*=bench".
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
			default:
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
			if key == "auth" && v.Kind == yaml.MappingNode {
				if err := walk("auth.", v); err != nil {
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
