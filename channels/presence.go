package channels

import (
	"context"
	"errors"
	"strconv"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/presence"
)

// PresenceTracker is the presence port; *presence.Tracker implements it.
// Track and Untrack may block on a store (bounded by the tracker's own
// timeout), so they are only called on workers and seat senders.
type PresenceTracker interface {
	// Track makes key present on topic under tag with meta (a JSON
	// object). A refusal is the tracker's to count; the join stands.
	Track(ctx context.Context, topic, tag, key string, meta []byte) error
	// Untrack removes tag's presence from topic.
	Untrack(ctx context.Context, topic, tag string)
	// State returns topic's presence_state payload.
	State(ctx context.Context, topic string) ([]byte, error)
}

// PresenceControl is implemented by a tracker whose nodes send each other
// control events through the topics (*presence.Tracker): events named
// ControlEvent() are handed to HandleControl, on the topic's delivery
// path, and never delivered to clients.
type PresenceControl interface {
	ControlEvent() string
	HandleControl(topic string, payload []byte)
}

// presenceTag names c's presence on this node's tracker: unique per boot,
// connection and incarnation.
func (c *channel) presenceTag(gen uint32) string {
	s := c.sock
	b := make([]byte, 0, len(s.srv.instance)+24)
	b = append(b, s.srv.instance...)
	b = append(b, ':')
	b = strconv.AppendUint(b, s.conn.ID(), 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, uint64(gen), 10)
	return string(b)
}

// presenceRefuser is implemented by a tracker that counts presences its
// caller refuses (*presence.Tracker: phxgate_presence_refused_total).
type presenceRefuser interface {
	Refuse(topic, reason string) error
}

// trackPresence runs after a join succeeded on a route with presence:
// the player becomes present (or keeps the presence of the seat its
// rejoin took, so a quick reconnect makes no leave/join pair), then the
// channel gets the topic's presence_state, as phoenix.js needs after every
// join and rejoin. An anonymous channel is not tracked but gets the state.
// It reports false when the state could not be read, or is larger than
// Config.PresenceStateBytes, or the presence could not be stored (not a
// refusal): phoenix.js would hold every later diff until a state came, and
// a player joined but absent would stay so, so the caller ends the channel
// with phx_error and the client rejoins.
//
// The state's size is checked before tracking: over the bound, the
// presence is refused (presence.ReasonStateTooLarge) rather than tracked
// then untracked, which would broadcast a join and a leave at every
// rejoin attempt.
func (c *channel) trackPresence(rep *backends.Reply, taken *seat) bool {
	s := c.sock
	p := s.srv.cfg.Presence
	if p == nil || !c.route.Presence {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.CallTimeout)
	defer cancel()
	tooLarge := func(state []byte) bool {
		if len(state) <= s.srv.cfg.PresenceStateBytes {
			return false
		}
		// Sent, it would overflow the socket's write queue and close
		// the socket (with its other channels), at every join. The
		// channel ends instead; the client rejoins with its backoff.
		s.srv.m.presenceTooLarge.Inc()
		return true
	}
	if key, ok := c.seatKey(); ok {
		r := c.side()
		switch {
		case taken != nil && taken.presenceTag != "":
			r.presenceTag, taken.presenceTag = taken.presenceTag, ""
		default:
			tag := c.presenceTag(c.wGen)
			meta := rep.PresenceMeta
			if len(meta) == 0 {
				meta = emptyObject
			}
			state, err := p.State(ctx, c.topic)
			if err != nil {
				return false
			}
			if len(state)+len(meta)+len(key.player)+64 > s.srv.cfg.PresenceStateBytes {
				if rf, ok := p.(presenceRefuser); ok {
					_ = rf.Refuse(c.topic, presence.ReasonStateTooLarge)
				}
				s.srv.m.presenceTooLarge.Inc()
				return false
			}
			err = p.Track(ctx, c.topic, tag, key.player, meta)
			switch {
			case err == nil:
				r.presenceTag = tag
			case !errors.Is(err, presence.ErrRefused):
				// Not stored, and nothing would repair it: the client
				// rejoins instead.
				return false
			}
		}
	}
	state, err := p.State(ctx, c.topic)
	if err != nil || tooLarge(state) {
		return false
	}
	s.sendOrDrop(encodeMessage(s.ser, c.wJoinRef, "null", c.topic, "presence_state", backends.Payload{Data: state}))
	return true
}

// untrackPresence removes c's presence, if it has one.
func (c *channel) untrackPresence() {
	r := c.rare.Load()
	if r == nil || r.presenceTag == "" {
		return
	}
	tag := r.presenceTag
	r.presenceTag = ""
	srv := c.sock.srv
	ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.CallTimeout)
	defer cancel()
	srv.cfg.Presence.Untrack(ctx, c.topic, tag)
}
