package presence

import (
	"context"
	"fmt"
	"testing"
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
	h.lose(sweepScript, 2*attempts, false)
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
