//go:build linux

package gateway

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/channels/ratelimit"
	"github.com/phxgate/phxgate/pubsub"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

type nopHandler struct{}

func (nopHandler) HandleText([]byte) error        { return nil }
func (nopHandler) HandleBinary([]byte) error      { return nil }
func (nopHandler) Terminate(backends.LeaveReason) {}

// socketPair returns a connected non-blocking pair; the caller owns ours.
func socketPair(t *testing.T) (ours, theirs int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// channelsServerOf is the protocol layer a production-wired gateway runs.
func channelsServerOf(t *testing.T, s *Server) *channels.Server {
	t.Helper()
	if s.proto == nil {
		t.Fatal("gateway not wired with the channels server")
	}
	return s.proto
}

// TestRegisterDuringPassIsNotDelayed is the poller wake race: a socket
// registered while a pass runs (after the pass took its pending list)
// writes no eventfd, because the poller is awake. The pass must notice it
// before sleeping; otherwise the socket waits for an unrelated event or
// the sweep. The sweep is an hour here, so the race is a hang, not a delay,
// and the hook makes the interleaving happen every time.
func TestRegisterDuringPassIsNotDelayed(t *testing.T) {
	p, _ := newIdlePoller(t, time.Hour)
	fd, _ := socketPair(t)
	c := &conn{id: 1, p: p, fd: int32(fd), handler: nopHandler{}}
	var once sync.Once
	p.hookTaken = func() {
		once.Do(func() {
			if !p.register(c, nil) {
				t.Error("register refused")
			}
		})
	}
	runPoller(t, p)
	// Start a pass: an eventfd write wakes the sleeping poller.
	p.dispatch(jobFunc(func() {}))
	waitFor(t, 3*time.Second, func() bool { return p.open.Load() == 1 }, "the socket registered during a pass to reach epoll")
}

// The same race for fan-out jobs and the dirty list: work arriving during
// a pass runs before the poller sleeps.
func TestDispatchDuringPassIsNotDelayed(t *testing.T) {
	p, _ := newIdlePoller(t, time.Hour)
	ran := make(chan struct{})
	var once sync.Once
	p.hookTaken = func() {
		once.Do(func() { p.dispatch(jobFunc(func() { close(ran) })) })
	}
	runPoller(t, p)
	p.dispatch(jobFunc(func() {}))
	select {
	case <-ran:
	case <-time.After(3 * time.Second):
		t.Fatal("a job dispatched during a pass did not run before the poller slept")
	}
}

// TestBroadcastBurstCoalescesWrites: broadcasts that reach a socket
// together leave in one writev, not one per broadcast. The seam is the
// poller's own count of write syscalls (phxgate_write_syscalls_total);
// the burst is made deterministic by holding the poller in a job while
// the broadcasts are published.
func TestBroadcastBurstCoalescesWrites(t *testing.T) {
	s := prodServer(t, func(c *Config) {
		c.Pollers = 1
		c.Limits.Classes = map[string]ratelimit.ClassLimit{"default": {PerSecond: 1e6, Burst: 1e6}}
	})
	sub := rawSocket(t, s, "", "room:a")
	pub := rawSocket(t, s, "", "room:b")
	const burst = 50
	writes := func() float64 { return counterValue(t, s.Registry(), "phxgate_write_syscalls_total", "") }
	// Hold the only poller: frames queued meanwhile wait for one flush.
	release := make(chan struct{})
	held := make(chan struct{})
	s.pollers[0].dispatch(jobFunc(func() {
		close(held)
		<-release
	}))
	<-held
	before := writes()
	// The publisher's pushes cannot be read while the poller is held, so
	// publish as a backend would: through the channels server's Publish.
	srv := channelsServerOf(t, s)
	for i := range burst {
		if _, err := srv.Publish(t.Context(), "room:a", pubsub.Message{Event: "shout", Payload: fmt.Appendf(nil, `{"i":%d}`, i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The publisher only handed the events to the held poller's lane:
	// nothing is queued to the subscriber yet, it is pending.
	if q := s.queuedBytes(); q != 0 {
		t.Errorf("queued %v bytes while the poller was held: the publisher did the fan-out itself", q)
	}
	if srv.PendingBytes() == 0 {
		t.Error("nothing pending for the held poller's lane")
	}
	close(release)
	for i := range burst {
		sub.expectMessage(ws.OpText, fmt.Sprintf(`[null,null,"room:a","shout",{"i":%d}]`, i))
	}
	// Wait for the metrics of that pass to be published.
	waitFor(t, 5*time.Second, func() bool {
		return counterValue(t, s.Registry(), "phxgate_frames_out_total", "") >= burst+2
	}, "frames counted")
	got := writes() - before
	t.Logf("%d broadcasts to one socket: %v write syscalls", burst, got)
	if got >= burst/2 {
		t.Errorf("%d broadcasts took %v writes, want them coalesced (a few)", burst, got)
	}
	_ = pub
}

// TestOutputBudgetShedsAndRecovers: past output_budget_bytes, a client's
// push is refused with {"reason":"overloaded"} in its turn and a
// broadcast is refused with ErrOverloaded (both counted); once the queues
// drain below the budget, both flow again.
func TestOutputBudgetShedsAndRecovers(t *testing.T) {
	const budget = 4 << 20
	s := prodServer(t, func(c *Config) {
		c.OutputBudgetBytes = budget
		c.WriteQueueMaxBytes = budget
		c.Limits.Classes = map[string]ratelimit.ClassLimit{"default": {PerSecond: 1e6, Burst: 1e6}}
	})
	// Two sockets that do not read: together they pass the node budget
	// while each stays under its own cap (as large as the budget).
	slow := []*client{nonReadingClient(t, s, "room:a"), nonReadingClient(t, s, "room:a")}
	pub := rawSocket(t, s, "", "room:b")
	srv := channelsServerOf(t, s)
	big := fmt.Appendf(nil, `{"pad":%q}`, strings.Repeat("x", 4000))
	// Publish until refused with nothing left in flight to the pollers and
	// the sockets' own queues over the budget: the kernel's socket buffers
	// take the first megabytes, after which the queues hold the rest.
	deadline := time.Now().Add(20 * time.Second)
	for !(s.overBudget() && srv.PendingBytes() == 0) {
		if time.Now().After(deadline) {
			t.Fatalf("never over budget: queued %v, pending %d", s.queuedBytes(), srv.PendingBytes())
		}
		_, err := srv.Publish(t.Context(), "room:a", pubsub.Message{Event: "shout", Payload: big})
		switch {
		case err == channels.ErrOverloaded:
			waitFor(t, 5*time.Second, func() bool { return srv.PendingBytes() == 0 }, "the pollers to take what is pending")
		case err != nil:
			t.Fatal(err)
		}
	}
	if _, err := srv.Publish(t.Context(), "room:a", pubsub.Message{Event: "shout", Payload: big}); err != channels.ErrOverloaded {
		t.Fatalf("publishing past the budget: err = %v, want ErrOverloaded", err)
	}
	pub.sendText(`["1","2","room:b","echo",{"a":1}]`)
	msg := pub.readV2()
	if string(msg[1]) != `"2"` || !strings.Contains(string(msg[4]), `"reason":"overloaded"`) || !strings.Contains(string(msg[4]), `"status":"error"`) {
		t.Fatalf("push while over budget: %s, want an overloaded refusal", msg)
	}
	if n := sumCounter(t, s.Registry(), "phxgate_overload_shed_total", "what", "push"); n != 1 {
		t.Errorf("shed pushes = %v, want 1", n)
	}
	if n := sumCounter(t, s.Registry(), "phxgate_overload_shed_total", "what", "broadcast"); n < 1 {
		t.Errorf("shed broadcasts = %v, want ≥ 1", n)
	}
	if n := counterValue(t, s.Registry(), "phxgate_slow_consumers_total", ""); n != 0 {
		t.Fatalf("%v slow consumers: the budget should have refused first", n)
	}
	// The slow clients read everything: the queues drain and both flow.
	for _, c := range slow {
		go func() {
			_ = c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			for {
				if _, _, err := c.readFrame(); err != nil {
					return
				}
			}
		}()
	}
	waitFor(t, 20*time.Second, func() bool { return s.queuedBytes() <= budget }, "the queues to drain below the budget")
	pub.sendText(`["1","3","room:b","echo",{"a":2}]`)
	pub.expectMessage(ws.OpText, `["1","3","room:b","phx_reply",{"response":{"a":2},"status":"ok"}]`)
	if _, err := srv.Publish(t.Context(), "room:b", pubsub.Message{Event: "shout", Payload: []byte(`{"ok":1}`)}); err != nil {
		t.Fatalf("publish after recovery: %v", err)
	}
	pub.expectMessage(ws.OpText, `[null,null,"room:b","shout",{"ok":1}]`)
}

// testPoller is a poller that is never run: the test drives flushDirty
// itself. Its sockets are socketpairs; the peers are returned.
func testPoller(t *testing.T, n int) (*poller, []*conn, []int) {
	t.Helper()
	srv := &Server{cfg: testConfig(), log: discardLogger()}
	srv.metrics = newMetrics(prometheus.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 }, 1<<30)
	p, err := newPoller(srv, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.closeFDs)
	var conns []*conn
	var peers []int
	for i := range n {
		fd, peer := socketPair(t)
		t.Cleanup(func() { _ = unix.Close(fd) })
		conns = append(conns, &conn{id: uint64(i + 1), p: p, fd: int32(fd), registered: true, handler: nopHandler{}})
		peers = append(peers, peer)
	}
	return p, conns, peers
}

// TestRepliesFlushAheadOfBroadcastOutput: sockets with only broadcast
// output are written at most bulkPerPass per pass; a reply queued
// meanwhile is written before any of them, and a pass that leaves bulk
// output asks for the next pass at once (p.more).
func TestRepliesFlushAheadOfBroadcastOutput(t *testing.T) {
	p, conns, _ := testPoller(t, 20)
	p.bulkPerPass = 8
	var order []uint64
	p.hookFlush = func(c *conn) { order = append(order, c.id) }
	frame := serverFrame(ws.OpText, []byte("broadcast"))
	for _, c := range conns[:19] {
		c.SendBulk(frame)
	}
	conns[19].Send(serverFrame(ws.OpText, []byte("reply")))
	p.flushDirty()
	if len(order) != 9 || order[0] != 20 {
		t.Fatalf("first pass flushed %v, want the reply's socket (20) first, then 8 bulk sockets", order)
	}
	if !p.more {
		t.Fatal("bulk output left, but the pass did not ask for another at once")
	}
	for range 3 {
		p.flushDirty()
	}
	if len(order) != 20 || p.more {
		t.Fatalf("after four passes %d sockets flushed (more=%v), want all 20 and nothing left", len(order), p.more)
	}
}

// TestPongReplacementKeepsTheNodeCountExact: a pong that could not be
// written (EAGAIN) and is then replaced by a newer one is uncharged from
// the node's count as well as from the socket's queue.
func TestPongReplacementKeepsTheNodeCountExact(t *testing.T) {
	p, conns, peers := testPoller(t, 1)
	c, peer := conns[0], peers[0]
	fill := make([]byte, 64<<10)
	for { // fill the socket's buffers: the next write would block
		if _, err := unix.Write(int(c.fd), fill); err != nil {
			break
		}
	}
	drain := func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := unix.Read(peer, buf); err != nil {
				return
			}
		}
	}
	for i := range 100 {
		c.sendPong([]byte{'a', byte(i)})
		p.flush(c) // EAGAIN: the pong waits at the front, not started
		c.sendPong([]byte{'b', byte(i)})
		drain()
		p.flush(c)
		c.mu.Lock()
		var charged int64
		if c.out != nil {
			charged = c.out.charged
		}
		c.mu.Unlock()
		if got := p.queuedBytes.Load(); got != charged {
			t.Fatalf("cycle %d: node count %d, socket queue %d", i, got, charged)
		}
		for { // fill again for the next cycle
			if _, err := unix.Write(int(c.fd), fill); err != nil {
				break
			}
		}
	}
}
