package channels

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/pubsub"
)

// hub maps topics to this node's local subscribers. It holds one broker
// subscription per topic with local subscribers: the first subscriber
// subscribes, the last one gone unsubscribes.
//
// Lock order: topicHub.subMu → hub.mu, and topicHub.seqMu → hubLane.mu.
// A lane's mu is never held with another hub lock, and never across a
// broker call; seqMu is held across the History calls of a gap fill (on
// the broker's delivery path, which is where the engine expects them) but
// never across Subscribe, Unsubscribe or Publish; so a broker that
// delivers while holding its own locks cannot deadlock with us.
type hub struct {
	srv    *Server
	mu     sync.Mutex
	topics map[string]*topicHub
}

type topicHub struct {
	h    *hub
	name string

	refs int // subscribers and joins in progress; guarded by hub.mu

	subMu      sync.Mutex // serializes broker Subscribe/Unsubscribe
	subscribed bool       // guarded by subMu
	// flight is the broker Subscribe in progress (guarded by subMu, not
	// held across the call): joins arriving meanwhile share its outcome
	// instead of each waiting for a broker timeout in turn.
	flight *subFlight

	// seqMu serializes the topic's deliveries (the engine's contract
	// already does; the lock is for the readers of seq) and guards the
	// fields below.
	seqMu   sync.Mutex
	seq     *pubsub.Sequencer
	waiters []deliveryWaiter
	// presenceDiffs counts the presence_diff events handed to Deliver,
	// presenceStates the refreshes queued (a join's presence_state
	// checks both, see trackPresence); refreshing and refreshAgain
	// coalesce the topic's presence refreshes into one goroutine.
	presenceDiffs  uint64
	presenceStates uint64
	refreshing     bool
	refreshAgain   bool
	// diffLog keeps the presence_diff events delivered while a state of
	// the topic is being read (diffWatchers > 0), diffLog[0] numbered
	// diffLogFirst in presenceDiffs: a state queued after them is
	// followed by them again (diffsSince), so that a diff the state may
	// predate is applied after it. It keeps the newest diffLogMax at
	// most; a reader whose mark is older reads again.
	diffLog      []*pubsub.Event
	diffLogFirst uint64
	diffLogBytes int // payload bytes in diffLog
	diffWatchers int

	// lanes holds the subscribers by Fanout lane (one lane without a
	// Fanout): each lane's loop delivers to its own subscribers under its
	// own lock, so the lanes of one topic deliver in parallel. A lane is
	// allocated when its first subscriber joins and kept for the topic's
	// life, so a topic costs a pointer per lane plus the lanes it uses.
	lanes []atomic.Pointer[hubLane]
}

// hubLane is one lane's share of a topic's subscribers.
type hubLane struct {
	mu   sync.Mutex // guards everything below and each subscriber's hub fields
	subs []*channel // swap-remove by channel.hubIdx
	// pending holds the events not yet delivered to this lane, oldest
	// first. Whoever drains the lane (its Fanout job, or a publisher
	// draining its own lane) delivers them all, in order.
	pending []pendingEvent
	// seq numbers the events appended to pending (the last one given).
	seq uint64
	// pendingCost is what pending will cost once queued to the lane's
	// sockets (estimated), counted in Server.pendingOut until drained.
	pendingCost int64
	// scheduled: a drain job for this lane is dispatched and has not run.
	scheduled bool
	job       laneJob
	// n is len(subs), read without mu so that an event skips lanes with
	// no subscriber. A subscriber added after the read misses the event,
	// which is as if it had joined after it: an opted-in join reads the
	// topic's history only after it is added, and so finds the event there.
	n atomic.Int32
}

// subFlight is one broker Subscribe call and its outcome.
type subFlight struct {
	done chan struct{}
	err  error
}

// deliveryWaiter is a publisher waiting for its event to be delivered on
// this node (waitDelivered).
type deliveryWaiter struct {
	pos  pubsub.Position
	done chan struct{}
}

// pendingEvent is an event waiting on a lane, with its lane sequence
// number.
type pendingEvent struct {
	b   *prepared
	seq uint64
}

// resumeState is the hub side of an opted-in join. While the join reads
// the topic's history (catching up), live events for it are buffered in
// buf. Once it has sent the reply, the replayed events and the buffered
// ones, it is live but skips events at or below the position it reported
// (skipEpoch, skipThrough): an event becomes visible to History before
// its delivery runs, so one that was replayed (or is older than the
// reported position) can still arrive live once. The first event past that
// position ends the state.
type resumeState struct {
	buf         []*pubsub.Event
	overflow    bool
	live        bool
	skipEpoch   string
	skipThrough uint64
}

func newHub(s *Server) *hub {
	return &hub{srv: s, topics: make(map[string]*topicHub)}
}

func (h *hub) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), h.srv.cfg.CallTimeout)
}

func newTopicHub(h *hub, topic string) *topicHub {
	th := &topicHub{h: h, name: topic, lanes: make([]atomic.Pointer[hubLane], h.srv.lanes())}
	th.seq = th.newSequencer()
	return th
}

func (th *topicHub) newSequencer() *pubsub.Sequencer {
	return pubsub.NewSequencer(th.h.srv.broker, th.name, 0, th.h.srv.cfg.CallTimeout)
}

// acquire pins the topic and makes sure the broker delivers it here.
func (h *hub) acquire(topic string) (*topicHub, error) {
	h.mu.Lock()
	th := h.topics[topic]
	if th == nil {
		th = newTopicHub(h, topic)
		h.topics[topic] = th
	}
	th.refs++
	h.mu.Unlock()

	th.subMu.Lock()
	for !th.subscribed {
		if f := th.flight; f != nil {
			// Another join is subscribing: its outcome is ours.
			th.subMu.Unlock()
			<-f.done
			if f.err != nil {
				h.release(th)
				return nil, f.err
			}
			th.subMu.Lock()
			continue // subscribed, unless released and unsubscribed meanwhile
		}
		f := &subFlight{done: make(chan struct{})}
		th.flight = f
		// A fresh sequencer before the broker can deliver: what it missed
		// while unsubscribed was missed by nobody here. A delivery that
		// races ahead of Subscribe's answer sets the position itself.
		th.seqMu.Lock()
		th.seq = th.newSequencer()
		th.seqMu.Unlock()
		th.subMu.Unlock()
		ctx, cancel := h.ctx()
		pos, err := h.srv.broker.Subscribe(ctx, topic, th)
		cancel()
		if err == nil {
			th.seqMu.Lock()
			th.seq.Baseline(pos)
			th.seqMu.Unlock()
		}
		th.subMu.Lock()
		th.flight = nil
		th.subscribed = err == nil
		f.err = err
		close(f.done)
		if err != nil {
			th.subMu.Unlock()
			h.release(th)
			return nil, err
		}
	}
	th.subMu.Unlock()
	return th, nil
}

// pin takes one more reference on th, which a subscriber holds (so th is
// subscribed and in the map): the topic stays subscribed on this node
// until the matching release, even after that subscriber is gone. A seat
// that keeps a presence pins its topic, so the presence control events
// for it (an update) still reach this node.
func (h *hub) pin(th *topicHub) {
	h.mu.Lock()
	th.refs++
	h.mu.Unlock()
}

// release unpins the topic; the last release unsubscribes.
func (h *hub) release(th *topicHub) {
	h.mu.Lock()
	th.refs--
	last := th.refs == 0
	h.mu.Unlock()
	if !last {
		return
	}
	th.subMu.Lock()
	h.mu.Lock()
	still := th.refs == 0
	h.mu.Unlock()
	if still && th.subscribed {
		ctx, cancel := h.ctx()
		// An error leaves a handler behind in the broker; it finds no
		// subscribers and the next acquire replaces it.
		_ = h.srv.broker.Unsubscribe(ctx, th.name)
		cancel()
		th.subscribed = false
	}
	// Forget the topic before letting go of subMu. The broker unsubscribes
	// by name, so a newer topicHub for the same name must not exist while
	// any release of this one can still reach Unsubscribe: a new one is
	// only created once this one has left the map, and this one leaves it
	// only here, under subMu, after its last Unsubscribe. Every later
	// release of this one (refs fell to 0 before the delete) then finds it
	// unsubscribed and calls nothing.
	h.mu.Lock()
	if th.refs == 0 && h.topics[th.name] == th {
		delete(h.topics, th.name)
	}
	h.mu.Unlock()
	th.subMu.Unlock()
}

// lane returns the share of the subscribers c belongs to, allocating it
// on first use.
func (th *topicHub) lane(c *channel) *hubLane {
	i := int(c.sock.lane) % len(th.lanes)
	if l := th.lanes[i].Load(); l != nil {
		return l
	}
	th.lanes[i].CompareAndSwap(nil, &hubLane{job: laneJob{th: th, lane: i}})
	return th.lanes[i].Load()
}

// add appends c to its lane. Called with that lane's mu held.
func (th *topicHub) add(l *hubLane, c *channel) {
	c.th = th
	if r := c.rare.Load(); r != nil {
		r.ahead, r.lost = 0, false
	}
	c.hubIdx = int32(len(l.subs))
	l.subs = append(l.subs, c)
	l.n.Store(int32(len(l.subs)))
}

// del swap-removes c from its lane. Called with that lane's mu held.
func (th *topicHub) del(l *hubLane, c *channel) {
	i := int(c.hubIdx)
	if i < 0 || i >= len(l.subs) || l.subs[i] != c {
		return
	}
	last := len(l.subs) - 1
	l.subs[i] = l.subs[last]
	l.subs[i].hubIdx = int32(i)
	l.subs[last] = nil
	l.subs = l.subs[:last]
	if len(l.subs) == 0 {
		l.subs = nil // a topic whose crowd left gives its array back
	}
	l.n.Store(int32(len(l.subs)))
	c.hubIdx = -1
	c.th = nil
	if r := c.rare.Load(); r != nil {
		r.resume, r.ahead, r.lost = nil, 0, false
	}
	c.positions = false
}

// subscribe adds a just-joined channel to its topic and sends the join
// reply, so that the reply precedes every broadcast. For an opted-in channel
// it reads the topic position (and, when resuming, the missed events) and
// sends reply, replay and the live events that arrived meanwhile, in order,
// without duplicates. overflow reports that live events were lost while
// catching up (the caller ends the channel with phx_error).
func (h *hub) subscribe(c *channel, t *task, resp backends.Payload, snapshot string) (overflow bool, err error) {
	s := c.sock
	th, err := h.acquire(c.topic)
	if err != nil {
		return false, err
	}
	l := th.lane(c)
	// Events still pending on the lane were published before this join:
	// they go to the subscribers already there, never to c (as if
	// delivered before it joined; an opted-in join finds them in History).
	if !t.positions {
		l.mu.Lock()
		th.drainLocked(l)
		s.reply(t.joinRef, t.ref, c.topic, "ok", resp)
		th.add(l, c)
		l.mu.Unlock()
		return false, nil
	}

	since, resuming, perr := parseOffset(t.offset)
	// A backend whose join reply is a snapshot up to a position: the
	// replay starts after it, whatever the client asked, so the client
	// applies the snapshot and then exactly the events it does not hold.
	if snapshot != "" {
		if p, err := pubsub.ParsePosition(snapshot); err == nil {
			since, resuming, perr = p, true, nil
		}
	}
	r := c.side() // allocated before taking the lane's lock
	rs := &resumeState{}
	l.mu.Lock()
	th.drainLocked(l)
	c.positions = true
	r.resume = rs
	th.add(l, c)
	l.mu.Unlock()

	var hr pubsub.HistoryResult
	if resuming && perr == nil {
		var result string
		hr, result, err = h.replay(c.topic, since)
		if err == nil {
			h.srv.m.resumes.WithLabelValues(result).Inc()
		}
	} else {
		if resuming {
			h.srv.m.resumes.WithLabelValues(resumeBad).Inc()
		}
		ctx, cancel := h.ctx()
		hr, err = h.srv.broker.History(ctx, c.topic, pubsub.Position{}, 0)
		cancel()
	}
	if err != nil {
		l.mu.Lock()
		th.del(l, c)
		l.mu.Unlock()
		h.release(th)
		return false, err
	}
	recovered := resuming && perr == nil && hr.Recovered

	l.mu.Lock()
	defer l.mu.Unlock()
	if !resp.Binary {
		resp.Data = withPosition(resp.Data, hr.Top, resuming, recovered)
	}
	s.reply(t.joinRef, t.ref, c.topic, "ok", resp)
	if recovered {
		for _, ev := range hr.Events {
			v := broadcastVariant(s.ser, true, ev.Binary)
			if v < 0 {
				continue
			}
			s.sendOrDrop(encodeBroadcast(v, ev))
			h.srv.m.replayed.Inc()
		}
	}
	top := hr.Top
	if n := len(hr.Events); recovered && n > 0 && hr.Events[n-1].Pos.Epoch == top.Epoch && hr.Events[n-1].Pos.Offset > top.Offset {
		top = hr.Events[n-1].Pos
	}
	for _, ev := range rs.buf {
		eph := ev.Ephemeral()
		if !eph && ev.Pos.Epoch == top.Epoch && ev.Pos.Offset <= top.Offset {
			continue // already replayed or before the reported position
		}
		v := broadcastVariant(s.ser, !eph, ev.Binary)
		if v < 0 {
			continue
		}
		s.sendOrDrop(encodeBroadcast(v, ev))
		if !eph {
			top = ev.Pos
		}
	}
	overflow = rs.overflow || r.lost
	rs.buf = nil
	rs.live, rs.skipEpoch, rs.skipThrough = true, top.Epoch, top.Offset
	return overflow, nil
}

// replay reads what a resuming join missed after since, page by page,
// within MaxReplay events and ReplayBytes payload bytes. Past either it
// answers not recovered (with the topic's position), so the client
// rebuilds from the backend's join reply instead of being sent more than
// its write queue holds on every reconnect. result is the
// phxgate_resumes_total label.
func (h *hub) replay(topic string, since pubsub.Position) (hr pubsub.HistoryResult, result string, err error) {
	cfg := &h.srv.cfg
	ctx, cancel := h.ctx()
	defer cancel()
	var events []*pubsub.Event
	bytes := 0
	for {
		page, err := h.srv.broker.History(ctx, topic, since, min(pubsub.MaxHistoryPage, cfg.MaxReplay+1-len(events)))
		if err != nil {
			return pubsub.HistoryResult{}, "", err
		}
		if !page.Recovered {
			return pubsub.HistoryResult{Top: page.Top}, resumeStale, nil
		}
		for _, ev := range page.Events {
			bytes += len(ev.Payload)
		}
		events = append(events, page.Events...)
		switch {
		case len(events) > cfg.MaxReplay:
			return pubsub.HistoryResult{Top: page.Top}, resumeTooMany, nil
		case bytes > cfg.ReplayBytes:
			return pubsub.HistoryResult{Top: page.Top}, resumeTooLarge, nil
		}
		n := len(page.Events)
		if n == 0 || page.Events[n-1].Pos.Offset >= page.Top.Offset {
			return pubsub.HistoryResult{Events: events, Top: page.Top, Recovered: true}, resumeRecovered, nil
		}
		since = page.Events[n-1].Pos
	}
}

// unsubscribe removes c from its topic.
func (h *hub) unsubscribe(c *channel) {
	th := c.th
	if th == nil {
		return
	}
	l := th.lane(c)
	l.mu.Lock()
	th.del(l, c)
	l.mu.Unlock()
	h.release(th)
}

// Deliver implements pubsub.Handler: the topic's events go on to the
// subscribers exactly once and in order (pubsub.Sequencer), and a gap that
// cannot be filled ends the channels that hold positions.
func (th *topicHub) Deliver(ev *pubsub.Event) {
	if pc := th.h.srv.presenceControl; pc != nil && ev.Ephemeral() && ev.Event == th.h.srv.presenceControlEvent {
		pc.HandleControl(th.name, ev.Payload)
		return
	}
	th.seqMu.Lock()
	defer th.seqMu.Unlock()
	if ev.Event == "presence_diff" {
		th.presenceDiffs++
		if th.diffWatchers > 0 {
			if len(th.diffLog) == 0 {
				th.diffLogFirst = th.presenceDiffs
				th.diffLogBytes = 0
			} else if len(th.diffLog) >= diffLogMax || th.diffLogBytes+len(ev.Payload) > diffLogPieces*th.h.srv.cfg.PresencePieceBytes {
				// Keep the newest half: a reader whose mark is older
				// reads again (diffsSince).
				half := len(th.diffLog) / 2
				for _, old := range th.diffLog[:half] {
					th.diffLogBytes -= len(old.Payload)
				}
				n := copy(th.diffLog, th.diffLog[half:])
				clear(th.diffLog[n:])
				th.diffLog = th.diffLog[:n]
				th.diffLogFirst = th.presenceDiffs - uint64(n)
			}
			th.diffLog = append(th.diffLog, ev)
			th.diffLogBytes += len(ev.Payload)
		}
	}
	var st pubsub.SequencerStats
	th.seq.Deliver(ev, th.emit, th.lost, &st)
	th.after(&st)
}

// Resync implements pubsub.Handler: catch up from history. Presence
// diffs, which have no history, may have been lost too: the topic's
// channels get a fresh presence_state.
func (th *topicHub) Resync(string) {
	th.seqMu.Lock()
	var st pubsub.SequencerStats
	th.seq.Resync(th.emit, th.lost, &st)
	th.after(&st)
	th.seqMu.Unlock()
	th.refreshPresence()
}

// subscribers returns a copy of the topic's local subscribers, taken lane
// by lane.
func (th *topicHub) subscribers() []*channel {
	var subs []*channel
	for i := range th.lanes {
		if l := th.lanes[i].Load(); l != nil {
			l.mu.Lock()
			subs = append(subs, l.subs...)
			l.mu.Unlock()
		}
	}
	return subs
}

// RefreshPresence sends topic's presence_state again to every local
// channel of it (a presence diff of the topic was lost).
func (s *Server) RefreshPresence(topic string) {
	s.hub.mu.Lock()
	th := s.hub.topics[topic]
	s.hub.mu.Unlock()
	if th != nil {
		th.refreshPresence()
	}
}

// refreshRetries is how many times a refresh is tried before it is given
// up (counted), and refreshBackoffMin/Max bound the wait between tries
// (doubling): together about 12 s, long enough for the streams holding
// the budget to be written out (a socket that writes nothing is closed
// after write_stall_timeout).
const (
	refreshRetries    = 8
	refreshBackoffMin = 100 * time.Millisecond
	refreshBackoffMax = 5 * time.Second
)

// Outcomes of phxgate_presence_state_refresh_retries_total.
const (
	refreshRetried = "retried"
	refreshGivenUp = "given_up"
)

// refreshPresence sends the topic's presence_state again to every local
// channel, when its route tracks presence: phoenix.js computes the joins
// and leaves it missed from it. It runs on its own goroutine (reading the
// state may wait on the store), at most one per topic: a refresh asked
// for while one runs makes it run once more, unless the one running had
// not read yet.
//
// A refresh is the only repair of lists that missed diffs, so one that
// cannot be sent now (refreshOnce) is tried again after a backoff, up to
// refreshRetries times; meanwhile it stays the topic's one refresh, so
// the asks that come in wait for it.
func (th *topicHub) refreshPresence() {
	srv := th.h.srv
	p := srv.cfg.Presence
	if r := srv.router.Match(th.name); p == nil || r == nil || !r.Presence {
		return
	}
	th.seqMu.Lock()
	if th.refreshing {
		th.refreshAgain = true
		th.seqMu.Unlock()
		return
	}
	th.refreshing = true
	th.seqMu.Unlock()
	go func() {
		for tries := 1; ; tries++ {
			if !th.refreshOnce(p) {
				if tries < refreshRetries && sleepCtx(context.Background(), srv.quit, refreshBackoff(tries)) {
					srv.m.presenceRefreshRetries.WithLabelValues(refreshRetried).Inc()
					continue
				}
				srv.m.presenceRefreshRetries.WithLabelValues(refreshGivenUp).Inc()
			}
			th.seqMu.Lock()
			again := th.refreshAgain
			th.refreshAgain = false
			th.refreshing = again
			th.seqMu.Unlock()
			if !again {
				return
			}
			tries = 0
		}
	}()
}

// refreshBackoff is the wait after the tries-th try of a refresh.
func refreshBackoff(tries int) time.Duration {
	return min(refreshBackoffMin<<min(tries-1, 16), refreshBackoffMax)
}

// refreshOnce reads the topic's state and queues it to every local
// channel; false when it could not (the store failed, the stream budget
// had no room within presence_stream_wait, or more diffs came during each
// of stateAttempts reads than the topic keeps), for refreshPresence to
// try again later.
//
// The state is read without the topic's delivery lock, so a slow store
// does not hold up the topic's events (nor the broker's shard delivering
// them). It is queued under the lock, followed by the presence_diffs
// delivered since the read began (kept by watchDiffs): the state may
// predate them, and phoenix.js, which applies a state as the whole list,
// would otherwise undo them. Queueing bumps presenceStates, so that a
// join that read before it does not queue its older state after it.
func (th *topicHub) refreshOnce(p PresenceTracker) bool {
	srv := th.h.srv
	ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.CallTimeout)
	defer cancel()
	seen := th.watchDiffs()
	defer th.unwatchDiffs()
	for attempt := 1; ; attempt++ {
		th.seqMu.Lock()
		th.refreshAgain = false // asks until now are served by this read
		th.seqMu.Unlock()
		state, err := p.State(ctx, th.name)
		if err != nil {
			return false
		}
		pieces := splitState(state, srv.cfg.PresencePieceBytes)
		// One snapshot for every channel of the topic: a large state goes
		// to each in pieces, at its own pace, and is held until the last
		// is done. The budget is waited for here, off the lock, as joins
		// wait for it.
		n := piecesBytes(pieces)
		wctx, wcancel := context.WithTimeout(ctx, srv.cfg.PresenceStreamWait)
		got := srv.stateBudget.acquire(wctx, n)
		wcancel()
		if !got {
			srv.m.presenceTooLarge.Inc()
			return false
		}
		snap := newSnapshot(pieces, srv.stateBudget, n)
		th.seqMu.Lock()
		diffs, ok := th.diffsSince(seen.diffs)
		if !ok {
			seen.diffs = th.presenceDiffs
			th.seqMu.Unlock()
			snap.done()
			if attempt >= stateAttempts || !sleepCtx(ctx, srv.quit, stateBackoff(attempt)) {
				return false
			}
			continue // more diffs than kept came while reading: read again
		}
		th.presenceStates++
		var frames [numVariants][][]byte // the diffs' frames, encoded once per variant
		for _, c := range th.subscribers() {
			s := c.sock
			s.mu.Lock()
			gen, jr := c.curGen.Load(), c.curJoinRef
			s.mu.Unlock()
			if gen != 0 {
				s.sendState(snap, c, gen, jr)
				// Not to a join that followed (a rejoin while the state
				// was queued): it gets its own state and replay.
				if v := broadcastVariant(s.ser, false, false); len(diffs) > 0 && v >= 0 && c.curGen.Load() == gen {
					if frames[v] == nil {
						frames[v] = encodeDiffs(v, diffs, srv.m)
					}
					for _, f := range frames[v] {
						s.send(f)
					}
				}
			}
		}
		snap.done()
		th.seqMu.Unlock()
		srv.m.presenceRefreshes.Inc()
		return true
	}
}

// after counts what the sequencer did and wakes the publishers whose event
// is now delivered. Called with seqMu held.
func (th *topicHub) after(st *pubsub.SequencerStats) {
	m := th.h.srv.m
	if *st != (pubsub.SequencerStats{}) {
		m.seqDuplicates.Add(float64(st.Duplicates))
		m.seqGaps.Add(float64(st.Gaps))
		m.seqFilled.Add(float64(st.Filled))
		m.seqLost.Add(float64(st.Lost))
	}
	if len(th.waiters) == 0 {
		return
	}
	last := th.seq.Last()
	kept := th.waiters[:0]
	for _, w := range th.waiters {
		if w.pos.Epoch != last.Epoch || w.pos.Offset <= last.Offset {
			// Delivered, or another epoch: waiting longer cannot help.
			close(w.done)
			continue
		}
		kept = append(kept, w)
	}
	clear(th.waiters[len(kept):])
	th.waiters = kept
}

// ownDeliveryWait bounds how long a reply waits for its sender's own
// broadcast to come back from the broker.
const ownDeliveryWait = time.Second

// waitDelivered waits until the event at pos has been handed to this
// node's subscribers of the topic (at most ownDeliveryWait), so that a
// sender's broadcast precedes its reply whatever the engine. The memory
// engine delivers before Publish returns, so this returns at once.
func (th *topicHub) waitDelivered(pos pubsub.Position) {
	if pos.IsZero() {
		return
	}
	th.seqMu.Lock()
	last := th.seq.Last()
	if last.Epoch == pos.Epoch && last.Offset >= pos.Offset {
		th.seqMu.Unlock()
		return
	}
	w := deliveryWaiter{pos: pos, done: make(chan struct{})}
	th.waiters = append(th.waiters, w)
	th.seqMu.Unlock()
	t := time.NewTimer(ownDeliveryWait)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
		th.h.srv.m.ownWaitTimeout.Inc()
		th.seqMu.Lock()
		for i := range th.waiters {
			if th.waiters[i].done == w.done {
				th.waiters = append(th.waiters[:i], th.waiters[i+1:]...)
				break
			}
		}
		th.seqMu.Unlock()
	}
}

// lost ends the topic's continuity for the channels holding positions:
// they get no more events (which would silently skip the gap) and each is
// ended with phx_error by its own worker, so its client rejoins with its
// position and is replayed or told recovered=false. Channels without
// positions carry on, as Phoenix's at-most-once broadcasts would. Called
// with seqMu held.
func (th *topicHub) lost() {
	var hit []*channel
	for i := range th.lanes {
		l := th.lanes[i].Load()
		if l == nil {
			continue
		}
		l.mu.Lock()
		for _, c := range l.subs {
			if c.positions {
				if r := c.rare.Load(); r != nil && !r.lost {
					r.lost = true
					hit = append(hit, c)
				}
			}
		}
		l.mu.Unlock()
	}
	for _, c := range hit {
		s := c.sock
		s.mu.Lock()
		if !s.closed.Load() {
			s.enqueue(c, true, &task{kind: taskLost})
		}
		s.mu.Unlock()
	}
}

// isLost reports whether c was marked by lost (and not re-added since).
func (th *topicHub) isLost(c *channel) bool {
	l := th.lane(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	r := c.rare.Load()
	return r != nil && r.lost && c.th == th
}

// emit hands one event of the topic to its local subscribers. Without a Fanout it
// delivers the event here. With one, it appends the event to each lane
// that has subscribers and makes sure a drain job is dispatched to that
// lane: the publisher pays for a few appends, not for the fan-out, and
// events published while a lane's loop is busy are delivered together.
// Either way the event is encoded at most once per variant actually needed
// and the same bytes go to every subscriber: nothing is allocated per
// subscriber.
func (th *topicHub) emit(ev *pubsub.Event) {
	srv := th.h.srv
	srv.m.broadcasts.Inc()
	fo := srv.cfg.Fanout
	if fo == nil {
		for i := range th.lanes {
			if l := th.lanes[i].Load(); l != nil {
				th.deliverSync(l, ev)
			}
		}
		return
	}
	b := &prepared{ev: ev}
	unit := int64(len(ev.Payload) + len(ev.Topic) + len(ev.Event) + estFrameOverhead)
	for i := range th.lanes {
		l := th.lanes[i].Load()
		if l == nil || l.n.Load() == 0 {
			continue
		}
		if l.appendPending(b, unit, &srv.pendingOut) {
			fo.Dispatch(i, &l.job)
		}
	}
}

// deliverSync delivers ev to l's subscribers on the caller (no Fanout).
func (th *topicHub) deliverSync(l *hubLane, ev *pubsub.Event) {
	l.mu.Lock()
	defer l.mu.Unlock() // a panic in a send must not leave the lane locked
	th.deliverLocked(l, ev, nil, 0)
}

// appendPending queues b on the lane, charging its estimated cost to
// pending, and reports whether a drain job must be dispatched.
func (l *hubLane) appendPending(b *prepared, unit int64, pending *atomic.Int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	l.pending = append(l.pending, pendingEvent{b, l.seq})
	c := unit*int64(len(l.subs)) + estEventOverhead
	l.pendingCost += c
	pending.Add(c)
	dispatch := !l.scheduled
	l.scheduled = true
	return dispatch
}

// drain delivers lane i's pending events, oldest first. job is set when
// called from the lane's dispatched job (which then may be dispatched
// again).
func (th *topicHub) drain(i int, job bool) {
	l := th.lanes[i].Load()
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock() // a panic in a send must not leave the lane locked
	if job {
		l.scheduled = false
	}
	th.drainLocked(l)
}

// drainLocked delivers l's pending events to its subscribers. Called with
// l.mu held.
func (th *topicHub) drainLocked(l *hubLane) {
	if len(l.pending) == 0 {
		return
	}
	// Uncharged first: should a delivery panic, the events are dropped
	// (counted by the poller) rather than charged for ever.
	th.h.srv.pendingOut.Add(-l.pendingCost)
	l.pendingCost = 0
	pending := l.pending
	l.pending = nil
	for k, pe := range pending {
		pending[k] = pendingEvent{}
		th.deliverLocked(l, pe.b.ev, pe.b, pe.seq)
	}
	if cap(pending) <= maxRetainedPending {
		l.pending = pending[:0]
	}
}

// estFrameOverhead estimates what a broadcast frame costs a subscriber
// beyond its payload, topic and event: the frame and JSON framing, and the
// transport's per-frame charge (as in the gateway's write queues).
const estFrameOverhead = 128

// estEventOverhead estimates what one pending event costs a lane whatever
// its subscriber count: its slot and its share of the prepared event.
const estEventOverhead = 256

// maxRetainedPending is the largest pending array a lane keeps once
// drained.
const maxRetainedPending = 16

// drainOwn queues to c, at once and on the caller, the events pending on
// its lane of its topic that it does not have yet: a channel that
// broadcast to its own topic calls it before sending its reply, so that
// the sender gets the broadcast first, as from Phoenix (the memory broker
// delivers during Publish, so the event is pending by now). The lane's job
// later skips c for those events (channelRare.ahead), so the publisher
// pays for its own copy, not for the fan-out. Only c's worker calls it.
func (c *channel) drainOwn() {
	th := c.th // written only by the worker running c
	if th == nil || c.sock.srv.cfg.Fanout == nil {
		return
	}
	r := c.side() // allocated before taking the lane's lock
	l := th.lane(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, pe := range l.pending {
		if pe.seq > r.ahead {
			// Each event has its own encodings.
			var frames [numVariants][]byte
			var failed [numVariants]bool
			th.deliverTo(c, pe.b.ev, pe.b, &frames, &failed)
		}
	}
	r.ahead = l.seq
}

// deliverLocked delivers one event to a lane's subscribers. b, when set,
// shares the encodings between lanes; without it the lane encodes what it
// needs itself. seq is the event's lane sequence number (0 without a
// Fanout). Called with l.mu held.
func (th *topicHub) deliverLocked(l *hubLane, ev *pubsub.Event, b *prepared, seq uint64) {
	var frames [numVariants][]byte // this call's encodings (copies of b's)
	var failed [numVariants]bool
	if !ev.Published.IsZero() && len(l.subs) > 0 {
		// Publish (on any node) to queued on this lane's sockets, whose
		// poller writes them next.
		th.h.srv.m.deliveryLag.Observe(time.Since(ev.Published).Seconds())
	}
	n := 0
	for _, c := range l.subs {
		if seq != 0 {
			if r := c.rare.Load(); r != nil && r.ahead >= seq {
				continue // queued to it already by drainOwn
			}
		}
		if th.deliverTo(c, ev, b, &frames, &failed) {
			n++
		}
	}
	if n > 0 {
		th.h.srv.m.fanout.Add(float64(n))
	}
}

// deliverTo queues ev to one subscriber (or buffers it for a resuming
// join), and reports whether a frame was queued. frames and failed cache
// the encodings across the subscribers of one delivery. Called with the
// subscriber's lane mu held.
func (th *topicHub) deliverTo(c *channel, ev *pubsub.Event, b *prepared, frames *[numVariants][]byte, failed *[numVariants]bool) bool {
	srv := th.h.srv
	if r := c.rare.Load(); r != nil && r.lost {
		return false // ending with phx_error: a gap must not be skipped
	} else if r != nil && r.resume != nil {
		rs := r.resume
		if !rs.live {
			if len(rs.buf) < srv.cfg.ResumeBuffer {
				rs.buf = append(rs.buf, ev)
			} else {
				rs.overflow = true
			}
			return false
		}
		switch {
		case ev.Ephemeral():
			// No position: sent, and says nothing about the skip.
		case ev.Pos.Epoch == rs.skipEpoch && ev.Pos.Offset <= rs.skipThrough:
			return false // sent already, or older than the reported position
		default:
			r.resume = nil
		}
	}
	s := c.sock
	if s.closed.Load() {
		return false
	}
	// An ephemeral event has no position: a null ref, as for plain
	// channels.
	v := broadcastVariant(s.ser, c.positions && !ev.Ephemeral(), ev.Binary)
	if v < 0 {
		return false // binary events are not sent to V1 sockets
	}
	f := frames[v]
	if f == nil {
		if failed[v] {
			return false
		}
		if b != nil {
			f = b.frame(v, srv.m)
		} else {
			var err error
			if f, err = encodeBroadcast(v, ev); err != nil {
				srv.m.droppedFrames.WithLabelValues(dropReason(err)).Inc()
			}
		}
		if f == nil {
			failed[v] = true
			return false
		}
		frames[v] = f
	}
	if bc, ok := s.conn.(BulkConn); ok {
		bc.SendBulk(f)
	} else {
		s.conn.Send(f)
	}
	return true
}

func dropReason(err error) string {
	switch {
	case errors.Is(err, errBinaryOnV1):
		return "binary_on_v1"
	case errors.Is(err, ErrStringTooLong):
		return "string_too_long"
	default:
		return "encode"
	}
}

// withPosition adds "position" (and, when resuming, "recovered") to a join
// response: to the backend's object if it answered one, otherwise as an
// object of just these keys. The keys go first; should the backend's object
// hold a key of the same name too, JSON decoders keep the last one (the
// backend's), which is the backend's choice to make.
func withPosition(resp []byte, top pubsub.Position, resuming, recovered bool) []byte {
	i := skipWS(resp, 0)
	isObj := i < len(resp) && resp[i] == '{'
	out := make([]byte, 0, len(resp)+64)
	out = append(out, `{"position":"`...)
	out = top.AppendTo(out)
	out = append(out, '"')
	if resuming {
		out = append(out, `,"recovered":`...)
		out = append(out, boolJSON(recovered)...)
	}
	if isObj {
		rest := resp[skipWS(resp, i+1):]
		if len(rest) > 0 && rest[0] != '}' {
			out = append(out, ',')
			out = append(out, rest...)
			return out
		}
	}
	return append(out, '}')
}

func boolJSON(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
