package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a manually advanced clock for TTL tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestMemory(tb testing.TB, cfg MemoryConfig) (*Memory, *fakeClock) {
	tb.Helper()
	m := NewMemory(cfg)
	clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	m.now = clk.Now
	tb.Cleanup(func() { _ = m.Close() })
	return m, clk
}

func fixedHistory(n int) func(string) int { return func(string) int { return n } }

func publishN(tb testing.TB, m *Memory, topic string, n int) []Position {
	tb.Helper()
	out := make([]Position, n)
	for i := range n {
		p, err := m.Publish(context.Background(), topic, Message{Event: "ev", Payload: []byte(fmt.Sprintf(`{"i":%d}`, i+1))})
		if err != nil {
			tb.Fatalf("publish %d: %v", i+1, err)
		}
		out[i] = p
	}
	return out
}

func TestMemoryOffsetsAndEpochs(t *testing.T) {
	m, _ := newTestMemory(t, MemoryConfig{HistorySize: fixedHistory(4)})
	a := publishN(t, m, "room:a", 5)
	b := publishN(t, m, "room:b", 2)
	for i, p := range a {
		if p.Offset != uint64(i+1) {
			t.Fatalf("room:a offset %d = %d, want %d", i, p.Offset, i+1)
		}
		if p.Epoch != a[0].Epoch {
			t.Fatalf("epoch changed within a lifetime: %q vs %q", p.Epoch, a[0].Epoch)
		}
	}
	if b[0].Offset != 1 || b[1].Offset != 2 {
		t.Fatalf("room:b offsets %v, want 1,2 (offsets are per topic)", b)
	}
	if a[0].Epoch == b[0].Epoch {
		t.Fatalf("two topics share epoch %q", a[0].Epoch)
	}
	if len(a[0].Epoch) != 8 || strings.Contains(a[0].Epoch, ":") {
		t.Fatalf("epoch %q: want 8 chars without ':'", a[0].Epoch)
	}
	if got, err := ParsePosition(a[4].String()); err != nil || got != a[4] {
		t.Fatalf("round trip %v: got %v, %v", a[4], got, err)
	}
}

func TestMemoryHistory(t *testing.T) {
	const size = 4
	m, _ := newTestMemory(t, MemoryConfig{HistorySize: fixedHistory(size)})
	// 6 publishes into a ring of 4: offsets 3..6 are retained (wrapped).
	pos := publishN(t, m, "room:h", 6)
	top := pos[5]
	epoch := top.Epoch

	tests := []struct {
		name      string
		since     Position
		limit     int
		recovered bool
		offsets   []uint64
	}{
		{name: "zero since gives top only", since: Position{}},
		{name: "at top", since: top, recovered: true},
		{name: "one behind", since: Position{epoch, 5}, recovered: true, offsets: []uint64{6}},
		{name: "oldest retained boundary", since: Position{epoch, 2}, recovered: true, offsets: []uint64{3, 4, 5, 6}},
		{name: "evicted", since: Position{epoch, 1}},
		{name: "from epoch start evicted", since: Position{epoch, 0}},
		{name: "beyond top", since: Position{epoch, 7}},
		{name: "other epoch", since: Position{"AAAAAAAA", 5}},
		{name: "limit pages oldest first", since: Position{epoch, 2}, limit: 2, recovered: true, offsets: []uint64{3, 4}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := m.History(context.Background(), "room:h", tc.since, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if res.Top != top {
				t.Fatalf("Top = %v, want %v", res.Top, top)
			}
			if res.Recovered != tc.recovered {
				t.Fatalf("Recovered = %v, want %v", res.Recovered, tc.recovered)
			}
			if len(res.Events) != len(tc.offsets) {
				t.Fatalf("got %d events, want %d", len(res.Events), len(tc.offsets))
			}
			for i, ev := range res.Events {
				if ev.Pos.Offset != tc.offsets[i] || ev.Pos.Epoch != epoch {
					t.Fatalf("event %d at %v, want offset %d", i, ev.Pos, tc.offsets[i])
				}
				if want := fmt.Sprintf(`{"i":%d}`, tc.offsets[i]); string(ev.Payload) != want {
					t.Fatalf("event %d payload %s, want %s", i, ev.Payload, want)
				}
			}
		})
	}
}

func TestMemoryHistoryNoRetention(t *testing.T) {
	m, _ := newTestMemory(t, MemoryConfig{}) // nil HistorySize = keep none
	pos := publishN(t, m, "room:n", 3)
	res, err := m.History(context.Background(), "room:n", pos[1], 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Recovered || len(res.Events) != 0 || res.Top != pos[2] {
		t.Fatalf("got %+v, want not recovered with Top %v", res, pos[2])
	}
	res, _ = m.History(context.Background(), "room:n", pos[2], 0)
	if !res.Recovered {
		t.Fatal("a position at top must recover even without retention")
	}
}

func TestMemoryHistoryCreatesTopic(t *testing.T) {
	m, _ := newTestMemory(t, MemoryConfig{})
	res, err := m.History(context.Background(), "room:new", Position{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Top.Epoch == "" || res.Top.Offset != 0 {
		t.Fatalf("Top = %v, want an epoch at offset 0", res.Top)
	}
	p := publishN(t, m, "room:new", 1)[0]
	if p.Epoch != res.Top.Epoch || p.Offset != 1 {
		t.Fatalf("first publish at %v, want %s:1", p, res.Top.Epoch)
	}
}

func TestMemoryTTLNewEpoch(t *testing.T) {
	const ttl = time.Minute
	tests := []struct {
		name      string
		subscribe bool
		advance   time.Duration
		sweep     bool
		sameEpoch bool
	}{
		{name: "idle past ttl, lazy", advance: ttl, sameEpoch: false},
		{name: "idle past ttl, swept", advance: ttl, sweep: true, sameEpoch: false},
		{name: "within ttl", advance: ttl - time.Second, sameEpoch: true},
		{name: "handler keeps it", subscribe: true, advance: 10 * ttl, sweep: true, sameEpoch: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, clk := newTestMemory(t, MemoryConfig{HistorySize: fixedHistory(8), HistoryTTL: ttl})
			if tc.subscribe {
				if err := subscribe(m, context.Background(), "room:t", func(*Event) {}); err != nil {
					t.Fatal(err)
				}
			}
			old := publishN(t, m, "room:t", 2)[1]
			clk.Advance(tc.advance)
			if tc.sweep {
				m.sweep()
				if want := 1; tc.sameEpoch && m.Topics() != want {
					t.Fatalf("Topics() = %d after sweep, want %d", m.Topics(), want)
				}
				if !tc.sameEpoch && m.Topics() != 0 {
					t.Fatalf("Topics() = %d after sweep, want 0", m.Topics())
				}
			}
			res, err := m.History(context.Background(), "room:t", Position{old.Epoch, 1}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got := res.Top.Epoch == old.Epoch; got != tc.sameEpoch {
				t.Fatalf("same epoch = %v, want %v (old %v, top %v)", got, tc.sameEpoch, old, res.Top)
			}
			if res.Recovered != tc.sameEpoch {
				t.Fatalf("Recovered = %v, want %v", res.Recovered, tc.sameEpoch)
			}
			if !tc.sameEpoch {
				if p := publishN(t, m, "room:t", 1)[0]; p.Offset != 1 {
					t.Fatalf("new epoch starts at %d, want 1", p.Offset)
				}
			}
		})
	}
}

func TestMemoryUnsubscribeStartsTTL(t *testing.T) {
	const ttl = time.Minute
	m, clk := newTestMemory(t, MemoryConfig{HistoryTTL: ttl})
	var calls atomic.Int32
	if err := subscribe(m, context.Background(), "room:u", func(*Event) { calls.Add(1) }); err != nil {
		t.Fatal(err)
	}
	p := publishN(t, m, "room:u", 1)[0]
	clk.Advance(2 * ttl)
	if err := m.Unsubscribe(context.Background(), "room:u"); err != nil {
		t.Fatal(err)
	}
	publishN(t, m, "room:u", 1)
	if calls.Load() != 1 {
		t.Fatalf("handler called %d times, want 1 (removed by Unsubscribe)", calls.Load())
	}
	clk.Advance(ttl)
	res, _ := m.History(context.Background(), "room:u", Position{}, 0)
	if res.Top.Epoch == p.Epoch {
		t.Fatal("topic kept its epoch a full TTL after unsubscribe and last publish")
	}
}

func TestMemoryMaxTopics(t *testing.T) {
	m, clk := newTestMemory(t, MemoryConfig{MaxTopics: 2, HistoryTTL: time.Minute})
	publishN(t, m, "a", 1)
	publishN(t, m, "b", 1)
	_, err := m.Publish(context.Background(), "c", Message{Event: "ev", Payload: []byte(`{}`)})
	if !errors.Is(err, ErrTooManyTopics) {
		t.Fatalf("third topic: err = %v, want ErrTooManyTopics", err)
	}
	if _, err := m.History(context.Background(), "c", Position{}, 0); !errors.Is(err, ErrTooManyTopics) {
		t.Fatalf("History creating a third topic: err = %v, want ErrTooManyTopics", err)
	}
	// Existing topics still work at the bound.
	publishN(t, m, "a", 1)
	// Expired topics are reclaimed when the bound is hit.
	clk.Advance(time.Minute)
	publishN(t, m, "c", 1)
}

func TestMemoryClosed(t *testing.T) {
	m, _ := newTestMemory(t, MemoryConfig{})
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := m.Publish(context.Background(), "a", Message{Event: "e", Payload: nil}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	if err := subscribe(m, context.Background(), "a", func(*Event) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
}

func TestMemoryConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  MemoryConfig
		ok   bool
	}{
		{"defaults", NewMemoryConfig(), true},
		{"zero", MemoryConfig{}, true},
		{"negative ttl", MemoryConfig{HistoryTTL: -1}, false},
		{"negative topics", MemoryConfig{MaxTopics: -1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
		})
	}
}

// TestMemoryConcurrentOrdering publishes to one topic from many goroutines
// and checks the handler sees every offset once, in order, one at a time.
func TestMemoryConcurrentOrdering(t *testing.T) {
	const publishers, each = 16, 500
	m, _ := newTestMemory(t, MemoryConfig{HistorySize: fixedHistory(64)})
	var (
		inHandler atomic.Int32
		last      uint64 // only touched inside the handler
		bad       atomic.Value
	)
	err := subscribe(m, context.Background(), "room:c", func(ev *Event) {
		if inHandler.Add(1) != 1 {
			bad.Store("handler called concurrently")
		}
		if ev.Pos.Offset != last+1 {
			bad.Store(fmt.Sprintf("offset %d after %d", ev.Pos.Offset, last))
		}
		last = ev.Pos.Offset
		inHandler.Add(-1)
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range publishers {
		wg.Go(func() {
			for range each {
				if _, err := m.Publish(context.Background(), "room:c", Message{Event: "ev", Payload: []byte(`{}`)}); err != nil {
					bad.Store(err.Error())
				}
			}
		})
	}
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	if last != publishers*each {
		t.Fatalf("last offset %d, want %d", last, publishers*each)
	}
}

// TestMemoryHandlerHubLockPattern reproduces the channels layer: joins call
// History (and Subscribe) while holding a hub lock, and the topic's handler
// takes that same hub lock and calls History on its own topic. Run under
// -race with many goroutines it must neither deadlock nor race, and a
// replaying subscriber that skips live offsets ≤ its replayed Top must see
// every event exactly once.
func TestMemoryHandlerHubLockPattern(t *testing.T) {
	const (
		topic      = "room:hub"
		publishers = 8
		each       = 300
		joiners    = 8
	)
	m, _ := newTestMemory(t, MemoryConfig{HistorySize: fixedHistory(publishers * each)})
	var (
		hub     sync.Mutex
		seen    []uint64 // guarded by hub: offsets delivered to "clients"
		replayT uint64   // guarded by hub
		failed  atomic.Value
	)
	handler := func(ev *Event) {
		hub.Lock()
		defer hub.Unlock()
		// The handler may consult History on its own topic.
		if _, err := m.History(context.Background(), topic, Position{}, 0); err != nil {
			failed.Store(err.Error())
		}
		if ev.Pos.Offset <= replayT {
			return // already replayed
		}
		seen = append(seen, ev.Pos.Offset)
		replayT = ev.Pos.Offset
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	for range joiners {
		wg.Go(func() {
			for range 50 {
				hub.Lock()
				if err := subscribe(m, ctx, topic, handler); err != nil {
					failed.Store(err.Error())
				}
				res, err := m.History(ctx, topic, Position{}, 0)
				if err != nil {
					failed.Store(err.Error())
				}
				if res.Top.Offset > replayT {
					// Replay the gap from history, as a resuming join does.
					h, _ := m.History(ctx, topic, Position{res.Top.Epoch, replayT}, 0)
					if !h.Recovered {
						failed.Store("replay not recovered")
					}
					for _, ev := range h.Events {
						seen = append(seen, ev.Pos.Offset)
					}
					// h.Top, not res.Top: publishes append without the
					// hub lock, so the ring may have grown in between.
					replayT = h.Top.Offset
				}
				hub.Unlock()
			}
		})
	}
	for range publishers {
		wg.Go(func() {
			for range each {
				if _, err := m.Publish(ctx, topic, Message{Event: "ev", Payload: []byte(`{}`)}); err != nil {
					failed.Store(err.Error())
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("deadlock: publishers and joiners did not finish")
	}
	if v := failed.Load(); v != nil {
		t.Fatal(v)
	}
	hub.Lock()
	defer hub.Unlock()
	if len(seen) != publishers*each {
		t.Fatalf("saw %d events, want %d", len(seen), publishers*each)
	}
	for i, off := range seen {
		if off != uint64(i+1) {
			t.Fatalf("event %d has offset %d: duplicate or gap", i, off)
		}
	}
}

func BenchmarkMemoryPublish(b *testing.B) {
	for _, tc := range []struct {
		name    string
		history int
		handler bool
	}{
		{"no-history-no-handler", 0, false},
		{"history-100-handler", 100, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m := NewMemory(MemoryConfig{HistorySize: fixedHistory(tc.history)})
			b.Cleanup(func() { _ = m.Close() })
			if tc.handler {
				_ = subscribe(m, context.Background(), "room:b", func(*Event) {})
			}
			payload := []byte(`{"body":"hello"}`)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Publish(ctx, "room:b", Message{Event: "ev", Payload: payload}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkMemoryPublishParallelTopics(b *testing.B) {
	m := NewMemory(MemoryConfig{HistorySize: fixedHistory(100)})
	b.Cleanup(func() { _ = m.Close() })
	payload := []byte(`{"body":"hello"}`)
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		topic := fmt.Sprintf("room:%d", n.Add(1))
		for pb.Next() {
			if _, err := m.Publish(context.Background(), topic, Message{Event: "ev", Payload: payload}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// TestMemoryPublishAllocs pins the hot path: one Event per publish.
func TestMemoryPublishAllocs(t *testing.T) {
	m, _ := newTestMemory(t, MemoryConfig{HistorySize: fixedHistory(16)})
	_ = subscribe(m, context.Background(), "room:a", func(*Event) {})
	payload := []byte(`{}`)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		_, _ = m.Publish(ctx, "room:a", Message{Event: "ev", Payload: payload})
	})
	if allocs > 1 {
		t.Fatalf("Publish allocates %.1f times, budget 1", allocs)
	}
}

// subscribe installs f as the topic's handler.
func subscribe(m *Memory, ctx context.Context, topic string, f func(*Event)) error {
	_, err := m.Subscribe(ctx, topic, HandlerFuncs{OnDeliver: f})
	return err
}
