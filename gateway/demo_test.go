package gateway

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The built-in demo backend is the example dice game in process: a
// player joins a table (balance 1000), bets, and gets the round's result
// broadcast to the table, the balance settled by it.
func TestDemoBackendPlaysDice(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		c.Routes = []RouteConfig{{Topic: "table:*", Backend: "demo", History: 100, Presence: true}}
	})
	c := attempt(t, nil, s.Addr(), tokenTarget(hsToken(t, claims("alice"))))
	_ = c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	c.sendText(`["1","1","table:1","phx_join",{}]`)
	reply := c.readV2()
	if !strings.Contains(string(reply[4]), `"balance":1000`) {
		t.Fatalf("join reply %s", reply[4])
	}
	if st := string(c.readEvent("presence_state")); !strings.Contains(st, `"alice":{"metas":[{"name":"alice","phx_ref":"`) {
		t.Fatalf("presence_state %s", st)
	}
	c.sendText(`["1","2","table:1","bet",{"amount":100,"pick":"high"}]`)
	var bet []json.RawMessage
	for {
		bet = c.readV2()
		var ev string
		_ = json.Unmarshal(bet[3], &ev)
		if ev == "phx_reply" {
			break
		}
	}
	if !strings.Contains(string(bet[4]), `"balance":900`) || !strings.Contains(string(bet[4]), `"status":"ok"`) {
		t.Fatalf("bet reply %s", bet[4])
	}
	var res struct {
		Round   int              `json:"round"`
		Roll    int              `json:"roll"`
		Payouts map[string]int64 `json:"payouts"`
	}
	if err := json.Unmarshal(c.readEvent("round_result"), &res); err != nil || res.Roll < 1 || res.Roll > 6 || res.Payouts == nil {
		t.Fatalf("round_result %+v, %v", res, err)
	}
	if won := res.Roll >= 4; won != (res.Payouts["alice"] > 0) {
		t.Fatalf("roll %d, payouts %v", res.Roll, res.Payouts)
	}
}
