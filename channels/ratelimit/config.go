package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Defaults. Every limit is on by default.
const (
	// DefaultJoinsPerSecond and DefaultJoinBurst: a client joins a handful of
	// channels at connect and rejoins them after a reconnect.
	DefaultJoinsPerSecond = 5
	DefaultJoinBurst      = 20
	// DefaultClass is the class of events whose name maps to no other class.
	DefaultClass = "default"
	// DefaultEventsPerSecond and DefaultEventBurst bound the default class.
	DefaultEventsPerSecond = 20
	DefaultEventBurst      = 40
	// DefaultHeartbeatsPerSecond and DefaultHeartbeatBurst, per connection:
	// phoenix.js sends one heartbeat every 30 s; this leaves room for
	// clients with much shorter intervals while stopping a heartbeat flood.
	DefaultHeartbeatsPerSecond = 2
	DefaultHeartbeatBurst      = 10
	// DefaultAbuseWindow: refused continuously for this long means abuse.
	DefaultAbuseWindow = 10 * time.Second
	// DefaultAbuseQuiet: a refusal streak ends after more than this long
	// without a refusal, so a client that backs off after a burst is not
	// abusive, while one sending at twice a 1/s class rate still is.
	DefaultAbuseQuiet = 2 * time.Second
	// DefaultMaxEntries bounds tracked players (each entry is a few hundred
	// bytes, so this is tens of MB at most).
	DefaultMaxEntries = 100_000
	// DefaultIdleTTL: an entry untouched this long is dropped.
	DefaultIdleTTL = 10 * time.Minute
	// MaxMaxEntries and MaxIdleTTL bound max_entries and idle_ttl.
	MaxMaxEntries = 1 << 24
	MaxIdleTTL    = 24 * time.Hour
	// shards spreads lock contention; a power of two.
	shards = 64
)

// ClassLimit is one token bucket: PerSecond tokens per second, up to Burst.
type ClassLimit struct {
	// PerSecond is the sustained rate, events per second; must be > 0.
	PerSecond float64 `yaml:"per_second"`
	// Burst is the bucket size, events; must be ≥ 1.
	Burst int `yaml:"burst"`
}

func (l ClassLimit) refill() time.Duration {
	return time.Duration(float64(l.Burst) / l.PerSecond * float64(time.Second))
}

// Config configures a Limiter. It is the limits section of phxgate's
// configuration: the yaml tags are the keys under limits., and Validate
// names them relative to it ("joins_per_second", the caller adds
// "limits.").
type Config struct {
	// JoinsPerSecond (limits.joins_per_second): phx_join per player per
	// second; must be > 0.
	JoinsPerSecond float64 `yaml:"joins_per_second" usage:"joins per player (anonymous: per client IP) per second"`
	// JoinBurst (limits.join_burst): joins allowed at once; must be ≥ 1.
	JoinBurst int `yaml:"join_burst" usage:"joins allowed at once"`
	// Classes (limits.classes): event classes by name. Must contain
	// DefaultClass. Routes map event names to these names (see Route).
	Classes Classes `yaml:"classes" usage:"event classes as \"name=per_second:burst,...\" (merged over the defaults)"`
	// DefaultClass (limits.default_class): the class used for an empty or
	// unknown class name. Must name a key of Classes.
	DefaultClass string `yaml:"default_class" usage:"class of events no route classifies"`
	// HeartbeatsPerSecond (limits.heartbeats_per_second): heartbeats per
	// connection per second (HeartbeatBucket); must be > 0.
	HeartbeatsPerSecond float64 `yaml:"heartbeats_per_second" usage:"heartbeats per connection per second"`
	// HeartbeatBurst (limits.heartbeat_burst): heartbeats one connection
	// may send at once; must be ≥ 1.
	HeartbeatBurst int `yaml:"heartbeat_burst" usage:"heartbeats one connection may send at once"`
	// AbuseWindow (limits.abuse_window): a player (for heartbeats: a
	// connection) refused continuously (no gap longer than AbuseQuiet
	// without a refusal) for this long is abusive; must be > 0.
	AbuseWindow time.Duration `yaml:"abuse_window" usage:"refused continuously this long: disconnect with 1008"`
	// AbuseQuiet (limits.abuse_quiet): a gap without refusals longer than this
	// ends a refusal streak; must be > 0 and ≤ AbuseWindow.
	AbuseQuiet time.Duration `yaml:"abuse_quiet" usage:"a gap this long without refusals ends a refusal streak"`
	// MaxEntries (limits.max_entries): players tracked at most; between 1
	// and MaxMaxEntries.
	MaxEntries int `yaml:"max_entries" usage:"players tracked by the rate limiter at most"`
	// IdleTTL (limits.idle_ttl): an untouched entry is evicted after this
	// long; must be ≥ AbuseWindow and ≥ the refill time of every
	// per-player bucket (heartbeat buckets live with their connection),
	// and at most MaxIdleTTL.
	IdleTTL time.Duration `yaml:"idle_ttl" usage:"rate limiter entries idle this long are forgotten"`

	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time `yaml:"-"`
}

// NewConfig returns the defaults, with one class: DefaultClass.
func NewConfig() Config {
	return Config{
		JoinsPerSecond:      DefaultJoinsPerSecond,
		JoinBurst:           DefaultJoinBurst,
		Classes:             map[string]ClassLimit{DefaultClass: {PerSecond: DefaultEventsPerSecond, Burst: DefaultEventBurst}},
		DefaultClass:        DefaultClass,
		HeartbeatsPerSecond: DefaultHeartbeatsPerSecond,
		HeartbeatBurst:      DefaultHeartbeatBurst,
		AbuseWindow:         DefaultAbuseWindow,
		AbuseQuiet:          DefaultAbuseQuiet,
		MaxEntries:          DefaultMaxEntries,
		IdleTTL:             DefaultIdleTTL,
	}
}

// ErrConfig marks every configuration error.
var ErrConfig = errors.New("invalid rate limit config")

func configErr(key, msg string) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, key, msg)
}

func checkRate(key string, perSecond float64, burst int) error {
	if !(perSecond > 0) || math.IsInf(perSecond, 0) {
		return configErr(key+"per_second", "must be > 0 and finite")
	}
	if burst < 1 {
		return configErr(key+"burst", "must be ≥ 1")
	}
	return nil
}

// Validate checks the configuration; errors name the offending key. Zero
// never means unlimited here: every rate must be set.
func (c Config) Validate() error {
	if !(c.JoinsPerSecond > 0) || math.IsInf(c.JoinsPerSecond, 0) {
		return configErr("joins_per_second", "must be > 0 and finite")
	}
	if c.JoinBurst < 1 {
		return configErr("join_burst", "must be ≥ 1")
	}
	if !(c.HeartbeatsPerSecond > 0) || math.IsInf(c.HeartbeatsPerSecond, 0) {
		return configErr("heartbeats_per_second", "must be > 0 and finite")
	}
	if c.HeartbeatBurst < 1 {
		return configErr("heartbeat_burst", "must be ≥ 1")
	}
	if len(c.Classes) == 0 {
		return configErr("classes", "must define at least the default class")
	}
	// Heartbeat buckets are not entries (they live and die with their
	// connection), so only the per-player buckets bound IdleTTL.
	longest := ClassLimit{c.JoinsPerSecond, c.JoinBurst}.refill()
	for _, name := range sortedNames(c.Classes) {
		if name == "" {
			return configErr("classes", "a class name must not be empty")
		}
		l := c.Classes[name]
		if err := checkRate("classes."+name+".", l.PerSecond, l.Burst); err != nil {
			return err
		}
		longest = max(longest, l.refill())
	}
	if _, ok := c.Classes[c.DefaultClass]; !ok {
		return configErr("default_class", fmt.Sprintf("%q is not in limits.classes", c.DefaultClass))
	}
	if c.AbuseWindow <= 0 {
		return configErr("abuse_window", "must be > 0")
	}
	if c.AbuseQuiet <= 0 || c.AbuseQuiet > c.AbuseWindow {
		return configErr("abuse_quiet", "must be > 0 and ≤ abuse_window")
	}
	if c.MaxEntries < 1 || c.MaxEntries > MaxMaxEntries {
		return configErr("max_entries", fmt.Sprintf("must be between 1 and %d", MaxMaxEntries))
	}
	if c.IdleTTL > MaxIdleTTL {
		return configErr("idle_ttl", fmt.Sprintf("must be at most %v", MaxIdleTTL))
	}
	if c.IdleTTL < c.AbuseWindow || c.IdleTTL < longest {
		return configErr("idle_ttl", fmt.Sprintf("must be ≥ abuse_window and ≥ the longest bucket refill (%v)", longest))
	}
	return nil
}

// Classes are the event classes by name (limits.classes).
type Classes map[string]ClassLimit

// Set merges the flag and environment form "name=per_second:burst,…"
// (e.g. "default=20:40,chat=2:5") over c. The map is copied, so that a
// default map is never shared between configs.
func (c *Classes) Set(s string) error {
	m := make(Classes, len(*c)+1)
	for k, v := range *c {
		m[k] = v
	}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, spec, ok := strings.Cut(item, "=")
		ps, bs, ok2 := strings.Cut(spec, ":")
		if !ok || !ok2 || name == "" {
			return fmt.Errorf("want name=per_second:burst, got %q", item)
		}
		rate, err := strconv.ParseFloat(ps, 64)
		if err != nil {
			return fmt.Errorf("class %q: per_second: %v", name, err)
		}
		burst, err := strconv.Atoi(bs)
		if err != nil {
			return fmt.Errorf("class %q: burst: %v", name, err)
		}
		m[name] = ClassLimit{PerSecond: rate, Burst: burst}
	}
	*c = m
	return nil
}

func sortedNames(m map[string]ClassLimit) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func configErrAt(key, class string) error {
	return fmt.Errorf("%w: %s: class %q is not in limits.classes", ErrConfig, key, class)
}
