package pubsub_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/phxgate/phxgate/pubsub"
	"github.com/phxgate/phxgate/pubsub/brokertest"
	"github.com/phxgate/phxgate/pubsub/redistest"
)

// waitUntil polls cond until it holds or d passes.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newClusterBroker(t *testing.T, cl *redistest.Cluster, mod func(*pubsub.RedisConfig)) *pubsub.Redis {
	t.Helper()
	cfg := pubsub.NewRedisConfig()
	cfg.HistorySize = func(string) int { return 100 }
	cfg.ClusterAddrs = cl.Addrs()
	if mod != nil {
		mod(&cfg)
	}
	b, err := pubsub.NewRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func publishOne(t *testing.T, b pubsub.Broker, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, err := b.Publish(ctx, topic, pubsub.Message{Event: "e", Payload: []byte(`{}`)})
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("publish to %s: %v", topic, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Many topics of different slots share one pub/sub connection of a
// Cluster master. Once that connection is dropped, every topic is
// subscribed again (one SSUBSCRIBE each: a Cluster refuses one spanning
// slots) and delivered again.
func TestRedisClusterResubscribesEveryTopic(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	b := newClusterBroker(t, cl, func(c *pubsub.RedisConfig) { c.Shards = 1 })
	const n = 20
	recs := make([]*brokertest.Recorder, n)
	topics := make([]string, n)
	for i := range n {
		topics[i] = fmt.Sprintf("many:%d:%d", time.Now().UnixNano(), i)
		recs[i] = brokertest.NewRecorder(b, topics[i])
		if _, err := b.Subscribe(context.Background(), topics[i], recs[i]); err != nil {
			t.Fatal(err)
		}
		publishOne(t, b, topics[i])
	}
	all := func(k int) func() bool {
		return func() bool {
			for _, r := range recs {
				if len(r.Events()) < k {
					return false
				}
			}
			return true
		}
	}
	waitUntil(t, 10*time.Second, "one event on every topic", all(1))
	for _, a := range cl.Addrs() {
		c := redis.NewClient(&redis.Options{Addr: a})
		_ = c.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err()
		c.Close()
	}
	for i := range n {
		publishOne(t, b, topics[i])
	}
	waitUntil(t, 20*time.Second, "the second event on every topic", all(2))
	// And live again, not only caught up by a resync.
	for i := range n {
		publishOne(t, b, topics[i])
	}
	waitUntil(t, 20*time.Second, "the third event on every topic", all(3))
	for i, r := range recs {
		if got := len(r.Events()); got != 3 {
			t.Fatalf("topic %d: %d events, want 3", i, got)
		}
	}
}

// A topic's slot moves to another master (resharding): Redis ends the
// subscription; the engine subscribes where the slot lives now and catches
// up, so delivery carries on with nothing lost.
func TestRedisClusterSlotMigration(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	b := newClusterBroker(t, cl, nil)
	ctx := context.Background()
	topic := fmt.Sprintf("mv:%d", time.Now().UnixNano())
	rec := brokertest.NewRecorder(b, topic)
	if _, err := b.Subscribe(ctx, topic, rec); err != nil {
		t.Fatal(err)
	}
	publishOne(t, b, topic)
	waitUntil(t, 5*time.Second, "the first event", func() bool { return len(rec.Events()) == 1 })

	clients, ids := map[string]*redis.Client{}, map[string]string{}
	for _, a := range cl.Addrs() {
		c := redis.NewClient(&redis.Options{Addr: a})
		t.Cleanup(func() { c.Close() })
		clients[a] = c
		ids[a] = c.Do(ctx, "CLUSTER", "MYID").Val().(string)
	}
	c0 := clients[cl.Addrs()[0]]
	slot := c0.ClusterKeySlot(ctx, pubsub.RedisTopicKey("phx", topic, "c")).Val()
	var src, dst string
	for _, s := range c0.ClusterSlots(ctx).Val() {
		if int64(s.Start) <= slot && slot <= int64(s.End) {
			src = s.Nodes[0].Addr
		}
	}
	for _, a := range cl.Addrs() {
		if a != src {
			dst = a
			break
		}
	}
	must := func(c *redis.Client, args ...any) {
		t.Helper()
		if err := c.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	must(clients[dst], "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
	must(clients[src], "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
	host, port, _ := strings.Cut(dst, ":")
	for _, k := range clients[src].ClusterGetKeysInSlot(ctx, int(slot), 100).Val() {
		must(clients[src], "MIGRATE", host, port, k, 0, 5000)
	}
	for _, a := range cl.Addrs() {
		must(clients[a], "CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
	}
	for range 3 {
		publishOne(t, b, topic)
	}
	waitUntil(t, 20*time.Second, "the events published across the move", func() bool { return len(rec.Events()) == 4 })
	publishOne(t, b, topic)
	waitUntil(t, 10*time.Second, "a live event after the move", func() bool { return len(rec.Events()) == 5 })
	evs := rec.Events()
	for i, ev := range evs {
		if ev.Pos.Offset != uint64(i+1) {
			t.Fatalf("event %d at %v", i, ev.Pos)
		}
	}
}

// The byte bound counts only what the stream holds: once a quiet topic's
// history expired, a new history is not trimmed against the old total.
func TestRedisHistoryBytesAfterExpiry(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	cfg := pubsub.NewRedisConfig()
	cfg.URL = srv.URL()
	cfg.HistorySize = func(string) int { return 100 }
	cfg.HistoryBytes = 1000
	cfg.HistoryTTL = 300 * time.Millisecond
	b, err := pubsub.NewRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	pad := fmt.Appendf(nil, `{"pad":"%0190d"}`, 0) // 200 bytes
	for range 5 {
		if _, err := b.Publish(ctx, "room:exp", pubsub.Message{Event: "e", Payload: pad}); err != nil {
			t.Fatal(err)
		}
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	waitUntil(t, 10*time.Second, "the history to expire", func() bool { return c.Exists(ctx, pubsub.RedisTopicKey("phx", "room:exp", "s")).Val() == 0 })
	var last pubsub.Position
	for range 4 {
		if last, err = b.Publish(ctx, "room:exp", pubsub.Message{Event: "e", Payload: pad}); err != nil {
			t.Fatal(err)
		}
	}
	hr, err := b.History(ctx, "room:exp", pubsub.Position{Epoch: last.Epoch, Offset: last.Offset - 4}, 0)
	if err != nil || !hr.Recovered || len(hr.Events) != 4 {
		t.Fatalf("the 4 events published after the expiry: recovered=%v, %d events, %v", hr.Recovered, len(hr.Events), err)
	}
}

// A topic subscribed here keeps its epoch while quiet: its players are
// still connected, and a new epoch would end their channels.
func TestRedisQuietSubscribedTopicKeepsItsEpoch(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	cfg := pubsub.NewRedisConfig()
	cfg.URL = srv.URL()
	cfg.HistorySize = func(string) int { return 10 }
	cfg.HistoryTTL = 100 * time.Millisecond // epochs live 600 ms unless kept
	b, err := pubsub.NewRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	rec := brokertest.NewRecorder(b, "room:quiet")
	start, err := b.Subscribe(ctx, "room:quiet", rec)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	// Quiet for several epoch lifetimes, checked by the clock of Redis.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if c.Exists(ctx, pubsub.RedisTopicKey("phx", "room:quiet", "m")).Val() == 0 {
			t.Fatal("the quiet topic's epoch expired while subscribed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	p, err := b.Publish(ctx, "room:quiet", pubsub.Message{Event: "e", Payload: []byte(`{}`)})
	if err != nil || p.Epoch != start.Epoch || p.Offset != start.Offset+1 {
		t.Fatalf("publish after the quiet spell: %v %v, want %s:%d", p, err, start.Epoch, start.Offset+1)
	}
}
