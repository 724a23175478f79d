package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/phxgate/phxgate/channels"
)

// nodeStats is the /stats document: what an operator wants to see of one
// node at a glance. Never a player id; topics only by name.
type nodeStats struct {
	NodeID      string            `json:"node_id"`
	UptimeS     int64             `json:"uptime_s"`
	Draining    bool              `json:"draining"`
	Connections int               `json:"connections"` // sockets + long-poll sessions, as limits.max_conns counts them
	Sockets     int               `json:"sockets"`
	LongPoll    *longPollStatsDoc `json:"longpoll,omitempty"`
	QueuedBytes int64             `json:"queued_bytes"`
	Protocol    *channels.Stats   `json:"protocol,omitempty"`
	Broker      brokerStats       `json:"broker"`
	Backends    []backendStatsDoc `json:"backends,omitempty"`
	Presence    *presenceStatsDoc `json:"presence,omitempty"`
}

type brokerStats struct {
	Engine string `json:"engine"`
	Ready  bool   `json:"ready"`
	Error  string `json:"error,omitempty"`
}

type backendStatsDoc struct {
	Backend string `json:"backend"`
	Stats   any    `json:"stats"`
}

// longPollStatsDoc is the long-poll transport's part of /stats.
type longPollStatsDoc struct {
	Sessions     int `json:"sessions"`      // open (not ended) sessions
	PostsReading int `json:"posts_reading"` // POST bodies being read now (of max_reading_posts)
	MaxSessions  int `json:"max_sessions"`
}

type presenceStatsDoc struct {
	Enabled bool `json:"enabled"`
}

// serveStats answers GET /stats with the node's stats as indented JSON.
func (s *Server) serveStats(w http.ResponseWriter, r *http.Request) {
	st := nodeStats{
		NodeID:      s.cfg.NodeID,
		UptimeS:     int64(time.Since(s.started).Seconds()),
		Draining:    s.draining.Load(),
		Sockets:     s.Connections(),
		QueuedBytes: int64(s.queuedBytes()),
		Broker:      brokerStats{Engine: "memory"},
	}
	st.Connections = st.Sockets
	if lp := s.lp; lp != nil {
		st.LongPoll = &longPollStatsDoc{Sessions: lp.OpenSessions(), PostsReading: len(lp.reading), MaxSessions: lp.cfg.MaxSessions}
		st.Connections += st.LongPoll.Sessions
	}
	if s.cfg.RedisURL != "" || len(s.cfg.RedisClusterAddrs) > 0 {
		st.Broker.Engine = "redis"
		if len(s.cfg.RedisClusterAddrs) > 0 {
			st.Broker.Engine = "redis-cluster"
		}
	}
	if p := s.proto; p != nil {
		ps := p.Stats()
		st.Protocol = &ps
		ctx, cancel := context.WithTimeout(r.Context(), readyzBrokerTimeout)
		err := p.BrokerReady(ctx)
		cancel()
		st.Broker.Ready = err == nil
		if err != nil {
			st.Broker.Error = err.Error()
		}
	}
	for name, f := range s.backendStats {
		st.Backends = append(st.Backends, backendStatsDoc{Backend: name, Stats: f()})
	}
	slices.SortFunc(st.Backends, func(a, b backendStatsDoc) int {
		if a.Backend < b.Backend {
			return -1
		}
		return 1
	})
	if s.presence != nil {
		st.Presence = &presenceStatsDoc{Enabled: true}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(st)
}
