package presence

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Failed Adds during an outage, each under a new tag (phoenix.js rejoins
// under a new connection's tag), whose undos fail too: the node keeps one
// mark for the topic, not one entry per attempt, and counts the topic
// once for it; once Redis answers, the restore loop sweeps what they
// stored and the count comes back.
func TestRedisFailedAddsKeepOneUndoMarkPerTopic(t *testing.T) {
	c := startRedis(t)
	var h losingHook
	c.AddHook(&h)
	s := startStore(t, c, "a", nil, nil, nil)
	ctx := context.Background()
	if err := s.Add(ctx, "room:u", "base", pres("b", "r0"), raceLimits); err != nil {
		t.Fatal(err)
	}
	const attempts = 500
	h.lose(addScript, attempts, true) // stored, answers lost
	h.lose(undoScript, 2*attempts, false)
	for i := range attempts {
		if err := s.Add(ctx, "room:u", fmt.Sprint("t", i), pres("p", fmt.Sprint("r", i)), raceLimits); err == nil {
			t.Fatalf("add %d reported success", i)
		}
	}
	s.mu.Lock()
	undo, mine := len(s.undo), s.mine["room:u"]
	s.mu.Unlock()
	if undo != 1 || mine != 2 {
		t.Fatalf("after %d failed adds: %d undo entries, mine = %d; want 1 and 2 (base, the mark)", attempts, undo, mine)
	}
	h.mu.Lock()
	for _, r := range h.rules {
		r.n = 0 // Redis answers again
	}
	h.mu.Unlock()
	waitFor(t, "the sweep", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.undo) == 0 && s.mine["room:u"] == 1
	})
	if got := listRefs(t, s, "room:u"); len(got) != 1 || got[0] != "b/r0" {
		t.Fatalf("stored after the sweep: %v, want only b/r0", got)
	}
}

// Past the node's bound of marked tags, a topic is marked as a whole and
// swept with HSCAN in steps: what the failed Adds stored goes (and
// leaves), what the node holds and what other nodes hold stay, and the
// marks and counts come back to nothing.
func TestRedisUndoPastTheTagBoundScansTheTopic(t *testing.T) {
	c := startRedis(t)
	// Each failed Add's presence, read (by its tag: the first ARGV
	// after the limits) right after the add script stored it: what must
	// leave.
	reader := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	t.Cleanup(func() { reader.Close() })
	var mu sync.Mutex
	var phantoms []string
	c.AddHook(&afterScript{sha: addScript.Hash(), fn: func(args []any) {
		key, _ := args[3].(string)
		tag, _ := args[8].(string)
		v, err := reader.HGet(context.Background(), key, tag).Result()
		if errors.Is(err, redis.Nil) {
			return // refused, or not tried: nothing stored
		}
		p, _, ok := decodeValue(v)
		if err != nil || !ok {
			t.Errorf("reading %s: %q, %v", tag, v, err)
			return
		}
		mu.Lock()
		phantoms = append(phantoms, p.Key+"/"+p.Ref)
		mu.Unlock()
	}})
	var h losingHook
	c.AddHook(&h)
	var leaves leaveLog
	s := startStore(t, c, "a", &leaves, nil, func(s *Redis) { s.undoMax = 2 })
	ctx := context.Background()
	const others = 3 * redisScanStep // several HSCAN steps
	fillTopic(t, c, redisStore(t, c, "b"), "room:s", others)
	lim := Limits{MaxMetasPerKey: 5, MaxPerTopic: 2 * others}
	if err := s.Add(ctx, "room:s", "base", pres("b", "r0"), lim); err != nil {
		t.Fatal(err)
	}
	const attempts = 5
	h.mu.Lock()
	h.rules = append(h.rules, &loseRule{sha: addScript.Hash(), n: attempts, apply: true},
		&loseRule{sha: undoScript.Hash(), n: attempts, apply: false})
	h.mu.Unlock()
	for i := range attempts {
		if err := s.Add(ctx, "room:s", fmt.Sprint("t", i), pres(fmt.Sprint("x", i), fmt.Sprint("rx", i)), lim); err == nil {
			t.Fatalf("add %d reported success", i)
		}
	}
	s.mu.Lock()
	m := s.undo["room:s"]
	scan, tags, marked := m != nil && m.scan, s.undoTags, m != nil && len(m.tags) == 2
	s.mu.Unlock()
	if !scan || tags != 2 || !marked {
		t.Fatalf("after %d failed adds past a bound of 2: scan %v, %d tags marked", attempts, scan, tags)
	}
	before := commandStats(t, c)
	waitFor(t, "the sweep", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.undo) == 0 && s.undoTags == 0 && s.mine["room:s"] == 1
	})
	if n := commandStats(t, c)["hscan"][0] - before["hscan"][0]; n < 2 {
		t.Errorf("%d HSCAN steps, want several", n)
	}
	n, err := c.HLen(ctx, s.hashKey("room:s")).Result()
	if err != nil || n != others+1 {
		t.Fatalf("%d presences stored (%v), want %d", n, err, others+1)
	}
	for i := range attempts {
		if ok, _ := c.HExists(ctx, s.hashKey("room:s"), fmt.Sprint("t", i)).Result(); ok {
			t.Errorf("failed add t%d still stored", i)
		}
	}
	// Those past the bound (the first two are marked by tag) were found
	// by the scan.
	mu.Lock()
	want := slices.Sorted(slices.Values(phantoms))
	mu.Unlock()
	if len(want) <= 2 {
		t.Fatalf("failed adds stored %v, want more than the 2 marked", want)
	}
	waitFor(t, "the leaves of the failed adds", func() bool { return len(leaves.get("room:s")) >= len(want) })
	left := leaves.get("room:s")
	slices.Sort(left)
	if !slices.Equal(left, want) {
		t.Errorf("leaves %v, want those the failed adds stored: %v", left, want)
	}
}

// A tag whose failed Add could not be undone, added again before the
// restore loop's sweep: the earlier value goes first (and leaves), so
// Redis holds the new presence (the add script would take the old one
// for it).
func TestRedisAddAgainAfterAFailedUndo(t *testing.T) {
	c := startRedis(t)
	var h losingHook
	c.AddHook(&h)
	var leaves leaveLog
	s := startStore(t, c, "a", &leaves, nil, nil)
	ctx := context.Background()
	h.lose(addScript, 1, true)
	h.lose(undoScript, 1, false)
	if err := s.Add(ctx, "room:g", "t1", pres("p", "r1"), raceLimits); err == nil {
		t.Fatal("the add reported success")
	}
	if err := s.Add(ctx, "room:g", "t1", pres("p", "r2"), raceLimits); err != nil {
		t.Fatal(err)
	}
	if got := listRefs(t, s, "room:g"); len(got) != 1 || got[0] != "p/r2" {
		t.Fatalf("stored %v, want p/r2", got)
	}
	waitFor(t, "the mark gone", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.undo) == 0 && s.undoTags == 0 && s.mine["room:g"] == 1
	})
	if got := listRefs(t, s, "room:g"); len(got) != 1 || got[0] != "p/r2" {
		t.Fatalf("after the sweep, stored %v, want p/r2", got)
	}
	waitFor(t, "the earlier value's leave", func() bool { return len(leaves.get("room:g")) > 0 })
	if left := leaves.get("room:g"); !slices.Equal(left, []string{"p/r1"}) {
		t.Errorf("leaves %v, want p/r1", left)
	}
}
