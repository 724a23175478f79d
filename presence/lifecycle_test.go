package presence

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The node lifecycle against Redis: restarts racing a reaper, removals
// that fail through an outage, restores. Each test failed before its fix.

// startLater starts node's store on its own goroutine (its Start may wait
// for a reaper's lock) and adds tag's presence on topic once started; the
// channel closes then. Start is called in the test's goroutine-safe way:
// failures are reported with t.Error.
func startLater(t *testing.T, c redis.UniversalClient, node, topic, tag string, p Presence) (*Redis, chan struct{}) {
	t.Helper()
	s := redisStore(t, c, node)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Start(func(string, []Presence) {}, func(string, []Presence, []Presence) {}); err != nil {
			t.Error(err)
			return
		}
		if err := s.Add(context.Background(), topic, tag, p, raceLimits); err != nil {
			t.Error(err)
		}
	}()
	t.Cleanup(func() { <-done; s.Close() })
	return s, done
}

// killed stops s as kill -9 would: loops stop, the liveness key goes, the
// lists stay.
func killed(t *testing.T, c *redis.Client, s *Redis) {
	t.Helper()
	s.once.Do(func() { close(s.stop); <-s.done })
	if err := c.Del(context.Background(), s.liveKey(s.cfg.NodeID)).Err(); err != nil {
		t.Fatal(err)
	}
}

// A node restarted under the same id while another node reaps its
// earlier life keeps the presences of its new life, and its topic list.
func TestRedisRestartDuringReapKeepsTheNewLife(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	a1 := startStore(t, c, "a", nil, nil, nil)
	if err := a1.Add(ctx, "room:x", "old", pres("p", "r1"), raceLimits); err != nil {
		t.Fatal(err)
	}
	killed(t, c, a1)
	var leaves leaveLog
	b := reaperOf(t, c, &leaves)
	var a2 *Redis
	var started chan struct{}
	b.hookReap = func(string) {
		// a restarts under the same id while b reaps; a client rejoins.
		a2, started = startLater(t, c, "a", "room:x", "new", pres("q", "r2"))
		select { // the new life waits for the reaper (bounded: it did not, before the fix)
		case <-started:
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err := b.reap("a", false); err != nil {
		t.Fatal(err)
	}
	<-started
	if got := listRefs(t, a2, "room:x"); !slices.Equal(got, []string{"q/r2"}) {
		t.Errorf("room:x after the reap = %v, want [q/r2] (the live node's)", got)
	}
	if listed, _ := c.SIsMember(ctx, a2.topicsKey("a"), "room:x").Result(); !listed {
		t.Errorf("a's topic list lost room:x: were a to die now, q/r2 would never be reaped")
	}
	if got := leaves.get("room:x"); !slices.Equal(got, []string{"p/r1"}) {
		t.Errorf("reaper's leaves = %v, want [p/r1]", got)
	}
}

// beforeScript runs f once before the first call of script sha.
type beforeScript struct {
	sha  string
	once sync.Once
	f    func()
}

func (h *beforeScript) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *beforeScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *beforeScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.ToLower(cmd.Name()) == "evalsha" && len(cmd.Args()) > 1 && cmd.Args()[1] == h.sha {
			h.once.Do(h.f)
		}
		return next(ctx, cmd)
	}
}

// The same race, the new life's presence added after the reaper read the
// topic list: when the new life dies later, its presence is reaped too
// (the first reaper must not have deleted the live node's topic list).
func TestRedisRestartDuringReapLeavesNoZombie(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	a1 := startStore(t, c, "a", nil, nil, nil)
	if err := a1.Add(ctx, "room:x", "old", pres("p", "r1"), raceLimits); err != nil {
		t.Fatal(err)
	}
	killed(t, c, a1)
	bc := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	t.Cleanup(func() { bc.Close() })
	var a2 *Redis
	var started chan struct{}
	bc.AddHook(&beforeScript{sha: reapScript.Hash(), f: func() {
		a2, started = startLater(t, c, "a", "room:y", "new", pres("q", "r2"))
		select {
		case <-started:
		case <-time.After(500 * time.Millisecond):
		}
	}})
	var leaves leaveLog
	if err := reaperOf(t, bc, &leaves).reap("a", false); err != nil {
		t.Fatal(err)
	}
	<-started
	if got := listRefs(t, a2, "room:y"); !slices.Equal(got, []string{"q/r2"}) {
		t.Fatalf("room:y after the first reap = %v, want [q/r2]", got)
	}
	killed(t, c, a2) // the second life dies too
	var leaves2 leaveLog
	if err := reaperOf(t, c, &leaves2).reap("a", false); err != nil {
		t.Fatal(err)
	}
	if got := listRefs(t, a2, "room:y"); len(got) != 0 {
		t.Errorf("zombie: %v stays on room:y after a's second life was reaped", got)
	}
}

// A reaper whose lock ran out (a long pause) while the node restarted
// removes only the boot it took for dead: the new life's presences stay,
// and so does its topic list.
func TestRedisReaperRemovesOnlyTheDeadBoot(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	a1 := startStore(t, c, "a", nil, nil, nil)
	if err := a1.Add(ctx, "room:x", "old", pres("p", "r1"), raceLimits); err != nil {
		t.Fatal(err)
	}
	killed(t, c, a1)
	var leaves leaveLog
	b := reaperOf(t, c, &leaves)
	var a2 *Redis
	b.hookReap = func(string) {
		c.Del(ctx, b.reapKey("a")) // the reaper's lock expired
		var started chan struct{}
		a2, started = startLater(t, c, "a", "room:x", "new", pres("q", "r2"))
		<-started
	}
	if err := b.reap("a", false); err != nil {
		t.Fatal(err)
	}
	if got := listRefs(t, a2, "room:x"); !slices.Equal(got, []string{"q/r2"}) {
		t.Errorf("room:x after the reap = %v, want [q/r2]", got)
	}
	if listed, _ := c.SIsMember(ctx, a2.topicsKey("a"), "room:x").Result(); !listed {
		t.Errorf("a's topic list lost room:x")
	}
	if member, _ := c.SIsMember(ctx, a2.nodesKey(), "a").Result(); !member {
		t.Errorf("a is alive but off the node set")
	}
}

// A player who left while Redis failed (the Remove fails) stays gone even
// when the node is taken for dead and restores its presences meanwhile,
// and the leave goes out once Redis answers.
func TestRedisFailedRemoveIsNeverRestored(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	var h losingHook
	c.AddHook(&h)
	s := redisStore(t, c, "a")
	tr, _ := startTracker(t, Config{Window: time.Millisecond}, s)
	if err := tr.Track(ctx, "room:g", "t1", "gone", nil); err != nil {
		t.Fatal(err)
	}
	if err := tr.Track(ctx, "room:g", "t2", "stays", nil); err != nil {
		t.Fatal(err)
	}
	h.lose(removeAllScript, 1_000_000, false) // an outage, for removals
	tr.Untrack(ctx, "room:g", "t1")           // the player leaves
	// Meanwhile another node took a for dead and reaped it.
	var leaves leaveLog
	c.Del(ctx, s.liveKey("a"))
	if err := reaperOf(t, c, &leaves).reap("a", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restore", func() bool {
		return slices.ContainsFunc(listRefs(t, s, "room:g"), func(r string) bool { return strings.HasPrefix(r, "stays/") })
	})
	for _, p := range listRefs(t, s, "room:g") {
		if strings.HasPrefix(p, "gone/") {
			t.Fatalf("the player who left is listed again: %v", listRefs(t, s, "room:g"))
		}
	}
	h.mu.Lock()
	h.rules = nil // Redis answers again
	h.mu.Unlock()
	waitFor(t, "no pending removal", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.removing) == 0
	})
	if got := listRefs(t, s, "room:g"); len(got) != 1 || !strings.HasPrefix(got[0], "stays/") {
		t.Errorf("room:g = %v, want only stays", got)
	}
}
