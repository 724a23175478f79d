package presence

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// bigLeaves is n presences of about size bytes each.
func bigLeaves(n, size int) []Presence {
	ps := make([]Presence, n)
	for i := range ps {
		ref := fmt.Sprint("r", i)
		ps[i] = Presence{Key: fmt.Sprint("k", i), Ref: ref, Meta: withRefs(ref, "", []byte(`"pad":"`+strings.Repeat("x", size)+`"`))}
	}
	return ps
}

// heldTracker is a tracker whose broker refuses, with one presence held
// on each topic given, and the topics OnLost was called with.
func heldTracker(t *testing.T, topics ...string) (*Tracker, *diffLog, func() []string) {
	t.Helper()
	cfg := NewConfig()
	cfg.Timeout = 50e6
	tr, l := newTestTracker(t, cfg)
	var (
		mu   sync.Mutex
		lost []string
	)
	tr.OnLost = func(topic string) {
		mu.Lock()
		lost = append(lost, topic)
		mu.Unlock()
	}
	l.setFail(true)
	// Before the tracker's Drain (cleanups run last first): a drain
	// waits for held diffs while the broker refuses.
	t.Cleanup(func() { l.setFail(false) })
	for i, topic := range topics {
		if err := tr.Track(context.Background(), topic, "t0", "p0", nil); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the diff refused", func() bool { return counter(t, tr.m.diffRetries) >= float64(i+1) })
	}
	return tr, l, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), lost...)
	}
}

// A held topic's bytes are checked as changes queue behind its held diffs,
// not only when a send fails: past heldMaxBytes (in far fewer than
// heldMaxPresences changes) it drops them at once and goes to refresh.
func TestTrackerHeldBytesCheckedWhileQueueing(t *testing.T) {
	tr, l, lost := heldTracker(t, "room:b")
	ps := bigLeaves(heldMaxBytes/1000+10, 1000) // > 1 MiB in about 1,060 changes
	tr.Leaves("room:b", ps)
	if n := counter(t, tr.m.diffsLost); n < 1 {
		t.Fatalf("diffs_lost = %v right after %d bytes queued behind a held diff, want ≥ 1", n, presenceBytes(ps))
	}
	if n := gaugeValue(t, tr.m.heldBytes); n != 0 {
		t.Fatalf("held bytes %v after the drop, want 0", n)
	}
	l.setFail(false)
	waitFor(t, "the refresh", func() bool { return len(lost()) == 1 })
	if got := lost(); got[0] != "room:b" {
		t.Fatalf("refreshed %v", got)
	}
}

// Past the node's held-bytes budget a held topic goes straight to
// refresh, though each topic is within its own bounds; the others keep
// their held diffs and send them once the broker answers.
func TestTrackerNodeHeldBytesBudget(t *testing.T) {
	tr, l, lost := heldTracker(t, "room:a", "room:b")
	tr.mu.Lock()
	tr.heldBudget = 8 << 10
	tr.mu.Unlock()
	tr.Leaves("room:a", bigLeaves(5, 1000))
	if n := counter(t, tr.m.diffsLost); n != 0 {
		t.Fatalf("diffs_lost = %v within the budget", n)
	}
	tr.Leaves("room:b", bigLeaves(5, 1000))
	if n := counter(t, tr.m.diffsLost); n < 1 {
		t.Fatalf("diffs_lost = %v past the node's budget, want ≥ 1", n)
	}
	if n := gaugeValue(t, tr.m.heldBytes); n < 5000 || n > 8<<10 {
		t.Fatalf("held bytes %v after room:b's drop, want room:a's (about 5 KB)", n)
	}
	l.setFail(false)
	waitFor(t, "room:b's refresh and room:a's diffs", func() bool {
		return len(lost()) == 1 && gaugeValue(t, tr.m.heldBytes) == 0
	})
	if got := lost(); got[0] != "room:b" {
		t.Fatalf("refreshed %v, want room:b", got)
	}
	sent := 0
	for _, d := range l.all() {
		if d.Topic == "room:b" {
			t.Fatalf("room:b published %s after its drop", d.Raw)
		}
		sent += len(d.Leaves)
	}
	if sent != 5 {
		t.Fatalf("room:a's published leaves: %d keys, want 5", sent)
	}
}
