package channels

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels/auth"
	"github.com/phxgate/phxgate/pubsub"
)

// A channel's calls reach the backend in the order the client sent them,
// one at a time, while different channels run concurrently.
func TestPerChannelFIFO(t *testing.T) {
	const topics, perTopic = 8, 30
	env := newTestEnv(t, func(c *Config) { c.Workers = 4; c.ChannelQueue = perTopic })
	sock, conn := env.connect(t, V2)
	for i := range topics {
		mustHandle(t, sock, fmt.Sprintf(`["j%d","j%d","room:%d","phx_join",{}]`, i, i, i))
	}
	conn.waitTexts(t, topics)
	var wg sync.WaitGroup
	var mu sync.Mutex // HandleText is one at a time per socket
	for i := range topics {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range perTopic {
				mu.Lock()
				err := sock.HandleText([]byte(fmt.Sprintf(`["j%d","%d","room:%d","ping",{}]`, i, k, i)))
				mu.Unlock()
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	got := conn.waitTexts(t, topics+topics*perTopic)
	next := make([]int, topics)
	for _, f := range got[topics:] {
		var i, k int
		if _, err := fmt.Sscanf(f, `["j%d","%d"`, &i, &k); err != nil {
			t.Fatalf("frame %s: %v", f, err)
		}
		if k != next[i] {
			t.Fatalf("room:%d reply %d, want %d", i, k, next[i])
		}
		next[i]++
	}
	seen := make([]int, topics)
	for _, l := range env.backend.logged() {
		var i, k int
		if _, err := fmt.Sscanf(l, "in room:%d ping %d", &i, &k); err != nil {
			continue
		}
		if k != seen[i] {
			t.Fatalf("backend saw room:%d ref %d, want %d", i, k, seen[i])
		}
		seen[i]++
	}
}

// Past ChannelQueue pending calls a call gets backend_overloaded instead of
// blocking the poller, in its turn: after the replies to earlier calls.
func TestChannelQueueLimit(t *testing.T) {
	env := newTestEnv(t, func(c *Config) { c.ChannelQueue = 2 })
	gate := make(chan struct{})
	env.backend.gate = gate
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	conn.waitTexts(t, 1)
	mustHandle(t, sock, `["1","2","room:a","slow",{}]`)
	waitFor(t, waitLong, "slow call running", func() bool {
		l := env.backend.logged()
		return l[len(l)-1] == "in room:a slow 2"
	})
	mustHandle(t, sock, `["1","3","room:a","ping",{}]`)
	mustHandle(t, sock, `["1","4","room:a","ping",{}]`)
	mustHandle(t, sock, `["1","5","room:a","ping",{}]`)
	if n := conn.count(); n != 1 {
		t.Fatalf("%d frames before the slow call returned: %v", n, conn.texts())
	}
	close(gate)
	got := conn.waitTexts(t, 5)
	if want := `["1","5","room:a","phx_reply",{"response":{"reason":"backend_overloaded"},"status":"error"}]`; got[4] != want {
		t.Fatalf("got %v, want last %s", got, want)
	}
	if v := counterValue(t, env.reg, "phxgate_backend_overloaded_total", "channel"); v != 1 {
		t.Fatalf("overloaded metric %v", v)
	}
}

// Terminate: every joined channel gets exactly one Leave, after its pending
// calls; nothing is sent afterwards; a second Terminate does nothing.
func TestTerminateLeavesOnce(t *testing.T) {
	env := newTestEnv(t, nil)
	gate := make(chan struct{})
	env.backend.gate = gate
	sock, conn := env.connect(t, V2)
	for i := range 3 {
		mustHandle(t, sock, fmt.Sprintf(`["%d","%d","room:%d","phx_join",{}]`, i, i, i))
	}
	conn.waitTexts(t, 3)
	mustHandle(t, sock, `["0","9","room:0","slow",{}]`)
	mustHandle(t, sock, `["0","10","room:0","ping",{}]`)
	sock.Terminate(backends.LeaveDisconnected)
	sock.Terminate(backends.LeaveKicked)
	close(gate)
	waitFor(t, waitLong, "3 leaves", func() bool {
		env.backend.mu.Lock()
		defer env.backend.mu.Unlock()
		return len(env.backend.leaves) == 3
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := env.srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	env.backend.mu.Lock()
	for k, n := range env.backend.leaves {
		if n != 1 {
			t.Errorf("%s: %d leaves", k, n)
		}
	}
	env.backend.mu.Unlock()
	log := env.backend.logged()
	iSlow := slices.Index(log, "in room:0 slow 9")
	iPing := slices.Index(log, "in room:0 ping 10")
	iLeave := slices.Index(log, "leave room:0 0 disconnected")
	if iSlow < 0 || iPing < iSlow || iLeave < iPing {
		t.Fatalf("leave not after pending calls: %v", log)
	}
	if n := conn.count(); n != 3 {
		t.Fatalf("%d frames sent, want only the 3 join replies: %v", n, conn.texts())
	}
	if env.broker.hasHandler("room:0") {
		t.Fatal("topic still subscribed after terminate")
	}
	if err := sock.HandleText([]byte(`["0","11","room:0","ping",{}]`)); err != nil {
		t.Fatal(err)
	}
}

func TestDuplicateJoinBackendOrder(t *testing.T) {
	env := newTestEnv(t, nil)
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	mustHandle(t, sock, `["3","3","room:a","phx_join",{}]`)
	conn.waitTexts(t, 3)
	want := []string{"join room:a 1", "leave room:a 1 duplicate_join", "join room:a 3"}
	if got := env.backend.logged(); !slices.Equal(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
	if v := counterValue(t, env.reg, "phxgate_channels_joins_total", "duplicate"); v != 1 {
		t.Fatalf("duplicate metric %v", v)
	}
}

func TestRejoinAfterLeave(t *testing.T) {
	env := newTestEnv(t, nil)
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	mustHandle(t, sock, `["1","2","room:a","phx_leave",{}]`)
	mustHandle(t, sock, `["3","3","room:a","phx_join",{}]`)
	got := conn.waitTexts(t, 4)
	want := []string{
		`["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]`,
		`["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`,
		`["1","1","room:a","phx_close",{}]`,
		`["3","3","room:a","phx_reply",{"response":{},"status":"ok"}]`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

func TestHubSubscribesOncePerTopic(t *testing.T) {
	env := newTestEnv(t, nil)
	var socks []*Socket
	var conns []*fakeConn
	for range 3 {
		s, c := env.connect(t, V2)
		mustHandle(t, s, `["1","1","room:a","phx_join",{}]`)
		c.waitTexts(t, 1)
		socks, conns = append(socks, s), append(conns, c)
	}
	if n := env.broker.subscribes.Load(); n != 1 {
		t.Fatalf("%d subscribes, want 1", n)
	}
	if _, err := env.broker.Publish(context.Background(), "room:a", pubsub.Message{Event: "ev", Payload: []byte(`{"x":1}`)}); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if got := c.waitTexts(t, 2); got[1] != `[null,null,"room:a","ev",{"x":1}]` {
			t.Fatal(got)
		}
	}
	for i, s := range socks {
		mustHandle(t, s, `["1","2","room:a","phx_leave",{}]`)
		conns[i].waitTexts(t, 4)
	}
	waitFor(t, waitLong, "unsubscribe", func() bool { return !env.broker.hasHandler("room:a") })
	env.srv.hub.mu.Lock()
	n := len(env.srv.hub.topics)
	env.srv.hub.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d topics left in hub", n)
	}
}

func TestJoinPayloadStripped(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{}`, `{}`},
		{`{"a":1}`, `{"a":1}`},
		{`{"token":"secret"}`, `{}`},
		{`{"a":1,"offset":null,"b":[1,2],"token":"x"}`, `{"a":1,"b":[1,2]}`},
		{`{ "offset" : "p:E:1" , "deny" : true }`, `{"deny" : true}`},
	} {
		out, _, _ := stripJoinPayload([]byte(tc.in))
		if string(out) != tc.want {
			t.Errorf("strip(%s) = %s, want %s", tc.in, out, tc.want)
		}
	}
}

// TestSizes pins the per-connection structs of an idle joined socket (the
// target is ≤ 1.5 KB per connection in all): Socket and channel are each
// exactly the 128-byte malloc size class, so one more field costs a whole
// 16-byte step (144). The rarely used channel fields stay in channelRare.
func TestSizes(t *testing.T) {
	t.Logf("sizeof Socket=%d channel=%d channelRare=%d task=%d",
		unsafe.Sizeof(Socket{}), unsafe.Sizeof(channel{}), unsafe.Sizeof(channelRare{}), unsafe.Sizeof(task{}))
	if n := unsafe.Sizeof(Socket{}); n > 128 {
		t.Errorf("Socket is %d bytes; keep it within 128", n)
	}
	if n := unsafe.Sizeof(channel{}); n > 128 {
		t.Errorf("channel is %d bytes; keep it within 128 (rare fields go to channelRare)", n)
	}
}

// Server.Close drains queued work and returns every goroutine it started.
func TestCloseStopsWorkers(t *testing.T) {
	before := runtime.NumGoroutine()
	env := newTestEnv(t, func(c *Config) { c.Workers = 16 })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	conn.waitTexts(t, 1)
	sock.Terminate(backends.LeaveDrained)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := env.srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= before })
	if l := env.backend.logged(); !strings.HasSuffix(l[len(l)-1], "drained") {
		t.Fatalf("no drained leave: %v", l)
	}
}

func TestCallTimeout(t *testing.T) {
	env := newTestEnv(t, func(c *Config) { c.CallTimeout = 20 * time.Millisecond })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	conn.waitTexts(t, 1)
	mustHandle(t, sock, `["1","2","room:a","hang",{}]`)
	got := conn.waitTexts(t, 2)
	if want := `["1","2","room:a","phx_reply",{"response":{"reason":"backend_timeout"},"status":"error"}]`; got[1] != want {
		t.Fatalf("got %s want %s", got[1], want)
	}
	if v := counterValue(t, env.reg, "phxgate_backend_calls_total", "timeout"); v != 1 {
		t.Fatalf("timeout metric %v", v)
	}
}

// With the pool queue full, a join is refused at once with
// backend_overloaded instead of blocking the poller.
func TestPoolQueueLimit(t *testing.T) {
	env := newTestEnv(t, func(c *Config) { c.Workers = 1; c.QueueSize = 1 })
	gate := make(chan struct{})
	env.backend.joinGate = gate
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`) // runs, blocks on gate
	waitFor(t, waitLong, "first join running", func() bool { return len(env.backend.logged()) == 1 })
	mustHandle(t, sock, `["2","2","room:b","phx_join",{}]`) // queued
	mustHandle(t, sock, `["3","3","room:c","phx_join",{}]`) // refused
	got := conn.waitTexts(t, 1)
	if want := `["3","3","room:c","phx_reply",{"response":{"reason":"backend_overloaded"},"status":"error"}]`; got[0] != want {
		t.Fatalf("got %s want %s", got[0], want)
	}
	close(gate)
	conn.waitTexts(t, 3)
	sock.mu.Lock()
	n := len(sock.chans)
	sock.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d channels, want 2", n)
	}
	if v := counterValue(t, env.reg, "phxgate_backend_overloaded_total", "pool"); v != 1 {
		t.Fatalf("overloaded metric %v", v)
	}
}

// Terminate while a join is still at the backend: the join completes, then
// its channel gets exactly one Leave, and the client gets nothing.
func TestTerminateDuringJoin(t *testing.T) {
	env := newTestEnv(t, nil)
	gate := make(chan struct{})
	env.backend.joinGate = gate
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","room:a","phx_join",{}]`)
	waitFor(t, waitLong, "join running", func() bool { return len(env.backend.logged()) == 1 })
	sock.Terminate(backends.LeaveDisconnected)
	close(gate)
	waitFor(t, waitLong, "leave", func() bool { return len(env.backend.logged()) == 2 })
	if l := env.backend.logged(); l[1] != "leave room:a 1 disconnected" {
		t.Fatal(l)
	}
	waitFor(t, waitLong, "unsubscribed", func() bool { return !env.broker.hasHandler("room:a") })
	if n := conn.count(); n != 0 {
		t.Fatalf("sent %v after terminate", conn.texts())
	}
}

// Under a steady stream of broadcasts, every joiner's first frame is its
// join reply.
func TestJoinReplyPrecedesBroadcasts(t *testing.T) {
	env := newTestEnv(t, nil)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = env.broker.Publish(context.Background(), "room:a", pubsub.Message{Event: "tick", Payload: []byte(`{}`)})
		}
	}()
	var conns []*fakeConn
	for i := range 50 {
		s, c := env.connect(t, V2)
		payload := `{}`
		if i%2 == 0 {
			payload = `{"offset":null}`
		}
		mustHandle(t, s, `["1","1","room:a","phx_join",`+payload+`]`)
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.waitTexts(t, 2)
	}
	close(stop)
	<-done
	for _, c := range conns {
		if got := c.texts()[0]; !strings.HasPrefix(got, `["1","1","room:a","phx_reply"`) {
			t.Fatalf("first frame %s", got)
		}
	}
}

// The protocol state of an idle connection joined to one topic stays small
// (DESIGN.md §3 budget: 1.5 KB per connection for the whole gateway).
func TestIdleJoinedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates thousands of sockets")
	}
	const n = 5000
	const budget = 600 // bytes per connection for this package
	env := newTestEnv(t, nil)
	conn := &discardConn{}
	socks := make([]*Socket, 0, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		s := env.srv.Connect(conn, ConnectInfo{Serializer: V2})
		if err := s.HandleText([]byte(fmt.Sprintf(`["%d","%d","room:mem","phx_join",{}]`, i, i))); err != nil {
			t.Fatal(err)
		}
		socks = append(socks, s)
	}
	waitFor(t, waitLong, "joins", func() bool { return conn.n.Load() == n })
	waitFor(t, waitLong, "idle", func() bool { return env.srv.inflight.Load() == 0 })
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("heap per idle joined socket: %d bytes", per)
	if per > budget {
		t.Fatalf("%d bytes per idle joined socket, budget %d", per, budget)
	}
	runtime.KeepAlive(socks)
}

// The socket keeps the player and claims only through its identity: the
// usual cases allocate nothing, and a custom Admit's PlayerID or Claims
// still reach the backend without changing what the socket may join.
func TestConnectIdentity(t *testing.T) {
	tok := &auth.Identity{PlayerID: "p1", Topics: []string{"room:*"}, Raw: []byte(`{"sub":"p1"}`)}
	if id := connectIdentity(ConnectInfo{}); id != nil {
		t.Fatalf("anonymous: identity %+v, want nil", id)
	}
	if id := connectIdentity(ConnectInfo{PlayerID: "p1", Claims: tok.Raw, Identity: tok}); id != tok {
		t.Fatalf("verified token: got a copy, want the identity itself")
	}
	id := connectIdentity(ConnectInfo{PlayerID: "p2", Claims: []byte(`{}`)})
	if id == nil || id.PlayerID != "p2" || string(id.Raw) != `{}` || id.Topics != nil {
		t.Fatalf("player without identity: %+v", id)
	}
	id = connectIdentity(ConnectInfo{PlayerID: "p3", Identity: tok})
	if id == tok || id.PlayerID != "p3" || id.Raw != nil || !slices.Equal(id.Topics, tok.Topics) {
		t.Fatalf("identity with another player: %+v", id)
	}
	if tok.PlayerID != "p1" {
		t.Fatal("the caller's identity was modified")
	}
}

// A leave sent while the join is still at the backend, when that join is
// then refused, is a leave on a topic not joined: Phoenix answers it with
// the message's join_ref (here null), not the refused join's.
func TestLeaveAfterFailedJoinEchoesMessageJoinRef(t *testing.T) {
	env := newTestEnv(t, nil)
	gate := make(chan struct{})
	env.backend.joinGate = gate
	env.backend.denyAll.Store(true)
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["5","1","room:x","phx_join",{}]`)
	waitFor(t, waitLong, "join at the backend", func() bool { return len(env.backend.logged()) == 1 })
	mustHandle(t, sock, `[null,"2","room:x","phx_leave",{}]`)
	close(gate)
	got := conn.waitTexts(t, 2)
	want := []string{
		`["5","1","room:x","phx_reply",{"response":{"reason":"denied"},"status":"error"}]`,
		`[null,"2","room:x","phx_reply",{"response":{},"status":"ok"}]`,
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %v, want %v", got, want)
	}
}
