package gateway

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/phxgate/phxgate/backends"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/pubsub/redistest"
)

// seatBackend answers every join with a presence meta naming the player's
// seat, and a too-large meta for the player "huge".
type seatBackend struct{}

func (seatBackend) Join(_ context.Context, c *backends.Call) (*backends.Reply, error) {
	meta := `{"seat":"` + c.PlayerID + `"}`
	if c.PlayerID == "huge" {
		meta = `{"pad":"` + strings.Repeat("x", 2000) + `"}`
	}
	return &backends.Reply{Status: "ok", PresenceMeta: []byte(meta)}, nil
}

func (seatBackend) HandleIn(context.Context, *backends.Call) (*backends.Reply, error) {
	return &backends.Reply{Status: "ok"}, nil
}

func (seatBackend) Leave(context.Context, *backends.Call, backends.LeaveReason) error { return nil }

// readEvent reads text frames until one with event, and returns its payload.
func (c *client) readEvent(event string) json.RawMessage {
	c.tb.Helper()
	for {
		msg := c.readV2()
		var ev string
		_ = json.Unmarshal(msg[3], &ev)
		if ev == event {
			return msg[4]
		}
	}
}

// readDiffWith reads presence_diff payloads until one contains want.
func (c *client) readDiffWith(want string) string {
	c.tb.Helper()
	for {
		if d := string(c.readEvent("presence_diff")); strings.Contains(d, want) {
			return d
		}
	}
}

// The backend's join-reply presence meta is what the player is tracked
// with; presence_state follows every join; ListPresence and
// UpdatePresence work through the Gateway service; an oversized meta is
// refused and counted while the join succeeds.
func TestPresenceThroughTheGateway(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		c.APIListen = "127.0.0.1:0"
		c.APISecret = testAPISecret
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: InprocPrefix + "seats", Presence: true}}
	}, WithBackend("seats", seatBackend{}))
	alice := rawSocket(t, s, hsToken(t, claims("alice")), "room:p")
	if st := string(alice.readEvent("presence_state")); !strings.Contains(st, `"alice":{"metas":[{"seat":"alice","phx_ref":"`) {
		t.Fatalf("alice's presence_state: %s", st)
	}
	bob := rawSocket(t, s, hsToken(t, claims("bob")), "room:p")
	if st := string(bob.readEvent("presence_state")); !strings.Contains(st, `"alice"`) || !strings.Contains(st, `"bob"`) {
		t.Fatalf("bob's presence_state: %s", st)
	}
	if d := alice.readDiffWith(`"bob"`); !strings.Contains(d, `"bob":{"metas":[{"seat":"bob","phx_ref":"`) || !strings.HasSuffix(d, `,"leaves":{}}`) {
		t.Fatalf("alice sees bob join: %s", d)
	}
	huge := rawSocket(t, s, hsToken(t, claims("huge")), "room:p")
	if st := string(huge.readEvent("presence_state")); strings.Contains(st, `"huge"`) {
		t.Fatalf("an oversized meta was tracked: %s", st)
	}
	if n := sumCounter(t, s.opts.Registry, "phxgate_presence_refused_total", "reason", "meta_too_large"); n != 1 {
		t.Fatalf("refused{meta_too_large} = %v, want 1", n)
	}

	api := apiClient(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = withSecret(ctx)
	list, err := api.ListPresence(ctx, &backendv1.ListPresenceRequest{Topic: "room:p"})
	if err != nil || len(list.GetEntries()) != 2 || list.GetEntries()[0].GetPlayerId() != "alice" {
		t.Fatalf("ListPresence: %v %v", list, err)
	}
	if _, err := api.UpdatePresence(ctx, &backendv1.UpdatePresenceRequest{Topic: "room:p", PlayerId: "bob", Meta: []byte(`{"seat":"bob","away":true}`)}); err != nil {
		t.Fatal(err)
	}
	d := alice.readDiffWith(`"away"`)
	if !strings.Contains(d, `"joins":{"bob":{"metas":[{"seat":"bob","away":true,"phx_ref":"`) || !strings.Contains(d, `"phx_ref_prev":"`) || !strings.Contains(d, `"leaves":{"bob":{"metas":[{"seat":"bob","phx_ref":"`) {
		t.Fatalf("update diff: %s", d)
	}
	if _, err := api.UpdatePresence(ctx, &backendv1.UpdatePresenceRequest{Topic: "room:p", PlayerId: "nobody", Meta: []byte(`{}`)}); status.Code(err) != codes.NotFound {
		t.Fatalf("update of an absent player: %v", err)
	}
	// Bob leaves: alice gets his leave.
	bob.sendText(`["1","2","room:p","phx_leave",{}]`)
	if d := alice.readDiffWith(`{"joins":{},`); !strings.HasPrefix(d, `{"joins":{},"leaves":{"bob":{"metas":[{"seat":"bob","away":true,`) {
		t.Fatalf("bob's leave: %s", d)
	}
	alice.sendText(`[null,"hb","phoenix","heartbeat",{}]`)
	alice.expectMessage(ws.OpText, `[null,"hb","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
}

// On several nodes an update is carried out by the node that owns the
// presence (so it is ordered with that node's join and leave of it):
// asked of node B for a player connected to node A, it reaches a client on
// B as one diff, and the player's later leave names the updated meta.
func TestPresenceUpdateRoutedToTheOwningNode(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	mod := func(c *Config) {
		c.APIListen = "127.0.0.1:0"
		c.APISecret = testAPISecret
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo", Presence: true}}
	}
	a := redisNode(t, rs.URL(), func(c *Config) { mod(c); c.NodeID = "node-a" })
	b := redisNode(t, rs.URL(), func(c *Config) { mod(c); c.NodeID = "node-b" })
	alice := rawSocket(t, a, hsToken(t, claims("alice")), "room:u")
	alice.readEvent("presence_state")
	watcher := rawSocket(t, b, hsToken(t, claims("watcher")), "room:u")
	if st := string(watcher.readEvent("presence_state")); !strings.Contains(st, `"alice"`) {
		t.Fatalf("watcher's state %s", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := apiClient(t, b).UpdatePresence(withSecret(ctx), &backendv1.UpdatePresenceRequest{Topic: "room:u", PlayerId: "alice", Meta: []byte(`{"away":true}`)}); err != nil {
		t.Fatal(err)
	}
	d := watcher.readDiffWith(`"away":true`)
	var diff struct {
		Joins  map[string]struct{ Metas []map[string]any } `json:"joins"`
		Leaves map[string]struct{ Metas []map[string]any } `json:"leaves"`
	}
	if err := json.Unmarshal([]byte(d), &diff); err != nil {
		t.Fatal(err)
	}
	// The diff may also carry alice's own join (one window): the update
	// is the joined meta with away, whose phx_ref_prev is a left one.
	var newRef any
	for _, m := range diff.Joins["alice"].Metas {
		if m["away"] == true {
			newRef = m["phx_ref"]
			found := false
			for _, l := range diff.Leaves["alice"].Metas {
				found = found || l["phx_ref"] == m["phx_ref_prev"]
			}
			if !found {
				t.Fatalf("update diff %s: phx_ref_prev is not among the leaves", d)
			}
		}
	}
	if newRef == nil {
		t.Fatalf("update diff %s", d)
	}
	alice.sendText(`["1","2","room:u","phx_leave",{}]`)
	leave := watcher.readDiffWith(`{"joins":{},`)
	if !strings.Contains(leave, `"phx_ref":"`+newRef.(string)+`"`) {
		t.Fatalf("alice's leave %s does not name the updated meta %v", leave, newRef)
	}
}

// A presence held only through a leave_grace seat, on a node with no
// subscriber left on the topic, still takes an update: the seat keeps the
// topic subscribed on its node, so the update routed there arrives and
// every other node's subscribers see it.
func TestPresenceUpdateReachesAGraceSeat(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	mod := func(c *Config) {
		c.APIListen = "127.0.0.1:0"
		c.APISecret = testAPISecret
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo", Presence: true, LeaveGrace: time.Minute}}
	}
	a := redisNode(t, rs.URL(), func(c *Config) { mod(c); c.NodeID = "node-a" })
	b := redisNode(t, rs.URL(), func(c *Config) { mod(c); c.NodeID = "node-b" })
	alice := rawSocket(t, a, hsToken(t, claims("alice")), "room:g")
	alice.readEvent("presence_state")
	watcher := rawSocket(t, b, hsToken(t, claims("watcher")), "room:g")
	if st := string(watcher.readEvent("presence_state")); !strings.Contains(st, `"alice"`) {
		t.Fatalf("watcher's state %s", st)
	}
	// Alice's connection drops: node A holds her seat, and her presence
	// with it, and has no subscriber of room:g left.
	_ = alice.conn.Close()
	waitFor(t, 10*time.Second, func() bool {
		return counterValue(t, a.Registry(), "phxgate_leave_grace_seats", "") == 1
	}, "alice's seat on node A")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := apiClient(t, b).UpdatePresence(withSecret(ctx), &backendv1.UpdatePresenceRequest{Topic: "room:g", PlayerId: "alice", Meta: []byte(`{"away":true}`)}); err != nil {
		t.Fatal(err)
	}
	_ = watcher.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	d := watcher.readDiffWith(`"away":true`)
	if strings.Contains(d, `"watcher"`) {
		t.Fatalf("update diff %s", d)
	}
}
