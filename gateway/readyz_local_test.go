package gateway

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/phxgate/phxgate/pubsub/redistest"
)

// /readyz?local=1 is the probe for a load balancer: it reports only what
// is the node's own (draining), not the dependencies every node shares, so
// a Redis outage does not take every node out of the Service at once.
// Plain /readyz still reports them.
func TestReadyzLocalIgnoresSharedDependencies(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	// A client that never answers its 1012 holds the drain open for
	// close_timeout: long enough to ask the probe while draining.
	s := redisNode(t, rs.URL(), func(c *Config) { c.CloseTimeout = 5 * time.Second })
	get := func(path string) int {
		resp, err := http.Get("http://" + s.AdminAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if a, b := get("/readyz"), get(ReadyzLocalPath); a != http.StatusOK || b != http.StatusOK {
		t.Fatalf("/readyz %d, %s %d with Redis up, want 200 and 200", a, ReadyzLocalPath, b)
	}
	rs.Kill()
	waitFor(t, 10*time.Second, func() bool { return get("/readyz") == http.StatusServiceUnavailable }, "/readyz 503 with Redis killed")
	if code := get(ReadyzLocalPath); code != http.StatusOK {
		t.Errorf("%s = %d with Redis killed, want 200 (Redis is shared by every node)", ReadyzLocalPath, code)
	}
	open(t, s.Addr())
	// The 101 is written before the socket joins its poller: a drain that
	// starts in between closes it at once and ends before the probe.
	waitFor(t, 10*time.Second, func() bool { return s.Connections() == 1 }, "the socket on its poller")
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	waitFor(t, 10*time.Second, func() bool { return s.draining.Load() }, "the drain to start")
	if code := get(ReadyzLocalPath); code != http.StatusServiceUnavailable {
		t.Errorf("%s = %d while draining, want 503", ReadyzLocalPath, code)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}
