package admission

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

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

func newTestController(tb testing.TB, cfg Config) (*Controller, *fakeClock, *prometheus.Registry) {
	tb.Helper()
	clock := &fakeClock{now: t0}
	cfg.Now = clock.Now
	reg := prometheus.NewRegistry()
	c, err := New(cfg, reg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return c, clock, reg
}

func refusedTotal(tb testing.TB, reg *prometheus.Registry, reason string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "phxgate_gateway_connect_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func mustAddr(tb testing.TB, s string) netip.Addr {
	tb.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

func wantRefusal(tb testing.TB, err error, sentinel error, status int, reason string) {
	tb.Helper()
	var r *Refusal
	if !errors.As(err, &r) || !errors.Is(err, sentinel) || r.Status != status || r.Reason != reason {
		tb.Fatalf("err = %#v, want Refusal{%d %s} wrapping %v", err, status, reason, sentinel)
	}
}

func TestOriginAttacks(t *testing.T) {
	cfg := NewConfig()
	cfg.CheckOrigin = []string{"https://app.example.com", "https://*.games.example.com", "http://localhost:4000"}
	c, _, reg := newTestController(t, cfg)
	cases := []struct {
		name   string
		origin string
		want   bool
	}{
		{"allowed exact", "https://app.example.com", true},
		{"allowed exact with default port spelled out", "https://app.example.com:443", true},
		{"allowed exact uppercase host", "https://APP.Example.com", true},
		{"allowed wildcard", "https://poker.games.example.com", true},
		{"allowed wildcard two labels deep", "https://eu.poker.games.example.com", true},
		{"allowed exact with port", "http://localhost:4000", true},
		{"missing Origin (non-browser client)", "", true},
		{"evil origin", "https://evil.com", false},
		{"null", "null", false},
		{"suffix attack", "https://app.example.com.evil.com", false},
		{"wildcard suffix attack", "https://poker.games.example.com.evil.com", false},
		{"prefix attack", "https://evilapp.example.com", false},
		{"wildcard without a dot", "https://evilgames.example.com", false},
		{"wildcard apex", "https://games.example.com", false},
		{"wrong scheme", "http://app.example.com", false},
		{"wrong scheme on wildcard", "http://poker.games.example.com", false},
		{"wrong port", "https://app.example.com:8443", false},
		{"wrong port on localhost", "http://localhost:4001", false},
		{"localhost without port", "http://localhost", false},
		{"trailing dot", "https://app.example.com.", false},
		{"with path", "https://app.example.com/x", false},
		{"trailing slash", "https://app.example.com/", false},
		{"userinfo", "https://app.example.com@evil.com", false},
		{"percent escape", "https://app%2eexample.com", false},
		{"backslash", "https://evil.com\\app.example.com", false},
		{"no scheme", "app.example.com", false},
		{"scheme relative", "//app.example.com", false},
		{"empty port", "https://app.example.com:", false},
		{"bad port", "https://app.example.com:99999", false},
		{"file scheme", "file://app.example.com", false},
		{"wildcard sent by a client is literal", "https://*.games.example.com", false},
	}
	refusals := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.OriginAllowed(tc.origin); got != tc.want {
				t.Fatalf("OriginAllowed(%q) = %v, want %v", tc.origin, got, tc.want)
			}
			err := c.CheckOrigin(tc.origin)
			if tc.want {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			refusals++
			wantRefusal(t, err, ErrOrigin, http.StatusForbidden, ReasonOrigin)
		})
	}
	if got := refusedTotal(t, reg, ReasonOrigin); got != float64(refusals) {
		t.Fatalf("refused_total{origin} = %v, want %d", got, refusals)
	}
}

func TestOriginEmptyListAllowsAll(t *testing.T) {
	c, _, _ := newTestController(t, NewConfig())
	for _, o := range []string{"https://evil.com", "null", "", "garbage"} {
		if !c.OriginAllowed(o) {
			t.Fatalf("empty check_origin refused %q", o)
		}
	}
}

func TestOriginRequired(t *testing.T) {
	cfg := NewConfig()
	cfg.CheckOrigin = []string{"https://app.example.com"}
	cfg.RequireOrigin = true
	c, _, _ := newTestController(t, cfg)
	if c.OriginAllowed("") {
		t.Fatal("missing Origin allowed with require_origin")
	}
}

func TestClientIP(t *testing.T) {
	cfg := NewConfig()
	cfg.TrustedProxies = []string{"10.0.0.0/8", "2001:db8:ffff::/48", "192.0.2.7"}
	c, _, _ := newTestController(t, cfg)
	cases := []struct {
		name   string
		remote string
		xff    string
		want   string
	}{
		{"no proxy", "203.0.113.9:5555", "", "203.0.113.9"},
		{"XFF spoofing from an untrusted peer is ignored", "203.0.113.9:5555", "1.2.3.4", "203.0.113.9"},
		{"XFF spoof claiming a trusted address from an untrusted peer", "203.0.113.9:5555", "10.0.0.1", "203.0.113.9"},
		{"trusted proxy", "10.1.2.3:80", "198.51.100.20", "198.51.100.20"},
		{"client-injected left entries are skipped", "10.1.2.3:80", "1.1.1.1, 6.6.6.6, 198.51.100.20", "198.51.100.20"},
		{"chain of trusted proxies", "10.1.2.3:80", "198.51.100.20, 10.9.9.9, 192.0.2.7", "198.51.100.20"},
		{"all trusted: left-most", "10.1.2.3:80", "10.0.0.5, 10.0.0.6", "10.0.0.5"},
		{"garbage stops at the last trusted hop", "10.1.2.3:80", "198.51.100.20, garbage", "10.1.2.3"},
		{"garbage left of the client is ignored", "10.1.2.3:80", "garbage, 198.51.100.20", "198.51.100.20"},
		{"XFF with port", "10.1.2.3:80", "198.51.100.20:1234", "198.51.100.20"},
		{"XFF IPv6", "[2001:db8:ffff::1]:443", "2001:db8:1::5", "2001:db8:1::5"},
		{"XFF bracketed IPv6", "10.1.2.3:80", "[2001:db8:1::5]", "2001:db8:1::5"},
		{"IPv4-mapped peer", "[::ffff:203.0.113.9]:5555", "", "203.0.113.9"},
		{"IPv4-mapped trusted peer", "[::ffff:10.1.2.3]:80", "198.51.100.20", "198.51.100.20"},
		{"bare remote", "203.0.113.9", "", "203.0.113.9"},
		{"zone stripped", "[fe80::1%eth0]:80", "", "fe80::1"},
		{"unparsable remote", "nonsense", "", "invalid IP"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.ClientIP(tc.remote, tc.xff).String(); got != tc.want {
				t.Fatalf("ClientIP(%q, %q) = %s, want %s", tc.remote, tc.xff, got, tc.want)
			}
		})
	}
	t.Run("AddrPort form", func(t *testing.T) {
		got := c.ClientIPAddrPort(netip.MustParseAddrPort("10.1.2.3:80"), "198.51.100.20")
		if got.String() != "198.51.100.20" {
			t.Fatal(got)
		}
	})
	t.Run("a long XFF is bounded", func(t *testing.T) {
		xff := strings.Repeat("10.0.0.1,", 10_000) + "10.0.0.2"
		if got := c.ClientIP("10.1.2.3:80", xff); !got.IsValid() {
			t.Fatal("invalid")
		}
	})
}

func TestIPv6GroupedBySlash64(t *testing.T) {
	cfg := NewConfig()
	cfg.IPMaxConns = 2
	c, _, _ := newTestController(t, cfg)
	// Hosts in one /64 share the cap however many addresses they use.
	for i := range 2 {
		if _, err := c.Admit(mustAddr(t, fmt.Sprintf("2001:db8:1:2::%x", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Admit(mustAddr(t, "2001:db8:1:2:ffff:ffff:ffff:ffff"))
	wantRefusal(t, err, ErrIPConnLimit, http.StatusTooManyRequests, ReasonIPConnLimit)
	// The neighbouring /64 is another client.
	if _, err := c.Admit(mustAddr(t, "2001:db8:1:3::1")); err != nil {
		t.Fatalf("neighbouring /64 refused: %v", err)
	}
	if k := c.Key(mustAddr(t, "2001:db8:1:2:aaaa::1")); k.String() != "2001:db8:1:2::/64" {
		t.Fatalf("Key = %s", k)
	}
	if k := c.Key(mustAddr(t, "::ffff:192.0.2.1")); k.String() != "192.0.2.1/32" {
		t.Fatalf("Key of mapped v4 = %s", k)
	}
}

func TestHandshakeFloodFromOneIP(t *testing.T) {
	cfg := NewConfig()
	c, clock, reg := newTestController(t, cfg)
	attacker, bystander := mustAddr(t, "203.0.113.66"), mustAddr(t, "198.51.100.1")
	admitted, refused := 0, 0
	for range 1000 {
		tk, err := c.Admit(attacker)
		if err != nil {
			wantRefusal(t, err, ErrHandshakeRate, http.StatusTooManyRequests, ReasonHandshakeRate)
			var r *Refusal
			errors.As(err, &r)
			if r.RetryAfter <= 0 || r.RetryAfter > time.Second {
				t.Fatalf("RetryAfter = %v", r.RetryAfter)
			}
			refused++
			continue
		}
		tk.Release()
		admitted++
	}
	if admitted != cfg.IPHandshakeBurst || refused != 1000-admitted {
		t.Fatalf("admitted %d refused %d, want %d admitted", admitted, refused, cfg.IPHandshakeBurst)
	}
	if tk, err := c.Admit(bystander); err != nil {
		t.Fatalf("another address refused during the flood: %v", err)
	} else {
		tk.Release()
	}
	if got := refusedTotal(t, reg, ReasonHandshakeRate); got != float64(refused) {
		t.Fatalf("refused_total = %v, want %d", got, refused)
	}
	clock.Advance(time.Second)
	if _, err := c.Admit(attacker); err != nil {
		t.Fatalf("after a second the bucket refilled: %v", err)
	}
}

func TestConnectionCaps(t *testing.T) {
	t.Run("1000 connections from one IP over the per-IP cap", func(t *testing.T) {
		cfg := NewConfig()
		cfg.IPHandshakesPerSecond, cfg.IPHandshakeBurst = 10_000, 10_000
		c, _, reg := newTestController(t, cfg)
		ip := mustAddr(t, "203.0.113.66")
		var held []*Ticket
		for range 1000 {
			tk, err := c.Admit(ip)
			if err != nil {
				wantRefusal(t, err, ErrIPConnLimit, http.StatusTooManyRequests, ReasonIPConnLimit)
				continue
			}
			held = append(held, tk)
		}
		if len(held) != cfg.IPMaxConns {
			t.Fatalf("held %d, want %d", len(held), cfg.IPMaxConns)
		}
		if got := refusedTotal(t, reg, ReasonIPConnLimit); got != float64(1000-cfg.IPMaxConns) {
			t.Fatalf("refused_total = %v", got)
		}
		if tk, err := c.Admit(mustAddr(t, "198.51.100.1")); err != nil {
			t.Fatalf("another address refused: %v", err)
		} else {
			tk.Release()
		}
		held[0].Release()
		held[0].Release() // idempotent: gives back one slot only
		if _, err := c.Admit(ip); err != nil {
			t.Fatalf("release did not restore capacity: %v", err)
		}
		if _, err := c.Admit(ip); err == nil {
			t.Fatal("a double Release gave back two slots")
		}
	})
	t.Run("per player", func(t *testing.T) {
		cfg := NewConfig()
		cfg.PlayerMaxConns = 2
		c, _, _ := newTestController(t, cfg)
		var tickets []*Ticket
		for i := range 3 {
			tk, err := c.Admit(mustAddr(t, fmt.Sprintf("198.51.100.%d", i+1)))
			if err != nil {
				t.Fatal(err)
			}
			tickets = append(tickets, tk)
		}
		for _, tk := range tickets[:2] {
			if err := tk.BindPlayer("alice"); err != nil {
				t.Fatal(err)
			}
		}
		wantRefusal(t, tickets[2].BindPlayer("alice"), ErrPlayerConnLimit, http.StatusTooManyRequests, ReasonPlayerConnLimit)
		if err := tickets[2].BindPlayer("bob"); err != nil {
			t.Fatalf("bob refused: %v", err)
		}
		tickets[0].Release()
		tk, _ := c.Admit(mustAddr(t, "198.51.100.9"))
		if err := tk.BindPlayer("alice"); err != nil {
			t.Fatalf("release did not restore alice's capacity: %v", err)
		}
	})
	t.Run("global cap answers 503", func(t *testing.T) {
		cfg := NewConfig()
		cfg.MaxConns = 5
		c, _, reg := newTestController(t, cfg)
		var held []*Ticket
		for i := range 5 {
			tk, err := c.Admit(mustAddr(t, fmt.Sprintf("198.51.100.%d", i+1)))
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, tk)
		}
		_, err := c.Admit(mustAddr(t, "198.51.100.200"))
		wantRefusal(t, err, ErrGlobalConnLimit, http.StatusServiceUnavailable, ReasonGlobalConnLimit)
		if refusedTotal(t, reg, ReasonGlobalConnLimit) != 1 {
			t.Fatal("metric")
		}
		held[3].Release()
		if _, err := c.Admit(mustAddr(t, "198.51.100.200")); err != nil {
			t.Fatalf("release did not restore global capacity: %v", err)
		}
		if c.Connections() != 5 {
			t.Fatalf("Connections = %d", c.Connections())
		}
	})
	t.Run("invalid address", func(t *testing.T) {
		c, _, _ := newTestController(t, NewConfig())
		_, err := c.Admit(netip.Addr{})
		wantRefusal(t, err, ErrBadAddress, http.StatusForbidden, ReasonBadAddress)
	})
}

func TestTrackedIPsBounded(t *testing.T) {
	cfg := NewConfig()
	cfg.MaxTrackedIPs = 100
	c, clock, _ := newTestController(t, cfg)
	// One open connection per key plus a spray of one-shot addresses from
	// across IPv6 space: idle keys stay capped, open ones are kept.
	held, err := c.Admit(mustAddr(t, "198.51.100.1"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10_000 {
		tk, err := c.Admit(mustAddr(t, fmt.Sprintf("2001:db8:%x:%x::1", i>>16, i&0xffff)))
		if err != nil {
			t.Fatal(err)
		}
		tk.Release()
		if n := c.TrackedIPs(); n > cfg.MaxTrackedIPs+1 {
			t.Fatalf("tracked %d keys", n)
		}
	}
	clock.Advance(cfg.IPIdleTTL)
	if n := c.Sweep(); n != cfg.MaxTrackedIPs {
		t.Fatalf("Sweep = %d", n)
	}
	if c.TrackedIPs() != 1 {
		t.Fatalf("the key with an open connection was evicted")
	}
	held.Release()
}

func TestConcurrentAdmitRelease(t *testing.T) {
	cfg := NewConfig()
	cfg.IPHandshakesPerSecond, cfg.IPHandshakeBurst = 1e6, 1_000_000
	cfg.MaxConns = 50
	cfg.IPMaxConns = 20
	cfg.PlayerMaxConns = 5
	c, _, _ := newTestController(t, cfg)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 500 {
				tk, err := c.Admit(mustAddr(t, fmt.Sprintf("198.51.100.%d", (g+i)%4)))
				if err != nil {
					continue
				}
				_ = tk.BindPlayer(fmt.Sprintf("p%d", i%7))
				if n := c.Connections(); n > cfg.MaxConns {
					t.Errorf("Connections %d > %d", n, cfg.MaxConns)
				}
				go tk.Release() // released from another goroutine, as on close
				tk.Release()
			}
		})
	}
	wg.Wait()
	checkFor(t, time.Second, func() bool { return c.Connections() == 0 })
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.players) != 0 {
		t.Fatalf("player counts leaked: %v", c.players)
	}
}

// checkFor polls cond until it holds or the deadline passes.
func checkFor(tb testing.TB, total time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(total)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatal("condition not met in time")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name    string
		mutate  func(*Config)
		wantKey string
	}{
		{"defaults", func(c *Config) {}, ""},
		{"origin without scheme", func(c *Config) { c.CheckOrigin = []string{"app.example.com"} }, "check_origin[0]"},
		{"origin with path", func(c *Config) { c.CheckOrigin = []string{"https://a.example.com", "https://b.example.com/x"} }, "check_origin[1]"},
		{"bare star", func(c *Config) { c.CheckOrigin = []string{"https://*"} }, "check_origin[0]"},
		{"inner star", func(c *Config) { c.CheckOrigin = []string{"https://a.*.com"} }, "check_origin[0]"},
		{"bad proxy", func(c *Config) { c.TrustedProxies = []string{"10.0.0.0/33"} }, "trusted_proxies[0]"},
		{"zero handshake rate", func(c *Config) { c.IPHandshakesPerSecond = 0 }, "limits.ip_handshakes_per_second"},
		{"zero burst", func(c *Config) { c.IPHandshakeBurst = 0 }, "limits.ip_handshake_burst"},
		{"zero per-IP is not unlimited", func(c *Config) { c.IPMaxConns = 0 }, "limits.ip_max_conns"},
		{"zero handshakes in progress", func(c *Config) { c.IPMaxHandshakes = 0 }, "limits.ip_max_handshakes"},
		{"zero per-player", func(c *Config) { c.PlayerMaxConns = 0 }, "limits.player_max_conns"},
		{"zero global", func(c *Config) { c.MaxConns = 0 }, "limits.max_conns"},
		{"zero tracked", func(c *Config) { c.MaxTrackedIPs = 0 }, "limits.max_tracked_ips"},
		{"zero idle ttl", func(c *Config) { c.IPIdleTTL = 0 }, "limits.ip_idle_ttl"},
		{"idle ttl past a day", func(c *Config) { c.IPIdleTTL = 25 * time.Hour }, "limits.ip_idle_ttl"},
		{"refill past a day", func(c *Config) { c.IPHandshakesPerSecond = 0.0001 }, "limits.ip_handshake_burst"},
		{"v6 prefix 0", func(c *Config) { c.IPv6PrefixBits = 0 }, "limits.ipv6_prefix_bits"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := NewConfig()
			tc.mutate(&c)
			err := c.Validate()
			if tc.wantKey == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.wantKey+":") {
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.wantKey)
			}
		})
	}
}

// TestRealSocketPeer feeds ClientIP the RemoteAddr string of a real loopback
// connection, the form the gateway will pass.
func TestRealSocketPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// The kernel completes the handshake from the backlog, so Dial returns
	// before Accept.
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, _, _ := newTestController(t, NewConfig())
	if got := c.ClientIP(conn.RemoteAddr().String(), "6.6.6.6"); got.String() != "127.0.0.1" {
		t.Fatalf("ClientIP = %s", got)
	}
}
