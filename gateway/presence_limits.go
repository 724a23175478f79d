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

// presenceSizeWarning is the warning logged at start when a route tracks
// presence and a topic full to presence.max_per_topic with metas of
// presence.max_meta_bytes would make a presence_state larger than the
// node's whole budget for states sent in pieces
// (channels.presence_stream_bytes): such a room cannot be joined past
// that size. It is a warning, not a refusal to start (the bounds are
// worst cases, and a start refused on upgrade would lose every
// presence): a join past it is refused at run time (state_too_large,
// counted and logged). "" when the bounds fit.
func (c Config) presenceSizeWarning() (msg string, attrs []any) {
	on := false
	for _, r := range c.Routes {
		on = on || r.Presence
	}
	if !on {
		return "", nil
	}
	state, bound := int64(c.Presence.MaxStateBytes()), c.Channels.PresenceStreamBytes
	if state <= bound {
		return "", nil
	}
	p := c.Presence.WithDefaults()
	return "presence: a room full to presence.max_per_topic with metas of presence.max_meta_bytes makes a presence_state over channels.presence_stream_bytes; joins past that size are refused (state_too_large); lower presence.max_per_topic or presence.max_meta_bytes, or raise channels.presence_stream_bytes, to make every room joinable",
		[]any{"presence.max_per_topic", p.MaxPerTopic, "presence.max_meta_bytes", p.MaxMetaBytes, "state_bytes", state, "channels.presence_stream_bytes", bound}
}
