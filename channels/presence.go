package channels

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"time"

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
// A state must not be older than a state or diff the channel was sent
// before it, and it is queued under the topic's delivery lock (seqMu) to
// make that checkable, but it is never read under that lock: Deliver takes
// seqMu, and with Redis it runs on the reader goroutine of a pub/sub
// shard, so a read under it would hold up every topic of the shard for as
// long as a whole-room read takes. Instead the state is read off the lock
// and queued only if, meanwhile (seqMu is taken before the read and again
// to queue):
//   - no refresh queued its state (th.presenceStates): a refresh's state
//     may be newer than ours, and ours would replace it;
//   - for a state in pieces, no presence_diff was delivered
//     (th.presenceDiffs): phoenix.js applies a diff queued before the
//     state after its first piece, so a leave in it would be undone by a
//     later piece. A state sent whole needs no such check: phoenix.js
//     applies the diffs it held after the whole state, ending with the
//     same list.
//
// Everything delivered after the state is queued follows it (its last
// piece) on the socket, and the state is newer than everything delivered
// before it, so the client's list ends right. Otherwise the state is read
// again, after a short backoff (a busy room's diffs come once per
// presence window), up to stateAttempts reads; past them the join ends
// with phx_error (phxgate_presence_state_overtaken_total) and the client
// rejoins with its own backoff.
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
	seen := th.presenceMark()
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
		th.seqMu.Lock()
		if th.presenceStates == seen.states && (!snap.streamed() || th.presenceDiffs == seen.diffs) {
			s.sendState(snap, c, c.wGen, c.wJoinRef)
			th.seqMu.Unlock()
			return true
		}
		th.seqMu.Unlock()
		if attempt >= stateAttempts {
			srv.m.presenceBusy.Inc()
			return false
		}
		if !sleepCtx(ctx, srv.quit, stateBackoff(attempt)) {
			return false
		}
		// The joiner is tracked by now (or refused): the state read again
		// lists it as it is.
		seen = th.presenceMark()
		state, err := p.State(ctx, c.topic)
		if err != nil {
			return false
		}
		// The bytes the last read holds pass to this one, which takes
		// what it needs more within the budget (waiting, as the first
		// read did), so a join in progress keeps its place and a re-read
		// never overdraws the budget.
		pieces := splitState(state, srv.cfg.PresencePieceBytes)
		need, have := piecesBytes(pieces), snap.bytes
		if need > have && !c.reserveState(ctx, need-have, false) {
			return false
		}
		snap.bytes = 0 // not shared: it was never sent
		snap.done()
		snap = newSnapshot(pieces, srv.stateBudget, max(need, have))
	}
}

// stateAttempts is how many times a join reads its topic's presence_state
// before it gives up on a room too busy to read (see trackPresence), and
// a refresh before it puts itself off (refreshPresence).
const stateAttempts = 6

// stateBackoffMin and stateBackoffMax bound the wait before reading a
// presence_state again: doubled from the min at each attempt, with jitter
// so that the joins of one room spread out.
const (
	stateBackoffMin = 10 * time.Millisecond
	stateBackoffMax = 250 * time.Millisecond
)

// stateBackoff is the wait after the attempt-th read was overtaken: half
// fixed, half random, the whole doubling from stateBackoffMin up to
// stateBackoffMax.
func stateBackoff(attempt int) time.Duration {
	d := stateBackoffMin << min(attempt-1, 16)
	d = min(d, stateBackoffMax)
	return d/2 + rand.N(d/2+1)
}

// sleepCtx waits d, and reports false if ctx ended or quit was closed
// first.
func sleepCtx(ctx context.Context, quit <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-quit:
		return false
	}
}

// presenceMark is what a state read must find unchanged under seqMu
// before its state is queued (see trackPresence).
type presenceMark struct{ diffs, states uint64 }

// presenceMark returns th's counters as of now, taken under seqMu.
func (th *topicHub) presenceMark() presenceMark {
	th.seqMu.Lock()
	defer th.seqMu.Unlock()
	return presenceMark{diffs: th.presenceDiffs, states: th.presenceStates}
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
