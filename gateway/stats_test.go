package gateway

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/phxgate/phxgate/channels"
)

// /stats counts what the node holds: connections, channels by topic and
// route, the busiest topics, the broker's state, the backends' counters.
func TestStats(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo"}, {Topic: "lobby", Backend: "echo"}}
	})
	for range 3 {
		rawSocket(t, s, "", "room:busy")
	}
	rawSocket(t, s, "", "room:quiet")
	rawSocket(t, s, "", "lobby")
	resp, err := http.Get("http://" + s.adminLn.Addr().String() + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		NodeID      string          `json:"node_id"`
		Connections int             `json:"connections"`
		Protocol    *channels.Stats `json:"protocol"`
		Broker      brokerStats     `json:"broker"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	p := st.Protocol
	if st.NodeID != s.cfg.NodeID || st.Connections != 5 || p == nil || p.Channels != 5 || p.Topics != 3 {
		t.Fatalf("stats %+v protocol %+v", st, p)
	}
	if p.TopTopics[0] != (channels.TopicStats{Topic: "room:busy", Subscribers: 3}) {
		t.Fatalf("top topics %v", p.TopTopics)
	}
	if len(p.Routes) != 2 || p.Routes[1] != (channels.RouteStats{Pattern: "room:*", Channels: 4, Topics: 2}) {
		t.Fatalf("routes %v", p.Routes)
	}
	if st.Broker != (brokerStats{Engine: "memory", Ready: true}) {
		t.Fatalf("broker %+v", st.Broker)
	}
}
