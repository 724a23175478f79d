package channels

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phxgate/phxgate/pubsub"
)

// heldFanout is a Fanout whose jobs wait until the test runs them, which
// makes every interleaving of delivery and joins reproducible.
type heldFanout struct {
	lanes int
	mu    sync.Mutex
	jobs  [][]FanoutJob
}

func newHeldFanout(lanes int) *heldFanout {
	return &heldFanout{lanes: lanes, jobs: make([][]FanoutJob, lanes)}
}

func (f *heldFanout) Lanes() int { return f.lanes }

func (f *heldFanout) Dispatch(lane int, job FanoutJob) {
	f.mu.Lock()
	f.jobs[lane] = append(f.jobs[lane], job)
	f.mu.Unlock()
}

// run runs the jobs held for lane, in order.
func (f *heldFanout) run(lane int) {
	f.mu.Lock()
	jobs := f.jobs[lane]
	f.jobs[lane] = nil
	f.mu.Unlock()
	for _, j := range jobs {
		j.RunFanout()
	}
}

// lanedConn is a fakeConn on a Fanout lane.
type lanedConn struct {
	*fakeConn
	lane int
}

func (c lanedConn) Lane() int { return c.lane }

func (e *testEnv) connectLane(tb testing.TB, lane int) (*Socket, *fakeConn) {
	tb.Helper()
	c := newFakeConn(tb)
	return e.srv.Connect(lanedConn{c, lane}, ConnectInfo{Serializer: V2, Params: []byte(`{}`)}), c
}

// publishLate makes event i visible to History but holds its delivery,
// as a broker does between storing an event and calling the handler; the
// returned func delivers it.
func publishLate(tb testing.TB, b *testBroker, topic string, i int) func() {
	tb.Helper()
	t := b.topic(topic)
	b.mu.Lock()
	ev := &pubsub.Event{Topic: topic, Event: "ev", Payload: []byte(fmt.Sprintf(`{"i":%d}`, i)),
		Pos: pubsub.Position{Epoch: b.epoch, Offset: uint64(len(t.events) + 1)}}
	t.events = append(t.events, ev)
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		h := t.h
		b.mu.Unlock()
		h.Deliver(ev)
	}
}

// An event becomes visible to History before its delivery runs. A resuming
// join that reads it from History (and replays it) must not get it again
// when its delivery finally runs, with or without a Fanout.
func TestResumeSkipsReplayedEventDeliveredLate(t *testing.T) {
	for _, lanes := range []int{0, 1} {
		t.Run(fmt.Sprintf("lanes=%d", lanes), func(t *testing.T) {
			fo := newHeldFanout(max(lanes, 1))
			env := newTestEnv(t, func(c *Config) {
				if lanes > 0 {
					c.Fanout = fo
				}
			})
			plain, plainConn := env.connectLane(t, 0)
			mustHandle(t, plain, `["1","1","room:a","phx_join",{}]`)
			plainConn.waitTexts(t, 1)
			publishN(t, env.broker, "room:a", 1, 2)
			fo.run(0)
			deliver3 := publishLate(t, env.broker, "room:a", 3)
			sock, conn := env.connectLane(t, 0)
			mustHandle(t, sock, `["1","1","room:a","phx_join",{"offset":"p:E1:1"}]`)
			want := []string{
				`["1","1","room:a","phx_reply",{"response":{"position":"p:E1:3","recovered":true},"status":"ok"}]`,
				evFrame("room:a", `"p:E1:2"`, 2),
				evFrame("room:a", `"p:E1:3"`, 3),
			}
			if got := conn.waitTexts(t, 3); !slices.Equal(got, want) {
				t.Fatalf("after the join got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
			}
			deliver3() // the resumer has it already
			fo.run(0)
			publishN(t, env.broker, "room:a", 4, 4)
			fo.run(0)
			want = append(want, evFrame("room:a", `"p:E1:4"`, 4))
			if got := conn.waitTexts(t, 4); !slices.Equal(got, want) {
				t.Fatalf("got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
			}
			if conn.count() != 4 {
				t.Fatalf("resumer got %d frames, want 4", conn.count())
			}
			if got := plainConn.waitTexts(t, 5); got[3] != evFrame("room:a", "null", 3) || got[4] != evFrame("room:a", "null", 4) {
				t.Fatalf("plain subscriber got %v", got)
			}
		})
	}
}

// Lanes deliver independently and each in publish order; a publisher's
// call returns without waiting for any lane; and a channel that shouts to
// its own topic gets the broadcast before its reply even while its lane's
// job has not run, and only once.
func TestFanoutLanes(t *testing.T) {
	fo := newHeldFanout(2)
	env := newTestEnv(t, func(c *Config) { c.Fanout = fo })
	var conns [2]*fakeConn
	for lane := range 2 {
		s, c := env.connectLane(t, lane)
		mustHandle(t, s, `["1","1","room:a","phx_join",{}]`)
		c.waitTexts(t, 1)
		conns[lane] = c
	}
	publishN(t, env.broker, "room:a", 1, 3) // returns with both lanes held
	for lane := range 2 {
		if n := conns[lane].count(); n != 1 {
			t.Fatalf("lane %d got %d frames before its job ran", lane, n)
		}
	}
	fo.run(1)
	got := conns[1].waitTexts(t, 4)
	for i := 1; i <= 3; i++ {
		if got[i] != evFrame("room:a", "null", i) {
			t.Fatalf("lane 1 frame %d = %s", i, got[i])
		}
	}
	if n := conns[0].count(); n != 1 {
		t.Fatalf("lane 0 got %d frames before its job ran", n)
	}
	// A shout from lane 0's socket: its own lane is drained by the
	// publisher before the reply, oldest events first.
	s0, c0 := env.connectLane(t, 0)
	mustHandle(t, s0, `["1","1","room:a","phx_join",{}]`)
	c0.waitTexts(t, 1)
	mustHandle(t, s0, `["1","2","room:a","shout",{"x":1}]`)
	want := []string{
		`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`,
		`[null,null,"room:a","shout",{"x":1}]`,
		`["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`,
	}
	if got := c0.waitTexts(t, 3); !slices.Equal(got, want) {
		t.Fatalf("shouter got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	// Lane 0's other subscriber got events 1..3 when the shouter joined
	// (a join drains its lane first); the shout reaches it with its
	// lane's job, and the shouter does not get it twice.
	got = conns[0].waitTexts(t, 4)
	for i := 1; i <= 3; i++ {
		if got[i] != evFrame("room:a", "null", i) {
			t.Fatalf("lane 0 frame %d = %s, want event %d (in order, before the shout)", i, got[i], i)
		}
	}
	if n := conns[0].count(); n != 4 {
		t.Fatalf("lane 0 has %d frames before its job ran, want 4", n)
	}
	fo.run(0)
	fo.run(1)
	if got = conns[0].waitTexts(t, 5); got[4] != `[null,null,"room:a","shout",{"x":1}]` {
		t.Fatalf("lane 0 frame 4 = %s", got[4])
	}
	if n := c0.count(); n != 3 {
		t.Fatalf("shouter has %d frames after its lane's job ran, want 3 (no second copy)", n)
	}
	// A later event reaches the shouter through its lane as usual.
	publishN(t, env.broker, "room:a", 4, 4)
	fo.run(0)
	if got := c0.waitTexts(t, 4); got[3] != evFrame("room:a", "null", 4) {
		t.Fatalf("shouter frame 3 = %s", got[3])
	}
	fo.run(1)
	if got := conns[1].waitTexts(t, 6); got[4] != `[null,null,"room:a","shout",{"x":1}]` || got[5] != evFrame("room:a", "null", 4) || conns[1].count() != 6 {
		t.Fatalf("lane 1 got %v", got)
	}
}

// While the node is over its output budget a push is refused with
// {"reason":"overloaded"} in its turn among the channel's replies (after
// the slow call ahead of it), without a backend call; a push whose turn
// comes while over budget is refused then too; once under budget, pushes
// flow again. Server.Publish refuses with ErrOverloaded meanwhile.
func TestOverloadedPushRefusedInOrder(t *testing.T) {
	var over atomic.Bool
	env := newTestEnv(t, func(c *Config) { c.Overloaded = over.Load })
	gate := make(chan struct{})
	var release sync.Once
	open := func() { release.Do(func() { close(gate) }) }
	t.Cleanup(open) // a failed test must not leave the worker waiting
	env.backend.mu.Lock()
	env.backend.gate = gate
	env.backend.mu.Unlock()
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	conn.waitTexts(t, 1)
	mustHandle(t, sock, `["1","2","room:a","slow",{}]`) // runs, waits on the gate
	mustHandle(t, sock, `["1","3","room:a","ping",{}]`) // queued behind it
	waitFor(t, 5*time.Second, "the slow call to reach the backend", func() bool {
		return slices.Contains(env.backend.logged(), "in room:a slow 2")
	})
	over.Store(true)
	mustHandle(t, sock, `["1","4","room:a","ping",{}]`) // refused at arrival, in its turn
	if _, err := env.srv.Publish(t.Context(), "room:a", pubsub.Message{Event: "ev", Payload: []byte(`{}`)}); err != ErrOverloaded {
		t.Fatalf("Publish over budget: %v, want ErrOverloaded", err)
	}
	open() // "slow" replies; "ping" 3 is refused when its turn comes
	want := []string{
		`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`,
		`["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`,
		`["1","3","room:a","phx_reply",{"response":{"reason":"overloaded"},"status":"error"}]`,
		`["1","4","room:a","phx_reply",{"response":{"reason":"overloaded"},"status":"error"}]`,
	}
	if got := conn.waitTexts(t, 4); !slices.Equal(got, want) {
		t.Fatalf("got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	over.Store(false)
	mustHandle(t, sock, `["1","5","room:a","ping",{}]`)
	if got := conn.waitTexts(t, 5); got[4] != `["1","5","room:a","phx_reply",{"response":{"pong":true},"status":"ok"}]` {
		t.Fatalf("after the overload: %s", got[4])
	}
	for _, l := range env.backend.logged() {
		if strings.Contains(l, "ping 3") || strings.Contains(l, "ping 4") {
			t.Fatalf("a refused push reached the backend: %v", env.backend.logged())
		}
	}
}

// panicConn panics in Send once armed (a transport bug).
type panicConn struct {
	*fakeConn
	armed atomic.Bool
}

func (c *panicConn) Send(f []byte) {
	if c.armed.Swap(false) {
		panic("send failed")
	}
	c.fakeConn.Send(f)
}

// A panic while a lane delivers (recovered by the transport, as the
// gateway's pollers do) must not leave the lane locked: the topic's next
// event is delivered and nothing stays charged as pending.
func TestPanickingSendDoesNotWedgeTheTopic(t *testing.T) {
	fo := newHeldFanout(1)
	env := newTestEnv(t, func(c *Config) { c.Fanout = fo })
	pc := &panicConn{fakeConn: newFakeConn(t)}
	sock := env.srv.Connect(pc, ConnectInfo{Serializer: V2, Params: []byte(`{}`)})
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	pc.waitTexts(t, 1)
	pc.armed.Store(true)
	publishN(t, env.broker, "room:a", 1, 1)
	func() {
		defer func() { _ = recover() }()
		fo.run(0)
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		publishN(t, env.broker, "room:a", 2, 2)
		fo.run(0)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the topic is wedged after a panic in a delivery")
	}
	if got := pc.waitTexts(t, 2); got[1] != evFrame("room:a", "null", 2) {
		t.Fatalf("after the panic got %v", got)
	}
	if n := env.srv.PendingBytes(); n != 0 {
		t.Fatalf("PendingBytes = %d after every lane ran, want 0", n)
	}
}

// A sender whose lane holds other events when it shouts gets each of them,
// then its own broadcast, then its reply, each exactly once.
func TestShoutWithOtherEventsPending(t *testing.T) {
	fo := newHeldFanout(1)
	env := newTestEnv(t, func(c *Config) { c.Fanout = fo })
	s0, c0 := env.connectLane(t, 0)
	s1, c1 := env.connectLane(t, 0)
	for _, s := range []*Socket{s0, s1} {
		mustHandle(t, s, `["1","1","room:a","phx_join",{}]`)
	}
	c0.waitTexts(t, 1)
	c1.waitTexts(t, 1)
	publishN(t, env.broker, "room:a", 1, 2) // held on the lane
	mustHandle(t, s0, `["1","2","room:a","shout",{"x":1}]`)
	want := []string{
		`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`,
		evFrame("room:a", "null", 1),
		evFrame("room:a", "null", 2),
		`[null,null,"room:a","shout",{"x":1}]`,
		`["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`,
	}
	if got := c0.waitTexts(t, 5); !slices.Equal(got, want) {
		t.Fatalf("shouter got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	fo.run(0)
	if got := c1.waitTexts(t, 4); !slices.Equal(got, want[:4]) {
		t.Fatalf("other subscriber got  %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want[:4], "\n     "))
	}
	if c0.count() != 5 || c1.count() != 4 {
		t.Fatalf("frames after the lane ran: shouter %d (want 5), other %d (want 4)", c0.count(), c1.count())
	}
}

// A backend that panics costs only that channel: a join gets "join
// crashed", a push ends its channel with phx_error (the client rejoins);
// the socket's other channel keeps working; panics are counted.
func TestBackendPanicEndsOnlyThatChannel(t *testing.T) {
	env := newTestEnv(t, nil)
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	mustHandle(t, sock, `["2","2","room:b","phx_join",{}]`)
	mustHandle(t, sock, `["3","3","room:panicjoin","phx_join",{}]`)
	mustHandle(t, sock, `["1","4","room:a","panic",{}]`)
	mustHandle(t, sock, `["2","5","room:b","ping",{}]`)
	got := conn.waitTexts(t, 5)
	want := map[string]bool{
		`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`:                                   true,
		`["2","2","room:b","phx_reply",{"response":{},"status":"ok"}]`:                                   true,
		`["3","3","room:panicjoin","phx_reply",{"response":{"reason":"join crashed"},"status":"error"}]`: true,
		`["1","1","room:a","phx_error",{"reason":"channel_crash"}]`:                                      true,
		`["2","5","room:b","phx_reply",{"response":{"pong":true},"status":"ok"}]`:                        true,
	}
	for _, f := range got {
		delete(want, f)
	}
	if len(want) != 0 {
		t.Fatalf("got %v\nmissing %v", got, want)
	}
	waitFor(t, 5*time.Second, "both panics counted", func() bool {
		return counterValue(t, env.reg, "phxgate_backend_panics_total", "") == 2
	})
}

// hookConn runs onSend after queueing each frame (on the sender's goroutine).
type hookConn struct {
	*fakeConn
	onSend func(f []byte)
}

func (c *hookConn) Send(f []byte) {
	c.fakeConn.Send(f)
	if c.onSend != nil {
		c.onSend(f)
	}
}

// No broadcast follows phx_close: a channel that leaves (or whose backend
// stops it) is out of the hub before its leave reply and phx_close are
// queued. The lane's job is run right when phx_close is queued, the worst
// moment, with an event pending.
func TestNoBroadcastAfterPhxClose(t *testing.T) {
	for _, tc := range []struct{ name, msg, last string }{
		{"leave", `["1","2","room:a","phx_leave",{}]`, `["1","1","room:a","phx_close",{}]`},
		{"stop", `["1","2","room:a","stop",{}]`, `["1","1","room:a","phx_close",{}]`},
		{"crash", `["1","2","room:a","stopcrash",{}]`, `["1","1","room:a","phx_error",{"reason":"channel_crash"}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fo := newHeldFanout(1)
			env := newTestEnv(t, func(c *Config) { c.Fanout = fo })
			other, _ := env.connectLane(t, 0) // keeps the topic alive
			mustHandle(t, other, `["1","1","room:a","phx_join",{}]`)
			hc := &hookConn{fakeConn: newFakeConn(t)}
			hc.onSend = func(f []byte) {
				if strings.Contains(string(f), `"phx_close"`) || strings.Contains(string(f), `"phx_error"`) {
					fo.run(0)
				}
			}
			sock := env.srv.Connect(hc, ConnectInfo{Serializer: V2, Params: []byte(`{}`)})
			mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
			hc.waitTexts(t, 1)
			publishN(t, env.broker, "room:a", 1, 1) // pending on the lane
			mustHandle(t, sock, tc.msg)
			waitFor(t, 5*time.Second, "the channel to end", func() bool {
				for _, f := range hc.texts() {
					if f == tc.last {
						return true
					}
				}
				return false
			})
			fo.run(0)
			texts := hc.texts()
			if texts[len(texts)-1] != tc.last {
				t.Fatalf("got %v, want nothing after %s", texts, tc.last)
			}
		})
	}
}

// A transport with more event loops than a topic has lanes: a socket's
// lane is its loop's index modulo the lanes, and it is served there.
func TestLanesModulo(t *testing.T) {
	fo := newHeldFanout(2)
	env := newTestEnv(t, func(c *Config) { c.Fanout = fo })
	sock, conn := env.connectLane(t, 5) // loop 5 of a transport with more loops than lanes
	if sock.lane != 1 {
		t.Fatalf("socket on loop 5 got lane %d, want 5 mod 2 = 1", sock.lane)
	}
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	conn.waitTexts(t, 1)
	publishN(t, env.broker, "room:a", 1, 1)
	fo.run(0)
	if conn.count() != 1 {
		t.Fatal("lane 0's job delivered to a lane 1 socket")
	}
	fo.run(1)
	if got := conn.waitTexts(t, 2); got[1] != evFrame("room:a", "null", 1) {
		t.Fatalf("got %v", got)
	}
}

// A broadcast in a backend's reply is never lost silently: a broker that
// fails for a moment is retried within the call's deadline; one that keeps
// failing (or a spent output budget) ends the channel with phx_error after
// the reply, so the client rejoins and resyncs; each loss is counted.
func TestReplyBroadcastRetriedOrChannelErrors(t *testing.T) {
	var over atomic.Bool
	env := newTestEnv(t, func(c *Config) {
		c.CallTimeout = time.Second
		c.Overloaded = over.Load
	})
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	conn.waitTexts(t, 1)

	env.broker.failPublish.Store(3) // three failures, then it works
	mustHandle(t, sock, `["1","2","room:a","shout",{"n":1}]`)
	got := conn.waitTexts(t, 3)
	if got[1] != `[null,null,"room:a","shout",{"n":1}]` || got[2] != `["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]` {
		t.Fatalf("after a brief broker failure: %v", got)
	}

	env.broker.failPublish.Store(1 << 40) // down for good
	mustHandle(t, sock, `["1","3","room:a","shout",{"n":2}]`)
	got = conn.waitTexts(t, 5)
	if got[3] != `["1","3","room:a","phx_reply",{"response":{},"status":"ok"}]` || got[4] != `["1","1","room:a","phx_error",{"reason":"channel_crash"}]` {
		t.Fatalf("with the broker down: %v", got[3:])
	}
	env.broker.failPublish.Store(0)

	mustHandle(t, sock, `["5","5","room:a","phx_join",{}]`)
	conn.waitTexts(t, 6)
	over.Store(true) // the node sheds: the push itself is refused first
	mustHandle(t, sock, `["5","6","room:a","shout",{"n":3}]`)
	if got = conn.waitTexts(t, 7); got[6] != `["5","6","room:a","phx_reply",{"response":{"reason":"overloaded"},"status":"error"}]` {
		t.Fatalf("over budget: %v", got[6])
	}
	if n := counterValue(t, env.reg, "phxgate_reply_broadcasts_lost_total", ""); n != 1 {
		t.Fatalf("lost broadcasts counted %v, want 1", n)
	}
}
