package ratelimit

import (
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Kind is what was limited; it labels the metrics.
type Kind uint8

const (
	KindJoin Kind = iota
	KindEvent
	// KindHeartbeat is limited per connection (HeartbeatBucket), not per
	// player.
	KindHeartbeat
)

func (k Kind) String() string {
	switch k {
	case KindJoin:
		return "join"
	case KindEvent:
		return "event"
	case KindHeartbeat:
		return "heartbeat"
	}
	return "unknown"
}

// Decision is the verdict on one join, event or heartbeat.
type Decision struct {
	// OK: go ahead.
	OK bool
	// RetryAfter, when !OK, is how long until a token is available.
	RetryAfter time.Duration
	// Abusive, when !OK, means the player (for a heartbeat: the
	// connection) has been refused continuously for Config.AbuseWindow:
	// close the socket with 1008.
	Abusive bool
}

// RetryAfterMillis is RetryAfter for the `retry_after_ms` reply, rounded up
// so that a client retrying after exactly that long succeeds; 0 when OK.
func (d Decision) RetryAfterMillis() int64 {
	if d.OK {
		return 0
	}
	return max(1, int64((d.RetryAfter+time.Millisecond-1)/time.Millisecond))
}

// entry is one player's buckets and abuse state, guarded by its shard's
// mutex (the rate.Limiters have their own locks as well, uncontended).
type entry struct {
	key      string
	join     *rate.Limiter
	classes  []*rate.Limiter // by class index; nil until first used
	lastSeen time.Time
	// Abuse: the current refusal streak.
	streakStart time.Time
	lastRefused time.Time
	reported    bool // abusive already counted for this streak
	// LRU list, most recent at the front.
	prev, next *entry
}

type shard struct {
	mu   sync.Mutex
	m    map[string]*entry
	lru  entry // sentinel: lru.next is the most recent, lru.prev the least
	max  int
	_pad [64]byte // keep neighbouring shards' mutexes off one cache line
}

// Limiter is the per-player limiter registry. Safe for concurrent use.
type Limiter struct {
	cfg          Config
	now          func() time.Time
	classIndex   map[string]int
	classLimits  []ClassLimit
	defaultClass int
	seed         maphash.Seed
	shards       []shard
	mask         uint64
	entries      atomic.Int64
	// Heartbeat buckets (HeartbeatBucket) count time in milliseconds since
	// epoch; hbPerMilli and hbBurst are their rate and size.
	epoch      time.Time
	hbPerMilli float64
	hbBurst    float64

	limited   *prometheus.CounterVec
	abusive   *prometheus.CounterVec
	evictions *prometheus.CounterVec
	// Pre-resolved children, so the hot path does no label lookups.
	limitedBy [3]prometheus.Counter
	abusiveBy [3]prometheus.Counter
	evictIdle prometheus.Counter
	evictFull prometheus.Counter
}

// maxIdleEvictPerCall bounds the lazy idle eviction done inside one Allow
// call, so no single call pays for a large sweep.
const maxIdleEvictPerCall = 8

// New validates cfg and builds a Limiter; metrics are registered on reg (nil:
// not registered).
func New(cfg Config, reg prometheus.Registerer) (*Limiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Limiter{
		cfg: cfg, now: cfg.Now, classIndex: map[string]int{}, seed: maphash.MakeSeed(),
		epoch: cfg.Now(), hbPerMilli: cfg.HeartbeatsPerSecond / 1000, hbBurst: float64(cfg.HeartbeatBurst),
	}
	for i, name := range sortedNames(cfg.Classes) {
		l.classIndex[name] = i
		l.classLimits = append(l.classLimits, cfg.Classes[name])
	}
	l.defaultClass = l.classIndex[cfg.DefaultClass]
	// Fewer shards for small caps, so the per-shard caps sum to at most
	// MaxEntries.
	n := 1
	for n < shards && n*2*256 <= cfg.MaxEntries {
		n *= 2
	}
	l.shards = make([]shard, n)
	l.mask = uint64(n - 1)
	for i := range l.shards {
		s := &l.shards[i]
		s.m = make(map[string]*entry)
		s.lru.next, s.lru.prev = &s.lru, &s.lru
		s.max = cfg.MaxEntries / n
	}

	l.limited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phxgate_ratelimit_limited_total",
		Help: "Joins and events refused by a per-player rate limit, and heartbeats refused by a per-connection one, by kind.",
	}, []string{"kind"})
	l.abusive = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phxgate_ratelimit_abusive_total",
		Help: "Refusal streaks that lasted the abuse window (the socket is disconnected with 1008), by kind.",
	}, []string{"kind"})
	l.evictions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "phxgate_ratelimit_evictions_total",
		Help: "Player entries evicted, by reason (idle, capacity).",
	}, []string{"reason"})
	gauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "phxgate_ratelimit_entries",
		Help: "Players currently tracked by the rate limiter.",
	}, func() float64 { return float64(l.entries.Load()) })
	for _, k := range []Kind{KindJoin, KindEvent, KindHeartbeat} {
		l.limitedBy[k] = l.limited.WithLabelValues(k.String())
		l.abusiveBy[k] = l.abusive.WithLabelValues(k.String())
	}
	l.evictIdle = l.evictions.WithLabelValues("idle")
	l.evictFull = l.evictions.WithLabelValues("capacity")
	if reg != nil {
		for _, c := range []prometheus.Collector{l.limited, l.abusive, l.evictions, gauge} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}

// AllowJoin takes one join token from player's bucket.
func (l *Limiter) AllowJoin(player string) Decision {
	return l.allow(player, KindJoin, 0)
}

// AllowEvent takes one token from player's bucket for class; an empty or
// unknown class uses Config.DefaultClass.
func (l *Limiter) AllowEvent(player, class string) Decision {
	idx, ok := l.classIndex[class]
	if !ok {
		idx = l.defaultClass
	}
	return l.allow(player, KindEvent, idx)
}

func (l *Limiter) allow(player string, kind Kind, class int) Decision {
	now := l.now()
	s := &l.shards[maphash.String(l.seed, player)&l.mask]
	s.mu.Lock()
	defer s.mu.Unlock()
	l.dropIdle(s, now, maxIdleEvictPerCall)
	e := l.get(s, player, now)

	var lim *rate.Limiter
	switch kind {
	case KindJoin:
		lim = e.join
	default:
		lim = e.classes[class]
		if lim == nil {
			c := l.classLimits[class]
			lim = rate.NewLimiter(rate.Limit(c.PerSecond), c.Burst)
			e.classes[class] = lim
		}
	}
	if lim.AllowN(now, 1) {
		return Decision{OK: true}
	}
	// AllowN, TokensAt and Limit do not allocate (ReserveN would).
	missing := 1 - lim.TokensAt(now)
	wait := time.Duration(math.Ceil(missing / float64(lim.Limit()) * float64(time.Second)))
	d := Decision{RetryAfter: max(wait, time.Nanosecond)}
	l.limitedBy[kind].Inc()

	if e.streakStart.IsZero() || now.Sub(e.lastRefused) > l.cfg.AbuseQuiet {
		e.streakStart, e.reported = now, false
	}
	e.lastRefused = now
	if now.Sub(e.streakStart) >= l.cfg.AbuseWindow {
		d.Abusive = true
		if !e.reported {
			e.reported = true
			l.abusiveBy[kind].Inc()
		}
	}
	return d
}

// get returns player's entry, creating it (and evicting the least recently
// seen entry when the shard is full), and marks it most recent.
func (l *Limiter) get(s *shard, player string, now time.Time) *entry {
	e, ok := s.m[player]
	if ok {
		e.lastSeen = now
		unlink(e)
		pushFront(s, e)
		return e
	}
	for len(s.m) >= s.max {
		// Over capacity the oldest entry goes even if not idle: memory is
		// the harder limit. A player evicted this way gets fresh buckets,
		// which the capacity metric makes visible.
		l.remove(s, s.lru.prev)
		l.evictFull.Inc()
	}
	e = &entry{
		key:      player,
		join:     rate.NewLimiter(rate.Limit(l.cfg.JoinsPerSecond), l.cfg.JoinBurst),
		classes:  make([]*rate.Limiter, len(l.classLimits)),
		lastSeen: now,
	}
	s.m[player] = e
	pushFront(s, e)
	l.entries.Add(1)
	return e
}

// dropIdle drops up to limit entries idle for IdleTTL from the LRU tail.
func (l *Limiter) dropIdle(s *shard, now time.Time, limit int) int {
	n := 0
	for n < limit {
		e := s.lru.prev
		if e == &s.lru || now.Sub(e.lastSeen) < l.cfg.IdleTTL {
			break
		}
		l.remove(s, e)
		l.evictIdle.Inc()
		n++
	}
	return n
}

func (l *Limiter) remove(s *shard, e *entry) {
	unlink(e)
	delete(s.m, e.key)
	l.entries.Add(-1)
}

func unlink(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func pushFront(s *shard, e *entry) {
	e.prev, e.next = &s.lru, s.lru.next
	s.lru.next.prev = e
	s.lru.next = e
}

// Sweep evicts every entry idle for Config.IdleTTL and returns how many. The
// owner calls it periodically (every IdleTTL/2 is plenty); without it idle
// entries still go, lazily, as their shard is used or fills.
func (l *Limiter) Sweep() int {
	now := l.now()
	total := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		total += l.dropIdle(s, now, math.MaxInt)
		s.mu.Unlock()
	}
	return total
}

// Len returns the number of players tracked.
func (l *Limiter) Len() int { return int(l.entries.Load()) }

// Route maps a route's event names to limiter classes
// (routes[].rate_limits in YAML).
type Route struct {
	// DefaultClass (routes[].rate_limits.default_class) is the class of
	// events not listed in Events. Empty means the limiter's default class.
	DefaultClass string `yaml:"default_class"`
	// Events (routes[].rate_limits.events) maps an event name to a class.
	Events map[string]string `yaml:"events"`
}

// ClassOf returns the class of event on this route.
func (r Route) ClassOf(event string) string {
	if c, ok := r.Events[event]; ok {
		return c
	}
	return r.DefaultClass
}

// ValidateRoute checks that every class r names exists in c; key is the
// YAML path of r for the error (e.g. "routes[2].rate_limits").
func (c Config) ValidateRoute(r Route, key string) error {
	if r.DefaultClass != "" {
		if _, ok := c.Classes[r.DefaultClass]; !ok {
			return configErrAt(key+".default_class", r.DefaultClass)
		}
	}
	for ev, cl := range r.Events {
		if _, ok := c.Classes[cl]; !ok {
			return configErrAt(key+".events."+ev, cl)
		}
	}
	return nil
}
