package channels

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phxgate/phxgate/pubsub"
)

// scriptedState is a tracker whose State runs a step per read (its
// number, from 1) before answering: a diff published meanwhile, a slow
// store. The state is bigState's plus a key naming the read
// ("read<N>"), or, when small, only that key.
type scriptedState struct {
	fakePresence
	small bool
	reads atomic.Int64
	step  func(ctx context.Context, n int64)
}

func (g *scriptedState) State(ctx context.Context, topic string) ([]byte, error) {
	n := g.reads.Add(1)
	if g.step != nil {
		g.step(ctx, n)
	}
	own := `"read` + strconv.FormatInt(n, 10) + `":{"metas":[{"phx_ref":"x"}]}`
	if g.small {
		return []byte(`{` + own + `}`), nil
	}
	big, _ := (&bigState{}).State(ctx, topic)
	return append(big[:len(big)-1], `,`+own+`}`...), nil
}

// gate is a store read held until opened; a failed test opens it (before
// the server's cleanup) so nothing waits on it forever.
type gate struct {
	entered, release chan struct{}
	once             sync.Once
}

func newGate() *gate {
	return &gate{entered: make(chan struct{}), release: make(chan struct{})}
}

// hold marks the read entered and waits until the gate opens.
func (g *gate) hold() {
	close(g.entered)
	<-g.release
}

// waitEntered waits (bounded) for the held read to start.
func (g *gate) waitEntered(tb testing.TB) {
	tb.Helper()
	select {
	case <-g.entered:
	case <-time.After(waitLong):
		tb.Fatal("the held state read never started")
	}
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// publishDiff publishes an empty presence_diff on topic, as the tracker
// of a busy room does once per window.
func publishDiff(tb testing.TB, env *testEnv, topic string) {
	tb.Helper()
	if _, err := env.broker.Publish(context.Background(), topic, pubsub.Message{Event: "presence_diff", Payload: []byte(`{"joins":{},"leaves":{}}`), Ephemeral: true}); err != nil {
		tb.Error(err)
	}
}

// A join of a big room reads the state without holding the topic's
// delivery lock (a broadcast of the topic is delivered while the read is
// held): with Redis that lock is taken on the reader goroutine of a
// pub/sub shard, so a read under it would hold up every event of the
// topic, and of the shard's other topics, for a whole-room read. A diff
// delivered during the read follows the last piece again.
func TestPresenceJoinReadsStateOffTheDeliveryLock(t *testing.T) {
	g := newGate()
	var env *testEnv
	gs := &scriptedState{}
	gs.step = func(_ context.Context, n int64) {
		if n == 1 { // a diff during the read, then a slow store
			publishDiff(t, env, "here:a")
			g.hold()
		}
	}
	env = newTestEnv(t, func(c *Config) { c.Presence = gs; c.PresencePieceBytes = 1024 })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	t.Cleanup(g.open)
	g.waitEntered(t)
	broadcastDelivered(t, env, "here:a", "while the join reads the state")
	g.open()
	waitFor(t, waitLong, "the pieces, then the diff again", func() bool {
		got := conn.texts()
		return strings.Contains(strings.Join(got, "\n"), `"read1"`) && strings.Contains(got[len(got)-1], `"presence_diff",{"joins":{},"leaves":{}}`)
	})
	if n := gs.reads.Load(); n != 1 {
		t.Fatalf("%d state reads, want 1", n)
	}
	if n := counterValue(t, env.reg, "phxgate_presence_state_overtaken_total", ""); n != 0 {
		t.Fatalf("phxgate_presence_state_overtaken_total = %v, want 0", n)
	}
	waitFor(t, waitLong, "the budget back to zero", func() bool { return env.srv.stateBudget.inUse() == 0 })
}

// broadcastDelivered publishes a broadcast on topic and waits (bounded)
// for its delivery to the topic's subscribers to be done.
func broadcastDelivered(tb testing.TB, env *testEnv, topic, while string) {
	tb.Helper()
	published := make(chan struct{})
	go func() {
		defer close(published)
		_, _ = env.broker.Publish(context.Background(), topic, pubsub.Message{Event: "news", Payload: []byte(`{"n":1}`)})
	}()
	select {
	case <-published:
	case <-time.After(waitLong):
		tb.Fatalf("a broadcast of the topic not delivered %s", while)
	}
}

// publishDiffs publishes n empty presence_diffs on topic.
func publishDiffs(tb testing.TB, env *testEnv, topic string, n int) {
	tb.Helper()
	for range n {
		publishDiff(tb, env, topic)
	}
}

// A room so busy that more diffs come during every read of its state
// than the topic keeps (diffLogMax) ends the join with phx_error after
// stateAttempts reads (counted), and the client rejoins with its own
// backoff; the budget is given back.
func TestPresenceJoinBusyRoomEndsWithPhxError(t *testing.T) {
	var env *testEnv
	gs := &scriptedState{}
	gs.step = func(context.Context, int64) { publishDiffs(t, env, "here:a", diffLogMax+1) }
	env = newTestEnv(t, func(c *Config) { c.Presence = gs; c.PresencePieceBytes = 1024 })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	waitFor(t, waitLong, "phx_error", func() bool {
		return strings.Contains(strings.Join(conn.texts(), "\n"), `"phx_error"`)
	})
	if strings.Contains(strings.Join(conn.texts(), "\n"), `"presence_state"`) {
		t.Fatalf("a state older than a diff was sent:\n%s", strings.Join(conn.texts(), "\n"))
	}
	if n := gs.reads.Load(); n != stateAttempts {
		t.Fatalf("%d state reads, want %d", n, stateAttempts)
	}
	if n := counterValue(t, env.reg, "phxgate_presence_state_overtaken_total", ""); n != 1 {
		t.Fatalf("phxgate_presence_state_overtaken_total = %v, want 1", n)
	}
	waitFor(t, waitLong, "the budget back to zero", func() bool { return env.srv.stateBudget.inUse() == 0 })
}

// A join's state (whole, here) read before a refresh queued its own is
// older than it and would replace it in the client's list: the join
// reads again and sends a state newer than the refresh's.
func TestPresenceJoinStateNotOlderThanARefresh(t *testing.T) {
	g := newGate()
	gs := &scriptedState{small: true}
	gs.step = func(_ context.Context, n int64) {
		if n == 1 { // the join's read: slow
			g.hold()
		}
	}
	env := newTestEnv(t, func(c *Config) { c.Presence = gs })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	t.Cleanup(g.open)
	g.waitEntered(t)
	waitFor(t, waitLong, "the join reply", func() bool { return conn.count() >= 1 })
	env.broker.resync("here:a")
	waitFor(t, waitLong, "the refresh's state", func() bool { return strings.Contains(strings.Join(conn.texts(), "\n"), `"read2"`) })
	g.open()
	waitFor(t, waitLong, "the join's state", func() bool { return conn.count() >= 3 })
	got := conn.texts()
	var states []string
	for _, f := range got {
		if strings.Contains(f, `"presence_state"`) {
			states = append(states, f)
		}
	}
	last := states[len(states)-1]
	if !strings.Contains(last, `"read3"`) {
		t.Fatalf("the last presence_state is %s, want the join's second read (read3), newer than the refresh's (read2); frames:\n%s", last, strings.Join(got, "\n"))
	}
}

// streamConn is a fakeConn that keeps the frame streams given to it, for
// the test to pull (a transport that has written everything before them).
type streamConn struct {
	*fakeConn
	smu     sync.Mutex
	streams []FrameStream
}

func (c *streamConn) SendStream(st FrameStream) {
	c.smu.Lock()
	c.streams = append(c.streams, st)
	c.smu.Unlock()
}

func (c *streamConn) stream(i int) FrameStream {
	c.smu.Lock()
	defer c.smu.Unlock()
	if i < len(c.streams) {
		return c.streams[i]
	}
	return nil
}

// A V1 client's frames carry no join_ref, so phoenix.js cannot tell the
// pieces of a join it left from those of its next join: a stream stops
// once the join it was made for has ended.
func TestPresencePiecesStopWhenTheJoinEnds(t *testing.T) {
	env := newTestEnv(t, func(c *Config) { c.Presence = &bigState{}; c.PresencePieceBytes = 1024 })
	sc := &streamConn{fakeConn: newFakeConn(t)}
	sock := env.srv.Connect(sc, ConnectInfo{Serializer: V1, Params: []byte(`{}`)})
	mustHandle(t, sock, `{"topic":"here:a","event":"phx_join","payload":{},"ref":"1"}`)
	waitFor(t, waitLong, "the stream", func() bool { return sc.stream(0) != nil })
	st := sc.stream(0)
	if f := st.Next(); !strings.Contains(string(f), `"presence_state"`) {
		t.Fatalf("first piece: %q", f)
	}
	mustHandle(t, sock, `{"topic":"here:a","event":"phx_leave","payload":{},"ref":"2"}`)
	if f := st.Next(); f != nil {
		t.Fatalf("a piece after the join was left: %s", f)
	}
	st.Close()
	waitFor(t, waitLong, "the budget back to zero", func() bool { return env.srv.stateBudget.inUse() == 0 })
}

// A state read again (more diffs came during the first read than the
// topic keeps) takes its bytes within the budget like the first read,
// waiting at most presence_stream_wait: a join whose second read is
// larger than the room left ends with phx_error, counted, instead of
// overdrawing the budget.
func TestPresenceJoinReReadRespectsTheBudget(t *testing.T) {
	var env *testEnv
	gs := &scriptedState{}
	gs.step = func(_ context.Context, n int64) {
		if n == 1 {
			publishDiffs(t, env, "here:a", diffLogMax+1)
		}
	}
	st := &growingState{scriptedState: gs}
	env = newTestEnv(t, func(c *Config) {
		c.Presence = st
		// The first read (about 2,700 bytes) fits beside what another
		// room's stream holds; the second (about 5,300) does not.
		c.PresencePieceBytes, c.PresenceStreamBytes, c.PresenceStreamWait = 1024, 6000, 0
	})
	const held = 2000
	if !env.srv.stateBudget.tryAcquire(held) {
		t.Fatal("could not take the other room's share of the budget")
	}
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	waitFor(t, waitLong, "phx_error", func() bool {
		return strings.Contains(strings.Join(conn.texts(), "\n"), `"phx_error"`)
	})
	if all := strings.Join(conn.texts(), "\n"); strings.Contains(all, `"presence_state"`) {
		t.Fatalf("a state sent past the budget:\n%s", all)
	}
	if n := gs.reads.Load(); n != 2 {
		t.Fatalf("%d state reads, want 2", n)
	}
	if n := counterValue(t, env.reg, "phxgate_presence_state_too_large_total", ""); n != 1 {
		t.Fatalf("phxgate_presence_state_too_large_total = %v, want 1", n)
	}
	waitFor(t, waitLong, "the budget back to what is held", func() bool { return env.srv.stateBudget.inUse() == held })
}

// growingState is a scriptedState whose reads after the first are 2,600
// bytes larger.
type growingState struct{ *scriptedState }

func (g *growingState) State(ctx context.Context, topic string) ([]byte, error) {
	b, err := g.scriptedState.State(ctx, topic)
	if err != nil || g.reads.Load() == 1 {
		return b, err
	}
	return append(b[:len(b)-1], `,"pad":{"metas":[{"pad":"`+strings.Repeat("y", 2500)+`"}]}}`...), nil
}

// A refresh is the only repair of lists that missed diffs: one the stream
// budget has no room for now is tried again later (counted), and sent
// once there is room.
func TestPresenceRefreshRetriedWhenTheBudgetIsBusy(t *testing.T) {
	gs := &scriptedState{}
	env := newTestEnv(t, func(c *Config) {
		c.Presence = gs
		c.PresencePieceBytes, c.PresenceStreamBytes = 1024, 4000
	})
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	waitFor(t, waitLong, "the join's state", func() bool { return strings.Contains(strings.Join(conn.texts(), "\n"), `"read1"`) })
	waitFor(t, waitLong, "the budget back to zero", func() bool { return env.srv.stateBudget.inUse() == 0 })
	const held = 3000 // other rooms' streams: the state (about 2,700) does not fit beside them
	if !env.srv.stateBudget.tryAcquire(held) {
		t.Fatal("could not take the other rooms' share of the budget")
	}
	env.broker.resync("here:a")
	waitFor(t, waitLong, "the refresh put off", func() bool {
		return counterValue(t, env.reg, "phxgate_presence_state_refresh_retries_total", refreshRetried) >= 1
	})
	if n := counterValue(t, env.reg, "phxgate_presence_state_refreshes_total", ""); n != 0 {
		t.Fatalf("phxgate_presence_state_refreshes_total = %v with no room, want 0", n)
	}
	env.srv.stateBudget.release(held)
	waitFor(t, waitLong, "the refresh's state once there is room", func() bool {
		return counterValue(t, env.reg, "phxgate_presence_state_refreshes_total", "") == 1
	})
	n := 0
	for _, f := range conn.texts() {
		if strings.Contains(f, `"presence_state"`) {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d presence_states, want the join's and the refresh's:\n%s", n, strings.Join(conn.texts(), "\n"))
	}
	if n := counterValue(t, env.reg, "phxgate_presence_state_refresh_retries_total", refreshGivenUp); n != 0 {
		t.Fatalf("given up = %v, want 0", n)
	}
	waitFor(t, waitLong, "the budget back to zero", func() bool { return env.srv.stateBudget.inUse() == 0 })
}

// A refresh reads the state off the topic's delivery lock (a broadcast
// of the topic is delivered while the read is held), and a diff delivered
// during the read follows the refresh's state to the channel again.
func TestPresenceRefreshReadsStateOffTheDeliveryLock(t *testing.T) {
	g := newGate()
	var env *testEnv
	gs := &scriptedState{small: true}
	gs.step = func(_ context.Context, n int64) {
		if n == 2 { // the refresh's read: a diff during it, then a slow store
			publishDiff(t, env, "here:a")
			g.hold()
		}
	}
	env = newTestEnv(t, func(c *Config) { c.Presence = gs })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	waitFor(t, waitLong, "the join's state", func() bool { return strings.Contains(strings.Join(conn.texts(), "\n"), `"read1"`) })
	env.broker.resync("here:a")
	t.Cleanup(g.open)
	g.waitEntered(t)
	broadcastDelivered(t, env, "here:a", "while the refresh reads the state")
	g.open()
	waitFor(t, waitLong, "the refresh's state", func() bool { return strings.Contains(strings.Join(conn.texts(), "\n"), `"read2"`) })
	texts := conn.texts()
	state := -1
	for i, f := range texts {
		if strings.Contains(f, `"read2"`) {
			state = i
		}
	}
	diffAfter := false
	for _, f := range texts[state+1:] {
		if strings.Contains(f, `"presence_diff"`) {
			diffAfter = true
		}
	}
	if !diffAfter {
		t.Fatalf("the diff delivered during the refresh's read does not follow its state:\n%s", strings.Join(texts, "\n"))
	}
}

// The diffs a room keeps while its state is read are bounded in bytes as
// well as in count: past diffLogPieces pieces the oldest go, and a join whose
// read they covered reads again (its second read, with no diff during it,
// is sent).
func TestPresenceDiffLogBoundedInBytes(t *testing.T) {
	var env *testEnv
	gs := &scriptedState{small: true}
	pad := strings.Repeat("x", 60<<10)
	gs.step = func(_ context.Context, n int64) {
		if n == 1 {
			for range diffLogPieces*env.srv.cfg.PresencePieceBytes/(60<<10) + 8 {
				if _, err := env.broker.Publish(context.Background(), "here:a", pubsub.Message{Event: "presence_diff", Payload: []byte(`{"joins":{},"leaves":{},"pad":"` + pad + `"}`), Ephemeral: true}); err != nil {
					t.Error(err)
				}
			}
		}
	}
	env = newTestEnv(t, func(c *Config) { c.Presence = gs })
	sock, conn := env.connect(t, V2)
	mustHandle(t, sock, `["1","1","here:a","phx_join",{}]`)
	waitFor(t, waitLong, "the second read's state", func() bool { return strings.Contains(strings.Join(conn.texts(), "\n"), `"read2"`) })
	if n := gs.reads.Load(); n != 2 {
		t.Fatalf("%d state reads, want 2", n)
	}
	if strings.Contains(strings.Join(conn.texts(), "\n"), `"read1"`) {
		t.Fatal("the first read's state was sent though the diffs of its read were no longer all kept")
	}
	env.srv.hub.mu.Lock()
	th := env.srv.hub.topics["here:a"]
	env.srv.hub.mu.Unlock()
	th.seqMu.Lock()
	defer th.seqMu.Unlock()
	if th.diffLogBytes != 0 || len(th.diffLog) != 0 || th.diffWatchers != 0 {
		t.Fatalf("kept diffs after the join: %d bytes, %d diffs, %d watchers", th.diffLogBytes, len(th.diffLog), th.diffWatchers)
	}
}
