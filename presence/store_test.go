package presence

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/phxgate/phxgate/pubsub/redistest"
)

var testLimits = Limits{MaxMetasPerKey: 2, MaxPerTopic: 3}

func pres(key, ref string) Presence {
	return Presence{Key: key, Ref: ref, Meta: withRefs(ref, "", []byte(`"k":"`+key+`"`))}
}

func refsOf(ps []Presence) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Key + "/" + p.Ref
	}
	return out
}

// storeContract is what every Store does: add within limits, list in join
// order, remove by tag, update every meta of a key.
func storeContract(t *testing.T, s Store) { storeContractOn(t, s, "room:"+t.Name()) }

func storeContractOn(t *testing.T, s Store, topic string) {
	t.Helper()
	ctx := context.Background()
	for i, tc := range []struct {
		tag, key, ref, refusal string
	}{
		{"t1", "a", "r1", ""},
		{"t2", "a", "r2", ""},
		{"t3", "a", "r3", ReasonTooManyMetas},
		{"t4", "b", "r4", ""},
		{"t5", "c", "r5", ReasonTooMany},
	} {
		err := s.Add(ctx, topic, tc.tag, pres(tc.key, tc.ref), testLimits)
		if RefusalReason(err) != tc.refusal || (tc.refusal == "" && err != nil) {
			t.Fatalf("add %d: %v, want refusal %q", i, err, tc.refusal)
		}
		time.Sleep(time.Millisecond) // distinct arrival times for the order
	}
	ps, err := s.List(ctx, topic)
	if err != nil || !slices.Equal(refsOf(ps), []string{"a/r1", "a/r2", "b/r4"}) {
		t.Fatalf("list %v, %v", refsOf(ps), err)
	}
	p, ok, err := s.Remove(ctx, topic, "t4")
	if err != nil || !ok || p.Ref != "r4" || string(p.Meta) != string(pres("b", "r4").Meta) {
		t.Fatalf("remove t4: %+v %v %v", p, ok, err)
	}
	if _, ok, err := s.Remove(ctx, topic, "t4"); ok || err != nil {
		t.Fatalf("second remove: %v %v", ok, err)
	}
	// Room again for a third key.
	if err := s.Add(ctx, topic, "t6", pres("c", "r6"), testLimits); err != nil {
		t.Fatal(err)
	}
	left, joined, err := s.Update(ctx, topic, "a", []byte(`"s":1`), []string{"n1", "n2", "n3"}, nil)
	if err != nil || len(left) != 2 || len(joined) != 2 {
		t.Fatalf("update: %v %v %v", refsOf(left), refsOf(joined), err)
	}
	for i := range joined {
		want := `{"s":1,"phx_ref":"` + joined[i].Ref + `","phx_ref_prev":"` + left[i].Ref + `"}`
		if string(joined[i].Meta) != want || joined[i].Key != "a" {
			t.Fatalf("updated %s, want %s", joined[i].Meta, want)
		}
	}
	ps, _ = s.List(ctx, topic)
	if got := refsOf(ps); len(got) != 3 || got[2] != "c/r6" {
		t.Fatalf("list after update %v", got)
	}
	// Limited to tags: only those presences change.
	if left, joined, err := s.Update(ctx, topic, "a", []byte(`"s":2`), []string{"m1", "m2"}, []string{"t2", "nope"}); err != nil || len(left) != 1 || len(joined) != 1 || joined[0].Ref != "m1" {
		t.Fatalf("update of tag t2 only: %v %v %v", refsOf(left), refsOf(joined), err)
	}
	if _, joined, err := s.Update(ctx, topic, "a", []byte(`"s":3`), []string{"x1"}, []string{"t6"}); err != nil || len(joined) != 0 {
		t.Fatalf("update of a tag of another key: %v %v", refsOf(joined), err)
	}
	// Removing an updated presence by its tag gives the current meta.
	p, ok, _ = s.Remove(ctx, topic, "t1")
	if !ok || (p.Ref != "n1" && p.Ref != "n2") {
		t.Fatalf("remove after update: %+v", p)
	}
}

func TestMemoryStore(t *testing.T) { storeContract(t, NewMemory()) }

func redisStore(t *testing.T, c redis.UniversalClient, node string) *Redis {
	t.Helper()
	s, err := NewRedis(RedisConfig{Client: c, NodeID: node, Prefix: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRedisStore(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	s := redisStore(t, c, "n1")
	if err := s.Start(func(string, []Presence) {}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	storeContract(t, s)
}

func TestRedisClusterStore(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { c.Close() })
	s := redisStore(t, c, "n1")
	if err := s.Start(func(string, []Presence) {}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	storeContract(t, s)
}

// leaveLog collects what a store hands to its onLeave.
type leaveLog struct {
	mu     sync.Mutex
	leaves map[string][]string
}

func (l *leaveLog) on(topic string, ps []Presence) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.leaves == nil {
		l.leaves = map[string][]string{}
	}
	l.leaves[topic] = append(l.leaves[topic], refsOf(ps)...)
}

// restored logs the joins of a restore (the presences put back).
func (l *leaveLog) restored(topic string, joins, _ []Presence) { l.on(topic, joins) }

func (l *leaveLog) get(topic string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.leaves[topic]...)
}

// A node that dies without a word (its liveness key expires) has its
// presences removed by another node, which reports their leaves, within
// RedisDeadAfter and a beat; the dead node's own list of topics goes too.
func TestRedisStoreReapsADeadNode(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	dead := redisStore(t, c, "dead")
	if err := dead.Start(func(string, []Presence) {}, nil); err != nil {
		t.Fatal(err)
	}
	alive := redisStore(t, c, "alive")
	var l leaveLog
	if err := alive.Start(l.on, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alive.Close() })
	lim := Limits{MaxMetasPerKey: 5, MaxPerTopic: 100}
	_ = dead.Add(ctx, "room:x", "d1", pres("p", "r1"), lim)
	_ = dead.Add(ctx, "room:y", "d2", pres("q", "r2"), lim)
	_ = alive.Add(ctx, "room:x", "a1", pres("s", "r3"), lim)
	// "kill -9": the loop stops, nothing is cleaned up.
	close(dead.stop)
	<-dead.done
	start := time.Now()
	deadline := start.Add(RedisDeadAfter + 5*time.Second)
	for len(l.get("room:x")) == 0 || len(l.get("room:y")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("dead node's presences not reaped after %v", time.Since(start))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("reaped after %v", time.Since(start).Round(100*time.Millisecond))
	if got := l.get("room:x"); !slices.Equal(got, []string{"p/r1"}) {
		t.Fatalf("room:x leaves %v", got)
	}
	ps, _ := alive.List(ctx, "room:x")
	if got := refsOf(ps); !slices.Equal(got, []string{"s/r3"}) {
		t.Fatalf("room:x after the reap: %v", got)
	}
	if n, _ := c.Exists(ctx, alive.topicsKey("dead")).Result(); n != 0 {
		t.Fatal("the dead node's topic list is still there")
	}
	if ok, _ := c.SIsMember(ctx, alive.nodesKey(), "dead").Result(); ok {
		t.Fatal("the dead node is still listed")
	}
}

// A node restarted under the same id removes what its earlier life left
// at once, and reports those leaves: no ghost, no duplicate.
func TestRedisStoreRestartSameID(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	first := redisStore(t, c, "n")
	if err := first.Start(func(string, []Presence) {}, nil); err != nil {
		t.Fatal(err)
	}
	_ = first.Add(ctx, "room:z", "f1", pres("p", "r1"), Limits{MaxMetasPerKey: 5, MaxPerTopic: 100})
	close(first.stop) // dies
	<-first.done
	second := redisStore(t, c, "n")
	var l leaveLog
	if err := second.Start(l.on, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Close() })
	if got := l.get("room:z"); !slices.Equal(got, []string{"p/r1"}) {
		t.Fatalf("earlier life's leaves %v, want p/r1 at once", got)
	}
	_ = second.Add(ctx, "room:z", "s1", pres("p", "r2"), Limits{MaxMetasPerKey: 5, MaxPerTopic: 100})
	ps, _ := second.List(ctx, "room:z")
	if got := refsOf(ps); !slices.Equal(got, []string{"p/r2"}) {
		t.Fatalf("list %v: want only this life's presence", got)
	}
}

// A node taken for dead while alive (its liveness key gone past
// RedisDeadAfter: a partition, a pause) is reaped by another node; once it
// can refresh its liveness again it puts its presences back and announces
// them as joins, so its connected players do not stay gone.
func TestRedisStoreComesBackAfterAFalseReap(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	var joins leaveLog // the same bookkeeping, for joins
	a := redisStore(t, c, "a")
	if err := a.Start(func(string, []Presence) {}, joins.restored); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	var leaves leaveLog
	b := redisStore(t, c, "b")
	if err := b.Start(leaves.on, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	_ = a.Add(ctx, "room:f", "a1", pres("p", "r1"), Limits{MaxMetasPerKey: 5, MaxPerTopic: 100})
	// The liveness key vanishes (as after a pause past its TTL) and b
	// reaps a.
	c.Del(ctx, a.liveKey("a"))
	if err := b.reap("a", false); err != nil {
		t.Fatal(err)
	}
	if got := leaves.get("room:f"); !slices.Equal(got, []string{"p/r1"}) {
		t.Fatalf("b reaped %v", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(joins.get("room:f")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the falsely reaped node never put its presence back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// It comes back under a fresh phx_ref: the reaper's leave names
	// r1, so every client ends with it present whatever the diffs' order.
	ps, _ := b.List(ctx, "room:f")
	if len(ps) != 1 || ps[0].Key != "p" || ps[0].Ref == "r1" {
		t.Fatalf("list after the comeback: %v, want p under a fresh ref", refsOf(ps))
	}
	if got := joins.get("room:f"); !slices.Equal(got, refsOf(ps)) {
		t.Fatalf("join announced %v, stored %v", got, refsOf(ps))
	}
	if want := `"phx_ref":"` + ps[0].Ref + `"`; !strings.Contains(string(ps[0].Meta), want) || strings.Contains(string(ps[0].Meta), "r1") {
		t.Fatalf("meta after the comeback: %s", ps[0].Meta)
	}
	if ok, _ := c.SIsMember(ctx, a.topicsKey("a"), "room:f").Result(); !ok {
		t.Fatal("the topic is not on the node's list again: a real death later would leave a ghost")
	}
}
