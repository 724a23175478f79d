package channels

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/pubsub"
	"github.com/prometheus/client_golang/prometheus"
)

// waitFor polls cond until it holds or the timeout passes.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// wsFrame is a server frame decoded by the fake conn.
type wsFrame struct {
	op      byte
	payload []byte
}

// parseServerFrame decodes an unmasked server frame; it fails the test on
// anything malformed.
func parseServerFrame(tb testing.TB, f []byte) wsFrame {
	tb.Helper()
	if len(f) < 2 || f[0]&0x80 == 0 || f[1]&0x80 != 0 {
		tb.Fatalf("bad frame header % x", f[:min(len(f), 2)])
	}
	n, h := int(f[1]&0x7f), 2
	switch n {
	case 126:
		n, h = int(f[2])<<8|int(f[3]), 4
	case 127:
		n = 0
		for k := 0; k < 8; k++ {
			n = n<<8 | int(f[2+k])
		}
		h = 10
	}
	if len(f) != h+n {
		tb.Fatalf("frame length %d, header says %d+%d", len(f), h, n)
	}
	return wsFrame{op: f[0] & 0x0f, payload: f[h:]}
}

type fakeConn struct {
	tb     testing.TB
	id     uint64
	mu     sync.Mutex
	frames []wsFrame
	raw    [][]byte
}

var connIDs atomic.Uint64

func newFakeConn(tb testing.TB) *fakeConn {
	return &fakeConn{tb: tb, id: connIDs.Add(1)}
}

func (c *fakeConn) Send(f []byte) {
	fr := parseServerFrame(c.tb, f)
	c.mu.Lock()
	c.frames = append(c.frames, fr)
	c.raw = append(c.raw, f)
	c.mu.Unlock()
}
func (c *fakeConn) Close(CloseCode, DisconnectReason) {}
func (c *fakeConn) ID() uint64                        { return c.id }

// texts renders every frame: text frames as is, binary frames as
// "bin:<kind>|field|field|…|payload".
func (c *fakeConn) texts() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.frames))
	for i, f := range c.frames {
		if f.op == opText {
			out[i] = string(f.payload)
		} else {
			out[i] = renderBinary(f.payload)
		}
	}
	return out
}

func renderBinary(p []byte) string {
	if len(p) == 0 {
		return "bin:empty"
	}
	var nfields int
	switch p[0] {
	case binPush:
		nfields = 3
	case binReply:
		nfields = 4
	case binBroadcast:
		nfields = 2
	default:
		return fmt.Sprintf("bin:kind%d", p[0])
	}
	lens := p[1 : 1+nfields]
	i := 1 + nfields
	parts := []string{fmt.Sprintf("bin:%d", p[0])}
	for _, l := range lens {
		parts = append(parts, string(p[i:i+int(l)]))
		i += int(l)
	}
	parts = append(parts, string(p[i:]))
	return strings.Join(parts, "|")
}

func (c *fakeConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.frames)
}

// waitTexts waits for exactly n frames (at least n, then checks no more
// are visible) and returns them.
func (c *fakeConn) waitTexts(tb testing.TB, n int) []string {
	tb.Helper()
	waitFor(tb, 5*time.Second, fmt.Sprintf("%d frames (have %v)", n, c.texts()), func() bool { return c.count() >= n })
	return c.texts()
}

// testBroker is a small in-test pubsub.Broker: one epoch, every event kept,
// synchronous delivery on Publish (like the memory engine).
type testBroker struct {
	mu            sync.Mutex
	epoch         string
	topics        map[string]*tbTopic
	subscribes    atomic.Int64
	unsubscribes  atomic.Int64
	failPublish   atomic.Int64       // the next this many Publish calls fail
	beforeHistory func(topic string) // test hook, called without locks
	afterHistory  func(topic string) // test hook, called without locks
}

type tbTopic struct {
	deliver sync.Mutex
	events  []*pubsub.Event
	h       pubsub.Handler
}

func newTestBroker() *testBroker {
	return &testBroker{epoch: "E1", topics: map[string]*tbTopic{}}
}

func (b *testBroker) topic(name string) *tbTopic {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[name]
	if t == nil {
		t = &tbTopic{}
		b.topics[name] = t
	}
	return t
}

func (b *testBroker) Publish(_ context.Context, topic string, m pubsub.Message) (pubsub.Position, error) {
	if b.failPublish.Add(-1) >= 0 {
		return pubsub.Position{}, errors.New("broker unreachable")
	}
	t := b.topic(topic)
	t.deliver.Lock()
	defer t.deliver.Unlock()
	b.mu.Lock()
	ev := &pubsub.Event{Topic: topic, Event: m.Event, Payload: m.Payload, Binary: m.Binary}
	if !m.Ephemeral {
		ev.Pos = pubsub.Position{Epoch: b.epoch, Offset: uint64(len(t.events) + 1)}
		t.events = append(t.events, ev)
	}
	h := t.h
	b.mu.Unlock()
	if h != nil {
		h.Deliver(ev)
	}
	return ev.Pos, nil
}

func (b *testBroker) Subscribe(_ context.Context, topic string, h pubsub.Handler) (pubsub.Position, error) {
	t := b.topic(topic)
	b.mu.Lock()
	t.h = h
	pos := pubsub.Position{Epoch: b.epoch, Offset: uint64(len(t.events))}
	b.mu.Unlock()
	b.subscribes.Add(1)
	return pos, nil
}

func (b *testBroker) Ping(context.Context) error { return nil }

func (b *testBroker) Unsubscribe(_ context.Context, topic string) error {
	t := b.topic(topic)
	b.mu.Lock()
	t.h = nil
	b.mu.Unlock()
	b.unsubscribes.Add(1)
	return nil
}

func (b *testBroker) History(_ context.Context, topic string, since pubsub.Position, limit int) (pubsub.HistoryResult, error) {
	if b.beforeHistory != nil {
		b.beforeHistory(topic)
	}
	if b.afterHistory != nil {
		defer b.afterHistory(topic)
	}
	t := b.topic(topic)
	b.mu.Lock()
	defer b.mu.Unlock()
	top := pubsub.Position{Epoch: b.epoch, Offset: uint64(len(t.events))}
	if since.IsZero() {
		return pubsub.HistoryResult{Top: top}, nil
	}
	if since.Epoch != b.epoch || since.Offset > top.Offset {
		return pubsub.HistoryResult{Top: top}, nil
	}
	if limit <= 0 || limit > pubsub.MaxHistoryPage {
		limit = pubsub.MaxHistoryPage
	}
	rest := t.events[since.Offset:]
	evs := append([]*pubsub.Event(nil), rest[:min(len(rest), limit)]...)
	return pubsub.HistoryResult{Events: evs, Top: top, Recovered: true}, nil
}

func (b *testBroker) Close() error { return nil }

// resync calls the topic's handler's Resync, as an engine does after a
// reconnect.
func (b *testBroker) resync(topic string) {
	t := b.topic(topic)
	b.mu.Lock()
	h := t.h
	b.mu.Unlock()
	if h != nil {
		h.Resync(topic)
	}
}

// loseHistory forgets every topic's events and starts a new epoch, as a
// store restarted without persistence does.
func (b *testBroker) loseHistory(epoch string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.epoch = epoch
	for _, t := range b.topics {
		t.events = nil
	}
}

func (b *testBroker) hasHandler(topic string) bool {
	t := b.topic(topic)
	b.mu.Lock()
	defer b.mu.Unlock()
	return t.h != nil
}

// testBackend is a scripted backend. Behaviour by topic (joins) and event:
//   - join topic containing "deny": error {"reason":"denied"}
//   - join topic containing "crash": Go error (join crashed)
//   - join topic containing "unavail": backends.ErrUnavailable
//   - join topic containing "pushy": ok {"hello":1} plus a push "welcome"
//   - event "ping": ok {"pong":true}; "echo": ok with the payload;
//     "shout": broadcast "shout" with the payload, ok {}; "noreply";
//     "crash": Go error; "stop": ok {} and StopNormal; "stopcrash": StopCrash;
//     "push": ok {} then push "pushed" {"n":1}; "slow": waits on gate.
type testBackend struct {
	mu       sync.Mutex
	log      []string // "join room:a 1", "in room:a ping 2", "leave room:a 1 left"
	leaves   map[string]int
	keys     []string
	gate     chan struct{} // closes to release "slow" events
	joinGate chan struct{} // when set, joins wait for it to close
	denyAll  atomic.Bool   // when set, every join is refused as "deny" topics are
	joinPl   [][]byte
}

func newTestBackend() *testBackend {
	return &testBackend{leaves: map[string]int{}}
}

func (b *testBackend) record(s string) {
	b.mu.Lock()
	b.log = append(b.log, s)
	b.mu.Unlock()
}

func (b *testBackend) logged() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.log...)
}

var errCrash = errors.New("backend exploded")

func (b *testBackend) Join(_ context.Context, c *backends.Call) (*backends.Reply, error) {
	rejoin := ""
	if c.Rejoin {
		rejoin = " rejoin"
	}
	b.record("join " + c.Topic + " " + c.JoinRef + rejoin)
	b.mu.Lock()
	b.keys = append(b.keys, c.IdempotencyKey)
	b.joinPl = append(b.joinPl, c.Payload.Data)
	gate := b.joinGate
	b.mu.Unlock()
	if gate != nil {
		<-gate
	}
	switch {
	case strings.Contains(c.Topic, "deny") || b.denyAll.Load():
		return &backends.Reply{Status: "error", Response: backends.Payload{Data: []byte(`{"reason":"denied"}`)}}, nil
	case strings.Contains(c.Topic, "panicjoin"):
		panic("join bug")
	case strings.Contains(c.Topic, "crash"):
		return nil, errCrash
	case strings.Contains(c.Topic, "unavail"):
		return nil, fmt.Errorf("dial: %w", backends.ErrUnavailable)
	case strings.Contains(c.Topic, "lostanswer"):
		return nil, fmt.Errorf("answer late: %w", backends.ErrTimeout)
	case strings.Contains(c.Topic, "fullbulkhead"):
		return nil, fmt.Errorf("queue full: %w", backends.ErrOverloaded)
	case strings.Contains(c.Topic, "breakeropen"):
		return nil, fmt.Errorf("%w: %w", backends.ErrUnavailable, backends.ErrCircuitOpen)
	case strings.Contains(c.Topic, "snap"):
		return &backends.Reply{Response: backends.Payload{Data: []byte(`{"snapshot":2}`)}, SnapshotPosition: "p:E1:2"}, nil
	case strings.Contains(c.Topic, "pushy"):
		return &backends.Reply{Response: backends.Payload{Data: []byte(`{"hello":1}`)},
			Pushes: []backends.Message{{Event: "welcome", Payload: backends.Payload{Data: []byte(`{"w":1}`)}}}}, nil
	}
	return &backends.Reply{Status: "ok"}, nil
}

func (b *testBackend) HandleIn(ctx context.Context, c *backends.Call) (*backends.Reply, error) {
	b.record("in " + c.Topic + " " + c.Event + " " + c.Ref)
	b.mu.Lock()
	b.keys = append(b.keys, c.IdempotencyKey)
	gate := b.gate
	b.mu.Unlock()
	ok := func(p string) *backends.Reply {
		return &backends.Reply{Status: "ok", Response: backends.Payload{Data: []byte(p)}}
	}
	switch c.Event {
	case "ping":
		return ok(`{"pong":true}`), nil
	case "echo":
		return &backends.Reply{Status: "ok", Response: c.Payload}, nil
	case "shout":
		r := ok(`{}`)
		r.Broadcasts = []backends.Message{{Event: "shout", Payload: c.Payload}}
		return r, nil
	case "noreply":
		return &backends.Reply{}, nil
	case "crash":
		return nil, errCrash
	case "unavail":
		return nil, backends.ErrUnavailable
	case "stop":
		r := ok(`{}`)
		r.Stop = backends.StopNormal
		return r, nil
	case "stopcrash":
		return &backends.Reply{Stop: backends.StopCrash}, nil
	case "push":
		r := ok(`{}`)
		r.Pushes = []backends.Message{{Event: "pushed", Payload: backends.Payload{Data: []byte(`{"n":1}`)}}}
		return r, nil
	case "panic":
		panic("handle_in bug")
	case "hang":
		<-ctx.Done()
		return nil, ctx.Err()
	case "slow":
		if gate != nil {
			<-gate
		}
		return ok(`{}`), nil
	}
	return ok(`{}`), nil
}

func (b *testBackend) Leave(_ context.Context, c *backends.Call, reason backends.LeaveReason) error {
	b.record("leave " + c.Topic + " " + c.JoinRef + " " + string(reason))
	b.mu.Lock()
	b.leaves[c.Topic+" "+c.JoinRef]++
	b.mu.Unlock()
	return nil
}

type testEnv struct {
	srv     *Server
	broker  *testBroker
	backend *testBackend
	reg     *prometheus.Registry
}

func newTestEnv(tb testing.TB, tweak func(*Config)) *testEnv {
	tb.Helper()
	be := newTestBackend()
	br := newTestBroker()
	router, err := NewRouter([]Route{
		{Pattern: "room:*", Backend: be, History: 100},
		{Pattern: "lobby", Backend: be},
		{Pattern: "here:*", Backend: be, Presence: true},
	})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := NewConfig()
	cfg.NodeID = "n1"
	cfg.Workers = 8
	if tweak != nil {
		tweak(&cfg)
	}
	reg := prometheus.NewRegistry()
	srv, err := NewServer(cfg, router, br, reg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return &testEnv{srv: srv, broker: br, backend: be, reg: reg}
}

func (e *testEnv) connect(tb testing.TB, ser Serializer) (*Socket, *fakeConn) {
	tb.Helper()
	c := newFakeConn(tb)
	return e.srv.Connect(c, ConnectInfo{Serializer: ser, Params: []byte(`{}`)}), c
}

func mustHandle(tb testing.TB, s *Socket, msg string) {
	tb.Helper()
	if err := s.HandleText([]byte(msg)); err != nil {
		tb.Fatalf("HandleText(%s): %v", msg, err)
	}
}

// v2ToV1 turns a V2 array (client or server notation) into the V1 object a
// V1 client would send (join_ref only when non-null) or the server would
// send (no join_ref, sorted keys).
func v2ToV1(tb testing.TB, msg string, server bool) string {
	tb.Helper()
	var a []json.RawMessage
	if err := json.Unmarshal([]byte(msg), &a); err != nil || len(a) != 5 {
		tb.Fatalf("bad v2 %s: %v", msg, err)
	}
	if server {
		return fmt.Sprintf(`{"event":%s,"payload":%s,"ref":%s,"topic":%s}`, a[3], a[4], a[1], a[2])
	}
	jr := ""
	if string(a[0]) != "null" {
		jr = fmt.Sprintf(`,"join_ref":%s`, a[0])
	}
	return fmt.Sprintf(`{"topic":%s,"event":%s,"payload":%s,"ref":%s%s}`, a[2], a[3], a[4], a[1], jr)
}

// v2ToBinary turns a V2 client array into a binary push (kind 0) whose
// payload is the JSON text of the fifth element.
func v2ToBinary(tb testing.TB, msg string) []byte {
	tb.Helper()
	var a []json.RawMessage
	if err := json.Unmarshal([]byte(msg), &a); err != nil || len(a) != 5 {
		tb.Fatalf("bad v2 %s: %v", msg, err)
	}
	str := func(r json.RawMessage) string {
		var s string
		if string(r) == "null" {
			return ""
		}
		if err := json.Unmarshal(r, &s); err != nil {
			tb.Fatalf("not a string: %s", r)
		}
		return s
	}
	return binaryPush(str(a[0]), str(a[1]), str(a[2]), str(a[3]), a[4])
}

func binaryPush(jr, ref, topic, event string, payload []byte) []byte {
	b := []byte{0, byte(len(jr)), byte(len(ref)), byte(len(topic)), byte(len(event))}
	b = append(b, jr...)
	b = append(b, ref...)
	b = append(b, topic...)
	b = append(b, event...)
	return append(b, payload...)
}
