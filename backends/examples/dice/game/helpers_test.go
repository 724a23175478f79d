package game

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
)

// waitLong bounds every wait of a test; reaching it is a failure.
const waitLong = 5 * time.Second

// fakeClock is a Clock that moves only when told. Move changes the time
// without firing timers (the timer goroutine being late, as real ones can
// be), Fire fires the due timers, Advance does both. WaitTimers blocks on
// a channel until enough timers are pending, so a test knows a loop is
// waiting before it moves time.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	pending map[*fakeTimer]struct{}
	changed chan struct{} // closed and replaced whenever pending changes
}

type fakeTimer struct {
	c  *fakeClock
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{
		now:     time.UnixMilli(1_700_000_000_000),
		pending: make(map[*fakeTimer]struct{}),
		changed: make(chan struct{}),
	}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		return t
	}
	c.pending[t] = struct{}{}
	c.signalLocked()
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	_, ok := t.c.pending[t]
	delete(t.c.pending, t)
	t.c.signalLocked()
	return ok
}

func (c *fakeClock) signalLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *fakeClock) Move(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) Fire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for t := range c.pending {
		if !t.at.After(c.now) {
			t.ch <- c.now
			delete(c.pending, t)
		}
	}
	c.signalLocked()
}

func (c *fakeClock) Advance(d time.Duration) {
	c.Move(d)
	c.Fire()
}

func (c *fakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// WaitTimers waits until at least n timers are pending.
func (c *fakeClock) WaitTimers(tb testing.TB, n int) {
	tb.Helper()
	deadline := time.NewTimer(waitLong)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		got, ch := len(c.pending), c.changed
		c.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			tb.Fatalf("%d timers pending after %v, want %d", got, waitLong, n)
		}
	}
}

// sent is one Broadcast call.
type sent struct {
	topic, event string
	payload      []byte
}

// fakeBroadcaster records every attempt on calls and answers with fail
// (nil: success). fail gets the attempt's number, from 1.
type fakeBroadcaster struct {
	calls    chan sent
	attempts atomic.Int64
	fail     func(n int64) error
}

func newFakeBroadcaster() *fakeBroadcaster { return &fakeBroadcaster{calls: make(chan sent, 256)} }

func (f *fakeBroadcaster) Broadcast(ctx context.Context, topic, event string, payload []byte) error {
	n := f.attempts.Add(1)
	select {
	case f.calls <- sent{topic, event, bytes.Clone(payload)}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if f.fail != nil {
		return f.fail(n)
	}
	return nil
}

// next returns the next attempt, failing tb if none comes.
func (f *fakeBroadcaster) next(tb testing.TB) sent {
	tb.Helper()
	select {
	case s := <-f.calls:
		return s
	case <-time.After(waitLong):
		tb.Fatalf("no broadcast within %v", waitLong)
		return sent{}
	}
}

// none fails tb if an attempt was recorded and not taken.
func (f *fakeBroadcaster) none(tb testing.TB) {
	tb.Helper()
	select {
	case s := <-f.calls:
		tb.Fatalf("unexpected broadcast %s %s %s", s.topic, s.event, s.payload)
	default:
	}
}

// fixture is a game on a fake clock, a settable roll and a fake
// broadcaster, closed at cleanup.
type fixture struct {
	g    *Game
	clk  *fakeClock
	bc   *fakeBroadcaster
	roll atomic.Int64
	cfg  Config
}

func newFixture(tb testing.TB, tweak func(*Config)) *fixture {
	tb.Helper()
	f := &fixture{clk: newFakeClock(), bc: newFakeBroadcaster(), cfg: NewConfig()}
	f.roll.Store(1)
	if tweak != nil {
		tweak(&f.cfg)
	}
	g, err := New(f.cfg, Options{
		Broadcaster: f.bc,
		Clock:       f.clk,
		Roll:        func() int { return int(f.roll.Load()) },
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	f.g = g
	tb.Cleanup(g.Close)
	return f
}

var keySeq atomic.Int64

// newKey returns a key no other call uses.
func newKey() string { return fmt.Sprintf("test:1:1:%d", keySeq.Add(1)) }

func call(topic, player, event, key string, payload []byte) *backendv1.Call {
	return &backendv1.Call{
		NodeId:         "node-1",
		ConnId:         7,
		JoinRef:        player, // one seat per player unless a test says otherwise
		PlayerId:       player,
		Topic:          topic,
		Event:          event,
		Payload:        &backendv1.Payload{Data: payload},
		IdempotencyKey: key,
	}
}

// join joins player to topic and returns the reply.
func (f *fixture) join(tb testing.TB, topic, player string) *backendv1.Reply {
	tb.Helper()
	return f.joinKey(tb, topic, player, newKey())
}

func (f *fixture) joinKey(tb testing.TB, topic, player, key string) *backendv1.Reply {
	tb.Helper()
	res, err := f.g.Join(context.Background(), &backendv1.JoinRequest{Call: call(topic, player, "phx_join", key, []byte("{}"))})
	if err != nil {
		tb.Fatalf("Join(%s, %s): %v", topic, player, err)
	}
	return res.GetReply()
}

// mustJoin joins and fails tb unless the reply is ok.
func (f *fixture) mustJoin(tb testing.TB, topic, player string) joinReply {
	tb.Helper()
	r := f.join(tb, topic, player)
	if r.GetStatus() != StatusOK {
		tb.Fatalf("join %s %s: %s %s", topic, player, r.GetStatus(), r.GetResponse().GetData())
	}
	var j joinReply
	decode(tb, r.GetResponse().GetData(), &j)
	return j
}

// joinSeat joins player to topic from the channel joined as joinRef (a
// second socket of the player's has its own).
func (f *fixture) joinSeat(tb testing.TB, topic, player, joinRef string) {
	tb.Helper()
	c := call(topic, player, "phx_join", newKey(), []byte("{}"))
	c.JoinRef = joinRef
	res, err := f.g.Join(context.Background(), &backendv1.JoinRequest{Call: c})
	if err != nil || res.GetReply().GetStatus() != StatusOK {
		tb.Fatalf("Join(%s, %s, %s): %v %v", topic, player, joinRef, res, err)
	}
}

// leaveSeat leaves the seat joinSeat took.
func (f *fixture) leaveSeat(tb testing.TB, topic, player, joinRef string) {
	tb.Helper()
	c := call(topic, player, "phx_leave", newKey(), nil)
	c.JoinRef = joinRef
	if _, err := f.g.Leave(context.Background(), &backendv1.LeaveRequest{Call: c, Reason: backendv1.LeaveReason_LEAVE_REASON_LEFT}); err != nil {
		tb.Fatalf("Leave(%s, %s, %s): %v", topic, player, joinRef, err)
	}
}

func (f *fixture) leave(tb testing.TB, topic, player string) {
	tb.Helper()
	f.leaveKey(tb, topic, player, newKey())
}

func (f *fixture) leaveKey(tb testing.TB, topic, player, key string) {
	tb.Helper()
	_, err := f.g.Leave(context.Background(), &backendv1.LeaveRequest{
		Call:   call(topic, player, "phx_leave", key, nil),
		Reason: backendv1.LeaveReason_LEAVE_REASON_LEFT,
	})
	if err != nil {
		tb.Fatalf("Leave(%s, %s): %v", topic, player, err)
	}
}

// send sends event with payload under key and returns the reply.
func (f *fixture) send(tb testing.TB, topic, player, event, key string, payload []byte) *backendv1.Reply {
	tb.Helper()
	res, err := f.g.HandleIn(context.Background(), &backendv1.HandleInRequest{Call: call(topic, player, event, key, payload)})
	if err != nil {
		tb.Fatalf("HandleIn(%s, %s, %s): %v", topic, player, event, err)
	}
	return res.GetReply()
}

// bet bets amount on pick under key ("" for a fresh key).
func (f *fixture) bet(tb testing.TB, topic, player string, amount int64, pick, key string) *backendv1.Reply {
	tb.Helper()
	if key == "" {
		key = newKey()
	}
	return f.send(tb, topic, player, EventBet, key, fmt.Appendf(nil, `{"amount":%d,"pick":%q}`, amount, pick))
}

// mustBet bets and fails tb unless it is accepted; it returns the reply.
func (f *fixture) mustBet(tb testing.TB, topic, player string, amount int64, pick string) betReply {
	tb.Helper()
	r := f.bet(tb, topic, player, amount, pick, "")
	if r.GetStatus() != StatusOK {
		tb.Fatalf("bet %s %d %s: %s %s", player, amount, pick, r.GetStatus(), r.GetResponse().GetData())
	}
	var b betReply
	decode(tb, r.GetResponse().GetData(), &b)
	return b
}

// table returns topic's table, failing tb when it has none.
func (f *fixture) table(tb testing.TB, topic string) *table {
	tb.Helper()
	f.g.mu.RLock()
	defer f.g.mu.RUnlock()
	t := f.g.tables[topic]
	if t == nil {
		tb.Fatalf("no table %s", topic)
	}
	return t
}

// roll makes the round of topic roll n: it waits for the loop's timer,
// advances the clock by the window and returns the result broadcast.
func (f *fixture) rollRound(tb testing.TB, n int) roundResult {
	tb.Helper()
	f.roll.Store(int64(n))
	f.clk.WaitTimers(tb, 1)
	f.clk.Advance(f.cfg.Window)
	s := f.bc.next(tb)
	if s.event != EventRoundResult {
		tb.Fatalf("broadcast event %q, want %q", s.event, EventRoundResult)
	}
	var r roundResult
	decode(tb, s.payload, &r)
	return r
}

func decode(tb testing.TB, data []byte, v any) {
	tb.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		tb.Fatalf("decode %s: %v", data, err)
	}
}

// wantError fails tb unless r is an error reply with reason.
func wantError(tb testing.TB, r *backendv1.Reply, reason string) {
	tb.Helper()
	want := `{"reason":"` + reason + `"}`
	if r.GetStatus() != StatusError || string(r.GetResponse().GetData()) != want {
		tb.Fatalf("reply %s %s, want error %s", r.GetStatus(), r.GetResponse().GetData(), want)
	}
}

func wantBalance(tb testing.TB, g *Game, player string, want int64) {
	tb.Helper()
	if got := g.Balance(player); got != want {
		tb.Fatalf("balance of %s = %d, want %d", player, got, want)
	}
}

// waitClosed waits for ch to be closed.
func waitClosed(tb testing.TB, ch <-chan struct{}, what string) {
	tb.Helper()
	select {
	case <-ch:
	case <-time.After(waitLong):
		tb.Fatalf("%s: not within %v", what, waitLong)
	}
}

// goroutinesBackTo waits until no more than base goroutines run. The
// runtime gives no event for a goroutine's exit, so this one wait polls.
func goroutinesBackTo(tb testing.TB, base int) {
	tb.Helper()
	deadline := time.Now().Add(waitLong)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			tb.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}
