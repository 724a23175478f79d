package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/pubsub"
	"github.com/phxgate/phxgate/pubsub/redistest"
)

// These tests run gateways on a real redis-server and break it: kill -9
// with and without an append-only file, and a network stall. What must
// hold: no acknowledged event lost, none delivered twice, a lost history
// told to resuming clients (never a silent gap), and sockets that stay
// connected throughout.

const redisTopic = "room:r"

// redisNode starts a production-wired gateway on the Redis at url.
func redisNode(t *testing.T, url string, mod func(*Config)) *Server {
	t.Helper()
	return prodServer(t, func(c *Config) {
		c.RedisURL = url
		c.RedisTimeout = 500 * time.Millisecond
		c.IdleTimeout = 0
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: "echo", History: 10_000}}
		if mod != nil {
			mod(c)
		}
	})
}

// member is a raw V2 socket joined to redisTopic, reading in the
// background.
type member struct {
	t         *testing.T
	c         *client
	positions bool
	mu        sync.Mutex
	shouts    []shoutSeen
	errors    int    // phx_error frames
	closed    error  // why the read loop ended, if it did
	joinReply string // the last join reply's response
	replies   map[string]string
}

type shoutSeen struct {
	i   int
	ref string
}

func joinMember(t *testing.T, s *Server, positions bool) *member {
	t.Helper()
	c := attempt(t, nil, s.Addr(), "/socket/websocket?vsn=2.0.0")
	if c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d, want 101", c.status())
	}
	_ = c.conn.SetDeadline(time.Time{})
	m := &member{t: t, c: c, positions: positions, replies: map[string]string{}}
	go m.read()
	payload := `{}`
	if positions {
		payload = `{"offset":null}`
	}
	m.send(`["1","1","` + redisTopic + `","phx_join",` + payload + `]`)
	m.waitReply("1")
	return m
}

func (m *member) send(s string) {
	m.t.Helper()
	m.c.sendText(s)
}

func (m *member) read() {
	for {
		h, p, err := m.c.readFrame()
		if err != nil || h.OpCode == ws.OpClose {
			m.mu.Lock()
			m.closed = fmt.Errorf("read: %v (op %v)", err, h.OpCode)
			m.mu.Unlock()
			return
		}
		var msg []json.RawMessage
		if json.Unmarshal(p, &msg) != nil || len(msg) != 5 {
			continue
		}
		var ref, event string
		_ = json.Unmarshal(msg[1], &ref)
		_ = json.Unmarshal(msg[3], &event)
		m.mu.Lock()
		switch event {
		case "shout":
			var body struct{ I int }
			_ = json.Unmarshal(msg[4], &body)
			m.shouts = append(m.shouts, shoutSeen{body.I, ref})
		case "phx_error":
			m.errors++
		case "phx_reply":
			m.replies[ref] = string(msg[4])
		}
		m.mu.Unlock()
	}
}

func (m *member) waitReply(ref string) string {
	m.t.Helper()
	var r string
	waitFor(m.t, 10*time.Second, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		r = m.replies[ref]
		return r != ""
	}, "reply "+ref)
	return r
}

func (m *member) snapshot() ([]shoutSeen, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]shoutSeen(nil), m.shouts...), m.errors, m.closed
}

// heartbeat checks the socket is alive: a heartbeat is answered.
func (m *member) heartbeat(ref string) {
	m.t.Helper()
	m.send(`[null,"` + ref + `","phoenix","heartbeat",{}]`)
	m.waitReply(ref)
}

// publisher publishes numbered shouts through one node's protocol layer and
// keeps which were acknowledged.
type publisher struct {
	s     *Server
	mu    sync.Mutex
	next  int
	acked []int
	fails int
}

func (p *publisher) publish(t *testing.T) error {
	p.mu.Lock()
	p.next++
	i := p.next
	p.mu.Unlock()
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	_, err := p.s.proto.Publish(ctx, redisTopic, pubsub.Message{Event: "shout", Payload: fmt.Appendf(nil, `{"i":%d}`, i)})
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.fails++
		return err
	}
	p.acked = append(p.acked, i)
	return nil
}

// publishAcked publishes until n more are acknowledged.
func (p *publisher) publishAcked(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for got := 0; got < n; {
		if time.Now().After(deadline) {
			t.Fatalf("could not publish %d events in 30 s", n)
		}
		if p.publish(t) == nil {
			got++
		} else {
			time.Sleep(20 * time.Millisecond) // the store is down: retry as a backend would
		}
	}
}

func (p *publisher) ackedSet() map[int]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	set := make(map[int]bool, len(p.acked))
	for _, i := range p.acked {
		set[i] = true
	}
	return set
}

// checkMembers waits until every member has every acknowledged event, then
// checks none came twice, positions are contiguous, and no member erred or
// was disconnected.
func checkMembers(t *testing.T, p *publisher, members []*member) {
	t.Helper()
	acked := p.ackedSet()
	for k, m := range members {
		waitFor(t, 20*time.Second, func() bool {
			got, _, _ := m.snapshot()
			have := map[int]bool{}
			for _, s := range got {
				have[s.i] = true
			}
			for i := range acked {
				if !have[i] {
					return false
				}
			}
			return true
		}, fmt.Sprintf("member %d to have all %d acknowledged events", k, len(acked)))
		got, errs, closed := m.snapshot()
		if errs != 0 || closed != nil {
			t.Fatalf("member %d: %d phx_error, closed: %v", k, errs, closed)
		}
		seen := map[int]bool{}
		var epoch string
		var last uint64
		for n, s := range got {
			if seen[s.i] {
				t.Fatalf("member %d got event %d twice", k, s.i)
			}
			seen[s.i] = true
			if !m.positions {
				continue
			}
			pos, err := pubsub.ParsePosition(s.ref)
			if err != nil {
				t.Fatalf("member %d: ref %q: %v", k, s.ref, err)
			}
			if n > 0 && (pos.Epoch != epoch || pos.Offset != last+1) {
				t.Fatalf("member %d: %v after %s:%d, want contiguous positions", k, pos, epoch, last)
			}
			epoch, last = pos.Epoch, pos.Offset
		}
	}
}

// Redis is killed with kill -9 and restarted from its append-only file
// (appendfsync always) while a publisher runs: every acknowledged event
// reaches every member on both nodes once, in order, and every socket
// stays connected.
func TestRedisKillRestartLosesNoAcknowledgedEvent(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{AOF: true})
	a := redisNode(t, rs.URL(), nil)
	b := redisNode(t, rs.URL(), nil)
	members := []*member{joinMember(t, a, true), joinMember(t, a, false), joinMember(t, b, true), joinMember(t, b, false)}
	p := &publisher{s: a}
	p.publishAcked(t, 50)

	// Publish continuously across the outage.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if p.publish(t) != nil {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}()
	waitFor(t, 10*time.Second, func() bool { return len(p.ackedSet()) >= 100 }, "publishing before the kill")
	rs.Kill()
	waitFor(t, 10*time.Second, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.fails > 0 }, "publishes to fail while Redis is down")
	rs.Restart()
	before := len(p.ackedSet())
	waitFor(t, 20*time.Second, func() bool { return len(p.ackedSet()) >= before+50 }, "publishing after the restart")
	close(stop)
	<-done
	checkMembers(t, p, members)
	for i, m := range members {
		m.heartbeat(fmt.Sprintf("hb%d", i))
	}
}

// Redis restarts without persistence: its history is gone and the topic
// starts a new epoch. A member holding a position gets phx_error (never
// the new epoch's events as if nothing happened) and, rejoining with its
// last position, recovered=false; a plain member carries on.
func TestRedisLostHistoryIsNeverASilentGap(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	a := redisNode(t, rs.URL(), nil)
	pos := joinMember(t, a, true)
	plain := joinMember(t, a, false)
	p := &publisher{s: a}
	p.publishAcked(t, 5)
	waitFor(t, 10*time.Second, func() bool { got, _, _ := pos.snapshot(); return len(got) == 5 }, "5 events")
	got, _, _ := pos.snapshot()
	last := got[4].ref

	rs.Kill()
	rs.Restart()
	p.publishAcked(t, 1)
	waitFor(t, 20*time.Second, func() bool { _, errs, _ := pos.snapshot(); return errs == 1 }, "phx_error on the member holding a position")
	got, _, closed := pos.snapshot()
	if len(got) != 5 || closed != nil {
		t.Fatalf("member with a position: %d events (want the 5 before the loss, nothing after), closed %v", len(got), closed)
	}
	pos.send(`["2","2","` + redisTopic + `","phx_join",{"offset":"` + last + `"}]`)
	reply := pos.waitReply("2")
	if !strings.Contains(reply, `"recovered":false`) || !strings.Contains(reply, `"status":"ok"`) {
		t.Fatalf("rejoin with %s after the history was lost: %s; want ok, recovered false", last, reply)
	}
	waitFor(t, 10*time.Second, func() bool { got, _, _ := plain.snapshot(); return len(got) == 6 }, "the plain member to get all 6")
	if _, errs, closed := plain.snapshot(); errs != 0 || closed != nil {
		t.Fatalf("plain member: %d phx_error, closed %v", errs, closed)
	}
	pos.heartbeat("hb")
	plain.heartbeat("hb")
}

// Redis stops answering (a stalled network, through a proxy): publishes
// fail within the configured timeout, /readyz turns false, no socket is
// dropped; when the network heals, everything works again by itself.
func TestRedisStallFailsFastAndRecovers(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	proxy := redistest.NewProxy(t, rs.Addr())
	a := redisNode(t, "redis://"+proxy.Addr()+"/0", func(c *Config) { c.RedisTimeout = 300 * time.Millisecond })
	members := []*member{joinMember(t, a, true), joinMember(t, a, false)}
	p := &publisher{s: a}
	p.publishAcked(t, 3)
	ready := func() int {
		resp, err := http.Get("http://" + a.adminLn.Addr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := ready(); code != http.StatusOK {
		t.Fatalf("/readyz = %d before the stall", code)
	}

	proxy.Stall()
	start := time.Now()
	if err := p.publish(t); err == nil {
		t.Fatal("a publish succeeded while Redis was unreachable")
	}
	// The bound is functional, not a speed claim: without the timeout the
	// call would hang on the stalled connection for good.
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("a publish took %v to fail with redis_timeout 300ms", took)
	}
	waitFor(t, 10*time.Second, func() bool { return ready() == http.StatusServiceUnavailable }, "/readyz to turn false")
	for i, m := range members {
		m.heartbeat(fmt.Sprintf("stalled%d", i))
	}

	proxy.Heal()
	waitFor(t, 20*time.Second, func() bool { return ready() == http.StatusOK }, "/readyz to turn true again")
	p.publishAcked(t, 3)
	checkMembers(t, p, members)
	for i, m := range members {
		m.heartbeat(fmt.Sprintf("healed%d", i))
	}
}

// With the Redis engine the broadcast comes back after Publish returns;
// a sender still gets its own shout before its reply, as from Phoenix, and
// a member on another node gets every shout.
func TestRedisSenderGetsItsBroadcastBeforeItsReply(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	a := redisNode(t, rs.URL(), nil)
	b := redisNode(t, rs.URL(), nil)
	sender := rawSocket(t, a, "", "room:s")
	other := rawSocket(t, b, "", "room:s")
	for i := range 20 {
		ref := fmt.Sprint(i + 2)
		body := fmt.Sprintf(`{"n":%d}`, i)
		sender.sendText(`["1","` + ref + `","room:s","shout",` + body + `]`)
		sender.expectMessage(ws.OpText, `[null,null,"room:s","shout",`+body+`]`)
		sender.expectMessage(ws.OpText, `["1","`+ref+`","room:s","phx_reply",{"response":{},"status":"ok"}]`)
		other.expectMessage(ws.OpText, `[null,null,"room:s","shout",`+body+`]`)
	}
}

// A game retries Gateway.Broadcast after a lost answer, on another node
// even: with the same idempotency key it is published once, at one
// position.
func TestRedisGatewayBroadcastIdempotent(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	api := func(c *Config) {
		c.APIListen = "127.0.0.1:0"
		c.APISecret = testAPISecret
	}
	a := redisNode(t, rs.URL(), api)
	b := redisNode(t, rs.URL(), api)
	member := rawSocket(t, b, "", "room:i")
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	ctx = withSecret(ctx)
	req := &backendv1.BroadcastRequest{Topic: "room:i", Event: "round", IdempotencyKey: "round-1",
		Payload: &backendv1.Payload{Data: []byte(`{"r":1}`)}}
	first, err := apiClient(t, a).Broadcast(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := apiClient(t, b).Broadcast(ctx, req)
	if err != nil || again.GetPosition() != first.GetPosition() {
		t.Fatalf("retry: %v, %v; want the first position %s", again, err, first.GetPosition())
	}
	req.IdempotencyKey, req.Payload = "round-2", &backendv1.Payload{Data: []byte(`{"r":2}`)}
	if _, err := apiClient(t, a).Broadcast(ctx, req); err != nil {
		t.Fatal(err)
	}
	member.expectMessage(ws.OpText, `[null,null,"room:i","round",{"r":1}]`)
	member.expectMessage(ws.OpText, `[null,null,"room:i","round",{"r":2}]`)
	req.IdempotencyKey = strings.Repeat("k", pubsub.MaxIdempotencyKeyLen+1)
	if _, err := apiClient(t, a).Broadcast(ctx, req); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a key over %d bytes: %v, want InvalidArgument", pubsub.MaxIdempotencyKeyLen, err)
	}
}
