package backends

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestWebhookReadyFollowsBreaker: a webhook is ready until its breaker
// opens, not ready for the cool-down, ready again after it (the next call
// probes), and not ready once closed.
func TestWebhookReadyFollowsBreaker(t *testing.T) {
	var healthy atomic.Bool
	g := &hookGame{secret: testSecret, answer: func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		if !healthy.Load() {
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, `{"reply":{"status":"ok"}}`)
	}}
	base, _ := serveHook(t, g)
	clock := newFakeClock()
	e := newHook(t, signedSpec(t, base, "retries=0&breaker_failures=3&breaker_cooldown=1m"), func(c *WebhookConfig) { c.now = clock.Now })
	ctx := context.Background()
	if err := e.Ready(ctx); err != nil {
		t.Fatalf("Ready before any call: %v", err)
	}
	for range 3 {
		_, _ = e.HandleIn(ctx, call("e", `{}`))
	}
	wantErr(t, e.Ready(ctx), ErrUnavailable)
	clock.Advance(59 * time.Second)
	wantErr(t, e.Ready(ctx), ErrUnavailable)
	clock.Advance(2 * time.Second)
	if err := e.Ready(ctx); err != nil {
		t.Fatalf("Ready after the cool-down: %v", err)
	}
	healthy.Store(true)
	if _, err := e.HandleIn(ctx, call("e", `{}`)); err != nil {
		t.Fatalf("probe: %v", err)
	}
	if err := e.Ready(ctx); err != nil {
		t.Fatalf("Ready after the probe succeeded: %v", err)
	}
	_ = e.Close()
	wantErr(t, e.Ready(ctx), ErrUnavailable, ErrClosed)
}
