// Package brokertest is the engine-neutral conformance suite of the
// pubsub.Broker contract: every engine runs it (the memory engine alone,
// the Redis engine against real redis-server processes, single and
// Cluster). An engine passes when its offsets are contiguous, its live
// delivery is in order with no gaps and no duplicates (with slow handlers
// too), its history pages and detects stale positions, idempotent and
// ephemeral publishes behave, and — where the engine can fail that way — a
// lost live feed is signalled (Resync) so that a subscriber ends up with
// every event exactly once, and lost history shows as a new epoch.
package brokertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/phxgate/phxgate/pubsub"
)

// Harness tells the suite how to make and break an engine.
type Harness struct {
	// New returns a fresh engine (empty state) keeping, per topic, the
	// last l.History events within l.HistoryBytes payload bytes (0: the
	// engine's default). The suite closes it.
	New func(t *testing.T, l Limits) pubsub.Broker
	// Peer returns another node of the same deployment as b (same
	// storage, its own subscriptions); nil for a single-node engine.
	Peer func(t *testing.T, b pubsub.Broker, l Limits) pubsub.Broker
	// DropLive breaks the live feed of b's subscriptions the way a
	// network fault would (the engine must notice and Resync); nil when
	// the engine has no such failure.
	DropLive func(t *testing.T, b pubsub.Broker)
	// LoseHistory makes the storage forget every topic (a store restarted
	// without persistence), with b subscribed or not; nil when the
	// engine cannot lose history while a topic is in use.
	LoseHistory func(t *testing.T, b pubsub.Broker)
}

// Limits are the history bounds an engine is made with.
type Limits struct {
	History      int
	HistoryBytes int
}

// Run runs the whole suite.
func Run(t *testing.T, h Harness) {
	t.Run("Positions", func(t *testing.T) { testPositions(t, h) })
	// Topics with braces: a Redis Cluster engine must keep each one's
	// keys in one slot whatever its text.
	t.Run("BraceTopics", func(t *testing.T) {
		for _, pre := range []string{"}", "{", "{}", "}{"} {
			positionsOn(t, newBroker(t, h, Limits{History: 100}), pre+topicName(t, "a"))
		}
	})
	t.Run("OrderSlowHandler", func(t *testing.T) { testOrderSlowHandler(t, h) })
	t.Run("TopicsIndependent", func(t *testing.T) { testTopicsIndependent(t, h) })
	t.Run("HistoryPaging", func(t *testing.T) { testHistoryPaging(t, h) })
	t.Run("HistoryStale", func(t *testing.T) { testHistoryStale(t, h) })
	t.Run("HistoryBytes", func(t *testing.T) { testHistoryBytes(t, h) })
	t.Run("Idempotent", func(t *testing.T) { testIdempotent(t, h) })
	t.Run("Ephemeral", func(t *testing.T) { testEphemeral(t, h) })
	t.Run("Unsubscribe", func(t *testing.T) { testUnsubscribe(t, h) })
	t.Run("PingClose", func(t *testing.T) { testPingClose(t, h) })
	t.Run("Peers", func(t *testing.T) {
		if h.Peer == nil {
			t.Skip("single-node engine")
		}
		testPeers(t, h)
	})
	t.Run("ContinuityAfterDroppedFeed", func(t *testing.T) {
		if h.DropLive == nil {
			t.Skip("the engine has no live feed to lose")
		}
		testDropLive(t, h)
	})
	t.Run("EpochChange", func(t *testing.T) {
		if h.LoseHistory == nil {
			t.Skip("the engine cannot lose history of a topic in use")
		}
		testEpochChange(t, h)
	})
}

// Recorder is a Handler that keeps what it is handed; with a Sequencer it
// keeps exactly the topic's events, as a real subscriber does.
type Recorder struct {
	mu      sync.Mutex
	seq     *pubsub.Sequencer
	events  []*pubsub.Event
	resyncs int
	losses  int
	slow    func(ev *pubsub.Event)
}

// NewRecorder returns a raw Recorder (nil b) or one that sequences through
// b's history.
func NewRecorder(b pubsub.Broker, topic string) *Recorder {
	r := &Recorder{}
	if b != nil {
		r.seq = pubsub.NewSequencer(b, topic, 0, 5*time.Second)
	}
	return r
}

// Deliver implements pubsub.Handler.
func (r *Recorder) Deliver(ev *pubsub.Event) {
	if r.slow != nil {
		r.slow(ev)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seq == nil {
		r.events = append(r.events, ev)
		return
	}
	var st pubsub.SequencerStats
	r.seq.Deliver(ev, r.keep, r.lost, &st)
}

// Resync implements pubsub.Handler.
func (r *Recorder) Resync(string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resyncs++
	if r.seq != nil {
		var st pubsub.SequencerStats
		r.seq.Resync(r.keep, r.lost, &st)
	}
}

func (r *Recorder) keep(ev *pubsub.Event) { r.events = append(r.events, ev) }
func (r *Recorder) lost()                 { r.losses++ }

// Events returns a copy of what was kept.
func (r *Recorder) Events() []*pubsub.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*pubsub.Event(nil), r.events...)
}

func (r *Recorder) counts() (events, resyncs, losses int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events), r.resyncs, r.losses
}

func (r *Recorder) baseline(p pubsub.Position) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seq != nil {
		r.seq.Baseline(p)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func newBroker(t *testing.T, h Harness, l Limits) pubsub.Broker {
	t.Helper()
	b := h.New(t, l)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// topicName is unique per test, so engines sharing storage across
// subtests do not mix them.
func topicName(t *testing.T, suffix string) string {
	return fmt.Sprintf("bt:%s:%d:%s", t.Name(), time.Now().UnixNano(), suffix)
}

func publish(t *testing.T, b pubsub.Broker, topic string, i int) pubsub.Position {
	t.Helper()
	p, err := b.Publish(ctx(t), topic, pubsub.Message{Event: "ev", Payload: fmt.Appendf(nil, `{"i":%d}`, i)})
	if err != nil {
		t.Fatalf("publish %d: %v", i, err)
	}
	return p
}

func subscribe(t *testing.T, b pubsub.Broker, topic string, r *Recorder) pubsub.Position {
	t.Helper()
	p, err := b.Subscribe(ctx(t), topic, r)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	r.baseline(p)
	return p
}

// checkRun fails unless evs are exactly offsets from+1 … from+n of one
// epoch, in order, with the payloads publish gave them (i = offset + shift).
func checkRun(t *testing.T, evs []*pubsub.Event, epoch string, from uint64, n int, shift int) {
	t.Helper()
	if len(evs) != n {
		t.Fatalf("got %d events, want %d", len(evs), n)
	}
	for k, ev := range evs {
		want := from + 1 + uint64(k)
		if ev.Pos.Epoch != epoch || ev.Pos.Offset != want {
			t.Fatalf("event %d at %v, want %s:%d", k, ev.Pos, epoch, want)
		}
		if p := fmt.Sprintf(`{"i":%d}`, int(want)+shift); string(ev.Payload) != p {
			t.Fatalf("event %d payload %s, want %s", k, ev.Payload, p)
		}
	}
}

func testPositions(t *testing.T, h Harness) {
	positionsOn(t, newBroker(t, h, Limits{History: 100}), topicName(t, "a"))
}

// positionsOn checks the positions of five events published on topic,
// live and from a second Subscribe, and that an idempotent publish is
// kept once.
func positionsOn(t *testing.T, b pubsub.Broker, topic string) {
	t.Helper()
	r := NewRecorder(nil, topic)
	start := subscribe(t, b, topic, r)
	if start.Epoch == "" || start.Offset != 0 {
		t.Fatalf("Subscribe to a new topic returned %v, want an epoch and offset 0", start)
	}
	for i := 1; i <= 5; i++ {
		p := publish(t, b, topic, i)
		if p.Epoch != start.Epoch || p.Offset != uint64(i) {
			t.Fatalf("publish %d returned %v, want %s:%d", i, p, start.Epoch, i)
		}
	}
	waitFor(t, 5*time.Second, "5 live events", func() bool { n, _, _ := r.counts(); return n == 5 })
	checkRun(t, r.Events(), start.Epoch, 0, 5, 0)
	// A second Subscribe reports where the topic is now.
	r2 := NewRecorder(nil, topic)
	if p := subscribe(t, b, topic, r2); p != (pubsub.Position{Epoch: start.Epoch, Offset: 5}) {
		t.Fatalf("Subscribe after 5 publishes returned %v", p)
	}
	// The idempotency key's record shares the topic's slot too.
	m := pubsub.Message{Event: "ev", Payload: []byte(`{"i":6}`), IdempotencyKey: "k1"}
	for range 2 {
		if p, err := b.Publish(ctx(t), topic, m); err != nil || p.Offset != 6 {
			t.Fatalf("idempotent publish on %q: %v, %v", topic, p, err)
		}
	}
	hr, err := b.History(ctx(t), topic, pubsub.Position{Epoch: start.Epoch}, 100)
	if err != nil {
		t.Fatalf("history of %q: %v", topic, err)
	}
	checkRun(t, hr.Events, start.Epoch, 0, 6, 0)
}

// Publishers race on one topic while the handler is slow: every event
// arrives once, in offset order, with no gap.
func testOrderSlowHandler(t *testing.T, h Harness) {
	b := newBroker(t, h, Limits{History: 1000})
	topic := topicName(t, "a")
	r := NewRecorder(nil, topic)
	r.slow = func(ev *pubsub.Event) {
		if ev.Pos.Offset%50 == 0 {
			time.Sleep(20 * time.Millisecond) // a handler that stalls now and then
		}
	}
	start := subscribe(t, b, topic, r)
	const pubs, each = 4, 100
	var wg sync.WaitGroup
	errs := make(chan error, pubs)
	for range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := b.Publish(ctx(t), topic, pubsub.Message{Event: "ev", Payload: []byte(`{}`)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "every event", func() bool { n, _, _ := r.counts(); return n >= pubs*each })
	evs := r.Events()
	if len(evs) != pubs*each {
		t.Fatalf("got %d events, want %d", len(evs), pubs*each)
	}
	for k, ev := range evs {
		if ev.Pos.Epoch != start.Epoch || ev.Pos.Offset != uint64(k+1) {
			t.Fatalf("event %d at %v: out of order, duplicated or missing", k, ev.Pos)
		}
	}
}

func testTopicsIndependent(t *testing.T, h Harness) {
	b := newBroker(t, h, Limits{History: 100})
	ta, tb := topicName(t, "a"), topicName(t, "b")
	ra, rb := NewRecorder(nil, ta), NewRecorder(nil, tb)
	ea := subscribe(t, b, ta, ra)
	eb := subscribe(t, b, tb, rb)
	for i := 1; i <= 3; i++ {
		publish(t, b, ta, i)
	}
	publish(t, b, tb, 1)
	waitFor(t, 5*time.Second, "both topics", func() bool {
		na, _, _ := ra.counts()
		nb, _, _ := rb.counts()
		return na == 3 && nb == 1
	})
	checkRun(t, ra.Events(), ea.Epoch, 0, 3, 0)
	checkRun(t, rb.Events(), eb.Epoch, 0, 1, 0)
}

func testHistoryPaging(t *testing.T, h Harness) {
	b := newBroker(t, h, Limits{History: 100})
	topic := topicName(t, "a")
	var first pubsub.Position
	for i := 1; i <= 25; i++ {
		p := publish(t, b, topic, i)
		if i == 1 {
			first = p
		}
	}
	since := pubsub.Position{Epoch: first.Epoch}
	var got []*pubsub.Event
	for page := 0; ; page++ {
		hr, err := b.History(ctx(t), topic, since, 10)
		if err != nil {
			t.Fatal(err)
		}
		if !hr.Recovered || hr.Top.Offset != 25 {
			t.Fatalf("page %d: recovered=%v top=%v", page, hr.Recovered, hr.Top)
		}
		if len(hr.Events) > 10 {
			t.Fatalf("page %d: %d events, limit 10", page, len(hr.Events))
		}
		if len(hr.Events) == 0 {
			break
		}
		got = append(got, hr.Events...)
		since = hr.Events[len(hr.Events)-1].Pos
		if page > 5 {
			t.Fatal("paging does not end")
		}
	}
	checkRun(t, got, first.Epoch, 0, 25, 0)
	// A zero position gets only the top.
	hr, err := b.History(ctx(t), topic, pubsub.Position{}, 0)
	if err != nil || hr.Recovered || len(hr.Events) != 0 || hr.Top.Offset != 25 {
		t.Fatalf("History(zero) = %+v, %v; want only the top", hr, err)
	}
	// Caught up: recovered, nothing to send.
	hr, err = b.History(ctx(t), topic, hr.Top, 0)
	if err != nil || !hr.Recovered || len(hr.Events) != 0 {
		t.Fatalf("History(top) = %+v, %v; want recovered and empty", hr, err)
	}
}

// Positions the history cannot serve: too old, another epoch, ahead of
// the top.
func testHistoryStale(t *testing.T, h Harness) {
	b := newBroker(t, h, Limits{History: 10})
	topic := topicName(t, "a")
	var p1 pubsub.Position
	for i := 1; i <= 25; i++ {
		p := publish(t, b, topic, i)
		if i == 1 {
			p1 = p
		}
	}
	cases := []struct {
		name  string
		since pubsub.Position
	}{
		{"older than history", p1},
		{"another epoch", pubsub.Position{Epoch: "NOTANEPOCH", Offset: 20}},
		{"ahead of the top", pubsub.Position{Epoch: p1.Epoch, Offset: 30}},
	}
	for _, c := range cases {
		hr, err := b.History(ctx(t), topic, c.since, 0)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if hr.Recovered || len(hr.Events) != 0 || hr.Top != (pubsub.Position{Epoch: p1.Epoch, Offset: 25}) {
			t.Fatalf("%s: %+v, want not recovered, top %s:25", c.name, hr, p1.Epoch)
		}
	}
	// The last 10 are kept: from offset 15 on, all of them.
	hr, err := b.History(ctx(t), topic, pubsub.Position{Epoch: p1.Epoch, Offset: 15}, 0)
	if err != nil || !hr.Recovered {
		t.Fatalf("from 15: %+v, %v", hr, err)
	}
	checkRun(t, hr.Events, p1.Epoch, 15, 10, 0)
	hr, err = b.History(ctx(t), topic, pubsub.Position{Epoch: p1.Epoch, Offset: 14}, 0)
	if err != nil || hr.Recovered {
		t.Fatalf("from 14 (offset 15 is the oldest kept): %+v, %v; want not recovered", hr, err)
	}
}

// History is bounded in bytes as well as in count: the oldest events go
// first, the newest always stays.
func testHistoryBytes(t *testing.T, h Harness) {
	b := newBroker(t, h, Limits{History: 100, HistoryBytes: 1000})
	topic := topicName(t, "a")
	payload := func(i int) []byte { // 200 bytes
		head := fmt.Sprintf(`{"i":%d,"pad":"`, i)
		return fmt.Appendf(nil, `%s%0*d"}`, head, 200-len(head)-2, 0)
	}
	var first pubsub.Position
	for i := 1; i <= 20; i++ {
		p, err := b.Publish(ctx(t), topic, pubsub.Message{Event: "ev", Payload: payload(i)})
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			first = p
		}
	}
	// 1000 bytes hold 5 events of 200: offsets 16..20.
	hr, err := b.History(ctx(t), topic, pubsub.Position{Epoch: first.Epoch, Offset: 15}, 0)
	if err != nil || !hr.Recovered || len(hr.Events) != 5 {
		t.Fatalf("from 15: recovered=%v, %d events, %v; want the last 5", hr.Recovered, len(hr.Events), err)
	}
	for k, ev := range hr.Events {
		if string(ev.Payload) != string(payload(16+k)) {
			t.Fatalf("event %d: %s", k, ev.Payload)
		}
	}
	if hr, err := b.History(ctx(t), topic, pubsub.Position{Epoch: first.Epoch, Offset: 14}, 0); err != nil || hr.Recovered {
		t.Fatalf("from 14: recovered=%v, %v; want not recovered (offset 15 is past the byte bound)", hr.Recovered, err)
	}
	// One event larger than the bound is still kept, alone.
	big := fmt.Appendf(nil, `{"big":"%01990d"}`, 0)
	p, err := b.Publish(ctx(t), topic, pubsub.Message{Event: "ev", Payload: big})
	if err != nil {
		t.Fatal(err)
	}
	hr, err = b.History(ctx(t), topic, pubsub.Position{Epoch: p.Epoch, Offset: p.Offset - 1}, 0)
	if err != nil || !hr.Recovered || len(hr.Events) != 1 {
		t.Fatalf("the oversized newest event: recovered=%v, %d events, %v", hr.Recovered, len(hr.Events), err)
	}
	if hr, err := b.History(ctx(t), topic, pubsub.Position{Epoch: p.Epoch, Offset: p.Offset - 2}, 0); err != nil || hr.Recovered {
		t.Fatalf("before the oversized event: recovered=%v, %v; want not recovered", hr.Recovered, err)
	}
}

func testIdempotent(t *testing.T, h Harness) {
	b := newBroker(t, h, Limits{History: 100})
	topic := topicName(t, "a")
	r := NewRecorder(nil, topic)
	start := subscribe(t, b, topic, r)
	m := pubsub.Message{Event: "bet", Payload: []byte(`{"i":1}`), IdempotencyKey: "call-7:b0"}
	p1, err := b.Publish(ctx(t), topic, m)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := b.Publish(ctx(t), topic, m)
	if err != nil {
		t.Fatal(err)
	}
	if p1 != p2 || p1.Offset != start.Offset+1 {
		t.Fatalf("same key published at %v then %v; want once, at offset %d", p1, p2, start.Offset+1)
	}
	other := m
	other.IdempotencyKey = "call-8:b0"
	other.Payload = []byte(`{"i":2}`)
	if p3, err := b.Publish(ctx(t), topic, other); err != nil || p3.Offset != p1.Offset+1 {
		t.Fatalf("another key: %v, %v", p3, err)
	}
	waitFor(t, 5*time.Second, "2 events", func() bool { n, _, _ := r.counts(); return n >= 2 })
	publish(t, b, topic, 3) // a marker: nothing else arrives before it
	waitFor(t, 5*time.Second, "the marker", func() bool { n, _, _ := r.counts(); return n >= 3 })
	checkRun(t, r.Events(), start.Epoch, 0, 3, 0)
	long := m
	long.IdempotencyKey = string(make([]byte, pubsub.MaxIdempotencyKeyLen+1))
	if _, err := b.Publish(ctx(t), topic, long); !errors.Is(err, pubsub.ErrBadIdempotencyKey) {
		t.Fatalf("a key over %d bytes: %v, want ErrBadIdempotencyKey", pubsub.MaxIdempotencyKeyLen, err)
	}
}

func testEphemeral(t *testing.T, h Harness) {
	b := newBroker(t, h, Limits{History: 100})
	topic := topicName(t, "a")
	r := NewRecorder(nil, topic)
	start := subscribe(t, b, topic, r)
	publish(t, b, topic, 1)
	p, err := b.Publish(ctx(t), topic, pubsub.Message{Event: "presence_diff", Payload: []byte(`{"x":1}`), Ephemeral: true})
	if err != nil || !p.IsZero() {
		t.Fatalf("ephemeral publish: %v, %v; want the zero position", p, err)
	}
	publish(t, b, topic, 2)
	waitFor(t, 5*time.Second, "3 live events", func() bool { n, _, _ := r.counts(); return n >= 3 })
	evs := r.Events()
	if len(evs) != 3 || !evs[1].Ephemeral() || evs[1].Event != "presence_diff" || string(evs[1].Payload) != `{"x":1}` {
		t.Fatalf("live events %v; want the ephemeral one in the middle", describe(evs))
	}
	checkRun(t, []*pubsub.Event{evs[0], evs[2]}, start.Epoch, 0, 2, 0)
	hr, err := b.History(ctx(t), topic, start, 0)
	if err != nil || !hr.Recovered {
		t.Fatal(hr, err)
	}
	checkRun(t, hr.Events, start.Epoch, 0, 2, 0)
}

func testUnsubscribe(t *testing.T, h Harness) {
	b := newBroker(t, h, Limits{History: 100})
	topic := topicName(t, "a")
	r := NewRecorder(nil, topic)
	subscribe(t, b, topic, r)
	publish(t, b, topic, 1)
	waitFor(t, 5*time.Second, "the first event", func() bool { n, _, _ := r.counts(); return n == 1 })
	if err := b.Unsubscribe(ctx(t), topic); err != nil {
		t.Fatal(err)
	}
	publish(t, b, topic, 2)
	// A marker on another topic, subscribed on the same engine: once it
	// arrives, the unsubscribed event would have too.
	marker := topicName(t, "marker")
	rm := NewRecorder(nil, marker)
	subscribe(t, b, marker, rm)
	publish(t, b, marker, 1)
	waitFor(t, 5*time.Second, "the marker", func() bool { n, _, _ := rm.counts(); return n == 1 })
	if n, _, _ := r.counts(); n != 1 {
		t.Fatalf("%d events after Unsubscribe, want 1", n)
	}
}

func testPingClose(t *testing.T, h Harness) {
	b := h.New(t, Limits{History: 10})
	if err := b.Ping(ctx(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Ping(ctx(t)); !errors.Is(err, pubsub.ErrClosed) {
		t.Fatalf("Ping after Close: %v, want ErrClosed", err)
	}
	if _, err := b.Publish(ctx(t), "x", pubsub.Message{Event: "e"}); !errors.Is(err, pubsub.ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Two nodes: what one publishes, the other delivers with the same
// positions, and both read the same history.
func testPeers(t *testing.T, h Harness) {
	a := newBroker(t, h, Limits{History: 100})
	b := h.Peer(t, a, Limits{History: 100})
	t.Cleanup(func() { _ = b.Close() })
	topic := topicName(t, "a")
	ra, rb := NewRecorder(nil, topic), NewRecorder(nil, topic)
	sa := subscribe(t, a, topic, ra)
	sb := subscribe(t, b, topic, rb)
	if sa != sb {
		t.Fatalf("nodes disagree on the position: %v vs %v", sa, sb)
	}
	for i := 1; i <= 20; i++ {
		if i%2 == 0 {
			publish(t, a, topic, i)
		} else {
			publish(t, b, topic, i)
		}
	}
	waitFor(t, 5*time.Second, "20 events on both nodes", func() bool {
		na, _, _ := ra.counts()
		nb, _, _ := rb.counts()
		return na == 20 && nb == 20
	})
	checkRun(t, ra.Events(), sa.Epoch, 0, 20, 0)
	checkRun(t, rb.Events(), sa.Epoch, 0, 20, 0)
	hr, err := b.History(ctx(t), topic, sa, 0)
	if err != nil || !hr.Recovered {
		t.Fatal(hr, err)
	}
	checkRun(t, hr.Events, sa.Epoch, 0, 20, 0)
}

// The live feed breaks while a peer publishes: the engine says Resync,
// and a sequencing subscriber ends with every event exactly once, in
// order, without a continuity loss.
func testDropLive(t *testing.T, h Harness) {
	a := newBroker(t, h, Limits{History: 1000})
	pub := a
	if h.Peer != nil {
		pub = h.Peer(t, a, Limits{History: 1000})
		t.Cleanup(func() { _ = pub.Close() })
	}
	topic := topicName(t, "a")
	r := NewRecorder(a, topic)
	start := subscribe(t, a, topic, r)
	for i := 1; i <= 10; i++ {
		publish(t, pub, topic, i)
	}
	waitFor(t, 5*time.Second, "10 events", func() bool { n, _, _ := r.counts(); return n == 10 })
	h.DropLive(t, a)
	// Published while the feed is (possibly) down: some are lost live.
	for i := 11; i <= 40; i++ {
		publish(t, pub, topic, i)
	}
	waitFor(t, 20*time.Second, "a resync", func() bool { _, rs, _ := r.counts(); return rs > 0 })
	for i := 41; i <= 50; i++ {
		publish(t, pub, topic, i)
	}
	waitFor(t, 20*time.Second, "50 events", func() bool { n, _, _ := r.counts(); return n >= 50 })
	if _, _, losses := r.counts(); losses != 0 {
		t.Fatalf("%d continuity losses, want 0 (history holds everything)", losses)
	}
	checkRun(t, r.Events(), start.Epoch, 0, 50, 0)
}

// The store forgets the topic: an old position is told not recovered,
// a new epoch starts at offset 1, and a subscriber learns of the loss.
func testEpochChange(t *testing.T, h Harness) {
	b := newBroker(t, h, Limits{History: 100})
	topic := topicName(t, "a")
	r := NewRecorder(b, topic)
	start := subscribe(t, b, topic, r)
	old := publish(t, b, topic, 1)
	waitFor(t, 5*time.Second, "the first event", func() bool { n, _, _ := r.counts(); return n == 1 })
	h.LoseHistory(t, b)
	p := publish(t, b, topic, 2)
	if p.Epoch == start.Epoch || p.Offset != 1 {
		t.Fatalf("publish after the store lost everything: %v, want a new epoch at offset 1", p)
	}
	hr, err := b.History(ctx(t), topic, old, 0)
	if err != nil || hr.Recovered || hr.Top != p {
		t.Fatalf("History(old position) = %+v, %v; want not recovered, top %v", hr, err, p)
	}
	waitFor(t, 10*time.Second, "the loss to be noticed", func() bool { _, _, l := r.counts(); return l > 0 })
	waitFor(t, 5*time.Second, "the new epoch's event", func() bool { n, _, _ := r.counts(); return n == 2 })
	if evs := r.Events(); evs[1].Pos != p {
		t.Fatalf("after the loss got %v, want %v", evs[1].Pos, p)
	}
}

func describe(evs []*pubsub.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = fmt.Sprintf("%s@%v", ev.Event, ev.Pos)
	}
	return out
}
