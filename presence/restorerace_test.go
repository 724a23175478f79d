package presence

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// restoreBetween makes the node a look dead right after tr's next store
// write (a Track's or an update's), has another node reap it, and runs
// a's restore, waiting for its diff to be published (failing the test
// if it is not): all before the change of that write is queued. It
// returns the reaper's leaves (refs by key), which clients get first.
func restoreBetween(t *testing.T, tr *Tracker, a *Redis, l *diffLog) func() map[string][]string {
	t.Helper()
	c := a.c
	var once sync.Once
	reaped := map[string][]string{}
	done := make(chan struct{})
	tr.hookStored = func(topic string) {
		once.Do(func() {
			defer close(done)
			ctx := context.Background()
			c.Del(ctx, a.liveKey("a"))
			var leaves leaveLog
			if err := reaperOf(t, c, &leaves).reap("a", false); err != nil {
				t.Error(err)
				return
			}
			for _, r := range leaves.get(topic) {
				k, ref, _ := strings.Cut(r, "/")
				reaped[k] = append(reaped[k], ref)
			}
			n := len(l.all())
			if err := a.restore(); err != nil {
				t.Error(err)
				return
			}
			// The restore put the presence back (the write's: it is
			// held) and its diff goes out within the window, not
			// waiting for this topic's lock: it must be published
			// before the write's change is queued, or this is not the
			// race under test. (On this hook's goroutine: t.Error, not
			// t.Fatal.)
			deadline := time.Now().Add(5 * time.Second)
			for len(l.all()) == n {
				if time.Now().After(deadline) {
					ps, err := a.List(ctx, topic)
					t.Errorf("the restore's diff was not published within 5s (stored: %v, %v)", refsOf(ps), err)
					return
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	return func() map[string][]string {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the restore never ran")
		}
		return reaped
	}
}

// trackerOnRedis is a tracker over a's Redis store, publishing to l.
func trackerOnRedis(t *testing.T) (*Tracker, *Redis, *diffLog) {
	t.Helper()
	return trackerOnRedisCfg(t, Config{Window: time.Millisecond})
}

func trackerOnRedisCfg(t *testing.T, cfg Config) (*Tracker, *Redis, *diffLog) {
	t.Helper()
	a := redisStore(t, startRedis(t), "a")
	tr, l := startTracker(t, cfg, a)
	return tr, a, l
}

// startTracker starts a tracker publishing into a diff log over the
// Redis store s (not started yet), and stops the store with the test.
func startTracker(t *testing.T, cfg Config, s *Redis) (*Tracker, *diffLog) {
	t.Helper()
	l := &diffLog{}
	tr := NewTracker(cfg, s, l.publish, nil)
	if err := s.Start(tr.Leaves, tr.Restored); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return tr, l
}

// clientsSee waits for tr to have published everything of topic, then
// applies the reaper's leaves and every diff published, as phoenix.js
// Presence does, and compares with what a stores.
func clientsSee(t *testing.T, tr *Tracker, a *Redis, l *diffLog, topic string, reaped map[string][]string) {
	t.Helper()
	waitFor(t, "every change published", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return tr.topics[topic] == nil
	})
	client := jsClient{}
	client.apply(nil, reaped)
	for _, d := range l.all() {
		t.Logf("published: %s", d.Raw)
		client.applyDiff(d)
	}
	var seen []string
	for k, refs := range client {
		for _, r := range refs {
			seen = append(seen, k+"/"+r)
		}
	}
	stored := listRefs(t, a, topic)
	slices.Sort(seen)
	slices.Sort(stored)
	if !slices.Equal(seen, stored) {
		t.Errorf("clients list %v, stored %v", seen, stored)
	}
}

// A restore that runs between a Track's store write and the queueing of
// its join announces the presence under a fresh ref (and the leave of
// the ref written); the Track's join of that ref, queued after, must not
// go out: clients would keep it for good (before the fix they did).
func TestTrackerRestoreBetweenTrackAndItsJoin(t *testing.T) {
	tr, a, l := trackerOnRedis(t)
	reaped := restoreBetween(t, tr, a, l)
	if err := tr.Track(context.Background(), "room:b", "t1", "p", nil); err != nil {
		t.Fatal(err)
	}
	clientsSee(t, tr, a, l, "room:b", reaped())
	tr.Untrack(context.Background(), "room:b", "t1")
	clientsSee(t, tr, a, l, "room:b", reaped())
}

// The same between an update's store write and the queueing of its
// diff: the restore announced the updated presence under a fresh ref;
// the update's join of the ref it wrote must not go out after.
func TestTrackerRestoreBetweenUpdateAndItsDiff(t *testing.T) {
	tr, a, l := trackerOnRedis(t)
	ctx := context.Background()
	if err := tr.Track(ctx, "room:u", "t1", "p", []byte(`{"s":0}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the join", func() bool { return len(l.all()) == 1 })
	reaped := restoreBetween(t, tr, a, l)
	if n, err := tr.Update(ctx, "room:u", "p", []byte(`{"s":1}`)); err != nil || n != 1 {
		t.Fatalf("update: %d, %v", n, err)
	}
	clientsSee(t, tr, a, l, "room:u", reaped())
	tr.Untrack(ctx, "room:u", "t1")
	clientsSee(t, tr, a, l, "room:u", reaped())
}

// An update that reaches the node while a reaper has removed its
// presences (the restore not done yet) finds nothing stored; the restore
// then puts the presence back with the updated meta, not the one it
// had (before the fix the update was lost).
func TestRedisUpdateWhileReapedIsRestored(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	release := make(chan struct{})
	var joins leaveLog
	a := startStore(t, c, "a", nil, &joins, func(s *Redis) {
		s.hookRestore = func() { <-release }
	})
	if err := a.Add(ctx, "room:m", "t1", Presence{Key: "p", Ref: "r1", Meta: withRefs("r1", "", []byte(`"s":0`))}, raceLimits); err != nil {
		t.Fatal(err)
	}
	c.Del(ctx, a.liveKey("a"))
	var leaves leaveLog
	if err := reaperOf(t, c, &leaves).reap("a", false); err != nil {
		t.Fatal(err)
	}
	if _, joined, err := a.Update(ctx, "room:m", "p", []byte(`"s":1`), []string{"r2"}, []string{"t1"}); err != nil || len(joined) != 0 {
		t.Fatalf("update while reaped: %v, %v", refsOf(joined), err)
	}
	close(release) // the restore goes on
	var ps []Presence
	waitFor(t, "the restore", func() bool {
		var err error
		ps, err = a.List(ctx, "room:m")
		return err == nil && len(ps) == 1
	})
	if body := string(stripRefs(ps[0].Meta)); body != `"s":1` {
		t.Errorf("restored meta %s, want the update's", ps[0].Meta)
	}
}
