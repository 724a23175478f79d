package gateway

import (
	"context"
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
// failure in configuration order (nil when all are ready).
func (s *Server) backendsReady(ctx context.Context) error {
	errs := make([]error, len(s.readyChecks))
	var wg sync.WaitGroup
	for i, c := range s.readyChecks {
		wg.Go(func() { errs[i] = c.ready(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("backend %s: %w", s.readyChecks[i].label, err)
		}
	}
	return nil
}
