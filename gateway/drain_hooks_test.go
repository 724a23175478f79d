package gateway

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A drain hook that ignores its context does not hold Shutdown past the
// hooks' share of the window: Shutdown goes on, and its error says so.
func TestShutdownDoesNotWaitForAStuckDrainHook(t *testing.T) {
	s, err := Start(t.Context(), testConfig(), WithConnect(testConnect(&recorder{})), WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	release, entered := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) })
	s.drainHooks = append(s.drainHooks, func(context.Context) { close(entered); <-release })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	<-entered
	select {
	case err := <-done:
		if !errors.Is(err, ErrDrainHooksRunning) {
			t.Errorf("Shutdown = %v, want ErrDrainHooksRunning", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown still waiting for a drain hook that ignores its context")
	}
}
