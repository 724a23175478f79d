package gateway

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/channels/ratelimit"
)

func TestConfigErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{name: "unknown key", yaml: "listn: ':4000'\n", want: "config: listn: unknown key"},
		{name: "unknown nested key", yaml: "auth:\n  requird: true\n", want: "config: auth.requird: unknown key"},
		{name: "bad duration", yaml: "idle_timeout: abc\n", want: "config: idle_timeout: "},
		{name: "negative duration", yaml: "idle_timeout: -1s\n", want: "config: idle_timeout: "},
		{name: "bad int", yaml: "max_message_size: lots\n", want: "config: max_message_size: "},
		{name: "zero message size", yaml: "max_message_size: 0\n", want: "config: max_message_size: "},
		{name: "bad bool", yaml: "auth:\n  required: maybe\n", want: "config: auth.required: "},
		{name: "bad listen", yaml: "listen: nope\n", want: "config: listen: "},
		{name: "redis url scheme", yaml: "redis_url: http://127.0.0.1:6379\n", want: "config: redis_url: "},
		{name: "redis url db", yaml: "redis_url: redis://127.0.0.1:6379/x\n", want: "config: redis_url: "},
		{name: "cluster addr", yaml: "redis_cluster_addrs: [127.0.0.1]\n", want: "config: redis_cluster_addrs[0]: "},
		{name: "brace in redis_prefix", yaml: "redis_prefix: \"app{1}\"\n", want: "config: redis_prefix: must not contain"},
		{name: "history over the engines", yaml: "routes:\n  - topic: 'room:*'\n    backend: echo\n    history: 100001\n", want: "config: routes[0].history: "},
		{name: "replay over the queue", yaml: "write_queue_max_bytes: 1000\nreplay_bytes: 1001\n", want: "config: replay_bytes: "},
		{name: "max replay", yaml: "max_replay: -1\n", want: "config: max_replay: "},
		{name: "log format", yaml: "log_format: xml\n", want: "config: log_format: "},
		{name: "log level", yaml: "log_level: loud\n", want: "config: log_level: "},
		{name: "empty topic", yaml: "routes:\n  - backend: echo\n", want: "config: routes[0].topic: "},
		{name: "unknown backend", yaml: "routes:\n  - topic: 'room:*'\n    backend: echo\n  - topic: 'x:*'\n    backend: nope\n", want: "config: routes[1].backend: "},
		{name: "unknown route key", yaml: "routes:\n  - topic: 'room:*'\n    backend: echo\n    histroy: 3\n", want: "config: routes[0].histroy: unknown key"},
		{name: "socket path", yaml: "socket_path: socket\n", want: "config: socket_path: "},
		{name: "handshake timeout zero", yaml: "handshake_timeout: 0s\n", want: "config: handshake_timeout: "},
		{name: "negative drain batch", yaml: "drain_batch: -1\n", want: "config: drain_batch: "},
		{name: "huge drain batch", yaml: "drain_batch: 100000000\n", want: "config: drain_batch: "},
		{name: "drain interval past the window", yaml: "drain_timeout: 2s\ndrain_interval: 2s\n", want: "config: drain_interval: "},
		{name: "drain interval under 1ms", yaml: "drain_interval: 10us\n", want: "config: drain_interval: "},
		{name: "bad drain interval", yaml: "drain_interval: soon\n", want: "config: drain_interval: "},
		{name: "ready check too often", yaml: "ready_check_interval: 10ms\n", want: "config: ready_check_interval: "},
		{name: "ready check too rare", yaml: "ready_check_interval: 1h\n", want: "config: ready_check_interval: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseYAML([]byte(tt.yaml))
			if err == nil || !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("err = %v, want prefix %q", err, tt.want)
			}
		})
	}
}

func TestConfigDeployFileIsValid(t *testing.T) {
	b, err := os.ReadFile("../deploy/phxgate.yaml")
	if err != nil {
		t.Skipf("deploy file: %v", err)
	}
	cfg, err := ParseYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":4000" || cfg.AdminListen != "127.0.0.1:4001" || cfg.Auth.Required || len(cfg.Routes) != 2 ||
		!reflect.DeepEqual(cfg.Routes[0], RouteConfig{Topic: "room:*", Backend: "echo", History: 100}) ||
		!reflect.DeepEqual(cfg.Routes[1], RouteConfig{Topic: "bench:*", Backend: "bench"}) {
		t.Fatalf("deploy config = %+v", cfg)
	}
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	yaml := "listen: '127.0.0.1:1111'\nidle_timeout: 10s\nhandshake_timeout: 3s\nnode_id: file\nauth:\n  required: true\nroutes:\n  - topic: 'room:*'\n    backend: echo\n    presence: true\n    history: 7\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"PHXGATE_IDLE_TIMEOUT":  "20s",
		"PHXGATE_NODE_ID":       "env",
		"PHXGATE_AUTH_REQUIRED": "false",
		"PHXGATE_CHECK_ORIGIN":  "https://a.example, https://b.example",
	}
	cfg, err := LoadConfig([]string{"--config", file, "--node_id", "flag", "--max_message_size", "1000"},
		func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name string
		got  any
		want any
	}{
		{name: "file over default", got: cfg.Listen, want: "127.0.0.1:1111"},
		{name: "file handshake", got: cfg.HandshakeTimeout, want: 3 * time.Second},
		{name: "env over file", got: cfg.IdleTimeout, want: 20 * time.Second},
		{name: "flag over env", got: cfg.NodeID, want: "flag"},
		{name: "flag over default", got: cfg.MaxMessageSize, want: 1000},
		{name: "nested env", got: cfg.Auth.Required, want: false},
		{name: "list env", got: strings.Join(cfg.CheckOrigin, "|"), want: "https://a.example|https://b.example"},
		{name: "default kept", got: cfg.SocketPath, want: "/socket"},
		{name: "routes from file", got: cfg.Routes[0], want: RouteConfig{Topic: "room:*", Backend: "echo", Presence: true, History: 7}},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !reflect.DeepEqual(c.got, c.want) {
				t.Errorf("got %v, want %v", c.got, c.want)
			}
		})
	}
}

func TestConfigFlagsAndEnvErrorsNameTheKey(t *testing.T) {
	_, err := LoadConfig([]string{"--idle_timeout", "abc"}, func(string) string { return "" }, io.Discard)
	if err == nil || !strings.HasPrefix(err.Error(), "config: idle_timeout:") {
		t.Fatalf("flag err = %v", err)
	}
	_, err = LoadConfig(nil, func(k string) string {
		if k == "PHXGATE_HANDSHAKE_WORKERS" {
			return "many"
		}
		return ""
	}, io.Discard)
	if err == nil || !strings.HasPrefix(err.Error(), "config: handshake_workers:") {
		t.Fatalf("env err = %v", err)
	}
	cfg, err := LoadConfig([]string{"--routes", "room:*=echo,history=5,presence;bench:*=bench", "--auth.required", "--auth.hs256_secret", strings.Repeat("s", 32)}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Routes) != 2 || !reflect.DeepEqual(cfg.Routes[0], RouteConfig{Topic: "room:*", Backend: "echo", Presence: true, History: 5}) || !cfg.Auth.Required {
		t.Fatalf("cfg = %+v", cfg)
	}
}

func TestEnvName(t *testing.T) {
	for key, want := range map[string]string{
		"redis_url":         "PHXGATE_REDIS_URL",
		"auth.required":     "PHXGATE_AUTH_REQUIRED",
		"auth.hs256_secret": "PHXGATE_AUTH_HS256_SECRET",
	} {
		if got := EnvName(key); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestNewConfigIsValid(t *testing.T) {
	if err := NewConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestAuthAndLimitsConfigErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{name: "required without a key", yaml: "auth:\n  required: true\n", want: "config: auth.required: "},
		{name: "short secret", yaml: "auth:\n  hs256_secret: short\n", want: "config: auth.hs256_secret: "},
		{name: "negative leeway", yaml: "auth:\n  leeway: -1s\n", want: "config: auth.leeway: "},
		{name: "plain http jwks", yaml: "auth:\n  jwks_url: http://id.example/jwks\n", want: "config: auth.jwks_url: "},
		{name: "token limit over the head", yaml: "auth:\n  max_token_bytes: 1000000\n", want: "config: auth.max_token_bytes: "},
		{name: "bad origin", yaml: "check_origin: ['https://x.example/path']\n", want: "config: check_origin[0]: "},
		{name: "bad proxy", yaml: "trusted_proxies: [nope]\n", want: "config: trusted_proxies[0]: "},
		{name: "zero joins", yaml: "limits:\n  joins_per_second: 0\n", want: "config: limits.joins_per_second: "},
		{name: "zero join burst", yaml: "limits:\n  join_burst: 0\n", want: "config: limits.join_burst: "},
		{name: "zero class rate", yaml: "limits:\n  classes:\n    chat:\n      per_second: 0\n      burst: 3\n", want: "config: limits.classes.chat.per_second: "},
		{name: "unknown class key", yaml: "limits:\n  classes:\n    chat:\n      rate: 3\n", want: "config: limits.classes.chat.rate: unknown key"},
		{name: "unknown default class", yaml: "limits:\n  default_class: nope\n", want: "config: limits.default_class: "},
		{name: "zero heartbeats", yaml: "limits:\n  heartbeats_per_second: 0\n", want: "config: limits.heartbeats_per_second: "},
		{name: "zero abuse window", yaml: "limits:\n  abuse_window: 0s\n", want: "config: limits.abuse_window: "},
		{name: "zero entries", yaml: "limits:\n  max_entries: 0\n", want: "config: limits.max_entries: "},
		{name: "short idle ttl", yaml: "limits:\n  idle_ttl: 1s\n", want: "config: limits.idle_ttl: "},
		{name: "zero handshakes", yaml: "limits:\n  ip_handshakes_per_second: 0\n", want: "config: limits.ip_handshakes_per_second: "},
		{name: "zero handshake burst", yaml: "limits:\n  ip_handshake_burst: 0\n", want: "config: limits.ip_handshake_burst: "},
		{name: "zero ip handshakes in progress", yaml: "limits:\n  ip_max_handshakes: 0\n", want: "config: limits.ip_max_handshakes: "},
		{name: "zero ip conns", yaml: "limits:\n  ip_max_conns: 0\n", want: "config: limits.ip_max_conns: "},
		{name: "zero player conns", yaml: "limits:\n  player_max_conns: 0\n", want: "config: limits.player_max_conns: "},
		{name: "zero conns", yaml: "limits:\n  max_conns: 0\n", want: "config: limits.max_conns: "},
		{name: "unknown limits key", yaml: "limits:\n  joins: 3\n", want: "config: limits.joins: unknown key"},
		{name: "route class unknown", yaml: "routes:\n  - topic: 'room:*'\n    backend: echo\n    rate_limits:\n      default_class: nope\n", want: "config: routes[0].rate_limits.default_class: "},
		{name: "route event class unknown", yaml: "routes:\n  - topic: 'room:*'\n    backend: echo\n    rate_limits:\n      events:\n        move: nope\n", want: "config: routes[0].rate_limits.events.move: "},
		{name: "route rate key unknown", yaml: "routes:\n  - topic: 'room:*'\n    backend: echo\n    rate_limits:\n      classes: {}\n", want: "config: routes[0].rate_limits.classes: unknown key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseYAML([]byte(tt.yaml))
			if err == nil || !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("err = %v, want prefix %q", err, tt.want)
			}
		})
	}
}

func TestAuthAndLimitsConfigSources(t *testing.T) {
	yaml := `
check_origin: ["https://app.example.com"]
require_origin: true
trusted_proxies: ["10.0.0.0/8"]
auth:
  required: true
  hs256_secret: "0123456789abcdef0123456789abcdef"
  leeway: 5s
  audience: game
  issuer: https://id.example
limits:
  joins_per_second: 2
  classes:
    chat: {per_second: 1, burst: 3}
  abuse_window: 4s
  abuse_quiet: 1s
routes:
  - topic: "room:*"
    backend: echo
    rate_limits:
      default_class: chat
      events:
        move: default
`
	cfg, err := ParseYAML([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Auth.Required || cfg.Auth.Leeway != 5*time.Second || cfg.Auth.Audience != "game" || !cfg.RequireOrigin ||
		cfg.TrustedProxies[0] != "10.0.0.0/8" || cfg.Limits.JoinsPerSecond != 2 || cfg.Limits.AbuseWindow != 4*time.Second {
		t.Fatalf("cfg = %+v", cfg)
	}
	if len(cfg.Limits.Classes) != 2 || cfg.Limits.Classes["chat"].Burst != 3 || cfg.Limits.Classes["default"].Burst != DefaultEventBurst {
		t.Fatalf("classes = %v, want chat added to the default", cfg.Limits.Classes)
	}
	if r := cfg.Routes[0].RateLimits; r.DefaultClass != "chat" || r.ClassOf("move") != "default" || r.ClassOf("say") != "chat" {
		t.Fatalf("route rate limits = %+v", r)
	}
	if NewConfig().Limits.Classes["chat"].Burst != 0 {
		t.Fatal("the defaults' class map was modified")
	}

	env := map[string]string{
		"PHXGATE_LIMITS_CLASSES":           "chat=2:4",
		"PHXGATE_LIMITS_IP_MAX_CONNS":      "7",
		"PHXGATE_LIMITS_IP_MAX_HANDSHAKES": "3",
		"PHXGATE_AUTH_PUBLIC_KEY_FILES":    "",
		"PHXGATE_TRUSTED_PROXIES":          "10.1.0.0/16, 192.0.2.1",
	}
	cfg, err = LoadConfig([]string{"--limits.joins_per_second", "1.5", "--limits.ip_max_handshakes", "5", "--routes", "room:*=echo,class=chat,event.move=default"},
		func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.Classes["chat"] != (ratelimit.ClassLimit{PerSecond: 2, Burst: 4}) || cfg.Limits.IPMaxConns != 7 ||
		cfg.Limits.IPMaxHandshakes != 5 || cfg.Limits.JoinsPerSecond != 1.5 || len(cfg.TrustedProxies) != 2 ||
		cfg.Routes[0].RateLimits.ClassOf("move") != "default" || cfg.Routes[0].RateLimits.ClassOf("x") != "chat" {
		t.Fatalf("cfg = %+v", cfg)
	}
	_, err = LoadConfig([]string{"--limits.classes", "chat"}, func(string) string { return "" }, io.Discard)
	if err == nil || !strings.HasPrefix(err.Error(), "config: limits.classes:") {
		t.Fatalf("bad classes flag: %v", err)
	}
}
