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
	// so that one misconfigured route cannot pin unbounded memory. Both
	// engines keep up to this many; configuration refuses more.
	MaxHistorySize = 100_000
	// DefaultHistoryBytes bounds the payload bytes one topic's history
	// holds: the oldest events go first when a publish would exceed it.
	DefaultHistoryBytes = 8 << 20
	// DefaultMaxIdempotencyKeys bounds the publish idempotency keys one
	// topic remembers (about 150 bytes each); past it the oldest are
	// forgotten early. A retry comes within a call's deadline, far fewer
	// publishes later on any one topic.
	DefaultMaxIdempotencyKeys = 4096
	// memIdempotencyWindow is how long the memory engine remembers a
	// publish idempotency key.
	memIdempotencyWindow = MinIdempotencyWindow
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
	// HistoryBytes bounds the payload bytes kept per topic; the oldest
	// events are dropped first (the newest is always kept). Zero means
	// DefaultHistoryBytes.
	HistoryBytes int
}

// NewMemoryConfig returns a MemoryConfig with the defaults filled in.
func NewMemoryConfig() MemoryConfig {
	return MemoryConfig{HistoryTTL: DefaultHistoryTTL, MaxTopics: DefaultMaxTopics, HistoryBytes: DefaultHistoryBytes}
}

// Validate reports a negative TTL or topic bound.
func (c MemoryConfig) Validate() error {
	if c.HistoryTTL < 0 {
		return fmt.Errorf("%w: HistoryTTL %v is negative", ErrInvalidConfig, c.HistoryTTL)
	}
	if c.MaxTopics < 0 {
		return fmt.Errorf("%w: MaxTopics %d is negative", ErrInvalidConfig, c.MaxTopics)
	}
	if c.HistoryBytes < 0 {
		return fmt.Errorf("%w: HistoryBytes %d is negative", ErrInvalidConfig, c.HistoryBytes)
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
	count    int      // events held in ring (≤ size): offsets top-count+1 … top
	bytes    int      // payload bytes of the events held
	handler  Handler
	lastUsed time.Time
	// keys remembers publish idempotency keys (oldest first in keyOrder)
	// for memIdempotencyWindow; nil until a keyed publish.
	keys     map[string]Position
	keyOrder []memKey
}

type memKey struct {
	key string
	at  time.Time
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
	if cfg.HistoryBytes <= 0 {
		cfg.HistoryBytes = DefaultHistoryBytes
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
func (m *Memory) Publish(ctx context.Context, topic string, msg Message) (Position, error) {
	if err := ctx.Err(); err != nil {
		return Position{}, err
	}
	if len(msg.IdempotencyKey) > MaxIdempotencyKeyLen {
		return Position{}, ErrBadIdempotencyKey
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
		now := m.now()
		t.lastUsed = now
		ev := &Event{Topic: topic, Event: msg.Event, Payload: msg.Payload, Binary: msg.Binary, Published: now}
		if !msg.Ephemeral {
			if msg.IdempotencyKey != "" {
				if pos, ok := t.seenKeyLocked(msg.IdempotencyKey, now); ok {
					t.mu.Unlock()
					t.deliver.Unlock()
					return pos, nil
				}
			}
			t.top++
			ev.Pos = Position{Epoch: t.epoch, Offset: t.top}
			t.appendLocked(ev, m.cfg.HistoryBytes)
			if msg.IdempotencyKey != "" {
				t.rememberKeyLocked(msg.IdempotencyKey, ev.Pos, now)
			}
		}
		h := t.handler
		t.mu.Unlock()
		if h != nil {
			h.Deliver(ev)
		}
		t.deliver.Unlock()
		return ev.Pos, nil
	}
}

// appendLocked adds ev to the ring, dropping the oldest events beyond the
// ring's size or the byte bound. Called with t.mu held.
func (t *memTopic) appendLocked(ev *Event, maxBytes int) {
	if t.size == 0 {
		return
	}
	if t.ring == nil {
		t.ring = make([]*Event, t.size)
	}
	slot := (ev.Pos.Offset - 1) % uint64(t.size)
	if t.count == t.size {
		t.bytes -= len(t.ring[slot].Payload) // overwritten: the oldest
		t.count--
	}
	t.ring[slot] = ev
	t.count++
	t.bytes += len(ev.Payload)
	for t.bytes > maxBytes && t.count > 1 {
		oldest := (t.top - uint64(t.count)) % uint64(t.size)
		t.bytes -= len(t.ring[oldest].Payload)
		t.ring[oldest] = nil
		t.count--
	}
}

// seenKeyLocked returns the position a key was published at, if it is
// still remembered. Called with t.mu held.
func (t *memTopic) seenKeyLocked(key string, now time.Time) (Position, bool) {
	t.forgetKeysLocked(now)
	pos, ok := t.keys[key]
	return pos, ok
}

func (t *memTopic) rememberKeyLocked(key string, pos Position, now time.Time) {
	if t.keys == nil {
		t.keys = make(map[string]Position)
	}
	t.keys[key] = pos
	t.keyOrder = append(t.keyOrder, memKey{key, now})
	t.forgetKeysLocked(now)
}

// forgetKeysLocked drops keys past the window, and the oldest beyond
// DefaultMaxIdempotencyKeys.
func (t *memTopic) forgetKeysLocked(now time.Time) {
	n := 0
	for n < len(t.keyOrder) && (now.Sub(t.keyOrder[n].at) >= memIdempotencyWindow || len(t.keyOrder)-n > DefaultMaxIdempotencyKeys) {
		delete(t.keys, t.keyOrder[n].key)
		n++
	}
	if n > 0 {
		t.keyOrder = append(t.keyOrder[:0:0], t.keyOrder[n:]...)
		if len(t.keyOrder) == 0 {
			t.keys, t.keyOrder = nil, nil
		}
	}
}

// Subscribe implements Broker. It never waits for a running handler.
func (m *Memory) Subscribe(ctx context.Context, topic string, h Handler) (Position, error) {
	if h == nil {
		return Position{}, errors.New("pubsub: nil handler")
	}
	for {
		t, err := m.topic(topic)
		if err != nil {
			return Position{}, err
		}
		t.mu.Lock()
		if t.dead {
			t.mu.Unlock()
			continue
		}
		t.handler = h
		t.lastUsed = m.now()
		pos := Position{Epoch: t.epoch, Offset: t.top}
		t.mu.Unlock()
		return pos, nil
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

// History implements Broker. Events are returned oldest first: the first
// limit events after since, so a caller can page on. An event becomes
// visible to History just before its handler call, so a subscriber
// replaying from History must skip live events with an offset at or below
// the Top it replayed to.
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
	if limit <= 0 || limit > MaxHistoryPage {
		limit = MaxHistoryPage
	}
	n := int(min(missed, uint64(limit)))
	res.Events = make([]*Event, n)
	for i := range n {
		off := since.Offset + 1 + uint64(i)
		res.Events[i] = t.ring[(off-1)%uint64(t.size)]
	}
	res.Recovered = true
	return res
}

// Ping implements Broker: the memory engine is ready until closed.
func (m *Memory) Ping(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	return ctx.Err()
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
