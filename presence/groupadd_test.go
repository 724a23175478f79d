package presence

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// One AddAll stores presences in order as consecutive Adds would: each
// gets its own refusal reason (the earlier ones of the call count toward
// the limits of the later ones).
func TestRedisAddAllRefusesEachByItsLimit(t *testing.T) {
	c := startRedis(t)
	var h losingHook
	c.AddHook(&h)
	s := startStore(t, c, "a", nil, nil, nil)
	ctx := context.Background()
	if err := s.Add(ctx, "room:b", "t0", pres("a", "r0"), testLimits); err != nil {
		t.Fatal(err)
	}
	calls := h.count(addScript)
	var ps []Tagged
	for i, key := range []string{"a", "a", "b", "c", "b"} {
		ps = append(ps, Tagged{Tag: fmt.Sprint("t", i+1), Presence: pres(key, fmt.Sprint("r", i+1))})
	}
	errs := s.AddAll(ctx, "room:b", ps, testLimits) // 2 metas a key, 3 presences
	want := []string{"", ReasonTooManyMetas, "", ReasonTooMany, ReasonTooMany}
	for i, err := range errs {
		if RefusalReason(err) != want[i] || (want[i] == "" && err != nil) {
			t.Errorf("add %d (%s): %v, want refusal %q", i+1, ps[i].Presence.Key, err, want[i])
		}
	}
	if n := h.count(addScript) - calls; n != 1 {
		t.Errorf("%d script calls for one AddAll", n)
	}
	if got := listRefs(t, s, "room:b"); strings.Join(got, ",") != "a/r0,a/r1,b/r3" {
		t.Errorf("stored %v", got)
	}
	if counts := c.HGetAll(ctx, s.countsKey("room:b")).Val(); counts["a"] != "2" || counts["b"] != "1" || len(counts) != 2 {
		t.Errorf("counts %v", counts)
	}
	s.mu.Lock()
	mine, held := s.mine["room:b"], len(s.held["room:b"])
	s.mu.Unlock()
	if mine != 3 || held != 3 {
		t.Errorf("mine %d, held %d; want 3 and 3", mine, held)
	}
}

// An AddAll whose answer is lost is undone, every presence of it by its
// tag; when the undo fails too, each tag is marked and undone later.
// Either way each presence the undo removes leaves (a State read may
// have listed it).
func TestRedisAddAllLostAnswerIsUndone(t *testing.T) {
	c := startRedis(t)
	var h losingHook
	c.AddHook(&h)
	var leaves leaveLog
	s := startStore(t, c, "a", &leaves, nil, nil)
	ctx := context.Background()
	if err := s.Add(ctx, "room:l", "base", pres("b", "r0"), raceLimits); err != nil {
		t.Fatal(err)
	}
	batch := func(prefix string) []Tagged {
		var ps []Tagged
		for i := range 3 {
			ps = append(ps, Tagged{Tag: fmt.Sprint(prefix, i), Presence: pres(fmt.Sprint(prefix, i), fmt.Sprint(prefix, "r", i))})
		}
		return ps
	}
	for _, undoFails := range []bool{false, true} {
		h.lose(addScript, 1, true) // stored, answer lost
		if undoFails {
			h.lose(undoScript, 1, false)
		}
		for i, err := range s.AddAll(ctx, "room:l", batch(fmt.Sprint("u", undoFails)), raceLimits) {
			if err == nil || errors.Is(err, ErrRefused) {
				t.Fatalf("undo fails %v: add %d: %v, want the lost answer", undoFails, i, err)
			}
		}
		if undoFails {
			s.mu.Lock()
			marked := 0
			if m := s.undo["room:l"]; m != nil {
				marked = len(m.tags)
			}
			s.mu.Unlock()
			if marked != 3 {
				t.Fatalf("%d tags marked, want 3", marked)
			}
		}
		waitFor(t, "only the base presence stored", func() bool {
			got := listRefs(t, s, "room:l")
			return len(got) == 1 && got[0] == "b/r0"
		})
		waitFor(t, "the counts back", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.mine["room:l"] == 1 && len(s.undo) == 0
		})
		want := refsOf(presences(batch(fmt.Sprint("u", undoFails))))
		waitFor(t, fmt.Sprintf("the leaves of %v", want), func() bool {
			left := leaves.get("room:l")
			for _, r := range want {
				if !slices.Contains(left, r) {
					return false
				}
			}
			return true
		})
	}
	if left := leaves.get("room:l"); len(left) != 6 {
		t.Errorf("leaves %v, want the 6 undone", left)
	}
	if counts := c.HGetAll(ctx, s.countsKey("room:l")).Val(); len(counts) != 1 || counts["b"] != "1" {
		t.Errorf("counts %v", counts)
	}
}

func presences(ts []Tagged) []Presence {
	out := make([]Presence, len(ts))
	for i, a := range ts {
		out[i] = a.Presence
	}
	return out
}

// slowRedis delays every command by rtt: a Redis far away, or loaded.
type slowRedis struct{ rtt time.Duration }

func (s slowRedis) DialHook(next redis.DialHook) redis.DialHook { return next }
func (s slowRedis) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		time.Sleep(s.rtt)
		return next(ctx, cmd)
	}
}
func (s slowRedis) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		time.Sleep(s.rtt)
		return next(ctx, cmds)
	}
}

// oneByOne hides a store's AddAll: Tracks stored one store call each,
// as before group commit (for the comparison).
type oneByOne struct{ Store }

// A herd of PHXGATE_HERD_N joins (2,000 by default) on one topic of one
// node, on a Redis PHXGATE_HERD_RTT away (2ms by default), each Track
// within a call timeout of 5 s: the Tracks queued while one holds the
// topic are stored together (group commit), each with its own answer.
// Every key has 3 tabs and max_metas_per_key is 2: a third of the Tracks
// are refused (too_many_metas), the rest stored; a second topic's herd
// of distinct keys meets max_per_topic. Whatever the load, each join's
// answer is what the store did with it (a Track past its call timeout,
// busy, stored nothing and counts toward no limit), and every presence
// stored is announced once, under the ref its Track answered. With
// PHXGATE_HERD_N set, the log compares one store call per Track (before
// group commit).
func TestTrackerHerdGroupCommitRedis(t *testing.T) {
	n := 2001
	_, compare := os.LookupEnv("PHXGATE_HERD_N")
	if v, err := strconv.Atoi(os.Getenv("PHXGATE_HERD_N")); err == nil && v > 0 {
		n = v - v%3
	}
	rtt := 2 * time.Millisecond
	if v, err := time.ParseDuration(os.Getenv("PHXGATE_HERD_RTT")); err == nil {
		rtt = v
	}
	c := startRedis(t)
	var h losingHook
	c.AddHook(&h)
	c.AddHook(slowRedis{rtt})
	s := startStore(t, c, "a", nil, nil, nil)
	run := func(name string, st Store, topic string, lim Config, key func(i int) string) (errs []error) {
		t.Helper()
		l := &diffLog{}
		lim.Window, lim.Timeout = 10*time.Millisecond, 5*time.Second
		tr := NewTracker(lim, st, l.publish, nil)
		calls := h.count(addScript)
		errs = make([]error, n)
		tracked := make([]Presence, n)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // call_timeout
				defer cancel()
				tracked[i], errs[i] = tr.TrackPresence(ctx, topic, fmt.Sprint("t", i), key(i), nil)
			}()
		}
		wg.Wait()
		took := time.Since(start)
		busy := 0
		for _, err := range errs {
			if errors.Is(err, ErrBusy) {
				busy++
			}
		}
		t.Logf("%s: %d joins on one topic, Redis %v away: %v; %d store calls; %d past the call timeout (busy)",
			name, n, rtt, took, h.count(addScript)-calls, busy)
		// Each join's answer is what the store did with it: stored
		// under its tag with the ref answered, or (refused, busy)
		// nothing stored.
		ctx := context.Background()
		stored := c.HGetAll(ctx, s.hashKey(topic)).Val()
		var want []string
		for i, err := range errs {
			v, ok := stored[fmt.Sprint("t", i)]
			if ok != (err == nil) {
				t.Errorf("%s: track %d answered %v, stored %v", name, i, err, ok)
				continue
			}
			if err != nil {
				continue
			}
			if p, _, _ := decodeValue(v); p.Ref != tracked[i].Ref || p.Key != key(i) {
				t.Errorf("%s: track %d answered %s/%s, stored %s/%s", name, i, key(i), tracked[i].Ref, p.Key, p.Ref)
			}
			want = append(want, key(i)+"/"+tracked[i].Ref)
		}
		if len(stored) != len(want) {
			t.Errorf("%s: %d presences stored, %d tracks answered stored", name, len(stored), len(want))
		}
		// Every presence stored is announced once, and nothing leaves.
		slices.Sort(want)
		var published []string
		waitFor(t, "every join published", func() bool {
			published = published[:0]
			for _, d := range l.all() {
				for k, m := range d.Joins {
					for _, meta := range m.Metas {
						ref, _ := meta["phx_ref"].(string)
						published = append(published, k+"/"+ref)
					}
				}
			}
			return len(published) >= len(want)
		})
		slices.Sort(published)
		if !slices.Equal(published, want) {
			t.Errorf("%s: %d joins published, %d presences stored; the first differing: %v", name, len(published), len(want), firstDiff(published, want))
		}
		for _, d := range l.all() {
			if len(d.Leaves) > 0 {
				t.Errorf("%s: leaves published: %s", name, d.Raw)
			}
		}
		drain, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tr.Drain(drain)
		cancel()
		return errs
	}
	if compare {
		run("one store call per join", oneByOne{s}, "room:herd0", Config{MaxMetasPerKey: 2, MaxPerTopic: n}, func(i int) string { return fmt.Sprint("k", i/3) })
	}
	calls := h.count(addScript)
	errs := run("group commit", s, "room:herd", Config{MaxMetasPerKey: 2, MaxPerTopic: n}, func(i int) string { return fmt.Sprint("k", i/3) })
	if d := h.count(addScript) - calls; d > n/10 {
		t.Errorf("%d store calls for %d joins, want at most %d", d, n, n/10)
	}
	// Each key's first two Tracks that were tried are stored, any
	// other tried is refused.
	for k := 0; k < n; k += 3 {
		tried, stored, refused := 0, 0, 0
		for i := k; i < k+3; i++ {
			switch err := errs[i]; {
			case err == nil:
				stored++
			case RefusalReason(err) == ReasonTooManyMetas:
				refused++
			case errors.Is(err, ErrBusy):
				continue
			default:
				t.Fatalf("track %d: %v", i, err)
			}
			tried++
		}
		if stored != min(2, tried) || refused != tried-stored {
			t.Errorf("key k%d: %d tried (not busy), %d stored, %d refused (too_many_metas); want %d and %d",
				k/3, tried, stored, refused, min(2, tried), tried-min(2, tried))
		}
	}
	// Max per topic: distinct keys, room for half.
	errs = run("group commit, max_per_topic", s, "room:herd2", Config{MaxMetasPerKey: 2, MaxPerTopic: n / 2}, func(i int) string { return fmt.Sprint("k", i) })
	tried, stored, refused := 0, 0, 0
	for i, err := range errs {
		switch {
		case err == nil:
			stored++
		case RefusalReason(err) == ReasonTooMany:
			refused++
		case errors.Is(err, ErrBusy):
			continue
		default:
			t.Fatalf("track %d: %v", i, err)
		}
		tried++
	}
	if stored != min(n/2, tried) || refused != tried-stored {
		t.Errorf("%d tried (not busy), %d stored, %d refused (too_many_presences); want %d and %d", tried, stored, refused, min(n/2, tried), tried-min(n/2, tried))
	}
}

// firstDiff returns the first element of two sorted lists that differ
// (and the other's at that place).
func firstDiff(a, b []string) []string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return []string{a[i], b[i]}
		}
	}
	if len(a) > len(b) {
		return a[len(b):min(len(a), len(b)+1)]
	}
	return b[len(a):min(len(b), len(a)+1)]
}

// gatedBatch is a Memory with AddAll, whose call holding tag "slow"
// waits for gate (a slow store); it records each AddAll's tags.
type gatedBatch struct {
	*slowAdd
	mu    sync.Mutex
	calls [][]string
}

func (g *gatedBatch) AddAll(ctx context.Context, topic string, ps []Tagged, lim Limits) []error {
	tags := make([]string, len(ps))
	errs := make([]error, len(ps))
	for i, p := range ps {
		tags[i] = p.Tag
	}
	g.mu.Lock()
	g.calls = append(g.calls, tags)
	g.mu.Unlock()
	for i, p := range ps {
		errs[i] = g.slowAdd.Add(ctx, topic, p.Tag, p.Presence, lim)
	}
	return errs
}

// While one Track is stuck on a slow store, the Tracks queued behind it
// are stored by the next holder in one call, each with its own answer
// (one refused by its limit); one whose caller's deadline passes while
// it is queued gives up with ErrBusy, never stored.
func TestTrackerGroupCommitAnswersEach(t *testing.T) {
	st := &gatedBatch{slowAdd: newSlowAdd()}
	l := &diffLog{}
	tr := NewTracker(Config{Window: time.Millisecond, Timeout: time.Minute, MaxMetasPerKey: 1}, st, l.publish, nil)
	ctx := context.Background()
	slow := make(chan error, 1)
	go func() { slow <- tr.Track(ctx, "room:g", "slow", "s", nil) }()
	<-st.entered
	type answer struct {
		tag string
		err error
	}
	answers := make(chan answer, 4)
	for _, tc := range []struct{ tag, key string }{{"a", "x"}, {"b", "x"}, {"c", "y"}} {
		go func() { answers <- answer{tc.tag, tr.Track(ctx, "room:g", tc.tag, tc.key, nil)} }()
	}
	waitFor(t, "three Tracks queued", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.adds["room:g"]) == 3
	})
	qctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := tr.Track(qctx, "room:g", "late", "z", nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("Track past its deadline while queued: %v, want ErrBusy", err)
	}
	close(st.gate)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	got := map[string]error{}
	for range 3 {
		a := <-answers
		got[a.tag] = a.err
	}
	refusedX := 0
	for _, tag := range []string{"a", "b"} {
		if RefusalReason(got[tag]) == ReasonTooManyMetas {
			refusedX++
		} else if got[tag] != nil {
			t.Errorf("track %s: %v", tag, got[tag])
		}
	}
	if refusedX != 1 || got["c"] != nil {
		t.Errorf("answers %v, want one of a and b refused (too_many_metas), c stored", got)
	}
	st.mu.Lock()
	g, calls := st.calls, fmt.Sprint(st.calls)
	st.mu.Unlock()
	if len(g) != 2 || len(g[1]) != 3 {
		t.Errorf("store calls %s, want the slow one, then the three queued in one", calls)
	}
	for _, tag := range st.added() {
		if tag == "late" {
			t.Error("the Track that gave up was stored")
		}
	}
	ps, _ := tr.List(ctx, "room:g")
	if len(ps) != 3 {
		t.Errorf("listed %v, want slow, one of a and b, c", refsOf(ps))
	}
	tr.Drain(ctx)
}
