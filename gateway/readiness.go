package gateway

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/phxgate/phxgate/backends"
)

// readyCheck is one route engine /readyz asks (backends.Readier).
type readyCheck struct {
	label string // the spec without its options, which may hold a secret
	ready func(context.Context) error

	// flight is the check running (nil: none): one at a time, joined by
	// whoever asks meanwhile, so an engine that ignores its context
	// costs one goroutine, not one per /readyz.
	mu     sync.Mutex
	flight *readyFlight
}

// readyFlight is one check of an engine; err is set before done closes.
type readyFlight struct {
	done chan struct{}
	err  error
}

// start returns the check in flight (joined: true), or starts one with
// ctx.
func (c *readyCheck) start(ctx context.Context) (f *readyFlight, joined bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flight != nil {
		return c.flight, true
	}
	f = &readyFlight{done: make(chan struct{})}
	c.flight = f
	go func() {
		err := c.ready(ctx)
		c.mu.Lock()
		c.flight = nil
		c.mu.Unlock()
		f.err = err
		close(f.done)
	}()
	return f, false
}

// errStillChecking is an engine's readiness when a check started by an
// earlier caller has not returned by the end of this one's context: not
// ready.
var errStillChecking = errors.New("still checking (an earlier check has not returned)")

// trackReady adds the engine of a route to what /readyz checks, once per
// spec, when it can tell whether its game is reachable.
func (s *Server) trackReady(spec string, b backends.Backend) {
	r, ok := b.(backends.Readier)
	if !ok {
		return
	}
	label, _, _ := strings.Cut(spec, "?")
	if slices.ContainsFunc(s.readyChecks, func(c *readyCheck) bool { return c.label == label }) {
		return
	}
	s.readyChecks = append(s.readyChecks, &readyCheck{label: label, ready: r.Ready})
}

// backendsReady asks every tracked engine at once and returns the first
// failure in configuration order (nil when all are ready). An engine
// already being checked is not asked again: this call waits for that
// check. It returns at ctx's end even if an engine ignores ctx: an engine
// that has not answered by then counts as not ready ("no answer", or
// errStillChecking when the check was an earlier caller's).
func (s *Server) backendsReady(ctx context.Context) error {
	flights := make([]*readyFlight, len(s.readyChecks))
	joined := make([]bool, len(s.readyChecks))
	for i, c := range s.readyChecks {
		flights[i], joined[i] = c.start(ctx)
	}
	for i, f := range flights {
		var err error
		select {
		case <-f.done:
			err = f.err
		case <-ctx.Done():
			select {
			case <-f.done:
				err = f.err
			default:
				if joined[i] {
					err = errStillChecking
				} else {
					err = fmt.Errorf("no answer: %w", ctx.Err())
				}
			}
		}
		if err != nil {
			return fmt.Errorf("backend %s: %w", s.readyChecks[i].label, err)
		}
	}
	return nil
}
