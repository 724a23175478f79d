package presence

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// jsClient applies presence diffs as phoenix.js Presence.syncDiff does:
// by phx_ref, joins before leaves. It maps key → refs.
type jsClient map[string][]string

func (c jsClient) apply(joins, leaves map[string][]string) {
	for k, refs := range joins {
		for _, r := range refs {
			if !slices.Contains(c[k], r) {
				c[k] = append(c[k], r)
			}
		}
	}
	for k, refs := range leaves {
		c[k] = slices.DeleteFunc(c[k], func(x string) bool { return slices.Contains(refs, x) })
		if len(c[k]) == 0 {
			delete(c, k)
		}
	}
}

func (c jsClient) applyDiff(d decodedDiff) { c.apply(refsByKey(d.Joins), refsByKey(d.Leaves)) }

func refsByKey(m map[string]struct{ Metas []map[string]any }) map[string][]string {
	out := map[string][]string{}
	for k, v := range m {
		for _, meta := range v.Metas {
			out[k] = append(out[k], meta["phx_ref"].(string))
		}
	}
	return out
}

// A join the broker refused (held) while the node is taken for dead: the
// reaper's leave of it reaches clients first, the node puts the presence
// back under a fresh ref, and its held join of the old ref goes out
// after. Clients must end with the presence once, and with nothing once
// it leaves (before the fix they kept the old ref for good).
func TestRedisHeldJoinAfterAReapLeavesNoZombie(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	s := redisStore(t, c, "a")
	l := &diffLog{}
	tr := NewTracker(Config{Window: time.Millisecond, Timeout: 50 * time.Millisecond}, s, l.publish, nil)
	if err := s.Start(tr.Leaves, tr.Restored); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	l.setFail(true) // the node's broker refuses (a partition)
	if err := tr.Track(ctx, "room:z", "t1", "yann", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the join held", func() bool { return counter(t, tr.m.diffRetries) >= 1 })
	old := listRefs(t, s, "room:z")
	// The node's liveness expires; another node reaps it and publishes
	// the leave, which clients get at once.
	var leaves leaveLog
	c.Del(ctx, s.liveKey("a"))
	if err := reaperOf(t, c, &leaves).reap("a", false); err != nil {
		t.Fatal(err)
	}
	client := jsClient{}
	reaperLeave := map[string][]string{}
	for _, r := range leaves.get("room:z") {
		reaperLeave["yann"] = append(reaperLeave["yann"], strings.TrimPrefix(r, "yann/"))
	}
	if len(reaperLeave["yann"]) != 1 {
		t.Fatalf("reaper's leaves: %v", leaves.get("room:z"))
	}
	client.apply(nil, reaperLeave)
	var now string
	waitFor(t, "the restore", func() bool {
		got := listRefs(t, s, "room:z")
		if len(got) == 1 && got[0] != old[0] {
			now = strings.TrimPrefix(got[0], "yann/")
			return true
		}
		return false
	})
	l.setFail(false) // the broker answers again
	waitFor(t, "the restored join published", func() bool {
		for _, d := range l.all() {
			if slices.Contains(refsByKey(d.Joins)["yann"], now) {
				return true
			}
		}
		return false
	})
	for _, d := range l.all() {
		t.Logf("published: %s", d.Raw)
		client.applyDiff(d)
	}
	if got := client["yann"]; len(got) != 1 || got[0] != now {
		t.Errorf("clients see yann as %v, stored %v", got, now)
	}
	n := len(l.all())
	tr.Untrack(ctx, "room:z", "t1")
	waitFor(t, "the leave", func() bool { return len(l.all()) > n })
	for _, d := range l.all()[n:] {
		client.applyDiff(d)
	}
	if len(client) != 0 {
		t.Errorf("after yann left, clients still see %v", client)
	}
}
