package presence

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The reap of a dead node with PHXGATE_REAP_N presences (10,000 by
// default) on a topic beside a tenth as many of a live node: how long
// the reap takes, and the longest command Redis ran meanwhile (a script
// blocks every other client). It must read the topic in steps (HSCAN),
// never the whole hash in one script (before the fix it did: about
// 30 ms in one script here).
func TestRedisReapCost(t *testing.T) {
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv("PHXGATE_REAP_N")); err == nil && v > 0 {
		n = v
	}
	c := startRedis(t)
	ctx := context.Background()
	const topic = "room:reap"
	dead, live := redisStore(t, c, "b"), redisStore(t, c, "c")
	fillTopicAs(t, c, dead, topic, "b", n)
	fillTopicAs(t, c, live, topic, "c", n/10)
	if err := c.SAdd(ctx, dead.topicsKey("b"), topic).Err(); err != nil {
		t.Fatal(err)
	}
	var leaves leaveLog
	reaper := reaperOf(t, c, &leaves)
	for _, kv := range [][2]string{{"slowlog-log-slower-than", "0"}, {"slowlog-max-len", "100000"}} {
		if err := c.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	c.SlowLogReset(ctx)
	before := commandStats(t, c)
	start := time.Now()
	if err := reaper.reap("b", false); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	after := commandStats(t, c)
	log, err := c.SlowLogGet(ctx, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var longest time.Duration
	var longestCmd string
	for _, e := range log {
		if e.Duration > longest && len(e.Args) > 0 {
			longest, longestCmd = e.Duration, strings.ToUpper(e.Args[0])
		}
	}
	t.Logf("%d presences of a dead node beside %d: the reap takes %v; the longest command Redis ran: %s, %v; HGETALL calls: %d, HSCAN calls: %d",
		n, n/10, took, longestCmd, longest, after["hgetall"][0]-before["hgetall"][0], after["hscan"][0]-before["hscan"][0])
	if got := len(leaves.get(topic)); got != n {
		t.Fatalf("%d leaves, want %d", got, n)
	}
	if got, err := c.HLen(ctx, reaper.hashKey(topic)).Result(); err != nil || got != int64(n/10) {
		t.Fatalf("%d presences after the reap (%v), want the live node's %d", got, err, n/10)
	}
	counts, err := c.HGetAll(ctx, reaper.countsKey(topic)).Result()
	if err != nil || len(counts) != n/10 {
		t.Fatalf("%d keys counted after the reap (%v), want %d", len(counts), err, n/10)
	}
	for k := range counts {
		if !strings.HasPrefix(k, "c") {
			t.Fatalf("key %q of the dead node still counted", k)
		}
	}
	// The reap reads the topic in steps, never its whole hash at once.
	if d := after["hgetall"][0] - before["hgetall"][0]; d != 0 {
		t.Errorf("the reap called HGETALL %d times", d)
	}
	if d, want := after["hscan"][0]-before["hscan"][0], int64((n+n/10)/(2*redisScanStep)); d < want {
		t.Errorf("the reap called HSCAN %d times, want at least %d (a step of %d fields)", d, want, redisScanStep)
	}
}
