package gateway

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/phxgate/phxgate/backends"
)

// readyCheck is one route engine /readyz asks (backends.Readier).
type readyCheck struct {
	label string // the spec without its options, which may hold a secret
	ready func(context.Context) error
}

// trackReady adds the engine of a route to what /readyz checks, once per
// spec, when it can tell whether its game is reachable.
func (s *Server) trackReady(spec string, b backends.Backend) {
	r, ok := b.(backends.Readier)
	if !ok {
		return
	}
	label, _, _ := strings.Cut(spec, "?")
	if slices.ContainsFunc(s.readyChecks, func(c readyCheck) bool { return c.label == label }) {
		return
	}
	s.readyChecks = append(s.readyChecks, readyCheck{label: label, ready: r.Ready})
}

// backendsReady asks every tracked engine at once and returns the first
// failure in configuration order (nil when all are ready). It returns at
// ctx's end even if an engine ignores ctx (its goroutine then ends when
// the engine returns; the buffered channel lets it): an engine that has
// not answered by then counts as not ready.
func (s *Server) backendsReady(ctx context.Context) error {
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(s.readyChecks))
	for i, c := range s.readyChecks {
		go func() { results <- result{i, c.ready(ctx)} }()
	}
	errs := make([]error, len(s.readyChecks))
	answered := make([]bool, len(s.readyChecks))
collect:
	for range s.readyChecks {
		select {
		case r := <-results:
			errs[r.i], answered[r.i] = r.err, true
		case <-ctx.Done():
			for i, ok := range answered {
				if !ok {
					errs[i] = fmt.Errorf("no answer: %w", ctx.Err())
				}
			}
			break collect
		}
	}
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("backend %s: %w", s.readyChecks[i].label, err)
		}
	}
	return nil
}
