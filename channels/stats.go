package channels

import (
	"cmp"
	"slices"
)

// Stats is a snapshot of the protocol layer, for humans (/stats).
type Stats struct {
	Channels  int          `json:"channels"`
	Topics    int          `json:"topics"`
	TopTopics []TopicStats `json:"top_topics"`
	Routes    []RouteStats `json:"routes"`
	Seats     int          `json:"leave_grace_seats"`
}

// TopicStats is one topic's local subscribers.
type TopicStats struct {
	Topic       string `json:"topic"`
	Subscribers int    `json:"subscribers"`
}

// RouteStats is one route's local channels.
type RouteStats struct {
	Pattern  string `json:"pattern"`
	Channels int    `json:"channels"`
	Topics   int    `json:"topics"`
}

// maxTopTopics bounds Stats.TopTopics.
const maxTopTopics = 10

// Stats returns a snapshot: channels and topics with subscribers on this
// node, the busiest topics, per-route counts. It walks every topic once; meant for an operator's curl,
// not for a scrape loop.
func (s *Server) Stats() Stats {
	st := Stats{Seats: s.seats.count()}
	s.hub.mu.Lock()
	ths := make([]*topicHub, 0, len(s.hub.topics))
	for _, th := range s.hub.topics {
		ths = append(ths, th)
	}
	s.hub.mu.Unlock()
	byRoute := map[string]*RouteStats{}
	var routes []*RouteStats
	all := make([]TopicStats, 0, len(ths))
	for _, th := range ths {
		n := 0
		for i := range th.lanes {
			if l := th.lanes[i].Load(); l != nil {
				n += int(l.n.Load())
			}
		}
		if n == 0 {
			continue
		}
		st.Topics++
		st.Channels += n
		all = append(all, TopicStats{Topic: th.name, Subscribers: n})
		pattern := "(no route)"
		if r := s.router.Match(th.name); r != nil {
			pattern = r.Pattern
		}
		rs := byRoute[pattern]
		if rs == nil {
			rs = &RouteStats{Pattern: pattern}
			byRoute[pattern] = rs
			routes = append(routes, rs)
		}
		rs.Channels += n
		rs.Topics++
	}
	slices.SortFunc(all, func(a, b TopicStats) int {
		return cmp.Or(cmp.Compare(b.Subscribers, a.Subscribers), cmp.Compare(a.Topic, b.Topic))
	})
	st.TopTopics = all[:min(len(all), maxTopTopics)]
	for _, rs := range routes {
		st.Routes = append(st.Routes, *rs)
	}
	slices.SortFunc(st.Routes, func(a, b RouteStats) int { return cmp.Compare(a.Pattern, b.Pattern) })
	return st
}
