package presence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// setFail makes the diff log refuse (true) or take (false) what is
// published.
func (l *diffLog) setFail(fail bool) {
	l.mu.Lock()
	l.fail = fail
	l.mu.Unlock()
}

// A diff the broker refuses is held and sent again, first, once the broker
// takes it: changes made meanwhile follow it, in order.
func TestTrackerHoldsARefusedDiff(t *testing.T) {
	cfg := NewConfig()
	cfg.Timeout = 50e6
	tr, l := newTestTracker(t, cfg)
	ctx := context.Background()
	if err := tr.Track(ctx, "room:h", "a", "alice", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "alice's join", func() bool { return len(l.all()) == 1 })
	l.setFail(true)
	tr.Untrack(ctx, "room:h", "a")
	waitFor(t, "the leave to be refused", func() bool { return counter(t, tr.m.diffRetries) >= 1 })
	if err := tr.Track(ctx, "room:h", "b", "bob", nil); err != nil {
		t.Fatal(err)
	}
	l.setFail(false)
	waitFor(t, "the held leave and bob's join", func() bool { return len(l.all()) == 3 })
	got := l.all()
	if _, ok := got[1].Leaves["alice"]; !ok || len(got[1].Joins) != 0 {
		t.Fatalf("second diff %s, want alice's leave", got[1].Raw)
	}
	if _, ok := got[2].Joins["bob"]; !ok {
		t.Fatalf("third diff %s, want bob's join", got[2].Raw)
	}
	if n := counter(t, tr.m.diffsLost); n != 0 {
		t.Fatalf("diffs_lost = %v, want 0", n)
	}
}

// Past the bound of what is held for a topic, the held diffs are dropped
// and, once the broker answers, every node is asked (one control event)
// to send the topic's subscribers the whole state; a node receiving it
// calls OnLost. Changes made after it still go out as diffs.
func TestTrackerPastTheHeldBoundAsksEveryNodeToRefresh(t *testing.T) {
	cfg := NewConfig()
	cfg.Timeout = 50e6
	cfg.MaxPerTopic = 2 * heldMaxPresences
	tr, l := newTestTracker(t, cfg)
	var (
		mu       sync.Mutex
		controls []string
		lost     []string
	)
	tr.Control = func(ctx context.Context, topic string, payload []byte) error {
		l.mu.Lock()
		fail := l.fail
		l.mu.Unlock()
		if fail {
			return errors.New("broker down")
		}
		mu.Lock()
		controls = append(controls, string(payload))
		mu.Unlock()
		tr.HandleControl(topic, payload) // the broker delivers it to this node too
		return nil
	}
	tr.OnLost = func(topic string) {
		mu.Lock()
		lost = append(lost, topic)
		mu.Unlock()
	}
	ctx := context.Background()
	l.setFail(true)
	if err := tr.Track(ctx, "room:b", "t0", "p0", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first diff to be refused", func() bool { return counter(t, tr.m.diffRetries) >= 1 })
	for i := 1; i <= heldMaxPresences+1; i++ {
		if err := tr.Track(ctx, "room:b", fmt.Sprint("t", i), fmt.Sprint("p", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Checked as each change queues while a retry is due, or when an
	// attempt in flight meanwhile (on a loaded machine) fails.
	waitFor(t, "diffs_lost ≥ 1 past the bound", func() bool { return counter(t, tr.m.diffsLost) >= 1 })
	l.setFail(false)
	waitFor(t, "the refresh to reach OnLost", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lost) == 1
	})
	mu.Lock()
	if len(controls) != 1 || controls[0] != `{"refresh":true}` || lost[0] != "room:b" {
		t.Fatalf("controls %q, lost %q", controls, lost)
	}
	mu.Unlock()
	if n := len(l.all()); n != 0 {
		t.Fatalf("%d diffs published, want none (the state replaces them)", n)
	}
	tr.Untrack(ctx, "room:b", "t0")
	waitFor(t, "a later leave", func() bool { return len(l.all()) == 1 })
	if _, ok := l.all()[0].Leaves["p0"]; !ok {
		t.Fatalf("later diff %s", l.all()[0].Raw)
	}
	if n := counter(t, tr.m.refreshes); n != 1 {
		t.Fatalf("refreshes = %v, want 1", n)
	}
}

// A batch larger than MaxDiffBytes goes out as several diffs, each within
// the bound, joins before leaves, together naming every change once.
func TestTrackerSplitsALargeDiff(t *testing.T) {
	cfg := NewConfig()
	cfg.MaxDiffBytes = 8 << 10
	cfg.MaxMetaBytes = 1024
	cfg.Window = 200e6
	tr, l := newTestTracker(t, cfg)
	ctx := context.Background()
	meta := []byte(`{"pad":"` + strings.Repeat("x", 200) + `"}`)
	const n = 300
	for i := range n {
		if err := tr.Track(ctx, "room:s", fmt.Sprint("t", i), fmt.Sprint("p", i), meta); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n / 2 {
		tr.Untrack(ctx, "room:s", fmt.Sprint("t", i))
	}
	joined, left := map[string]int{}, map[string]int{}
	waitFor(t, "every change", func() bool {
		clear(joined)
		clear(left)
		for _, d := range l.all() {
			for k := range d.Joins {
				joined[k]++
			}
			for k := range d.Leaves {
				left[k]++
			}
		}
		return len(joined) == n && len(left) == n/2
	})
	diffs := l.all()
	if len(diffs) < 2 {
		t.Fatalf("%d diffs, want the batch split", len(diffs))
	}
	seenLeave := false
	for i, d := range diffs {
		if len(d.Raw) > cfg.MaxDiffBytes {
			t.Fatalf("diff %d is %d bytes, over %d", i, len(d.Raw), cfg.MaxDiffBytes)
		}
		if len(d.Leaves) > 0 {
			seenLeave = true
		}
		if seenLeave && len(d.Joins) > 0 {
			t.Fatalf("diff %d has joins after a leave", i)
		}
		var v map[string]json.RawMessage
		if json.Unmarshal([]byte(d.Raw), &v) != nil || v["joins"] == nil || v["leaves"] == nil {
			t.Fatalf("diff %d: %s", i, d.Raw)
		}
	}
	for k, c := range joined {
		if c != 1 {
			t.Fatalf("%s joined %d times", k, c)
		}
	}
}
