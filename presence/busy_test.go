package presence

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// slowAdd is a Memory whose Add of tag "slow" holds until gate closes or
// its ctx ends (a slow store), and which records every Add and the time
// each had left.
type slowAdd struct {
	*Memory
	gate    chan struct{}
	entered chan struct{}

	mu   sync.Mutex
	tags []string
	left map[string]time.Duration
}

func newSlowAdd() *slowAdd {
	return &slowAdd{Memory: NewMemory(), gate: make(chan struct{}), entered: make(chan struct{}), left: map[string]time.Duration{}}
}

func (s *slowAdd) Add(ctx context.Context, topic, tag string, p Presence, lim Limits) error {
	s.mu.Lock()
	s.tags = append(s.tags, tag)
	if d, ok := ctx.Deadline(); ok {
		s.left[tag] = time.Until(d)
	}
	s.mu.Unlock()
	if tag == "slow" {
		close(s.entered)
		select {
		case <-s.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.Memory.Add(ctx, topic, tag, p, lim)
}

func (s *slowAdd) added() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tags...)
}

// A Track whose caller's deadline passes while it waits for the topic's
// lock (an earlier Track stuck on a slow store) returns then, having
// tried nothing: before the fix it waited for the lock past its
// deadline, then called the store with a ctx already ended (an Add of
// unknown outcome, undone after).
func TestTrackerTrackWaitEndsWithTheCallersContext(t *testing.T) {
	st := newSlowAdd()
	l := &diffLog{}
	tr := NewTracker(Config{Window: time.Millisecond, Timeout: time.Minute}, st, l.publish, nil)
	ctx := context.Background()
	slow := make(chan error, 1)
	go func() { slow <- tr.Track(ctx, "room:h", "slow", "a", nil) }()
	<-st.entered
	t.Cleanup(func() {
		select {
		case <-st.gate:
		default:
			close(st.gate)
		}
	})
	queued := make(chan error, 1)
	go func() {
		qctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		queued <- tr.Track(qctx, "room:h", "queued", "b", nil)
	}()
	var err error
	waitFor(t, "the queued Track to give up while the slow one holds the topic", func() bool {
		select {
		case err = <-queued:
			return true
		default:
			return false
		}
	})
	if !errors.Is(err, ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued Track: %v, want ErrBusy and the deadline", err)
	}
	if got := counter(t, tr.m.busy); got != 1 {
		t.Errorf("phxgate_presence_busy_total = %v, want 1", got)
	}
	close(st.gate)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if got := st.added(); len(got) != 1 || got[0] != "slow" {
		t.Errorf("the store saw Adds %v, want only the slow one", got)
	}
	if got := counter(t, tr.m.errors); got != 0 {
		t.Errorf("phxgate_presence_errors_total = %v, want 0", got)
	}
	tr.Drain(ctx)
}

// Config.Timeout bounds the store call from the moment the topic's lock
// is held: a Track queued behind one that used its whole timeout gets
// the whole timeout too, and succeeds.
func TestTrackerStoreTimeoutStartsWithTheLock(t *testing.T) {
	st := newSlowAdd()
	l := &diffLog{}
	const timeout = 200 * time.Millisecond
	tr := NewTracker(Config{Window: time.Millisecond, Timeout: timeout}, st, l.publish, nil)
	ctx := context.Background()
	slow := make(chan error, 1)
	go func() { slow <- tr.Track(ctx, "room:h", "slow", "a", nil) }()
	<-st.entered
	queued := make(chan error, 1)
	go func() { queued <- tr.Track(ctx, "room:h", "queued", "b", nil) }()
	if err := <-slow; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow Track: %v, want its timeout", err)
	}
	if err := <-queued; err != nil {
		t.Fatalf("queued Track: %v", err)
	}
	st.mu.Lock()
	left := st.left["queued"]
	st.mu.Unlock()
	if left < timeout/2 {
		t.Errorf("the queued Track's store call had %v left of its %v", left, timeout)
	}
	tr.Drain(ctx)
}

// The Redis store's Add waits for its own lock of the topic (held by a
// restore or an undo of it) within ctx, and tries nothing past it.
func TestRedisAddWaitEndsWithItsContext(t *testing.T) {
	c := startRedis(t)
	var h losingHook
	c.AddHook(&h)
	s := startStore(t, c, "a", nil, nil, nil)
	l := s.tlock("room:w")
	l.Lock() // a restore of the topic, stuck
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Add(ctx, "room:w", "t1", pres("p", "r1"), raceLimits) }()
	var err error
	waitFor(t, "the Add to give up", func() bool {
		select {
		case err = <-done:
			return true
		default:
			return false
		}
	})
	l.Unlock()
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Add: %v, want ErrBusy", err)
	}
	if n := h.count(addScript); n != 0 {
		t.Errorf("the add script ran %d times", n)
	}
	s.mu.Lock()
	mine, undo := len(s.mine), len(s.undo)
	s.mu.Unlock()
	if mine != 0 || undo != 0 {
		t.Errorf("after a busy Add: %d topics counted, %d undo marks", mine, undo)
	}
}
