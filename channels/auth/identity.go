package auth

import (
	"strings"
	"time"
)

// Identity is what a verified token says about a player. It is immutable.
type Identity struct {
	// PlayerID is the token's sub: the key for rate limits, connection
	// caps and presence.
	PlayerID string
	// Expires is the token's exp; the socket is closed (1008) when it passes.
	Expires time.Time
	// Topics are the patterns the player may join (a trailing `*` matches
	// any suffix). nil means unrestricted (no topics claim); an empty,
	// non-nil slice means the player may join nothing.
	Topics []string
	// Raw is the verified claims JSON, for the backend. Treat as read-only.
	Raw []byte
}

// MayJoin reports whether the topics claim allows joining topic.
func (id *Identity) MayJoin(topic string) bool {
	if id.Topics == nil {
		return true
	}
	for _, p := range id.Topics {
		if topicMatch(p, topic) {
			return true
		}
	}
	return false
}

// topicMatch matches one pattern: exact, or a prefix when it ends in `*`.
// Only a trailing `*` is special, so "room:*:x" is a literal.
func topicMatch(pattern, topic string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(topic, prefix)
	}
	return pattern == topic
}
