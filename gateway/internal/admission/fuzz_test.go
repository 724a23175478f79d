package admission

import (
	"strings"
	"testing"
)

// FuzzOrigin: any Origin header must be answered without panicking, and an
// allowed origin must really end in an allowed host.
func FuzzOrigin(f *testing.F) {
	for _, s := range []string{"https://app.example.com", "null", "https://app.example.com.evil.com",
		"https://x.games.example.com:443", "http://[::1]:4000", "https://a@b", "https://%41", ""} {
		f.Add(s)
	}
	cfg := NewConfig()
	cfg.CheckOrigin = []string{"https://app.example.com", "https://*.games.example.com"}
	c, _, _ := newTestController(f, cfg)
	f.Fuzz(func(t *testing.T, origin string) {
		if !c.OriginAllowed(origin) || origin == "" {
			return
		}
		o, err := parseOrigin(origin, false)
		if err != nil {
			t.Fatalf("allowed unparsable %q", origin)
		}
		if o.scheme != "https" || o.port != "443" ||
			(o.host != "app.example.com" && !strings.HasSuffix(o.host, ".games.example.com")) {
			t.Fatalf("allowed %q (%+v)", origin, o)
		}
	})
}

// FuzzClientIP: X-Forwarded-For is attacker-written.
func FuzzClientIP(f *testing.F) {
	f.Add("10.0.0.1:80", "1.2.3.4, 10.0.0.2")
	f.Add("203.0.113.1:1", "garbage")
	f.Add("[2001:db8::1]:1", "[::1]:5,,")
	cfg := NewConfig()
	cfg.TrustedProxies = []string{"10.0.0.0/8"}
	c, _, _ := newTestController(f, cfg)
	f.Fuzz(func(t *testing.T, remote, xff string) {
		got := c.ClientIP(remote, xff)
		peer := c.ClientIP(remote, "")
		if !c.trusted(peer) && got != peer {
			t.Fatalf("untrusted peer %v, XFF %q believed: %v", peer, xff, got)
		}
	})
}
