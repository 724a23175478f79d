package gateway

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// A Readier that ignores its context must not hang /readyz nor the ready
// gauge's check loop (which Shutdown waits for): backendsReady returns at
// the context's end, naming the engine that did not answer.
func TestBackendsReadyReturnsAtContextEnd(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s := &Server{readyChecks: []*readyCheck{
		{label: "grpc://fast", ready: func(context.Context) error { return nil }},
		{label: "grpc://stuck", ready: func(context.Context) error { <-release; return nil }},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.backendsReady(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) || err.Error() != "backend grpc://stuck: no answer: context deadline exceeded" {
			t.Errorf("backendsReady = %v, want the stuck engine named with the context's error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("backendsReady still waiting on an engine that ignores its context")
	}
}

// A Readier that ignores its context is asked again only once its check
// has returned: repeated /readyz calls meanwhile leave no goroutine each,
// and answer "still checking" (not ready).
func TestBackendsReadyOneCheckInFlight(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int64
	s := &Server{readyChecks: []*readyCheck{
		{label: "grpc://stuck", ready: func(context.Context) error { calls.Add(1); <-release; return nil }},
	}}
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		err := s.backendsReady(ctx)
		cancel()
		if err == nil {
			t.Fatalf("call %d: ready while the check has not answered", i)
		}
		if i > 0 && !errors.Is(err, errStillChecking) {
			t.Errorf("call %d: %v, want errStillChecking", i, err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("the engine was asked %d times while its first check ran, want 1", n)
	}
	close(release)
	waitFor(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return s.backendsReady(ctx) == nil
	}, "ready once the check returned")
	// That answer may have been the first check's; it has ended (flight
	// is cleared before its answer is out), so this asks the engine.
	if err := s.backendsReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n < 2 {
		t.Errorf("the engine was asked %d times, want again after its check returned", n)
	}
}
