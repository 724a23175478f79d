package admission

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
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
	// maxIdleTTL bounds ip_idle_ttl.
	maxIdleTTL = 24 * time.Hour
	// maxXFFHops bounds the X-Forwarded-For entries examined.
	maxXFFHops = 32
)

// Config configures a Controller. Its two parts are two sections of
// phxgate's configuration: Origins at the top level, Limits under limits.
// (Validate names the keys so: "check_origin[0]", "limits.ip_max_conns").
type Config struct {
	Origins
	Limits

	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

// Origins are the top-level keys about where a handshake comes from.
type Origins struct {
	// CheckOrigin (check_origin) lists allowed origins:
	// "https://app.example.com", "https://app.example.com:8443" or
	// "https://*.example.com" (any subdomain, not the apex). Scheme, host and
	// port are compared (a missing port is the scheme's default). Empty
	// allows every origin.
	CheckOrigin []string `yaml:"check_origin" usage:"allowed origins, comma-separated (empty allows all; https://*.example.com for subdomains)"`
	// RequireOrigin (require_origin) refuses handshakes without an Origin
	// header when CheckOrigin is set. False (the default, as Phoenix) lets
	// non-browser clients through: browsers always send Origin, and the
	// check exists to stop other sites' pages, not native clients.
	RequireOrigin bool `yaml:"require_origin" usage:"with check_origin, also refuse requests without an Origin header"`
	// TrustedProxies (trusted_proxies) are CIDRs ("10.0.0.0/8",
	// "2001:db8::/32") or addresses of reverse proxies whose
	// X-Forwarded-For is believed. Empty: X-Forwarded-For is ignored.
	TrustedProxies []string `yaml:"trusted_proxies" usage:"CIDRs of reverse proxies whose X-Forwarded-For is believed, comma-separated"`
}

// Limits are the admission keys under limits. (Validate names them
// relative to it: "ip_max_conns").
type Limits struct {
	// IPHandshakesPerSecond (limits.ip_handshakes_per_second): upgrade
	// attempts per IP per second; must be > 0.
	IPHandshakesPerSecond float64 `yaml:"ip_handshakes_per_second" usage:"upgrade attempts per client IP (IPv6: /64) per second"`
	// IPHandshakeBurst (limits.ip_handshake_burst): must be ≥ 1.
	IPHandshakeBurst int `yaml:"ip_handshake_burst" usage:"upgrade attempts per client IP allowed at once"`
	// IPMaxHandshakes (limits.ip_max_handshakes): handshakes in progress
	// per TCP peer address (IPv6: per prefix), counted from accept until the
	// handshake ends, before any byte is read; peers inside TrustedProxies
	// are exempt (a proxy carries many clients). Must be ≥ 1.
	IPMaxHandshakes int `yaml:"ip_max_handshakes" usage:"handshakes in progress per peer address (IPv6: /64), checked at accept; trusted_proxies exempt"`
	// IPMaxConns (limits.ip_max_conns): open connections per IP (IPv6:
	// per prefix); must be ≥ 1.
	IPMaxConns int `yaml:"ip_max_conns" usage:"open sockets per client IP (IPv6: /64)"`
	// PlayerMaxConns (limits.player_max_conns): open connections per
	// player id; must be ≥ 1.
	PlayerMaxConns int `yaml:"player_max_conns" usage:"open sockets per player"`
	// MaxConns (limits.max_conns): open connections on this node; must be
	// ≥ 1.
	MaxConns int `yaml:"max_conns" usage:"open sockets on this node (over it: 503)"`
	// MaxTrackedIPs (limits.max_tracked_ips): IPs without open connections
	// whose handshake bucket is remembered; must be ≥ 1.
	MaxTrackedIPs int `yaml:"max_tracked_ips" usage:"client IPs without a socket whose handshake bucket is remembered"`
	// IPIdleTTL (limits.ip_idle_ttl): a handshake bucket untouched this long
	// is dropped; between 0s (exclusive) and 24h. A TTL shorter than the
	// bucket's refill time (ip_handshake_burst / ip_handshakes_per_second)
	// is raised to it, so a forgotten bucket is always a full one.
	IPIdleTTL time.Duration `yaml:"ip_idle_ttl" usage:"handshake buckets idle this long are forgotten (at least their refill time)"`
	// IPv6PrefixBits (limits.ipv6_prefix_bits): IPv6 clients sharing this
	// many leading bits share limits; 1–128, default 64.
	IPv6PrefixBits int `yaml:"ipv6_prefix_bits" usage:"IPv6 clients sharing this many leading bits share the per-IP limits"`
}

// NewConfig returns the defaults.
func NewConfig() Config {
	return Config{Limits: NewLimits()}
}

// NewLimits returns the defaults of the limits. keys.
func NewLimits() Limits {
	return Limits{
		IPHandshakesPerSecond: DefaultPerIPHandshakesPerSecond,
		IPHandshakeBurst:      DefaultPerIPHandshakeBurst,
		IPMaxHandshakes:       DefaultPerIPMaxHandshakes,
		IPMaxConns:            DefaultPerIPMaxConns,
		PlayerMaxConns:        DefaultPerPlayerMaxConns,
		MaxConns:              DefaultMaxConns,
		MaxTrackedIPs:         DefaultMaxTrackedIPs,
		IPIdleTTL:             DefaultIdleTTL,
		IPv6PrefixBits:        DefaultIPv6PrefixBits,
	}
}

// ErrConfig marks every configuration error.
var ErrConfig = errors.New("invalid admission config")

func configErr(key, msg string) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, key, msg)
}

// Validate checks the configuration; errors name the offending key.
func (c Config) Validate() error {
	if err := c.Origins.Validate(); err != nil {
		return err
	}
	if err := c.Limits.Validate(); err != nil {
		return fmt.Errorf("%w: limits.%s", ErrConfig, strings.TrimPrefix(err.Error(), ErrConfig.Error()+": "))
	}
	return nil
}

// Validate checks the origin keys; errors name the offending key.
func (c Origins) Validate() error {
	for i, o := range c.CheckOrigin {
		if o == "" {
			return configErr(fmt.Sprintf("check_origin[%d]", i), "must not be empty")
		}
		if _, err := parseAllowedOrigin(o); err != nil {
			return configErr(fmt.Sprintf("check_origin[%d]", i), err.Error())
		}
	}
	for i, p := range c.TrustedProxies {
		if _, err := parseCIDR(p); err != nil {
			return configErr(fmt.Sprintf("trusted_proxies[%d]", i), "must be a CIDR or an IP address")
		}
	}
	return nil
}

// Validate checks the limits; errors name the offending key relative to
// the limits section ("ip_max_conns").
func (c Limits) Validate() error {
	if !(c.IPHandshakesPerSecond > 0) || math.IsInf(c.IPHandshakesPerSecond, 0) {
		return configErr("ip_handshakes_per_second", "must be > 0 and finite")
	}
	if c.IPHandshakeBurst < 1 {
		return configErr("ip_handshake_burst", "must be ≥ 1")
	}
	if c.IPMaxHandshakes < 1 {
		return configErr("ip_max_handshakes", "must be ≥ 1")
	}
	if c.IPMaxConns < 1 {
		return configErr("ip_max_conns", "must be ≥ 1")
	}
	if c.PlayerMaxConns < 1 {
		return configErr("player_max_conns", "must be ≥ 1")
	}
	if c.MaxConns < 1 {
		return configErr("max_conns", "must be ≥ 1")
	}
	if c.MaxTrackedIPs < 1 {
		return configErr("max_tracked_ips", "must be ≥ 1")
	}
	if refill := float64(c.IPHandshakeBurst) / c.IPHandshakesPerSecond; refill > maxIdleTTL.Seconds() {
		return configErr("ip_handshake_burst", fmt.Sprintf("refills in %.0fs at ip_handshakes_per_second, more than %v", refill, maxIdleTTL))
	}
	if c.IPIdleTTL <= 0 || c.IPIdleTTL > maxIdleTTL {
		return configErr("ip_idle_ttl", fmt.Sprintf("must be between 0s (exclusive) and %v", maxIdleTTL))
	}
	if c.IPv6PrefixBits < 1 || c.IPv6PrefixBits > 128 {
		return configErr("ipv6_prefix_bits", "must be between 1 and 128")
	}
	return nil
}

// BucketTTL is how long an untouched handshake bucket is kept: IPIdleTTL,
// raised to the bucket's refill time.
func (c Limits) BucketTTL() time.Duration {
	refill := time.Duration(float64(c.IPHandshakeBurst) / c.IPHandshakesPerSecond * float64(time.Second))
	return max(c.IPIdleTTL, min(refill, maxIdleTTL))
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
