package presence

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// An update of a player's metas (Tracker.Update on several nodes: routed
// to the owner node by a control event, here looped back to the same
// node), in a topic of PHXGATE_UPDATE_N presences of another node
// (10,000 by default) beside 200 of this node: how long it takes until
// stored, and what Redis spent in scripts meanwhile (a script blocks
// every other client). It must read the player's fields only, never the
// topic's whole hash (before the fix the update's script ran HGETALL,
// about 20 ms here, and the count of the player's presences HVALS).
func TestRedisUpdateCost(t *testing.T) {
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv("PHXGATE_UPDATE_N")); err == nil && v > 0 {
		n = v
	}
	tr, a, _ := trackerOnRedisCfg(t, Config{Window: time.Millisecond, MaxPerTopic: n + 1000})
	tr.Control = func(_ context.Context, topic string, payload []byte) error {
		tr.HandleControl(topic, payload)
		return nil
	}
	t.Cleanup(func() { tr.Drain(context.Background()) })
	c := a.c.(*redis.Client)
	ctx := context.Background()
	const topic = "room:ucost"
	fillTopic(t, c, redisStore(t, c, "b"), topic, n)
	for i := range 200 {
		if err := tr.Track(ctx, topic, fmt.Sprint("o", i), fmt.Sprint("own", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, tag := range []string{"x1", "x2"} {
		if err := tr.Track(ctx, topic, tag, "x", []byte(`{"s":-1}`)); err != nil {
			t.Fatal(err)
		}
	}
	stored := func(tag string) string {
		v, _ := c.HGet(ctx, a.hashKey(topic), tag).Result()
		return v
	}
	const rounds = 5
	var took time.Duration
	before := commandStats(t, c)
	for i := range rounds {
		meta := fmt.Sprintf(`{"s":%d}`, i)
		start := time.Now()
		got, err := tr.Update(ctx, topic, "x", []byte(meta))
		if err != nil || got != 2 {
			t.Fatalf("update %d: %d presences, %v", i, got, err)
		}
		waitFor(t, "the update stored", func() bool {
			return strings.Contains(stored("x1"), `"s":`+strconv.Itoa(i)+`,`) && strings.Contains(stored("x2"), `"s":`+strconv.Itoa(i)+`,`)
		})
		took += time.Since(start)
	}
	after := commandStats(t, c)
	var usec int64
	for _, cmd := range []string{"evalsha", "eval"} {
		usec += after[cmd][1] - before[cmd][1]
	}
	t.Logf("%d presences: an update of a player's 2 metas takes %v until stored; Redis ran scripts for %d µs per update; HGETALL calls: %d, HVALS calls: %d",
		n+202, took/rounds, usec/rounds, after["hgetall"][0]-before["hgetall"][0], after["hvals"][0]-before["hvals"][0])
	if got, err := c.HLen(ctx, a.hashKey(topic)).Result(); err != nil || got != int64(n+202) {
		t.Fatalf("%d presences after the updates (%v), want %d", got, err, n+202)
	}
	if v := stored("o0"); !strings.Contains(v, `{"phx_ref"`) {
		t.Fatalf("another key's presence changed: %q", v)
	}
	// The update reads the player's fields, never the whole hash.
	for _, cmd := range []string{"hgetall", "hvals", "hkeys", "hscan"} {
		if d := after[cmd][0] - before[cmd][0]; d != 0 {
			t.Errorf("the updates called %s %d times", strings.ToUpper(cmd), d)
		}
	}
}
