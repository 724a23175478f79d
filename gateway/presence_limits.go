package gateway

import (
	"github.com/phxgate/phxgate/presence"
)

// presenceDiffBytes is the largest presence_diff a node publishes for
// a socket write queue of writeQueue bytes: an eighth of it, at most
// presence.DefaultMaxDiffBytes. A larger batch goes out as several diffs,
// so a herd's diff never fills a subscriber's queue (1013).
func presenceDiffBytes(writeQueue int) int {
	return max(1, min(presence.DefaultMaxDiffBytes, writeQueue/8))
}

// validatePresenceSize checks, when a route tracks presence, that a topic
// full to presence.max_per_topic with metas of presence.max_meta_bytes
// makes a presence_state a channel can be sent (half of
// write_queue_max_bytes): otherwise such a room could not be joined.
func (c Config) validatePresenceSize() error {
	on := false
	for _, r := range c.Routes {
		on = on || r.Presence
	}
	if !on {
		return nil
	}
	state, bound := c.Presence.MaxStateBytes(), c.WriteQueueMaxBytes/2
	if state <= bound {
		return nil
	}
	p := c.Presence.WithDefaults()
	return keyErr("presence.max_per_topic", "%d presences × (presence.max_meta_bytes %d + %d) = %d bytes of presence_state, over half of write_queue_max_bytes (%d): a full room could not be joined; lower presence.max_per_topic or presence.max_meta_bytes, or raise write_queue_max_bytes",
		p.MaxPerTopic, p.MaxMetaBytes, presence.StateOverheadBytes, state, bound)
}
