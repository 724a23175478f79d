package presence

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// diffLog is a Publish that keeps every diff, decoded.
type diffLog struct {
	mu    sync.Mutex
	diffs []decodedDiff
	fail  bool
}

type decodedDiff struct {
	Topic  string
	Joins  map[string]struct{ Metas []map[string]any } `json:"joins"`
	Leaves map[string]struct{ Metas []map[string]any } `json:"leaves"`
	Raw    string
}

func (l *diffLog) publish(_ context.Context, topic string, payload []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail {
		return errors.New("broker down")
	}
	var d decodedDiff
	if err := json.Unmarshal(payload, &d); err != nil {
		panic(err)
	}
	d.Topic, d.Raw = topic, string(payload)
	l.diffs = append(l.diffs, d)
	return nil
}

func (l *diffLog) all() []decodedDiff {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]decodedDiff(nil), l.diffs...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func newTestTracker(t *testing.T, cfg Config) (*Tracker, *diffLog) {
	t.Helper()
	l := &diffLog{}
	tr := NewTracker(cfg, NewMemory(), l.publish, nil)
	t.Cleanup(func() {
		// Bounded like a real drain: a test that failed while its broker
		// refused everything must not hang here waiting for it.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tr.Drain(ctx)
	})
	return tr, l
}

func TestEncodeStateAndDiff(t *testing.T) {
	ps := []Presence{
		{Key: "bob", Ref: "r1", Meta: withRefs("r1", "", []byte(`"a":1`))},
		{Key: `al"ice`, Ref: "r2", Meta: withRefs("r2", "", nil)},
		{Key: "bob", Ref: "r3", Meta: withRefs("r3", "r0", nil)},
	}
	if got, want := string(EncodeState(ps)), `{"bob":{"metas":[{"a":1,"phx_ref":"r1"},{"phx_ref":"r3","phx_ref_prev":"r0"}]},"al\"ice":{"metas":[{"phx_ref":"r2"}]}}`; got != want {
		t.Fatalf("state\n got %s\nwant %s", got, want)
	}
	if got, want := string(EncodeDiff(nil, ps[1:2])), `{"joins":{},"leaves":{"al\"ice":{"metas":[{"phx_ref":"r2"}]}}}`; got != want {
		t.Fatalf("diff\n got %s\nwant %s", got, want)
	}
	if r := NewRef(); len(r) != 16 || strings.ContainsAny(r, "+/=") {
		t.Fatalf("ref %q: want 16 url-safe characters", r)
	}
}

// A topic's changes within one window make one diff, in order; the
// window's leave of a presence joined in the same window is kept (a
// joiner may have seen it in presence_state).
func TestTrackerBatchesPerWindow(t *testing.T) {
	// 500 ms: long enough for a loaded machine to make the five changes within one window.
	tr, l := newTestTracker(t, Config{Window: 500 * time.Millisecond})
	ctx := context.Background()
	for i, k := range []string{"a", "b", "c"} {
		if err := tr.Track(ctx, "room:1", "tag"+k, k, []byte(`{"i":`+string(rune('0'+i))+`}`)); err != nil {
			t.Fatal(err)
		}
	}
	tr.Untrack(ctx, "room:1", "tagb")
	if err := tr.Track(ctx, "room:2", "tagz", "z", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two diffs", func() bool { return len(l.all()) == 2 })
	var d1 decodedDiff
	for _, d := range l.all() {
		if d.Topic == "room:1" {
			d1 = d
		}
	}
	if len(d1.Joins) != 3 || len(d1.Leaves) != 1 || d1.Leaves["b"].Metas[0]["phx_ref"] != d1.Joins["b"].Metas[0]["phx_ref"] {
		t.Fatalf("room:1 diff %s: want a, b, c joined and b left", d1.Raw)
	}
	if d1.Joins["a"].Metas[0]["i"] != 0.0 {
		t.Fatalf("meta lost its keys: %s", d1.Raw)
	}
	st, err := tr.State(ctx, "room:1")
	if err != nil {
		t.Fatal(err)
	}
	var state map[string]any
	if err := json.Unmarshal(st, &state); err != nil || len(state) != 2 || state["b"] != nil {
		t.Fatalf("state %s: want a and c", st)
	}
}

func TestTrackerLimits(t *testing.T) {
	tr, l := newTestTracker(t, Config{Window: time.Millisecond, MaxMetaBytes: 20, MaxMetasPerKey: 2, MaxPerTopic: 3})
	ctx := context.Background()
	cases := []struct {
		name, tag, key, meta, reason string
	}{
		{"ok", "t1", "p", `{}`, ""},
		{"second tab", "t2", "p", `{"x":1}`, ""},
		{"third tab of one player", "t3", "p", `{}`, ReasonTooManyMetas},
		{"meta too large", "t4", "q", `{"pad":"0123456789abcdef"}`, ReasonMetaTooLarge},
		{"not an object", "t5", "q", `[1]`, ReasonBadMeta},
		{"not JSON", "t6", "q", `{nope}`, ReasonBadMeta},
		{"another player", "t7", "q", ``, ""},
		{"topic full", "t8", "r", `{}`, ReasonTooMany},
	}
	for _, c := range cases {
		err := tr.Track(ctx, "room:l", c.tag, c.key, []byte(c.meta))
		if got := RefusalReason(err); got != c.reason || (c.reason == "" && err != nil) {
			t.Fatalf("%s: %v (reason %q), want %q", c.name, err, got, c.reason)
		}
	}
	for _, r := range []string{ReasonTooManyMetas, ReasonMetaTooLarge, ReasonTooMany} {
		if n := counter(t, tr.m.refused.WithLabelValues(r)); n != 1 {
			t.Fatalf("refused{%s} = %v, want 1", r, n)
		}
	}
	if n := counter(t, tr.m.refused.WithLabelValues(ReasonBadMeta)); n != 2 {
		t.Fatalf("refused{bad_meta} = %v, want 2", n)
	}
	// The three presences stored are announced (in one diff, or more if
	// the 1 ms window closed between Tracks).
	joins := func() int {
		n := 0
		for _, d := range l.all() {
			for _, p := range d.Joins {
				n += len(p.Metas)
			}
		}
		return n
	}
	waitFor(t, "the joins", func() bool { return joins() == 3 })
	k := len(l.all())
	var t1Ref any // t1's meta is {}, t2's {"x":1}
	for _, d := range l.all() {
		for _, m := range d.Joins["p"].Metas {
			if _, ok := m["x"]; !ok {
				t1Ref = m["phx_ref"]
			}
		}
	}
	// A refused presence is not untracked later (it was never ours): the
	// next diff is the leave of t1, untracked after it, and nothing else.
	tr.Untrack(ctx, "room:l", "t3")
	tr.Untrack(ctx, "room:l", "t1")
	waitFor(t, "the leave", func() bool { return len(l.all()) == k+1 })
	d := l.all()[k]
	if len(d.Joins) != 0 || len(d.Leaves) != 1 || len(d.Leaves["p"].Metas) != 1 || d.Leaves["p"].Metas[0]["phx_ref"] != t1Ref {
		t.Fatalf("diff %s, want t1's leave only (the refused untrack makes none)", d.Raw)
	}
}

// An update is one diff: the old metas in leaves, the new ones, with
// phx_ref_prev, in joins.
func TestTrackerUpdate(t *testing.T) {
	tr, l := newTestTracker(t, Config{Window: time.Millisecond})
	ctx := context.Background()
	_ = tr.Track(ctx, "room:u", "t1", "p", []byte(`{"s":"here"}`))
	_ = tr.Track(ctx, "room:u", "t2", "p", nil)
	// One diff, or two if the 1 ms window closed between the Tracks (a
	// loaded machine): the joins' refs in order either way.
	var joinRefs []any
	waitFor(t, "the joins", func() bool {
		joinRefs = joinRefs[:0]
		for _, d := range l.all() {
			for _, m := range d.Joins["p"].Metas {
				joinRefs = append(joinRefs, m["phx_ref"])
			}
		}
		return len(joinRefs) == 2
	})
	k := len(l.all())
	n, err := tr.Update(ctx, "room:u", "p", []byte(`{"s":"away"}`))
	if err != nil || n != 2 {
		t.Fatalf("update: %d, %v", n, err)
	}
	waitFor(t, "the update diff", func() bool { return len(l.all()) == k+1 })
	left := l.all()[k]
	if len(left.Leaves["p"].Metas) != 2 || len(left.Joins["p"].Metas) != 2 {
		t.Fatalf("update diff %s: want 2 leaves and 2 joins of p", left.Raw)
	}
	for i, m := range left.Joins["p"].Metas {
		if m["s"] != "away" || m["phx_ref_prev"] != joinRefs[i] || m["phx_ref"] == m["phx_ref_prev"] {
			t.Fatalf("updated meta %v", m)
		}
	}
	if n, err := tr.Update(ctx, "room:u", "nobody", []byte(`{}`)); n != 0 || err != nil {
		t.Fatalf("update of an absent player: %d, %v", n, err)
	}
	// Untracking after the update removes the updated presence.
	tr.Untrack(ctx, "room:u", "t1")
	waitFor(t, "the leave", func() bool { return len(l.all()) == k+2 })
	if got := l.all()[k+1].Leaves["p"].Metas[0]["phx_ref"]; got != left.Joins["p"].Metas[0]["phx_ref"] {
		t.Fatalf("leave of %v, want the updated ref", got)
	}
}

// Diffs of one topic leave in order even when publishing is slow: a
// change made during a publish goes in the next diff, after it.
func TestTrackerDiffOrderWithSlowPublish(t *testing.T) {
	var mu sync.Mutex
	var order []string
	gate, entered := make(chan struct{}), make(chan struct{})
	first := true
	pub := func(_ context.Context, topic string, payload []byte) error {
		mu.Lock()
		wait := first
		first = false
		mu.Unlock()
		if wait {
			close(entered)
			<-gate
		}
		mu.Lock()
		order = append(order, string(payload))
		mu.Unlock()
		return nil
	}
	tr := NewTracker(Config{Window: time.Millisecond}, NewMemory(), pub, nil)
	ctx := context.Background()
	_ = tr.Track(ctx, "room:o", "t1", "p", nil)
	<-entered // the first flush is now blocked in publish
	tr.Untrack(ctx, "room:o", "t1")
	// The leave's window passes while the join publishes: its timer finds
	// the flush running and leaves the leave to it.
	waitFor(t, "the leave's window", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		d := tr.topics["room:o"]
		return d != nil && d.timer == nil && len(d.leaves) == 1
	})
	close(gate)
	tr.Drain(ctx)
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 2 || !strings.Contains(order[0], `"joins":{"p"`) || !strings.Contains(order[1], `"leaves":{"p"`) {
		t.Fatalf("diffs %v: want the join then the leave", order)
	}
}

// Drain removes every presence of the node at once and publishes the
// leaves; later tracks are refused.
func TestTrackerDrain(t *testing.T) {
	l := &diffLog{}
	tr := NewTracker(Config{Window: time.Hour}, NewMemory(), l.publish, nil)
	ctx := context.Background()
	_ = tr.Track(ctx, "room:d", "t1", "p", nil)
	_ = tr.Track(ctx, "room:e", "t2", "q", nil)
	tr.Drain(ctx)
	var leaves int
	for _, d := range l.all() {
		leaves += len(d.Leaves)
	}
	if leaves != 2 {
		t.Fatalf("diffs after drain %v: want both leaves (window an hour: drain flushes)", l.all())
	}
	if ps, _ := tr.List(ctx, "room:d"); len(ps) != 0 {
		t.Fatalf("presences left: %v", ps)
	}
	if err := tr.Track(ctx, "room:d", "t3", "p", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("track after drain: %v", err)
	}
}

func counter(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// failingRemove is a Memory store whose Remove fails while fail is set.
// failingRemove hides Memory's RemoveAll (not a BatchRemover): a drain
// removes through Remove, which fails too, so a retry after the drain
// would show.
type failingRemove struct {
	Store
	mu      sync.Mutex
	fail    bool
	removes int
}

func (s *failingRemove) Remove(ctx context.Context, topic, tag string) (Presence, bool, error) {
	s.mu.Lock()
	s.removes++
	fail := s.fail
	s.mu.Unlock()
	if fail {
		return Presence{}, false, errors.New("store down")
	}
	return s.Store.Remove(ctx, topic, tag)
}

func (s *failingRemove) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removes
}

// A failed Untrack is retried until the store answers (the leave then
// goes out), and never after the tracker is drained.
func TestTrackerRetriesAFailedUntrack(t *testing.T) {
	st := &failingRemove{Store: NewMemory(), fail: true}
	l := &diffLog{}
	tr := NewTracker(Config{Window: time.Millisecond}, st, l.publish, nil)
	ctx := context.Background()
	_ = tr.Track(ctx, "room:r", "t1", "p", nil)
	tr.Untrack(ctx, "room:r", "t1")
	waitFor(t, "a retry", func() bool { return st.calls() >= 2 })
	st.mu.Lock()
	st.fail = false
	st.mu.Unlock()
	waitFor(t, "the leave", func() bool {
		for _, d := range l.all() {
			if len(d.Leaves) == 1 {
				return true
			}
		}
		return false
	})
	// Failing again for another presence, then drained: the retries stop.
	_ = tr.Track(ctx, "room:r", "t2", "q", nil)
	st.mu.Lock()
	st.fail = true
	st.mu.Unlock()
	tr.Untrack(ctx, "room:r", "t2")
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	tr.Drain(dctx)
	cancel()
	n := st.calls()
	time.Sleep(2500 * time.Millisecond) // two retry periods: none may come
	if got := st.calls(); got != n {
		t.Fatalf("%d Removes after the drain, want none", got-n)
	}
}

// gatedAdd is a Memory whose Add waits for gate.
type gatedAdd struct {
	*Memory
	entered chan struct{}
	gate    chan struct{}
}

func (s *gatedAdd) Add(ctx context.Context, topic, tag string, p Presence, lim Limits) error {
	close(s.entered)
	<-s.gate
	return s.Memory.Add(ctx, topic, tag, p, lim)
}

// A Track in flight when Drain starts (past its closed check) is drained
// too: nothing stays stored after Drain returned.
func TestTrackerDrainWaitsForTrackInFlight(t *testing.T) {
	st := &gatedAdd{Memory: NewMemory(), entered: make(chan struct{}), gate: make(chan struct{})}
	l := &diffLog{}
	tr := NewTracker(Config{Window: time.Millisecond}, st, l.publish, nil)
	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- tr.Track(ctx, "room:d", "t1", "p", nil) }()
	<-st.entered
	drained := make(chan struct{})
	go func() { tr.Drain(ctx); close(drained) }()
	waitFor(t, "the drain started", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return tr.closed
	})
	close(st.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	<-drained
	if ps, _ := st.List(ctx, "room:d"); len(ps) != 0 {
		t.Errorf("after Drain returned, room:d still lists %v", refsOf(ps))
	}
}
