package gateway

import (
	"context"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/phxgate/phxgate/pubsub/redistest"
)

// nodeUser makes a Redis ACL user for one node, so a test can take away
// that node's right to PUBLISH (its presence diffs and control events are
// refused by the real server) while its presence store keeps working.
// It returns the node's redis_url and a function that grants (true) or
// revokes (false) PUBLISH.
func nodeUser(t *testing.T, rs *redistest.Server, name string) (string, func(allow bool)) {
	t.Helper()
	admin := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	t.Cleanup(func() { _ = admin.Close() })
	ctx := context.Background()
	if err := admin.Do(ctx, "ACL", "SETUSER", name, "on", ">secret-"+name, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	set := func(allow bool) {
		t.Helper()
		rule := "-publish"
		if allow {
			rule = "+publish"
		}
		if err := admin.Do(ctx, "ACL", "SETUSER", name, rule).Err(); err != nil {
			t.Fatal(err)
		}
	}
	u := url.URL{Scheme: "redis", User: url.UserPassword(name, "secret-"+name), Host: rs.Addr(), Path: "/0"}
	return u.String(), set
}

// A diff the broker refuses reaches the other nodes' clients once the
// broker takes it again: node A cannot publish while alice leaves and bob
// joins there; when it can again, the watcher on node B sees alice leave
// and bob join, in that order (before, only node A's own subscribers were
// sent the state again, and B's kept a zombie alice and missed bob).
func TestPresenceRefusedDiffReachesOtherNodes(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	urlA, allowA := nodeUser(t, rs, "node-a")
	mod := func(c *Config) {
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo", Presence: true}}
		c.Presence.Timeout = 300 * time.Millisecond
	}
	a := redisNode(t, urlA, func(c *Config) { mod(c); c.NodeID = "node-a" })
	b := redisNode(t, rs.URL(), func(c *Config) { mod(c); c.NodeID = "node-b" })

	watcher := rawSocket(t, b, hsToken(t, claims("watcher")), "room:l")
	watcher.readEvent("presence_state")
	alice := rawSocket(t, a, hsToken(t, claims("alice")), "room:l")
	alice.readEvent("presence_state")
	watcher.readDiffWith(`"joins":{"alice"`)

	allowA(false)
	alice.sendText(`["1","2","room:l","phx_leave",{}]`)
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, a.opts.Registry, "phxgate_presence_diff_retries_total", "") >= 1
	}, "node A's diff to be refused")
	bob := rawSocket(t, a, hsToken(t, claims("bob")), "room:l")
	bob.readEvent("presence_state")
	allowA(true)

	d := watcher.readDiffWith(`"alice"`)
	if !strings.HasPrefix(d, `{"joins":{},"leaves":{"alice"`) {
		t.Fatalf("watcher on B: %s, want alice's leave", d)
	}
	if d := watcher.readDiffWith(`"bob"`); !strings.HasPrefix(d, `{"joins":{"bob"`) {
		t.Fatalf("watcher on B: %s, want bob's join", d)
	}
	if n := counterValue(t, a.opts.Registry, "phxgate_presence_diffs_lost_total", ""); n != 0 {
		t.Fatalf("diffs_lost = %v, want 0 (held, then sent)", n)
	}
}

// Presence bounds whose full room makes a presence_state over the node's
// budget for states sent in pieces (channels.presence_stream_bytes) do
// not stop the start (an upgrade keeping its metas must not lose every
// presence): they are a warning logged at start, naming the keys; joins
// past the size are refused at run time (state_too_large). The defaults
// (1 KiB metas, 10,000 per topic, 64 MiB) fit, and log nothing.
func TestConfigPresenceStateBoundIsAWarningAtStart(t *testing.T) {
	const route = "routes:\n  - topic: 'room:*'\n    backend: echo\n    presence: true\n"
	for _, yaml := range []string{
		route,
		route + "presence:\n  max_per_topic: 4000\n  max_meta_bytes: 64\nwrite_queue_max_bytes: 2097152\n",
		route + "presence:\n  max_per_topic: 10000\n  max_meta_bytes: 1024\n",
	} {
		cfg, err := ParseYAML([]byte(yaml))
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Errorf("%q: %v", yaml, err)
		}
	}
	cfg, err := ParseYAML([]byte(route))
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Presence.WithDefaults(); p.MaxMetaBytes != 1024 || p.MaxPerTopic != 10_000 {
		t.Errorf("defaults max_meta_bytes %d, max_per_topic %d; want 1024, 10000", p.MaxMetaBytes, p.MaxPerTopic)
	}
	const warning = "presence: a room full to presence.max_per_topic with metas of presence.max_meta_bytes makes a presence_state over channels.presence_stream_bytes; joins past that size are refused (state_too_large); lower presence.max_per_topic or presence.max_meta_bytes, or raise channels.presence_stream_bytes, to make every room joinable"
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		warn bool
	}{
		{"defaults", func(*Config) {}, false},
		{"a budget below a full room", func(c *Config) { c.Channels.PresenceStreamBytes = 8 << 20 }, true},
		{"no presence route", func(c *Config) { c.Routes[0].Presence = false; c.Channels.PresenceStreamBytes = 8 << 20 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &syncBuffer{}
			prodServer(t, func(c *Config) {
				c.Routes[0].Presence = true
				tc.mod(c)
			}, WithLogger(slog.New(slog.NewJSONHandler(out, nil))))
			line := out.find(t, warning)
			if (line != nil) != tc.warn {
				t.Fatalf("warning logged: %v, want %v", line, tc.warn)
			}
			if line != nil && (line["presence.max_per_topic"] != 10000.0 || line["presence.max_meta_bytes"] != 1024.0) {
				t.Errorf("warning %v does not name the keys' values", line)
			}
		})
	}
}
