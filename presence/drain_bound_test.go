package presence

import (
	"context"
	"fmt"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// Drain's final flush stops at its context's end: a broker that holds
// every publish until the publish's own context ends must not keep the
// drain past the caller's (each diff would wait Config.Timeout, an hour
// here).
func TestTrackerDrainFlushStopsAtContextEnd(t *testing.T) {
	entered := make(chan struct{}, 64)
	pub := func(ctx context.Context, _ string, _ []byte) error {
		entered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	tr := NewTracker(Config{Window: time.Hour, Timeout: time.Minute}, NewMemory(), pub, nil)
	bg := context.Background()
	for i := range 10 {
		if err := tr.Track(bg, fmt.Sprintf("room:%d", i), "t", "p", nil); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(bg)
	drained := make(chan struct{})
	go func() { tr.Drain(ctx); close(drained) }()
	<-entered // the flush is now publishing
	cancel()
	select {
	case <-drained:
	case <-time.After(30 * time.Second):
		t.Fatal("Drain still flushing after its context ended")
	}
}

func gaugeValue(t *testing.T, g interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// A presence untracked between the drain's listing and its removal of the
// topic is counted out once: phxgate_presence_tracked never goes below
// zero.
func TestTrackerDrainTopicCountsOnlyWhatItRemoves(t *testing.T) {
	l := &diffLog{}
	tr := NewTracker(Config{Window: time.Hour}, NewMemory(), l.publish, nil)
	ctx := context.Background()
	for _, tag := range []string{"t1", "t2"} {
		if err := tr.Track(ctx, "room:g", tag, tag, nil); err != nil {
			t.Fatal(err)
		}
	}
	tr.Untrack(ctx, "room:g", "t1") // a paced close, after the drain listed t1
	br, ok := tr.store.(BatchRemover)
	if !ok {
		t.Fatal("Memory is not a BatchRemover")
	}
	tr.drainTopic(ctx, br, "room:g", []string{"t1", "t2"})
	if got := gaugeValue(t, tr.m.tracked); got != 0 {
		t.Errorf("phxgate_presence_tracked = %v after both presences left, want 0", got)
	}
	tr.Drain(ctx)
}
