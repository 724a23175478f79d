package presence

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// leftRefs returns the refs of key's leaves in l's diffs of topic.
func leftRefs(l *diffLog, topic, key string) []string {
	var out []string
	for _, d := range l.all() {
		if d.Topic != topic {
			continue
		}
		for _, m := range d.Leaves[key].Metas {
			if ref, ok := m["phx_ref"].(string); ok {
				out = append(out, ref)
			}
		}
	}
	return out
}

// joinedRefs returns the refs of key's joins in l's diffs of topic.
func joinedRefs(l *diffLog, topic, key string) []string {
	var out []string
	for _, d := range l.all() {
		if d.Topic != topic {
			continue
		}
		for _, m := range d.Joins[key].Metas {
			if ref, ok := m["phx_ref"].(string); ok {
				out = append(out, ref)
			}
		}
	}
	return out
}

// A Track whose store answer is lost (the script applied) and whose
// immediate undo fails too leaves its presence stored until the restore
// loop's sweep; meanwhile another joiner's State read lists it. The
// sweep's removal must publish its leave, or those clients list the
// phantom for good (the failed joiner rejoins under a fresh ref). Before
// the fix the sweep removed it without a leave.
func TestTrackerSweptAddPublishesItsLeave(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	var h losingHook
	c.AddHook(&h)
	s := redisStore(t, c, "a")
	tr, l := startTracker(t, Config{Window: time.Millisecond}, s)
	h.lose(addScript, 1, true)   // stored, answer lost
	h.lose(undoScript, 1, false) // the immediate undo fails
	if err := tr.Track(ctx, "room:z", "t1", "p", nil); err == nil {
		t.Fatal("track reported success")
	}
	// Another joiner reads the state now: it lists the phantom.
	ps, err := tr.List(ctx, "room:z")
	if err != nil || len(ps) != 1 {
		t.Fatalf("list %v %v, want the phantom", refsOf(ps), err)
	}
	phantom := ps[0].Ref
	waitFor(t, "the sweep", func() bool { return len(listRefs(t, s, "room:z")) == 0 })
	waitFor(t, "the phantom's leave", func() bool { return slices.Contains(leftRefs(l, "room:z", "p"), phantom) })
	if j := joinedRefs(l, "room:z", "p"); len(j) != 0 {
		t.Errorf("joins %v published for a failed track", j)
	}
}

// afterScript runs fn after each call of a script whose answer a
// losingHook lost, before the caller gets the error. Added before a losingHook (so that it wraps
// it), it runs fn between a script's run whose answer is lost and the
// undo of it: what another node does meanwhile.
type afterScript struct {
	sha string
	fn  func(args []any) // the call's arguments
}

func (a *afterScript) DialHook(next redis.DialHook) redis.DialHook { return next }
func (a *afterScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (a *afterScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if name := strings.ToLower(cmd.Name()); name == "evalsha" || name == "eval" {
			if sha, _ := cmd.Args()[1].(string); sha == a.sha && errors.Is(err, errLostAnswer) {
				a.fn(cmd.Args())
			}
		}
		return err
	}
}

// The same when the immediate undo succeeds: a group of Tracks stored by
// one AddAll whose answer is lost, listed by another joiner's State read
// before the undo, are removed by it; every one of them must leave, and
// none join. Before the fix the undo published nothing.
func TestTrackerUndoneGroupAddPublishesItsLeaves(t *testing.T) {
	c := startRedis(t)
	ctx := context.Background()
	var mu sync.Mutex
	var listed []string // refs a State read found between the add and its undo
	reader := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	t.Cleanup(func() { reader.Close() })
	s := redisStore(t, c, "a")
	other := redisStore(t, reader, "b") // another node's State read
	c.AddHook(&afterScript{sha: addScript.Hash(), fn: func([]any) {
		ps, err := other.List(context.Background(), "room:g")
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		for _, p := range ps {
			listed = append(listed, p.Ref)
		}
		mu.Unlock()
	}})
	var h losingHook
	c.AddHook(&h)
	tr, l := startTracker(t, Config{Window: time.Millisecond}, s)

	// The first Track holds the topic (its store call waits at gate)
	// while the others queue behind it: the next holder stores them in
	// one AddAll, whose answer is lost.
	gate := make(chan struct{})
	first := make(chan struct{})
	var once sync.Once
	tr.hookStored = func(string) {
		once.Do(func() {
			close(first)
			<-gate
		})
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	wg.Add(1)
	go func() { defer wg.Done(); errs[0] = tr.Track(ctx, "room:g", "t0", "p0", nil) }()
	<-first
	calls := h.count(addScript)
	const group = 3
	for i := 1; i <= group; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = tr.Track(ctx, "room:g", fmt.Sprint("t", i), "p", nil)
		}()
	}
	waitFor(t, "the group queued", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.adds["room:g"]) == group
	})
	h.lose(addScript, 1, true) // the group's add: stored, answer lost
	close(gate)
	wg.Wait()
	if errs[0] != nil {
		t.Fatalf("first track: %v", errs[0])
	}
	for i := 1; i <= group; i++ {
		if errs[i] == nil {
			t.Fatalf("track %d reported success", i)
		}
	}
	if n := h.count(addScript) - calls; n != 1 {
		t.Fatalf("%d add calls for the group, want 1", n)
	}
	stored := listRefs(t, s, "room:g")
	if len(stored) != 1 || !strings.HasPrefix(stored[0], "p0/") {
		t.Fatalf("stored after the undo: %v, want the first track only", stored)
	}
	mu.Lock()
	phantoms := slices.DeleteFunc(slices.Clone(listed), func(ref string) bool { return "p0/"+ref == stored[0] })
	mu.Unlock()
	// The read saw the first track and the group.
	if len(phantoms) != group {
		t.Fatalf("the read between the add and its undo listed %d phantoms, want %d", len(phantoms), group)
	}
	waitFor(t, "every phantom's leave", func() bool {
		left := leftRefs(l, "room:g", "p")
		for _, ref := range phantoms {
			if !slices.Contains(left, ref) {
				return false
			}
		}
		return true
	})
	if j := joinedRefs(l, "room:g", "p"); len(j) != 0 {
		t.Errorf("joins %v published for failed tracks", j)
	}
	if left := leftRefs(l, "room:g", "p0"); len(left) != 0 {
		t.Errorf("the stored track left: %v", left)
	}
}
