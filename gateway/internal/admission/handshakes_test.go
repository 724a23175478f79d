package admission

import (
	"errors"
	"net/http"
	"net/netip"
	"sync"
	"testing"
)

func TestBeginHandshakeCapsOnePeer(t *testing.T) {
	cfg := NewConfig()
	cfg.IPMaxHandshakes = 3
	c, _, reg := newTestController(t, cfg)
	attacker := mustAddr(t, "203.0.113.66")
	var releases []func()
	for range 3 {
		release, err := c.BeginHandshake(attacker)
		if err != nil {
			t.Fatalf("handshake under the cap refused: %v", err)
		}
		releases = append(releases, release)
	}
	_, err := c.BeginHandshake(attacker)
	wantRefusal(t, err, ErrIPHandshakes, http.StatusTooManyRequests, ReasonIPHandshakes)
	if got := refusedTotal(t, reg, ReasonIPHandshakes); got != 1 {
		t.Fatalf("refused_total = %v, want 1", got)
	}
	// Another address is not affected, and the refused attempt took nothing.
	other, err := c.BeginHandshake(mustAddr(t, "198.51.100.1"))
	if err != nil {
		t.Fatalf("another address refused: %v", err)
	}
	if got := c.Handshakes(attacker); got != 3 {
		t.Fatalf("Handshakes = %d, want 3", got)
	}
	// Ending one handshake (twice: release is idempotent) frees one slot.
	releases[0]()
	releases[0]()
	if got := c.Handshakes(attacker); got != 2 {
		t.Fatalf("after a release Handshakes = %d, want 2", got)
	}
	release, err := c.BeginHandshake(attacker)
	if err != nil {
		t.Fatalf("slot not given back: %v", err)
	}
	release()
	for _, r := range releases[1:] {
		r()
	}
	other()
	// No entry outlives its last handshake: memory is bounded by the
	// handshakes in progress.
	c.mu.Lock()
	n := len(c.pending)
	c.mu.Unlock()
	if n != 0 || c.Handshakes(netip.Addr{}) != 0 {
		t.Fatalf("%d pending entries left, want 0", n)
	}
}

func TestBeginHandshakeKeys(t *testing.T) {
	cfg := NewConfig()
	cfg.IPMaxHandshakes = 1
	cfg.TrustedProxies = []string{"10.0.0.0/8"}
	c, _, _ := newTestController(t, cfg)

	// One IPv6 /64 is one peer; the next /64 is another.
	r1, err := c.BeginHandshake(mustAddr(t, "2001:db8:1:2::1"))
	if err != nil {
		t.Fatal(err)
	}
	defer r1()
	_, err = c.BeginHandshake(mustAddr(t, "2001:db8:1:2:ffff::9"))
	if !errors.Is(err, ErrIPHandshakes) {
		t.Fatalf("same /64: err = %v, want ErrIPHandshakes", err)
	}
	r2, err := c.BeginHandshake(mustAddr(t, "2001:db8:1:3::1"))
	if err != nil {
		t.Fatalf("another /64 refused: %v", err)
	}
	defer r2()

	// An IPv4-mapped IPv6 peer is its IPv4 address.
	r3, err := c.BeginHandshake(mustAddr(t, "192.0.2.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer r3()
	if _, err := c.BeginHandshake(mustAddr(t, "::ffff:192.0.2.1")); !errors.Is(err, ErrIPHandshakes) {
		t.Fatalf("mapped v4: err = %v, want ErrIPHandshakes", err)
	}

	// A trusted proxy carries many clients: never counted here.
	proxy := mustAddr(t, "10.1.2.3")
	for range 100 {
		r, err := c.BeginHandshake(proxy)
		if err != nil {
			t.Fatalf("trusted proxy refused: %v", err)
		}
		defer r()
	}
	if got := c.Handshakes(proxy); got != 0 {
		t.Fatalf("trusted proxy counted: %d", got)
	}
}

// TestBeginHandshakeConcurrent runs begin/release from many goroutines
// (under -race) and checks that the cap holds at every moment and that
// every entry is gone at the end.
func TestBeginHandshakeConcurrent(t *testing.T) {
	cfg := NewConfig()
	cfg.IPMaxHandshakes = 4
	c, _, _ := newTestController(t, cfg)
	ips := []netip.Addr{mustAddr(t, "203.0.113.1"), mustAddr(t, "203.0.113.2"), mustAddr(t, "2001:db8::1")}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		held     = map[string]int{}
		overflow bool
	)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := ips[g%len(ips)]
			for range 500 {
				release, err := c.BeginHandshake(ip)
				if err != nil {
					continue
				}
				mu.Lock()
				held[ip.String()]++
				if held[ip.String()] > cfg.IPMaxHandshakes {
					overflow = true
				}
				mu.Unlock()
				mu.Lock()
				held[ip.String()]--
				mu.Unlock()
				release()
			}
		}()
	}
	wg.Wait()
	if overflow {
		t.Fatal("more handshakes in progress than the cap")
	}
	if n := c.Handshakes(netip.Addr{}); n != 0 {
		t.Fatalf("%d handshakes left after every release", n)
	}
}
