package gateway

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"unsafe"

	"github.com/phxgate/phxgate/channels"
	"github.com/prometheus/client_golang/prometheus"
)

// Anonymous sockets from one address share one rate-key string: each
// socket holds the key for its lifetime, so a copy per socket would be
// memory per connection.
func TestAnonRateKeyIsSharedPerAddress(t *testing.T) {
	g, err := newGuard(testConfig(), prometheus.NewRegistry(), discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	admit := func(remote string) string {
		t.Helper()
		r := &Request{RemoteAddr: remote, Info: channels.ConnectInfo{Params: []byte(`{}`)}}
		status, rel := g.admit(r)
		if status != 0 || rel == nil {
			t.Fatalf("admit(%s) = %d, %v", remote, status, rel)
		}
		t.Cleanup(rel.Release)
		return r.Info.RateKey
	}
	a, b, other := admit("203.0.113.7"), admit("203.0.113.7"), admit("198.51.100.1")
	if a != "ip:203.0.113.7/32" || other != "ip:198.51.100.1/32" {
		t.Fatalf("keys %q, %q", a, other)
	}
	if unsafe.StringData(a) != unsafe.StringData(b) {
		t.Fatal("two sockets from one address hold two copies of the rate key")
	}
}

// The interned keys stay bounded: a generation holds at most maxAnonKeys,
// and keys unused for two rotations are forgotten.
func TestAnonKeysBounded(t *testing.T) {
	var k anonKeys
	prefix := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
	}
	for i := range maxAnonKeys + 100 {
		if got, want := k.get(prefix(i)), fmt.Sprintf("ip:%s", prefix(i)); got != want {
			t.Fatalf("key %q, want %q", got, want)
		}
	}
	if len(k.cur) != maxAnonKeys {
		t.Fatalf("%d keys interned, want the bound %d", len(k.cur), maxAnonKeys)
	}
	first := k.get(prefix(0))
	k.rotate()
	if kept := k.get(prefix(0)); unsafe.StringData(kept) != unsafe.StringData(first) {
		t.Fatal("a key used in the last generation was not kept")
	}
	k.rotate()
	k.rotate()
	if len(k.cur) != 0 || len(k.prev) != 0 {
		t.Fatalf("idle keys not forgotten: %d + %d", len(k.cur), len(k.prev))
	}

	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				k.get(prefix(i % 50))
				if i%100 == w {
					k.rotate()
				}
			}
		}()
	}
	wg.Wait()
}
