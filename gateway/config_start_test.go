package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/pubsub/redistest"
)

// TestValidateAgreesWithStart: every config Validate accepts is one Start
// builds (each backend spec form, each broker engine, the new sections),
// and every config it refuses is refused by ParseYAML naming the key,
// before Start would open anything.
func TestValidateAgreesWithStart(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	cluster := redistest.StartCluster(t, 3)
	t.Setenv("PHXGATE_TEST_HOOK_SECRET", strings.Repeat("k", 32))
	accepted := []struct {
		name string
		yaml string
	}{
		{"memory engine", "max_topics: 10\nhistory_ttl: 1m\n"},
		{"redis engine", fmt.Sprintf("redis_url: %s\nredis_shards: 2\nredis_prefix: t1\n", rs.URL())},
		{"redis cluster engine", fmt.Sprintf("redis_cluster_addrs: [%s]\nredis_prefix: t2\n", strings.Join(cluster.Addrs(), ", "))},
		{"built-in backends", "routes:\n  - {topic: 'a:*', backend: echo}\n  - {topic: 'b:*', backend: bench}\n  - {topic: 'c:*', backend: demo, presence: true}\n"},
		{"grpc", "routes:\n  - {topic: 'g:*', backend: 'grpc://127.0.0.1:1?timeout=1s&retries=1'}\n"},
		{"grpcs", "routes:\n  - {topic: 'g:*', backend: 'grpcs://127.0.0.1:1'}\n"},
		{"grpc scheme in capitals", "routes:\n  - {topic: 'g:*', backend: 'GRPC://127.0.0.1:1'}\n"},
		{"unsigned webhook", "routes:\n  - {topic: 'w:*', backend: 'http://127.0.0.1:1/hook?unsigned=true'}\n"},
		{"signed webhook", "routes:\n  - {topic: 'w:*', backend: 'https://127.0.0.1:1/hook?secret_env=PHXGATE_TEST_HOOK_SECRET'}\n"},
		{"inproc", "routes:\n  - {topic: 'i:*', backend: 'inproc:mine'}\n"},
		{"channels section", "channels:\n  max_channels: 5\n  workers: 3\n  queue_size: 10\n  channel_queue: 4\n  channel_queue_hard: 8\n  call_timeout: 2s\n"},
		{"presence stream budget", "channels:\n  presence_stream_bytes: 1048576\n  presence_stream_wait: 0s\n"},
		{"new limits and presence keys", "limits:\n  ip_idle_ttl: 1m\n  max_tracked_ips: 10\n  ipv6_prefix_bits: 56\npresence:\n  timeout: 1s\nauth:\n  jwks_max_bytes: 4096\n"},
	}
	for _, tt := range accepted {
		t.Run("accepted/"+tt.name, func(t *testing.T) {
			cfg, err := ParseYAML([]byte(tt.yaml))
			if err != nil {
				t.Fatalf("ParseYAML: %v", err)
			}
			cfg.Listen, cfg.AdminListen, cfg.APIListen = "127.0.0.1:0", "", ""
			s, err := Start(context.Background(), cfg, WithLogger(discardLogger()), WithBackend("mine", backends.Echo{}))
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := s.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
	}
	refused := []struct {
		name string
		yaml string
		want string
	}{
		{"grpc without a host", "routes:\n  - {topic: 'g:*', backend: 'grpc://'}\n", "config: routes[0].backend: "},
		{"grpc bad option", "routes:\n  - {topic: 'g:*', backend: 'grpc://h:1?timeout=forever'}\n", "config: routes[0].backend: backends: bad backend spec: "},
		{"webhook without a secret", "routes:\n  - {topic: 'w:*', backend: 'https://h/hook'}\n", "config: routes[0].backend: backends: bad backend spec: "},
		{"webhook secret unset", "routes:\n  - {topic: 'w:*', backend: 'https://h/hook?secret_env=PHXGATE_TEST_NO_SUCH_VAR'}\n", "config: routes[0].backend: "},
		{"unknown backend", "routes:\n  - {topic: 'x:*', backend: ech0}\n", `config: routes[0].backend: unknown backend "ech0"`},
		{"inproc without a name", "routes:\n  - {topic: 'x:*', backend: 'inproc:'}\n", "config: routes[0].backend: "},
		{"redis shards", "redis_url: redis://127.0.0.1:1\nredis_shards: 300\n", "config: redis_shards: "},
		{"redis url password form", "redis_url: 'redis://127.0.0.1:1/0?dial_timeout=x'\n", "config: redis_url: "},
		{"memory topics", "max_topics: -1\n", "config: max_topics: "},
		{"channels workers", "channels:\n  workers: 0\n", "config: channels.workers: "},
		{"presence stream budget zero", "channels:\n  presence_stream_bytes: 0\n", "config: channels.presence_stream_bytes: "},
		{"presence stream wait negative", "channels:\n  presence_stream_wait: -1s\n", "config: channels.presence_stream_wait: "},
		{"channels hard queue", "channels:\n  channel_queue: 10\n  channel_queue_hard: 5\n", "config: channels.channel_queue_hard: "},
		{"channels unknown key", "channels:\n  worker: 3\n", "config: channels.worker: unknown key (line 2)"},
		{"limits ip idle ttl", "limits:\n  ip_idle_ttl: 0s\n", "config: limits.ip_idle_ttl: "},
		{"presence timeout", "presence:\n  timeout: 2m\n", "config: presence.timeout: "},
		{"api listen", "api_listen: nope\n", "config: api_listen: "},
	}
	for _, tt := range refused {
		t.Run("refused/"+tt.name, func(t *testing.T) {
			_, err := ParseYAML([]byte(tt.yaml))
			if err == nil || !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("ParseYAML err = %v, want prefix %q", err, tt.want)
			}
		})
	}
}
