package game

import (
	"container/list"
	"strconv"
	"time"
)

// answer is a reply as the client first got it: replaying it returns the
// very same bytes.
type answer struct {
	status string
	body   []byte
}

// keyCache remembers the answers of idempotency keys for at most ttl and
// at most max keys, forgetting the oldest first. Keys are kept in the
// order they were stored, which is also their age order, so expiry and
// the cap both pop from the front: O(1) per call, amortised.
//
// Not goroutine-safe; its owner locks.
type keyCache struct {
	ttl time.Duration
	max int

	byKey map[string]*list.Element // of *keyEntry
	order list.List                // oldest first

	// evictedEarly counts keys forgotten by the cap before their ttl: a
	// retry of one of them would be applied again.
	evictedEarly uint64
}

type keyEntry struct {
	key string
	at  time.Time
	ans answer
}

func newKeyCache(ttl time.Duration, max int) *keyCache {
	return &keyCache{ttl: ttl, max: max, byKey: make(map[string]*list.Element)}
}

// get returns the answer stored for key, if it is still remembered at now.
func (c *keyCache) get(key string, now time.Time) (answer, bool) {
	c.expire(now)
	e, ok := c.byKey[key]
	if !ok {
		return answer{}, false
	}
	return e.Value.(*keyEntry).ans, true
}

// put stores key's answer at now. A key already stored keeps its first
// answer.
func (c *keyCache) put(key string, a answer, now time.Time) {
	c.expire(now)
	if _, ok := c.byKey[key]; ok {
		return
	}
	for len(c.byKey) >= c.max {
		c.evictedEarly++
		c.removeFront()
	}
	c.byKey[key] = c.order.PushBack(&keyEntry{key: key, at: now, ans: a})
}

// expire forgets the keys stored ttl or more before now.
func (c *keyCache) expire(now time.Time) {
	for f := c.order.Front(); f != nil; f = c.order.Front() {
		if now.Sub(f.Value.(*keyEntry).at) < c.ttl {
			return
		}
		c.removeFront()
	}
}

func (c *keyCache) removeFront() {
	f := c.order.Front()
	delete(c.byKey, f.Value.(*keyEntry).key)
	c.order.Remove(f)
}

func (c *keyCache) len() int { return len(c.byKey) }

// scopeKey returns key inside the scope of parts (a player, a topic…),
// so a key borrowed from another player or table is a different key
// there. Every string is length-prefixed: the result decodes back to one
// sequence only, so two different scopes or keys never collide.
func scopeKey(key string, parts ...string) string {
	n := len(key) + 8
	for _, p := range parts {
		n += len(p) + 8
	}
	b := make([]byte, 0, n)
	for _, p := range parts {
		b = appendPart(b, p)
	}
	return string(appendPart(b, key))
}

func appendPart(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}
