package gateway

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A Readier that ignores its context must not hang /readyz nor the ready
// gauge's check loop (which Shutdown waits for): backendsReady returns at
// the context's end, naming the engine that did not answer.
func TestBackendsReadyReturnsAtContextEnd(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s := &Server{readyChecks: []readyCheck{
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
