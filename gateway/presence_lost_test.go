package gateway

import (
	"context"
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

// The default presence bounds make a state a full room's joiner can be
// sent; bounds that do not are refused at start, naming the key. A
// configuration without a presence route is not held to them.
func TestConfigPresenceStateFitsTheWriteQueue(t *testing.T) {
	const route = "routes:\n  - topic: 'room:*'\n    backend: echo\n    presence: true\n"
	for _, yaml := range []string{
		route,
		route + "presence:\n  max_per_topic: 4000\n  max_meta_bytes: 64\nwrite_queue_max_bytes: 2097152\n",
		"presence:\n  max_per_topic: 10000\n  max_meta_bytes: 1024\nroutes:\n  - topic: 'room:*'\n    backend: echo\n",
	} {
		cfg, err := ParseYAML([]byte(yaml))
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Errorf("%q: %v", yaml, err)
		}
	}
	expectConfigKeyErrors(t, []configKeyCase{
		{route + "presence:\n  max_per_topic: 10000\n", "presence.max_per_topic"},
		{route + "presence:\n  max_meta_bytes: 1024\n", "presence.max_meta_bytes"},
		{route + "write_queue_max_bytes: 65536\noutput_budget_bytes: 1048576\n", "write_queue_max_bytes"},
	})
}
