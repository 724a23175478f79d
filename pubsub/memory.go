package pubsub

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Limits and defaults of the in-memory engine.
const (
	// DefaultHistoryTTL is how long an idle topic (no handler, no publish)
	// keeps its history and epoch. Ten minutes covers a phone switching
	// networks or a laptop waking up, without keeping dead rooms forever.
	DefaultHistoryTTL = 10 * time.Minute
	// DefaultMaxTopics bounds the topics one node tracks. A topic costs a
	// few hundred bytes plus its ring, so 100k topics stay well under the
	// memory of the connections that would use them.
	DefaultMaxTopics = 100_000
	// MaxHistorySize caps HistorySize per topic, whatever the route says,
	// so that one misconfigured route cannot pin unbounded memory.
	MaxHistorySize = 100_000
	// epochBytes random bytes give an 8-character base32 epoch: 40 bits is
	// plenty to tell two lifetimes of one topic apart.
	epochBytes = 5
	// minSweepInterval and maxSweepInterval bound how often idle topics are
	// looked for; the sweep runs every HistoryTTL/4 within these bounds.
	minSweepInterval = time.Second
	maxSweepInterval = time.Minute
)

// ErrTooManyTopics is returned when a new topic would exceed MaxTopics.
var ErrTooManyTopics = errors.New("pubsub: too many topics")

// ErrClosed is returned by every method after Close.
var ErrClosed = errors.New("pubsub: broker closed")

// ErrInvalidConfig wraps every Validate failure.
var ErrInvalidConfig = errors.New("pubsub: invalid config")

// MemoryConfig configures the in-memory engine.
type MemoryConfig struct {
	// HistorySize returns how many events are kept for a topic (a ring
	// buffer, allocated on the first publish). It is asked once per topic
	// lifetime, when the topic is created. 0 keeps none (only positions are
	// tracked); nil means 0 for every topic; values above MaxHistorySize are
	// capped. It runs under the broker's lock: it must be quick and must
	// not call the broker.
	HistorySize func(topic string) int
	// HistoryTTL is how long a topic with no handler and no publish is kept.
	// After that its history and epoch are dropped, and its next use starts
	// a new epoch (so a client holding an old position gets recovered=false
	// instead of a silent gap). Zero means DefaultHistoryTTL.
	HistoryTTL time.Duration
	// MaxTopics bounds the number of topics tracked at once; creating one
	// more (through Publish, Subscribe or History) fails with
	// ErrTooManyTopics. Zero means DefaultMaxTopics.
	MaxTopics int
}

// NewMemoryConfig returns a MemoryConfig with the defaults filled in.
func NewMemoryConfig() MemoryConfig {
	return MemoryConfig{HistoryTTL: DefaultHistoryTTL, MaxTopics: DefaultMaxTopics}
}

// Validate reports a negative TTL or topic bound.
func (c MemoryConfig) Validate() error {
	if c.HistoryTTL < 0 {
		return fmt.Errorf("%w: HistoryTTL %v is negative", ErrInvalidConfig, c.HistoryTTL)
	}
	if c.MaxTopics < 0 {
		return fmt.Errorf("%w: MaxTopics %d is negative", ErrInvalidConfig, c.MaxTopics)
	}
	return nil
}

// Memory is the single-node Broker. See the package doc for the handler
// contract.
//
// Lock order (never acquire leftwards while holding one to its right):
//
//	memTopic.deliver → Memory.mu → memTopic.mu
//
// Publish holds deliver (never Memory.mu) while it calls the handler, and
// no other method takes deliver. So History, Subscribe and Unsubscribe never
// wait on a running handler, and a handler may call them, even for its own
// topic, while the caller of those methods holds a lock the handler needs.
type Memory struct {
	cfg     MemoryConfig
	now     func() time.Time // injectable for tests
	mu      sync.Mutex
	topics  map[string]*memTopic
	closed  bool
	stop    chan struct{}
	stopped chan struct{}
}

type memTopic struct {
	// deliver serializes Publish on this topic end to end (append and
	// handler call), which is what keeps handler calls in offset order.
	deliver sync.Mutex

	mu       sync.Mutex
	dead     bool // removed from Memory.topics; lookups must retry
	epoch    string
	top      uint64
	size     int      // ring capacity (HistorySize at creation)
	ring     []*Event // nil until the first publish; len == size after
	count    int      // events held in ring (≤ size)
	handler  Handler
	lastUsed time.Time
}

// NewMemory returns a running in-memory broker. Zero fields of cfg take
// their defaults (negative ones too; call Validate first to reject them).
// Close stops its sweeper goroutine.
func NewMemory(cfg MemoryConfig) *Memory {
	if cfg.HistoryTTL <= 0 {
		cfg.HistoryTTL = DefaultHistoryTTL
	}
	if cfg.MaxTopics <= 0 {
		cfg.MaxTopics = DefaultMaxTopics
	}
	m := &Memory{
		cfg:     cfg,
		now:     time.Now,
		topics:  make(map[string]*memTopic),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go m.sweepLoop(sweepInterval(cfg.HistoryTTL))
	return m
}

func sweepInterval(ttl time.Duration) time.Duration {
	return min(max(ttl/4, minSweepInterval), maxSweepInterval)
}

func (m *Memory) sweepLoop(every time.Duration) {
	defer close(m.stopped)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep drops every expired topic. Lookups also replace an expired topic
// on sight, so the sweep is only about freeing memory, not correctness.
func (m *Memory) sweep() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(m.now())
}

func (m *Memory) sweepLocked(now time.Time) {
	for name, t := range m.topics {
		t.mu.Lock()
		if t.expiredLocked(now, m.cfg.HistoryTTL) {
			t.dead = true
			delete(m.topics, name)
		}
		t.mu.Unlock()
	}
}

func (t *memTopic) expiredLocked(now time.Time, ttl time.Duration) bool {
	return t.handler == nil && now.Sub(t.lastUsed) >= ttl
}

// topic returns the live topic, creating it (with a new epoch) when it does
// not exist or has expired.
func (m *Memory) topic(name string) (*memTopic, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	now := m.now()
	if t, ok := m.topics[name]; ok {
		t.mu.Lock()
		expired := t.expiredLocked(now, m.cfg.HistoryTTL)
		if expired {
			t.dead = true
		}
		t.mu.Unlock()
		if !expired {
			return t, nil
		}
		delete(m.topics, name)
	}
	if len(m.topics) >= m.cfg.MaxTopics {
		// Full: reclaim expired topics before refusing, O(n) but only
		// when at the bound.
		m.sweepLocked(now)
		if len(m.topics) >= m.cfg.MaxTopics {
			return nil, fmt.Errorf("%w: limit %d reached creating %q", ErrTooManyTopics, m.cfg.MaxTopics, name)
		}
	}
	size := 0
	if m.cfg.HistorySize != nil {
		size = min(max(m.cfg.HistorySize(name), 0), MaxHistorySize)
	}
	t := &memTopic{epoch: newEpoch(), size: size, lastUsed: now}
	m.topics[name] = t
	return t, nil
}

var epochEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

func newEpoch() string {
	var b [epochBytes]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return epochEncoding.EncodeToString(b[:])
}

// Publish implements Broker. It appends the event and calls the topic's
// handler before returning; concurrent publishers of one topic are
// serialized. The payload is kept, not copied.
func (m *Memory) Publish(ctx context.Context, topic, event string, payload []byte, binary bool) (Position, error) {
	if err := ctx.Err(); err != nil {
		return Position{}, err
	}
	for {
		t, err := m.topic(topic)
		if err != nil {
			return Position{}, err
		}
		t.deliver.Lock()
		t.mu.Lock()
		if t.dead {
			// Expired between lookup and lock: start over on the new one.
			t.mu.Unlock()
			t.deliver.Unlock()
			continue
		}
		t.top++
		ev := &Event{Topic: topic, Event: event, Payload: payload, Binary: binary,
			Pos: Position{Epoch: t.epoch, Offset: t.top}}
		if t.size > 0 {
			if t.ring == nil {
				t.ring = make([]*Event, t.size)
			}
			t.ring[(t.top-1)%uint64(t.size)] = ev
			t.count = min(t.count+1, t.size)
		}
		t.lastUsed = m.now()
		h := t.handler
		t.mu.Unlock()
		if h != nil {
			h(ev)
		}
		t.deliver.Unlock()
		return ev.Pos, nil
	}
}

// Subscribe implements Broker. It never waits for a running handler.
func (m *Memory) Subscribe(ctx context.Context, topic string, h Handler) error {
	if h == nil {
		return errors.New("pubsub: nil handler")
	}
	for {
		t, err := m.topic(topic)
		if err != nil {
			return err
		}
		t.mu.Lock()
		if t.dead {
			t.mu.Unlock()
			continue
		}
		t.handler = h
		t.lastUsed = m.now()
		t.mu.Unlock()
		return nil
	}
}

// Unsubscribe implements Broker. A Publish already past its handler lookup
// may still call the old handler once; the channels layer ignores events
// for topics it no longer has. The topic's TTL starts now.
func (m *Memory) Unsubscribe(ctx context.Context, topic string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if t, ok := m.topics[topic]; ok {
		t.mu.Lock()
		t.handler = nil
		t.lastUsed = m.now()
		t.mu.Unlock()
	}
	return nil
}

// History implements Broker. Events are returned oldest first; with a limit
// they are the first limit events after since, so a caller can page on.
// An event becomes visible to History just before its handler call, so a
// subscriber replaying from History must skip live events with an offset
// at or below the Top it replayed to.
func (m *Memory) History(ctx context.Context, topic string, since Position, limit int) (HistoryResult, error) {
	if err := ctx.Err(); err != nil {
		return HistoryResult{}, err
	}
	for {
		t, err := m.topic(topic)
		if err != nil {
			return HistoryResult{}, err
		}
		t.mu.Lock()
		if t.dead {
			t.mu.Unlock()
			continue
		}
		res := t.historyLocked(since, limit)
		t.mu.Unlock()
		return res, nil
	}
}

func (t *memTopic) historyLocked(since Position, limit int) HistoryResult {
	res := HistoryResult{Top: Position{Epoch: t.epoch, Offset: t.top}}
	if since.IsZero() || since.Epoch != t.epoch || since.Offset > t.top {
		return res
	}
	missed := t.top - since.Offset
	if missed == 0 {
		res.Recovered = true
		return res
	}
	if missed > uint64(t.count) {
		return res // some of what was missed has been overwritten
	}
	n := int(missed)
	if limit > 0 && limit < n {
		n = limit
	}
	res.Events = make([]*Event, n)
	for i := range n {
		off := since.Offset + 1 + uint64(i)
		res.Events[i] = t.ring[(off-1)%uint64(t.size)]
	}
	res.Recovered = true
	return res
}

// Close implements Broker: it stops the sweeper and drops every topic.
// Later calls return ErrClosed from every method; Close itself is
// idempotent.
func (m *Memory) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	for name, t := range m.topics {
		t.mu.Lock()
		t.dead = true
		t.handler = nil
		t.mu.Unlock()
		delete(m.topics, name)
	}
	m.mu.Unlock()
	close(m.stop)
	<-m.stopped
	return nil
}

// Topics returns the number of topics currently tracked (for metrics).
func (m *Memory) Topics() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.topics)
}

var _ Broker = (*Memory)(nil)
