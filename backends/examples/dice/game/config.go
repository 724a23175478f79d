package game

import (
	"errors"
	"fmt"
	"time"
)

// Defaults of Config.
const (
	DefaultWindow            = 3 * time.Second
	DefaultStartBalance      = 1000
	DefaultMaxBet            = 1_000_000
	DefaultKeyTTL            = 10 * time.Minute
	DefaultMaxKeys           = 100_000
	DefaultBroadcastAttempts = 4
	DefaultBroadcastTimeout  = 2 * time.Second
	DefaultBroadcastBackoff  = 100 * time.Millisecond
)

// Bounds of Config. A value past them is refused rather than clamped, so a
// typo cannot silently turn a limit off.
const (
	minWindow            = 10 * time.Millisecond
	maxWindow            = time.Hour
	maxStartBalance      = 1 << 40
	maxMaxBet            = 1 << 40
	minKeyTTL            = time.Second
	maxKeyTTL            = 24 * time.Hour
	maxMaxKeys           = 10_000_000
	maxBroadcastAttempts = 10
	minBroadcastTimeout  = time.Millisecond
	maxBroadcastTimeout  = time.Minute
	minBroadcastBackoff  = time.Millisecond
	maxBroadcastBackoff  = 10 * time.Second
	// A broadcast retry waits at most this many times BroadcastBackoff.
	backoffCapFactor = 8
)

// ErrBadConfig is wrapped by the errors of Config.Validate.
var ErrBadConfig = errors.New("dice: bad config")

// Config is the game's tuning. Build it with NewConfig; every field has a
// safe non-zero default and zero is never "unlimited".
type Config struct {
	// Window is how long each round takes bets, from its opening to its
	// roll (10ms..1h). Default 3s.
	Window time.Duration
	// StartBalance is the balance, in chips, of a player the game has not
	// seen yet (1..2^40). Default 1000.
	StartBalance int64
	// MaxBet is the largest amount of one bet, in chips (1..2^40).
	// Default 1,000,000.
	MaxBet int64
	// KeyTTL is how long the ledger remembers an idempotency key and its
	// answer (1s..24h). A retry of a call older than this is applied
	// again, so it must exceed the longest time a call can be resent:
	// phxgate's call deadline (at most 5m) and a client's resend after a
	// reconnect. Default 10m.
	KeyTTL time.Duration
	// MaxKeys caps the bet keys remembered, and separately the join and
	// leave keys (1..10,000,000 each); past it the oldest is forgotten
	// before its KeyTTL (Stats.KeysEvictedEarly). A bet key with its
	// answer costs about 300 bytes, so the default 100,000 hold ~30 MB at
	// most, and last a full KeyTTL up to ~160 bets per second.
	MaxKeys int
	// BroadcastAttempts is how many times a round result is sent to the
	// Gateway before it is given up and logged (1..10). Default 4.
	BroadcastAttempts int
	// BroadcastTimeout is the deadline of each attempt (1ms..1m).
	// Default 2s.
	BroadcastTimeout time.Duration
	// BroadcastBackoff is the wait before the first retry; each further
	// retry waits twice as long, at most 8 × BroadcastBackoff
	// (1ms..10s). Default 100ms. With the defaults a result is given up
	// within 4 × 2s + 0.7s.
	BroadcastBackoff time.Duration
}

// NewConfig returns the defaults.
func NewConfig() Config {
	return Config{
		Window:            DefaultWindow,
		StartBalance:      DefaultStartBalance,
		MaxBet:            DefaultMaxBet,
		KeyTTL:            DefaultKeyTTL,
		MaxKeys:           DefaultMaxKeys,
		BroadcastAttempts: DefaultBroadcastAttempts,
		BroadcastTimeout:  DefaultBroadcastTimeout,
		BroadcastBackoff:  DefaultBroadcastBackoff,
	}
}

// Validate reports the first field out of its bounds, wrapping
// ErrBadConfig.
func (c Config) Validate() error {
	checks := []struct {
		name   string
		ok     bool
		val    any
		bounds string
	}{
		{"Window", c.Window >= minWindow && c.Window <= maxWindow, c.Window, "10ms..1h"},
		{"StartBalance", c.StartBalance >= 1 && c.StartBalance <= maxStartBalance, c.StartBalance, "1..2^40"},
		{"MaxBet", c.MaxBet >= 1 && c.MaxBet <= maxMaxBet, c.MaxBet, "1..2^40"},
		{"KeyTTL", c.KeyTTL >= minKeyTTL && c.KeyTTL <= maxKeyTTL, c.KeyTTL, "1s..24h"},
		{"MaxKeys", c.MaxKeys >= 1 && c.MaxKeys <= maxMaxKeys, c.MaxKeys, "1..10000000"},
		{"BroadcastAttempts", c.BroadcastAttempts >= 1 && c.BroadcastAttempts <= maxBroadcastAttempts, c.BroadcastAttempts, "1..10"},
		{"BroadcastTimeout", c.BroadcastTimeout >= minBroadcastTimeout && c.BroadcastTimeout <= maxBroadcastTimeout, c.BroadcastTimeout, "1ms..1m"},
		{"BroadcastBackoff", c.BroadcastBackoff >= minBroadcastBackoff && c.BroadcastBackoff <= maxBroadcastBackoff, c.BroadcastBackoff, "1ms..10s"},
	}
	for _, ch := range checks {
		if !ch.ok {
			return fmt.Errorf("%w: %s %v is out of range %s", ErrBadConfig, ch.name, ch.val, ch.bounds)
		}
	}
	return nil
}
