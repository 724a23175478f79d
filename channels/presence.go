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
	// TrackPresence makes key present on topic under tag with meta (a
	// JSON object) and returns the presence as a presence_state lists
	// it (meta with its phx_ref). A refusal (presence.ErrRefused) is the
	// tracker's to count; the join stands.
	TrackPresence(ctx context.Context, topic, tag, key string, meta []byte) (presence.Presence, error)
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
// join and rejoin, in pieces when it is large (presence_stream.go). An
// anonymous channel is not tracked but gets the state. It reports false
// when the state could not be read, or could not be sent for the node's
// budget of states being streamed, or the presence could not be stored
// (not a refusal): phoenix.js would hold every later diff until a state
// came, and a player joined but absent would stay so, so the caller ends
// the channel with phx_error and the client rejoins.
//
// The state is read once, before tracking, so that a state the budget
// cannot take is refused before the presence is tracked (tracking then
// untracking would broadcast a join and a leave at every rejoin
// attempt); the joiner's own presence, tracked after the read, is added
// to it (phoenix.js expects to see itself).
//
// A state sent in pieces must not be older than a presence_diff the
// channel was sent before it: phoenix.js applies such a diff after the
// first piece, so a leave in it would be undone by a later piece. So it
// is queued under the topic's delivery lock, and only if no
// presence_diff was delivered since before the read (as a refresh is);
// otherwise it is read again. Diffs delivered after it follow its last
// piece on the socket. A state sent whole needs none of this: phoenix.js
// applies the diffs it held after the whole state, ending with the same
// list.
func (c *channel) trackPresence(rep *backends.Reply, taken *seat) bool {
	s := c.sock
	srv := s.srv
	p := srv.cfg.Presence
	if p == nil || !c.route.Presence {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.CallTimeout)
	defer cancel()
	key, seated := c.seatKey()
	track := false
	if seated {
		if taken != nil && taken.presenceTag != "" {
			r := c.side()
			r.presenceTag, taken.presenceTag = taken.presenceTag, ""
		} else {
			track = true
		}
	}
	meta := rep.PresenceMeta
	if len(meta) == 0 {
		meta = emptyObject
	}
	th := c.th
	th.seqMu.Lock()
	seen := th.presenceDiffs
	th.seqMu.Unlock()
	state, err := p.State(ctx, c.topic)
	if err != nil {
		return false
	}
	size := int64(len(state))
	if track {
		size += int64(len(meta)+len(key.player)) + presence.StateOverheadBytes
	}
	var reserved int64
	if size > int64(srv.cfg.PresencePieceBytes) {
		if !c.reserveState(ctx, size, track) {
			return false
		}
		reserved = size
	}
	if track {
		tag := c.presenceTag(c.wGen)
		own, err := p.TrackPresence(ctx, c.topic, tag, key.player, meta)
		switch {
		case err == nil:
			c.side().presenceTag = tag
			state = withOwnMeta(state, own.Key, own.Meta)
		case !errors.Is(err, presence.ErrRefused):
			// Not stored, and nothing would repair it: the client
			// rejoins instead.
			srv.stateBudget.release(reserved)
			return false
		}
	}
	snap := newSnapshot(splitState(state, srv.cfg.PresencePieceBytes), srv.stateBudget, reserved)
	defer func() { snap.done() }()
	for attempt := 1; ; attempt++ {
		if !snap.streamed() {
			s.sendState(snap, c.wJoinRef, c.topic)
			return true
		}
		th.seqMu.Lock()
		if th.presenceDiffs == seen {
			s.sendState(snap, c.wJoinRef, c.topic)
			th.seqMu.Unlock()
			return true
		}
		// A diff came while reading (and, the first time, tracking): read
		// again, after refreshOptimistic tries under the lock.
		locked := attempt >= refreshOptimistic
		seen = th.presenceDiffs
		if !locked {
			th.seqMu.Unlock()
		}
		state, err := p.State(ctx, c.topic)
		if err != nil {
			if locked {
				th.seqMu.Unlock()
			}
			return false
		}
		next := newSnapshot(splitState(state, srv.cfg.PresencePieceBytes), srv.stateBudget, 0)
		snap.done()
		snap = next
		if locked {
			s.sendState(snap, c.wJoinRef, c.topic)
			th.seqMu.Unlock()
			return true
		}
	}
}

// reserveState takes size bytes of the node's budget for states being
// streamed, waiting up to Config.PresenceStreamWait. When it cannot, the
// presence about to be tracked (track) is refused and counted:
// state_too_large for a state larger than the whole budget,
// stream_budget otherwise.
func (c *channel) reserveState(ctx context.Context, size int64, track bool) bool {
	srv := c.sock.srv
	wctx, cancel := context.WithTimeout(ctx, srv.cfg.PresenceStreamWait)
	defer cancel()
	if srv.stateBudget.acquire(wctx, size) {
		return true
	}
	reason := presence.ReasonStreamBudget
	if size > srv.cfg.PresenceStreamBytes {
		reason = presence.ReasonStateTooLarge
	}
	if rf, ok := srv.cfg.Presence.(presenceRefuser); ok && track {
		_ = rf.Refuse(c.topic, reason)
	}
	srv.m.presenceTooLarge.Inc()
	return false
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
