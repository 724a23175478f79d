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

// commandStats returns Redis's calls and microseconds of each command
// (INFO commandstats), counting the commands scripts call.
func commandStats(t *testing.T, c *redis.Client) map[string][2]int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][2]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		var calls, usec int64
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "calls":
				calls, _ = strconv.ParseInt(v, 10, 64)
			case "usec":
				usec, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		out[strings.TrimPrefix(name, "cmdstat_")] = [2]int64{calls, usec}
	}
	return out
}

// fillTopic stores n presences of s's node on topic (as its Adds would),
// in pipelined batches.
func fillTopic(t *testing.T, c *redis.Client, s *Redis, topic string, n int) {
	t.Helper()
	fillTopicAs(t, c, s, topic, "", n)
}

// fillTopicAs is fillTopic with tags, keys and refs starting with prefix.
func fillTopicAs(t *testing.T, c *redis.Client, s *Redis, topic, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < n; i += 1000 {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := i; j < min(n, i+1000); j++ {
				key := fmt.Sprint(prefix, "p", j)
				p.HSet(ctx, s.hashKey(topic), fmt.Sprint(prefix, "f", j), s.encodeValue(int64(j), pres(key, fmt.Sprint(prefix, "r", j))))
				p.HIncrBy(ctx, s.countsKey(topic), key, 1)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// The undo of a failed Add, in a topic of PHXGATE_UNDO_N presences
// (10,000 by default): how long the failing Add takes, and what Redis
// spent in scripts meanwhile (a script blocks every other client). It
// must not read the topic's whole hash (before the fix it did: about
// 20 ms of script per failed Add here).
func TestRedisUndoCost(t *testing.T) {
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv("PHXGATE_UNDO_N")); err == nil && v > 0 {
		n = v
	}
	c := startRedis(t)
	var h losingHook
	c.AddHook(&h)
	s := startStore(t, c, "a", nil, nil, nil)
	ctx := context.Background()
	fillTopic(t, c, redisStore(t, c, "b"), "room:cost", n) // another node's
	lim := Limits{MaxMetasPerKey: 5, MaxPerTopic: 2 * n}
	const rounds = 5
	var took time.Duration
	before := commandStats(t, c)
	for i := range rounds {
		h.lose(addScript, 1, true) // stored, answer lost: undone at once
		start := time.Now()
		if err := s.Add(ctx, "room:cost", fmt.Sprint("x", i), pres("x", fmt.Sprint("rx", i)), lim); err == nil {
			t.Fatal("the add reported success")
		}
		took += time.Since(start)
	}
	after := commandStats(t, c)
	var usec int64
	for _, cmd := range []string{"evalsha", "eval"} {
		usec += after[cmd][1] - before[cmd][1]
	}
	t.Logf("%d presences: a failed Add and its undo take %v; Redis ran scripts for %d µs per failed Add; HGETALL calls: %d",
		n, took/rounds, usec/rounds, after["hgetall"][0]-before["hgetall"][0])
	if got, err := c.HLen(ctx, s.hashKey("room:cost")).Result(); err != nil || got != int64(n) {
		t.Fatalf("%d presences after the undos (%v), want %d", got, err, n)
	}
	// The undo reads the fields of the failed Add, never the whole hash.
	for _, cmd := range []string{"hgetall", "hvals", "hkeys", "hscan"} {
		if d := after[cmd][0] - before[cmd][0]; d != 0 {
			t.Errorf("the undos called %s %d times", strings.ToUpper(cmd), d)
		}
	}
}
