package game

import (
	"fmt"
	"testing"
	"time"
)

func TestKeyCache(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	a := func(s string) answer { return answer{status: StatusOK, body: []byte(s)} }

	t.Run("ttl", func(t *testing.T) {
		c := newKeyCache(time.Minute, 10)
		c.put("k", a("1"), t0)
		if got, ok := c.get("k", t0.Add(time.Minute-1)); !ok || string(got.body) != "1" {
			t.Fatalf("get before the ttl = %v %v", got, ok)
		}
		if _, ok := c.get("k", t0.Add(time.Minute)); ok {
			t.Fatal("key kept past its ttl")
		}
		if c.len() != 0 || c.evictedEarly != 0 {
			t.Fatalf("len %d evictedEarly %d, want 0 0", c.len(), c.evictedEarly)
		}
	})
	t.Run("first answer wins", func(t *testing.T) {
		c := newKeyCache(time.Minute, 10)
		c.put("k", a("first"), t0)
		c.put("k", a("second"), t0.Add(time.Second))
		if got, _ := c.get("k", t0.Add(time.Second)); string(got.body) != "first" {
			t.Fatalf("answer %s, want first", got.body)
		}
	})
	t.Run("cap evicts oldest first", func(t *testing.T) {
		c := newKeyCache(time.Hour, 3)
		for i := range 5 {
			c.put(fmt.Sprint(i), a(fmt.Sprint(i)), t0.Add(time.Duration(i)*time.Second))
		}
		if c.len() != 3 || c.evictedEarly != 2 {
			t.Fatalf("len %d evictedEarly %d, want 3 2", c.len(), c.evictedEarly)
		}
		for i, want := range []bool{false, false, true, true, true} {
			if _, ok := c.get(fmt.Sprint(i), t0.Add(5*time.Second)); ok != want {
				t.Fatalf("key %d remembered %v, want %v", i, ok, want)
			}
		}
	})
	t.Run("expired keys go before the cap bites", func(t *testing.T) {
		c := newKeyCache(time.Minute, 2)
		c.put("old1", a("x"), t0)
		c.put("old2", a("x"), t0)
		c.put("new", a("x"), t0.Add(time.Minute))
		if c.len() != 1 || c.evictedEarly != 0 {
			t.Fatalf("len %d evictedEarly %d, want 1 0", c.len(), c.evictedEarly)
		}
	})
	t.Run("memory stays at the cap", func(t *testing.T) {
		c := newKeyCache(time.Hour, 1000)
		for i := range 100_000 {
			c.put(fmt.Sprint(i), a("x"), t0)
		}
		if c.len() != 1000 || c.order.Len() != 1000 {
			t.Fatalf("len %d, list %d, want 1000", c.len(), c.order.Len())
		}
	})
}

func TestScopeKey(t *testing.T) {
	// Length prefixes keep scopes apart even when the parts' bytes
	// concatenate the same way.
	pairs := [][2]string{
		{scopeKey("k", "ab", "c"), scopeKey("k", "a", "bc")},
		{scopeKey("1:xk", "a"), scopeKey("k", "a", "x")},
		{scopeKey("k", "alice"), scopeKey("k", "bob")},
		{scopeKey("k", "join", "table:1", "alice"), scopeKey("k", "leave", "table:1", "alice")},
	}
	for _, p := range pairs {
		if p[0] == p[1] {
			t.Fatalf("two scopes give %q", p[0])
		}
	}
}
