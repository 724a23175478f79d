package channels

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/presence"
	"github.com/phxgate/phxgate/pubsub"
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
// A state must not undo a state or diff the channel was sent before it.
// It is queued under the topic's delivery lock (seqMu) to make that
// checkable, but it is never read under that lock: Deliver takes seqMu,
// and with Redis it runs on the reader goroutine of a pub/sub shard, so
// a read under it would hold up every topic of the shard for as long as
// a whole-room read takes. Instead the state is read off the lock, with
// the topic keeping the presence_diffs delivered from just before the
// read (watchDiffs), and queued followed by those diffs again
// (replayDiffs). phoenix.js may have applied them already, or hold them
// until the state (a diff before a first presence_state is held, then
// applied after its first piece, where a later piece could undo a leave
// in it), and a state read before one of them would undo it; applied
// again after the state's last piece, in order, each ends the list as it
// should (a join or leave of a phx_ref applied twice changes nothing).
// Everything delivered after the state is queued follows it on the
// socket. The state is read again only when a refresh queued its state
// meanwhile (th.presenceStates: a refresh's state may be newer than
// ours, and ours would replace it), or when more diffs came during the
// read than the topic keeps (diffLogMax), after a short backoff, up to
// stateAttempts reads; past them the join ends with phx_error
// (phxgate_presence_state_overtaken_total) and the client rejoins with
// its own backoff.
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
	seen := th.watchDiffs()
	defer th.unwatchDiffs()
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
		if th.presenceStates == seen.states {
			if diffs, ok := th.diffsSince(seen.diffs); ok {
				s.sendState(snap, c, c.wGen, c.wJoinRef)
				s.replayDiffs(c, diffs)
				th.seqMu.Unlock()
				return true
			}
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

// diffLogMax bounds the presence_diff events a topic keeps while its
// state is being read (hub.go, diffLog): a few seconds of a busy room's
// diffs (one per presence window per node).
const diffLogMax = 1024

// diffLogPieces × Config.PresencePieceBytes (an eighth of
// write_queue_max_bytes, at most 64 KiB) bounds the payload bytes of
// those kept diffs: past it the oldest half goes, as past diffLogMax.
// Replayed, they would also take the socket's write queue, where the
// same diffs may wait already: a reader is replayed at most
// replayPieces × PresencePieceBytes of them, and reads again past that.
const (
	diffLogPieces = 4
	replayPieces  = 2
)

// watchDiffs returns th's counters, like presenceMark, and keeps the
// topic's presence_diffs from now on until unwatchDiffs.
func (th *topicHub) watchDiffs() presenceMark {
	th.seqMu.Lock()
	defer th.seqMu.Unlock()
	th.diffWatchers++
	return presenceMark{diffs: th.presenceDiffs, states: th.presenceStates}
}

// unwatchDiffs ends a watchDiffs; the last one drops the kept diffs.
func (th *topicHub) unwatchDiffs() {
	th.seqMu.Lock()
	defer th.seqMu.Unlock()
	th.diffWatchers--
	if th.diffWatchers == 0 {
		clear(th.diffLog)
		th.diffLog, th.diffLogBytes = th.diffLog[:0], 0
		if cap(th.diffLog) > 64 {
			th.diffLog = nil
		}
	}
}

// diffsSince returns the presence_diffs delivered after the one numbered
// mark, oldest first, and false when the log no longer holds them all.
// Called with seqMu held, by a watcher.
func (th *topicHub) diffsSince(mark uint64) ([]*pubsub.Event, bool) {
	if th.presenceDiffs == mark {
		return nil, true
	}
	if len(th.diffLog) == 0 || th.diffLogFirst > mark+1 {
		return nil, false
	}
	diffs := th.diffLog[mark+1-th.diffLogFirst:]
	n := 0
	for _, ev := range diffs {
		n += len(ev.Payload)
	}
	if n > replayPieces*th.h.srv.cfg.PresencePieceBytes {
		return nil, false
	}
	return diffs, true
}

// encodeDiffs returns the frames of diffs as broadcast to variant v.
func encodeDiffs(v int, diffs []*pubsub.Event, m *metrics) [][]byte {
	out := make([][]byte, 0, len(diffs))
	for _, ev := range diffs {
		f, err := encodeBroadcast(v, ev)
		if err != nil {
			m.droppedFrames.WithLabelValues(dropReason(err)).Inc()
			continue
		}
		out = append(out, f)
	}
	return out
}

// replayDiffs queues diffs to c after its state (their frames as
// broadcast to c's serializer, with a null ref). Called with seqMu held.
func (s *Socket) replayDiffs(c *channel, diffs []*pubsub.Event) {
	v := broadcastVariant(s.ser, false, false)
	if v < 0 || len(diffs) == 0 {
		return
	}
	for _, f := range encodeDiffs(v, diffs, s.srv.m) {
		s.send(f)
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
