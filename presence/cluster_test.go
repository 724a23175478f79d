package presence

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/phxgate/phxgate/pubsub/redistest"
)

// On Redis Cluster a topic's keys share one slot whatever its text: a
// topic starting with "}" (or empty, or holding braces; a bare "*"
// route allows them) works like any other.
func TestRedisClusterStoreBraceTopics(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { c.Close() })
	s := redisStore(t, c, "n1")
	if err := s.Start(func(string, []Presence) {}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, topic := range []string{"}x", "", "{a}b", "x{", "{}"} {
		storeContractOn(t, s, topic)
	}

	// A node whose Add failed on such a topic could not start again:
	// its earlier life's reap failed on the topic left on its list.
	ctx := context.Background()
	a := redisStore(t, c, "n2")
	if err := a.Start(func(string, []Presence) {}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Add(ctx, "}y", "t1", pres("p", "r1"), raceLimits); err != nil {
		t.Fatalf("add on }y: %v", err)
	}
	a.Close() // not drained: the presence stays for the next life
	var leaves leaveLog
	a2 := redisStore(t, c, "n2")
	if err := a2.Start(leaves.on, nil); err != nil {
		t.Fatalf("restart of n2: %v", err)
	}
	t.Cleanup(func() { a2.Close() })
	if got := leaves.get("}y"); len(got) != 1 || got[0] != "p/r1" {
		t.Fatalf("leaves of the earlier life: %v", got)
	}
	if ps, err := a2.List(ctx, "}y"); err != nil || len(ps) != 0 {
		t.Fatalf("}y after the restart: %v, %v", refsOf(ps), err)
	}
}

// A topic whose reap fails is logged and skipped: the node still starts,
// the other topics' leaves go out, and the failed topic stays listed for
// the next reap.
func TestRedisStartSkipsATopicItCannotReap(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	a := redisStore(t, c, "n1")
	if err := a.Start(func(string, []Presence) {}, nil); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"room:1", "room:2"} {
		if err := a.Add(ctx, topic, "t1", pres("p", topic), raceLimits); err != nil {
			t.Fatal(err)
		}
	}
	a.Close() // not drained
	var h losingHook
	h.lose(reapScript, 1, false)
	c.AddHook(&h)
	var leaves leaveLog
	a2 := redisStore(t, c, "n1")
	if err := a2.Start(leaves.on, nil); err != nil {
		t.Fatalf("start with one topic failing its reap: %v", err)
	}
	a2.Close()
	got := len(leaves.get("room:1")) + len(leaves.get("room:2"))
	if got != 1 {
		t.Fatalf("leaves %v %v, want one topic's", leaves.get("room:1"), leaves.get("room:2"))
	}
	if n := c.SCard(ctx, a2.topicsKey("n1")).Val(); n != 1 {
		t.Fatalf("%d topics listed after the start, want the failed one", n)
	}
	a3 := redisStore(t, c, "n1")
	if err := a3.Start(leaves.on, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a3.Close() })
	if got := len(leaves.get("room:1")) + len(leaves.get("room:2")); got != 2 {
		t.Fatalf("after the next start, leaves %v %v", leaves.get("room:1"), leaves.get("room:2"))
	}
}
