package channels

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels/ratelimit"
)

// Route maps topics to a backend.
type Route struct {
	// Pattern is an exact topic, or a prefix ending in "*" ("room:*").
	Pattern string
	// Backend handles joins and events of matching topics.
	Backend backends.Backend
	// History is how many events the broker keeps per topic for replay;
	// 0 means none.
	History int
	// Presence turns presence tracking on for matching topics.
	Presence bool
	// RateLimits maps the route's event names to rate-limit classes
	// (zero: every event is in the limiter's default class).
	RateLimits ratelimit.Route
	// LeaveGrace holds an identified player's seat when their socket drops
	// without phx_leave: the Leave (reason disconnected) waits this long,
	// and a join of the same player to the same topic on this node within
	// it sends no Leave and a Join with Rejoin set. 0 sends the Leave at
	// once.
	LeaveGrace time.Duration
}

// Router holds an ordered list of routes. It is immutable after NewRouter
// and safe for concurrent use.
type Router struct {
	routes []Route
}

// ErrBadRoute is wrapped by NewRouter errors.
var ErrBadRoute = errors.New("channels: bad route")

// NewRouter validates and copies routes. Order matters: Match returns the
// first matching route.
func NewRouter(routes []Route) (*Router, error) {
	r := &Router{routes: make([]Route, len(routes))}
	copy(r.routes, routes)
	for i, rt := range r.routes {
		switch {
		case rt.Pattern == "":
			return nil, fmt.Errorf("%w: route %d: empty pattern", ErrBadRoute, i)
		case strings.Contains(strings.TrimSuffix(rt.Pattern, "*"), "*"):
			return nil, fmt.Errorf("%w: route %d: %q: '*' only at the end", ErrBadRoute, i, rt.Pattern)
		case rt.Backend == nil:
			return nil, fmt.Errorf("%w: route %d: %q: no backend", ErrBadRoute, i, rt.Pattern)
		case rt.History < 0:
			return nil, fmt.Errorf("%w: route %d: %q: negative history", ErrBadRoute, i, rt.Pattern)
		}
	}
	return r, nil
}

// Match returns the first route matching topic, or nil.
func (r *Router) Match(topic string) *Route {
	return r.match([]byte(topic))
}

// match is Match for borrowed bytes; the conversions below do not allocate.
func (r *Router) match(topic []byte) *Route {
	for i := range r.routes {
		p := r.routes[i].Pattern
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if len(topic) >= len(prefix) && string(topic[:len(prefix)]) == prefix {
				return &r.routes[i]
			}
		} else if string(topic) == p {
			return &r.routes[i]
		}
	}
	return nil
}

// HistorySize returns the History of the route matching topic (0 when none
// matches). Its signature fits pubsub.MemoryConfig.HistorySize.
func (r *Router) HistorySize(topic string) int {
	if rt := r.Match(topic); rt != nil {
		return rt.History
	}
	return 0
}
