package presence

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/phxgate/phxgate/pubsub/redistest"
)

// The races between a node taken for dead and the node itself, and the
// answers Redis loses: each test below failed before its fix.

var raceLimits = Limits{MaxMetasPerKey: 5, MaxPerTopic: 100}

func startRedis(t *testing.T) *redis.Client {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	return c
}

// startStore starts a node's store; joins and leaves it reports go to
// the logs given (nil: dropped).
func startStore(t *testing.T, c redis.UniversalClient, node string, leaves, joins *leaveLog, hooks func(*Redis)) *Redis {
	t.Helper()
	s := redisStore(t, c, node)
	if hooks != nil {
		hooks(s)
	}
	onLeave, onRestore := func(string, []Presence) {}, func(string, []Presence, []Presence) {}
	if leaves != nil {
		onLeave = leaves.on
	}
	if joins != nil {
		onRestore = joins.restored
	}
	if err := s.Start(onLeave, onRestore); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// reaperOf returns a store of another node that only reaps (its loops do
// not run, so only the test reaps).
func reaperOf(t *testing.T, c redis.UniversalClient, leaves *leaveLog) *Redis {
	t.Helper()
	b := redisStore(t, c, "reaper")
	b.onLeave = leaves.on
	return b
}

func listRefs(t *testing.T, s *Redis, topic string) []string {
	t.Helper()
	ps, err := s.List(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	return refsOf(ps)
}

// 1. A reaper that took the node for dead removes its presences while the
// node, back from a pause, restores them: the node's restore must come
// after the reap, or its players stay gone while it is alive.
func TestRedisRestoreWaitsForTheReaper(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	restoring := make(chan struct{}, 1)
	var joins leaveLog
	a := startStore(t, c, "a", nil, &joins, func(s *Redis) {
		s.hookRestore = func() {
			select {
			case restoring <- struct{}{}:
			default:
			}
		}
	})
	if err := a.Add(ctx, "room:r", "a1", pres("p", "r1"), raceLimits); err != nil {
		t.Fatal(err)
	}
	var leaves leaveLog
	b := reaperOf(t, c, &leaves)
	reached, release := make(chan struct{}), make(chan struct{})
	b.hookReap = func(string) { close(reached); <-release }
	c.Del(ctx, a.liveKey("a")) // a's liveness key expired during a pause
	errc := make(chan error, 1)
	go func() { errc <- b.reap("a", false) }()
	<-reached   // b took a for dead and is about to remove its presences
	<-restoring // a beats again, finds itself reaped and restores
	// The restore has finished, or waits for the reaper, by a's next
	// beat.
	n := a.beats.Load()
	waitFor(t, "a beat after the restore began", func() bool { return a.beats.Load() > n })
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := leaves.get("room:r"); !slices.Equal(got, []string{"p/r1"}) {
		t.Fatalf("reaped %v", got)
	}
	waitFor(t, "a's presence back after the reap", func() bool {
		return slices.Equal(keysOf(listRefs(t, a, "room:r")), []string{"p"}) // under a fresh ref
	})
	waitFor(t, "the topic on a's list again", func() bool {
		ok, _ := c.SIsMember(ctx, a.topicsKey("a"), "room:r").Result()
		return ok
	})
}

// falseReap makes node a look dead and reaps it with b, then waits for a
// to be stopped at its restore of topic: it returns the function that
// lets the restore go on.
func falseReap(t *testing.T, c *redis.Client, a, b *Redis, gate chan chan struct{}) func() {
	t.Helper()
	ctx := context.Background()
	c.Del(ctx, a.liveKey("a"))
	if err := b.reap("a", false); err != nil {
		t.Fatal(err)
	}
	var release chan struct{}
	select {
	case release = <-gate:
	case <-time.After(5 * time.Second):
		t.Fatal("a never restored")
	}
	return func() { close(release) }
}

// gatedRestore stops a's restore before each topic until released.
func gatedRestore(gate chan chan struct{}) func(*Redis) {
	return func(s *Redis) {
		s.hookRestoreTopic = func(string) {
			release := make(chan struct{})
			gate <- release
			<-release
		}
	}
}

// 2. A presence removed (its socket left) while the restore runs is not
// put back: no zombie.
func TestRedisRestoreRacesRemove(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	gate := make(chan chan struct{})
	var joins leaveLog
	a := startStore(t, c, "a", nil, &joins, gatedRestore(gate))
	_ = a.Add(ctx, "room:z", "a1", pres("p", "r1"), raceLimits)
	_ = a.Add(ctx, "room:z", "a2", pres("q", "r2"), raceLimits)
	var leaves leaveLog
	release := falseReap(t, c, a, reaperOf(t, c, &leaves), gate)
	// a1's socket leaves while the restore is under way.
	if _, _, err := a.Remove(ctx, "room:z", "a1"); err != nil {
		t.Fatal(err)
	}
	release()
	waitFor(t, "q restored", func() bool { return slices.Contains(keysOf(joins.get("room:z")), "q") })
	if got := keysOf(listRefs(t, a, "room:z")); !slices.Equal(got, []string{"q"}) {
		t.Fatalf("after the restore: %v, want only q (p left)", got)
	}
	if got := keysOf(joins.get("room:z")); slices.Contains(got, "p") {
		t.Fatalf("announced joins %v: p left, it must not come back", got)
	}
}

// 3. The restore puts back the meta of the latest update, not the one of
// the join.
func TestRedisRestoreKeepsTheUpdatedMeta(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	var joins leaveLog
	a := startStore(t, c, "a", nil, &joins, nil)
	_ = a.Add(ctx, "room:u", "a1", pres("p", "r1"), raceLimits)
	_, joined, err := a.Update(ctx, "room:u", "p", []byte(`"s":"away"`), []string{"r2"}, nil)
	if err != nil || len(joined) != 1 {
		t.Fatalf("update: %v %v", joined, err)
	}
	var leaves leaveLog
	c.Del(ctx, a.liveKey("a"))
	if err := reaperOf(t, c, &leaves).reap("a", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restore", func() bool { return len(joins.get("room:u")) > 0 })
	ps, _ := a.List(ctx, "room:u")
	// Under a fresh ref (the reaper's leave names r2).
	if len(ps) != 1 || ps[0].Ref == "r2" || !strings.Contains(string(ps[0].Meta), `"s":"away"`) {
		t.Fatalf("restored %v %s: want the updated meta (s away) under a fresh ref", refsOf(ps), ps[0].Meta)
	}
	if got := joins.get("room:u"); !slices.Equal(got, refsOf(ps)) {
		t.Fatalf("announced %v, want %v", got, refsOf(ps))
	}
	// Removing it gives the restored, updated presence.
	if p, ok, err := a.Remove(ctx, "room:u", "a1"); err != nil || !ok || p.Ref != ps[0].Ref {
		t.Fatalf("remove after restore: %v %v %v", p.Ref, ok, err)
	}
}

// 4. A slow restore does not hold up the liveness refresh: the node keeps
// beating (or it would look dead again and be reaped again).
func TestRedisSlowRestoreKeepsBeating(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	gate := make(chan chan struct{})
	a := startStore(t, c, "a", nil, nil, gatedRestore(gate))
	_ = a.Add(ctx, "room:s", "a1", pres("p", "r1"), raceLimits)
	var leaves leaveLog
	release := falseReap(t, c, a, reaperOf(t, c, &leaves), gate)
	defer release()
	n := a.beats.Load()
	waitFor(t, "two beats during the restore", func() bool { return a.beats.Load() >= n+2 })
}

// losingHook makes Redis lose the answers of chosen script calls: the
// script runs (or not) and the caller gets an error, as when a reply
// times out.
type losingHook struct {
	mu sync.Mutex
	// rules are tried in order; a matching rule with n > 0 is used once.
	rules []*loseRule
	calls map[string]int // script sha → calls seen
}

type loseRule struct {
	sha   string
	n     int
	apply bool // run the script before losing the answer
}

var errLostAnswer = errors.New("test: answer lost")

func (h *losingHook) lose(s *redis.Script, n int, apply bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rules = append(h.rules, &loseRule{sha: s.Hash(), n: n, apply: apply})
}

func (h *losingHook) count(s *redis.Script) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[s.Hash()]
}

func (h *losingHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *losingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *losingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		name := strings.ToLower(cmd.Name())
		if (name != "evalsha" && name != "eval") || len(args) < 2 {
			return next(ctx, cmd)
		}
		sha, _ := args[1].(string)
		if name == "eval" {
			sum := sha1.Sum([]byte(sha))
			sha = hex.EncodeToString(sum[:])
		}
		h.mu.Lock()
		if h.calls == nil {
			h.calls = map[string]int{}
		}
		h.calls[sha]++
		var rule *loseRule
		for _, r := range h.rules {
			if r.sha == sha && r.n > 0 {
				rule = r
				break
			}
		}
		h.mu.Unlock()
		if rule == nil {
			return next(ctx, cmd)
		}
		if rule.apply {
			// A NOSCRIPT answer is not the run to lose: the client
			// sends the script itself next.
			if err := next(ctx, cmd); err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
		}
		h.mu.Lock()
		rule.n--
		h.mu.Unlock()
		cmd.SetErr(errLostAnswer)
		return errLostAnswer
	}
}

// 5. An Untrack whose first Remove was applied but its answer lost is
// retried; the retry finds nothing, and still publishes the leave, or
// every other node's clients would keep the presence.
func TestTrackerLeaveAfterALostRemoveAnswer(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	var h losingHook
	c.AddHook(&h)
	s := redisStore(t, c, "a")
	// The leave goes out through the tracker's retry or the store's
	// (pending removals): either way, once.
	tr, l := startTracker(t, Config{Window: time.Millisecond}, s)
	t.Cleanup(func() { tr.Drain(context.Background()) })
	if err := tr.Track(ctx, "room:l", "t1", "p", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the join", func() bool { return len(l.all()) == 1 })
	h.lose(removeAllScript, 1, true)
	tr.Untrack(ctx, "room:l", "t1") // removed, but the answer is lost: retried
	if got := listRefs(t, s, "room:l"); len(got) != 0 {
		t.Fatalf("still stored: %v", got)
	}
	leaves := func() int {
		n := 0
		for _, d := range l.all() {
			n += len(d.Leaves["p"].Metas)
		}
		return n
	}
	waitFor(t, "the leave diff after the retry", func() bool { return leaves() == 1 })
	waitFor(t, "the retries done", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.local) == 0
	})
	if n := leaves(); n != 1 {
		t.Fatalf("%d leaves, want 1", n)
	}
}

// 6. An Add whose answer is lost is undone; when the undo fails too, the
// entry is removed later, not left in the store with no owner.
func TestRedisAddUndoFailureLeavesNoOrphan(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	var h losingHook
	c.AddHook(&h)
	s := startStore(t, c, "a", nil, nil, nil)
	h.lose(addScript, 1, true)   // stored, answer lost
	h.lose(undoScript, 1, false) // the undo fails
	if err := s.Add(ctx, "room:o", "a1", pres("p", "r1"), raceLimits); err == nil {
		t.Fatal("the add reported success")
	}
	waitFor(t, "the orphan removed", func() bool {
		n, err := c.HLen(ctx, s.hashKey("room:o")).Result()
		return err == nil && n == 0
	})
	waitFor(t, "the topic off the node's list", func() bool {
		ok, err := c.SIsMember(ctx, s.topicsKey("a"), "room:o").Result()
		return err == nil && !ok
	})
}

// perTag hides a store's RemoveAll: the drain removes one presence per
// call, as it did before batching (for the comparison).
type perTag struct{ Store }

// 7. A drain removes a topic's presences in one script call per 1,000,
// not one per presence. PHXGATE_DRAIN_N sets the presences (2,000 by
// default); the log compares both paths.
func TestTrackerDrainBatchesRedis(t *testing.T) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("PHXGATE_DRAIN_N")); err == nil && v > 0 {
		n = v
	}
	const topics = 4
	for _, tc := range []struct {
		name    string
		batched bool
	}{{"per presence", false}, {"batched", true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := startRedis(t)
			ctx := context.Background()
			var h losingHook
			c.AddHook(&h)
			s := startStore(t, c, "a", nil, nil, nil)
			var st Store = s
			if !tc.batched {
				st = perTag{s}
			}
			var mu sync.Mutex
			leaves := 0 // counted cheaply: the drain's time is the store's
			pub := func(_ context.Context, _ string, payload []byte) error {
				mu.Lock()
				defer mu.Unlock()
				_, ls, _ := strings.Cut(string(payload), `"leaves":`)
				leaves += strings.Count(ls, `"phx_ref"`)
				return nil
			}
			tr := NewTracker(Config{Window: time.Hour, MaxPerTopic: n}, st, pub, nil)
			for i := range n {
				topic := "room:" + strconv.Itoa(i%topics)
				if err := tr.Track(ctx, topic, "t"+strconv.Itoa(i), "p"+strconv.Itoa(i), nil); err != nil {
					t.Fatal(err)
				}
			}
			before := h.count(removeAllScript)
			start := time.Now()
			tr.Drain(ctx)
			took := time.Since(start)
			calls := h.count(removeAllScript) - before
			t.Logf("%s: drained %d presences on %d topics in %v, %d removal calls", tc.name, n, topics, took.Round(time.Millisecond), calls)
			mu.Lock()
			defer mu.Unlock()
			if leaves != n {
				t.Fatalf("%d leaves published, want %d", leaves, n)
			}
			for i := range topics {
				if got := listRefs(t, s, "room:"+strconv.Itoa(i)); len(got) != 0 {
					t.Fatalf("room:%d still has %d presences", i, len(got))
				}
			}
			if want := topics * (1 + n/topics/redisRemoveBatch) * 2; tc.batched && calls > want {
				t.Fatalf("%d removal calls (EVALSHA and EVAL), want at most %d", calls, want)
			}
		})
	}
}

// gatedUpdate is a Memory store whose Update waits while the gate is
// shut (a slow Redis).
type gatedUpdate struct {
	*Memory
	gate chan struct{}
}

func (s *gatedUpdate) Update(ctx context.Context, topic, key string, body []byte, refs, tags []string) ([]Presence, []Presence, error) {
	<-s.gate
	return s.Memory.Update(ctx, topic, key, body, refs, tags)
}

// 8. A control event does not hold up the broker's delivery while the
// store is slow: HandleControl returns at once and the update follows;
// past the queue, events are dropped and counted.
func TestTrackerControlOffTheDeliveryPath(t *testing.T) {
	st := &gatedUpdate{Memory: NewMemory(), gate: make(chan struct{})}
	l := &diffLog{}
	tr := NewTracker(Config{Window: time.Millisecond}, st, l.publish, nil)
	t.Cleanup(func() { tr.Drain(context.Background()) })
	ctx := context.Background()
	_ = tr.Track(ctx, "room:c", "t1", "p", nil)
	waitFor(t, "the join", func() bool { return len(l.all()) == 1 })
	handled := make(chan struct{})
	go func() {
		tr.HandleControl("room:c", []byte(`{"key":"p","meta":{"s":1}}`))
		close(handled)
	}()
	waitFor(t, "HandleControl to return while the store is slow", func() bool {
		select {
		case <-handled:
			return true
		default:
			return false
		}
	})
	// The worker is stuck in Update: its queue fills, then events drop.
	for range controlQueue + 2 {
		tr.HandleControl("room:c", []byte(`{"key":"p","meta":{"s":2}}`))
	}
	if n := counter(t, tr.m.controlDropped); n < 1 {
		t.Fatalf("dropped %v control events, want at least 1", n)
	}
	close(st.gate)
	waitFor(t, "the update's diff", func() bool {
		for _, d := range l.all() {
			for _, m := range d.Joins["p"].Metas {
				if m["s"] == 1.0 {
					return true
				}
			}
		}
		return false
	})
}

// keysOf returns the keys of "key/ref" strings.
func keysOf(refs []string) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i], _, _ = strings.Cut(r, "/")
	}
	return out
}
