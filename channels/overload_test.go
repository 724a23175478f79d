package channels

import (
	"errors"
	"fmt"
	"testing"

	"github.com/phxgate/phxgate/backends"
)

const (
	replyOK         = `{"response":{},"status":"ok"}`
	replyOverloaded = `{"response":{"reason":"backend_overloaded"},"status":"error"}`
)

// startSlow joins room:a and pushes a "slow" event with ref 1, returning
// once the backend holds it: every later push on room:a then waits in the
// channel's queue until gate closes, so the queue lengths are exact.
func startSlow(t *testing.T, env *testEnv) (*Socket, *fakeConn, chan struct{}) {
	t.Helper()
	gate := make(chan struct{})
	env.backend.gate = gate
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","0","room:a","phx_join",{}]`)
	conn.waitTexts(t, 1)
	mustHandle(t, sock, `["1","1","room:a","slow",{}]`)
	waitFor(t, waitLong, "slow call at the backend", func() bool {
		l := env.backend.logged()
		return l[len(l)-1] == "in room:a slow 1"
	})
	return sock, conn, gate
}

// A burst larger than ChannelQueue on one channel: every push is answered,
// strictly in ref order; the running call and the ChannelQueue calls queued
// behind it reach the backend and get ok, the rest get backend_overloaded
// in their turn (never ahead of an earlier push's reply).
func TestBurstRepliesInOrder(t *testing.T) {
	const n = 600
	env := newTestEnv(t, nil)
	cq := env.srv.cfg.ChannelQueue
	if cq != DefaultChannelQueue || n > 1+env.srv.cfg.ChannelQueueHard || n <= 1+cq {
		t.Fatalf("test assumes the defaults, got ChannelQueue %d", cq)
	}
	sock, conn, gate := startSlow(t, env)
	for ref := 2; ref <= n; ref++ {
		mustHandle(t, sock, fmt.Sprintf(`["1","%d","room:a","slow",{}]`, ref))
	}
	if c := conn.count(); c != 1 {
		t.Fatalf("%d frames while the first push is at the backend, want only the join reply: %v", c, conn.texts()[1:])
	}
	close(gate)
	got := conn.waitTexts(t, 1+n)
	if len(got) != 1+n {
		t.Fatalf("%d frames, want %d", len(got), 1+n)
	}
	for i, f := range got[1:] {
		ref := i + 1
		resp := replyOK
		if ref > 1+cq {
			resp = replyOverloaded
		}
		if want := fmt.Sprintf(`["1","%d","room:a","phx_reply",%s]`, ref, resp); f != want {
			t.Fatalf("reply %d: got %s want %s", i, f, want)
		}
	}
	if calls := len(env.backend.logged()) - 1; calls != 1+cq {
		t.Fatalf("backend saw %d calls, want %d", calls, 1+cq)
	}
	if v := counterValue(t, env.reg, "phxgate_backend_overloaded_total", "channel"); v != n-1-float64(cq) {
		t.Fatalf("overloaded metric %v, want %d", v, n-1-cq)
	}
}

// Past ChannelQueueHard tasks on one channel the client is flooding: the
// message is refused with a 1013 CloseError and counted; everything queued
// before it is still answered in order.
func TestChannelFloodCloses(t *testing.T) {
	env := newTestEnv(t, nil)
	cq, hard := env.srv.cfg.ChannelQueue, env.srv.cfg.ChannelQueueHard
	if hard != 4*cq {
		t.Fatalf("ChannelQueueHard default %d, want 4×%d", hard, cq)
	}
	sock, conn, gate := startSlow(t, env)
	last := 1 + hard // ref 1 runs, refs 2..1+hard fill the queue
	for ref := 2; ref <= last; ref++ {
		mustHandle(t, sock, fmt.Sprintf(`["1","%d","room:a","slow",{}]`, ref))
	}
	err := sock.HandleText([]byte(fmt.Sprintf(`["1","%d","room:a","slow",{}]`, last+1)))
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != CloseTryAgainLater || ce.Reason != ReasonOverloaded {
		t.Fatalf("flooding push: got %v, want a 1013 %s CloseError", err, ReasonOverloaded)
	}
	if v := counterValue(t, env.reg, "phxgate_channel_flood_closes_total", ""); v != 1 {
		t.Fatalf("flood metric %v", v)
	}
	close(gate)
	got := conn.waitTexts(t, 1+last)
	if len(got) != 1+last {
		t.Fatalf("%d frames, want %d (nothing for the flooding push)", len(got), 1+last)
	}
	for i, f := range got[1:] {
		ref := i + 1
		resp := replyOK
		if ref > 1+cq {
			resp = replyOverloaded
		}
		if want := fmt.Sprintf(`["1","%d","room:a","phx_reply",%s]`, ref, resp); f != want {
			t.Fatalf("reply %d: got %s want %s", i, f, want)
		}
	}
	// The gateway then terminates the socket: one Leave, as usual.
	sock.Terminate(backends.LeaveDisconnected)
	waitFor(t, waitLong, "leave", func() bool {
		env.backend.mu.Lock()
		defer env.backend.mu.Unlock()
		return env.backend.leaves["room:a 1"] == 1
	})
}

// With the pool queue full, a push on an idle channel is refused at once:
// the channel owes no earlier reply, so this is still in order, while a
// push on a channel that is waiting for a worker queues behind its work.
func TestPoolFullEventRepliesAtOnce(t *testing.T) {
	env := newTestEnv(t, func(c *Config) { c.Workers = 1; c.QueueSize = 1 })
	gate := make(chan struct{})
	env.backend.gate = gate
	sock, conn := env.connect(t, V2)
	for i, topic := range []string{"room:a", "room:b", "room:c"} {
		mustHandle(t, sock, fmt.Sprintf(`["%d","%d","%s","phx_join",{}]`, i, i, topic))
		conn.waitTexts(t, i+1)
	}
	// A slot stays running for a moment after its last reply is sent.
	waitFor(t, waitLong, "idle channels", func() bool {
		sock.mu.Lock()
		defer sock.mu.Unlock()
		for _, c := range sock.chans {
			if c.running {
				return false
			}
		}
		return len(sock.chans) == 3
	})
	mustHandle(t, sock, `["0","10","room:a","slow",{}]`) // holds the only worker
	waitFor(t, waitLong, "slow call at the backend", func() bool {
		l := env.backend.logged()
		return l[len(l)-1] == "in room:a slow 10"
	})
	mustHandle(t, sock, `["1","11","room:b","ping",{}]`) // fills the pool queue
	mustHandle(t, sock, `["2","12","room:c","ping",{}]`) // idle channel, pool full
	mustHandle(t, sock, `["1","13","room:b","ping",{}]`) // behind 11 on room:b
	got := conn.waitTexts(t, 4)
	if want := `["2","12","room:c","phx_reply",` + replyOverloaded + `]`; len(got) != 4 || got[3] != want {
		t.Fatalf("got %v, want last %s", got, want)
	}
	close(gate)
	got = conn.waitTexts(t, 7)
	want := []string{
		`["0","10","room:a","phx_reply",` + replyOK + `]`,
		`["1","11","room:b","phx_reply",{"response":{"pong":true},"status":"ok"}]`,
		`["1","13","room:b","phx_reply",{"response":{"pong":true},"status":"ok"}]`,
	}
	for i, w := range want {
		if got[4+i] != w {
			t.Fatalf("frame %d: got %s want %s (all %v)", 4+i, got[4+i], w, got)
		}
	}
	if v := counterValue(t, env.reg, "phxgate_backend_overloaded_total", "pool"); v != 1 {
		t.Fatalf("overloaded pool metric %v", v)
	}
}

// A slot that is not joined but still running (here: its join is held at
// the backend, then it is left) answers every further leave and event with
// a reply queued in its turn. The client can send those without end, so
// they count against ChannelQueueHard like refusals: the queue stays
// bounded, the flood closes the socket with 1013, and what was accepted is
// answered in order.
func TestNotJoinedRepliesBounded(t *testing.T) {
	env := newTestEnv(t, nil)
	hard := env.srv.cfg.ChannelQueueHard
	gate := make(chan struct{})
	env.backend.joinGate = gate
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	waitFor(t, waitLong, "join at the backend", func() bool { return len(env.backend.logged()) == 1 })
	mustHandle(t, sock, `["1","2","room:a","phx_leave",{}]`)

	queued := func() int {
		sock.mu.Lock()
		defer sock.mu.Unlock()
		if c := sock.find([]byte("room:a")); c != nil {
			return len(c.queue)
		}
		return 0
	}
	var want []string
	var err error
	maxQueue := 0
	for i := 0; i < 5000; i++ {
		ref := 3 + i
		var msg, reply string
		if i%2 == 0 {
			msg = fmt.Sprintf(`["1","%d","room:a","phx_leave",{}]`, ref)
			reply = fmt.Sprintf(`["1","%d","room:a","phx_reply",%s]`, ref, replyOK)
		} else {
			msg = fmt.Sprintf(`["1","%d","room:a","ping",{}]`, ref)
			reply = fmt.Sprintf(`[null,"%d","room:a","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`, ref)
		}
		if err = sock.HandleText([]byte(msg)); err != nil {
			break
		}
		want = append(want, reply)
		maxQueue = max(maxQueue, queued())
	}
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != CloseTryAgainLater || ce.Reason != ReasonOverloaded {
		t.Fatalf("flood of leaves and events: got %v after %d, want a 1013 %s CloseError", err, len(want), ReasonOverloaded)
	}
	if maxQueue > hard+1 {
		t.Fatalf("queue reached %d tasks, bound %d", maxQueue, hard)
	}
	if len(want) < hard-1 {
		t.Fatalf("closed after %d messages, before the bound %d", len(want), hard)
	}
	close(gate)
	want = append([]string{
		`["1","1","room:a","phx_reply",` + replyOK + `]`,
		`["1","2","room:a","phx_reply",` + replyOK + `]`,
		`["1","1","room:a","phx_close",{}]`,
	}, want...)
	got := conn.waitTexts(t, len(want))
	if len(got) != len(want) {
		t.Fatalf("%d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("frame %d: got %s want %s", i, got[i], want[i])
		}
	}
	sock.Terminate(backends.LeaveDisconnected)
}
