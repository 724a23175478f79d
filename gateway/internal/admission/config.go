package admission

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"
)

// Defaults. Every cap is on by default.
const (
	// DefaultPerIPHandshakesPerSecond and DefaultPerIPHandshakeBurst: a
	// browser reconnects a few sockets after a network blip; a script
	// hammering the upgrade (and the token check behind it) is stopped.
	DefaultPerIPHandshakesPerSecond = 5
	DefaultPerIPHandshakeBurst      = 20
	// DefaultPerIPMaxConns allows a household or a small NAT behind one
	// address (or one IPv6 /64).
	DefaultPerIPMaxConns = 100
	// DefaultPerIPMaxHandshakes bounds the handshakes one peer address has
	// in progress (accepted, request head not yet answered). A normal
	// handshake takes milliseconds, so even a NAT of many players rarely
	// has more than a few in flight; a slowloris client that opens
	// hundreds of silent connections holds at most this many handshake
	// workers instead of all of them.
	DefaultPerIPMaxHandshakes = 16
	// DefaultPerPlayerMaxConns: a player with several tabs or devices.
	DefaultPerPlayerMaxConns = 10
	// DefaultMaxConns bounds the node; past it the client is told to go to
	// another node (503).
	DefaultMaxConns = 100_000
	// DefaultMaxTrackedIPs bounds per-IP state for addresses with no open
	// connection (handshake buckets); addresses with open connections are
	// bounded by MaxConns.
	DefaultMaxTrackedIPs = 65_536
	// DefaultIdleTTL: a handshake bucket untouched this long is forgotten.
	DefaultIdleTTL = 10 * time.Minute
	// DefaultIPv6PrefixBits groups IPv6 clients by /64.
	DefaultIPv6PrefixBits = 64
	// maxXFFHops bounds the X-Forwarded-For entries examined.
	maxXFFHops = 32
)

// Config configures a Controller. YAML keys: check_origin and
// trusted_proxies at the top level, the rest under `limits.`.
type Config struct {
	// CheckOrigin (check_origin) lists allowed origins:
	// "https://app.example.com", "https://app.example.com:8443" or
	// "https://*.example.com" (any subdomain, not the apex). Scheme, host and
	// port are compared (a missing port is the scheme's default). Empty
	// allows every origin.
	CheckOrigin []string
	// RequireOrigin (require_origin) refuses handshakes without an Origin
	// header when CheckOrigin is set. False (the default, as Phoenix) lets
	// non-browser clients through: browsers always send Origin, and the
	// check exists to stop other sites' pages, not native clients.
	RequireOrigin bool
	// TrustedProxies (trusted_proxies) are CIDRs ("10.0.0.0/8",
	// "2001:db8::/32") or addresses of reverse proxies whose
	// X-Forwarded-For is believed. Empty: X-Forwarded-For is ignored.
	TrustedProxies []string
	// PerIPHandshakesPerSecond (limits.ip_handshakes_per_second): upgrade
	// attempts per IP per second; must be > 0.
	PerIPHandshakesPerSecond float64
	// PerIPHandshakeBurst (limits.ip_handshake_burst): must be ≥ 1.
	PerIPHandshakeBurst int
	// PerIPMaxHandshakes (limits.ip_max_handshakes): handshakes in progress
	// per TCP peer address (IPv6: per prefix), counted from accept until the
	// handshake ends, before any byte is read; peers inside TrustedProxies
	// are exempt (a proxy carries many clients). Must be ≥ 1.
	PerIPMaxHandshakes int
	// PerIPMaxConns (limits.ip_max_conns): open connections per IP (IPv6:
	// per prefix); must be ≥ 1.
	PerIPMaxConns int
	// PerPlayerMaxConns (limits.player_max_conns): open connections per
	// player id; must be ≥ 1.
	PerPlayerMaxConns int
	// MaxConns (limits.max_conns): open connections on this node; must be
	// ≥ 1.
	MaxConns int
	// MaxTrackedIPs (limits.max_tracked_ips): IPs without open connections
	// whose handshake bucket is remembered; must be ≥ 1.
	MaxTrackedIPs int
	// IdleTTL (limits.ip_idle_ttl): a handshake bucket untouched this long
	// is dropped; must be ≥ the bucket's refill time.
	IdleTTL time.Duration
	// IPv6PrefixBits (limits.ipv6_prefix_bits): IPv6 clients sharing this
	// many leading bits share limits; 1–128, default 64.
	IPv6PrefixBits int

	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time `yaml:"-"`
}

// NewConfig returns the defaults.
func NewConfig() Config {
	return Config{
		PerIPHandshakesPerSecond: DefaultPerIPHandshakesPerSecond,
		PerIPHandshakeBurst:      DefaultPerIPHandshakeBurst,
		PerIPMaxHandshakes:       DefaultPerIPMaxHandshakes,
		PerIPMaxConns:            DefaultPerIPMaxConns,
		PerPlayerMaxConns:        DefaultPerPlayerMaxConns,
		MaxConns:                 DefaultMaxConns,
		MaxTrackedIPs:            DefaultMaxTrackedIPs,
		IdleTTL:                  DefaultIdleTTL,
		IPv6PrefixBits:           DefaultIPv6PrefixBits,
	}
}

// ErrConfig marks every configuration error.
var ErrConfig = errors.New("invalid admission config")

func configErr(key, msg string) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, key, msg)
}

// Validate checks the configuration; errors name the offending key.
func (c Config) Validate() error {
	for i, o := range c.CheckOrigin {
		if _, err := parseAllowedOrigin(o); err != nil {
			return configErr(fmt.Sprintf("check_origin[%d]", i), err.Error())
		}
	}
	for i, p := range c.TrustedProxies {
		if _, err := parseCIDR(p); err != nil {
			return configErr(fmt.Sprintf("trusted_proxies[%d]", i), "must be a CIDR or an IP address")
		}
	}
	if !(c.PerIPHandshakesPerSecond > 0) || math.IsInf(c.PerIPHandshakesPerSecond, 0) {
		return configErr("limits.ip_handshakes_per_second", "must be > 0 and finite")
	}
	if c.PerIPHandshakeBurst < 1 {
		return configErr("limits.ip_handshake_burst", "must be ≥ 1")
	}
	if c.PerIPMaxHandshakes < 1 {
		return configErr("limits.ip_max_handshakes", "must be ≥ 1")
	}
	if c.PerIPMaxConns < 1 {
		return configErr("limits.ip_max_conns", "must be ≥ 1")
	}
	if c.PerPlayerMaxConns < 1 {
		return configErr("limits.player_max_conns", "must be ≥ 1")
	}
	if c.MaxConns < 1 {
		return configErr("limits.max_conns", "must be ≥ 1")
	}
	if c.MaxTrackedIPs < 1 {
		return configErr("limits.max_tracked_ips", "must be ≥ 1")
	}
	refill := time.Duration(float64(c.PerIPHandshakeBurst) / c.PerIPHandshakesPerSecond * float64(time.Second))
	if c.IdleTTL < refill {
		return configErr("limits.ip_idle_ttl", fmt.Sprintf("must be ≥ the handshake bucket refill time (%v)", refill))
	}
	if c.IPv6PrefixBits < 1 || c.IPv6PrefixBits > 128 {
		return configErr("limits.ipv6_prefix_bits", "must be between 1 and 128")
	}
	return nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
