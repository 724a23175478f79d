package channels

import (
	"context"
	"sync"
	"time"

	"github.com/phxgate/phxgate/backends"
)

// MaxSeats bounds the seats held open at once (Route.LeaveGrace); past it
// a dropped channel's Leave goes out at once.
const MaxSeats = 100_000

// seatKey is a player's place on a topic.
type seatKey struct{ player, topic string }

// seat is a joined channel whose socket dropped without phx_leave, held
// for its route's LeaveGrace: the Leave is sent when the grace ends, unless
// the same player joins the same topic on this node first (then no Leave,
// and that Join says Rejoin).
type seat struct {
	backend backends.Backend
	call    *backends.Call // the Leave, built when the socket dropped
	timer   *time.Timer
	// reason is the Leave's reason (LeaveDisconnected unless set).
	reason backends.LeaveReason
	// presenceTag is the dropped channel's presence ("" when none): kept
	// while the seat is held, taken over by a rejoin, removed with the
	// seat's Leave.
	presenceTag string
	// pinned is the topic the seat keeps subscribed while it holds a
	// presence (nil when none), released by unpin.
	pinned *topicHub
}

// unpin releases the topic the seat kept subscribed. Called by the one
// goroutine that owns the seat at its end: a seat sender, or the join
// that took it over.
func (st *seat) unpin(h *hub) {
	if th := st.pinned; th != nil {
		st.pinned = nil
		h.release(th)
	}
}

// maxSeatSenders bounds the Leaves of seats sent at once, so that many
// seats ending together (a network blip, a shutdown) do not overrun the
// backend's cap on calls in flight.
const maxSeatSenders = 32

// seats holds the open seats. Its methods are safe for concurrent use.
//
// wg counts every held seat (from hold until it is taken or its Leave is
// queued) and every running sender, so flush's Wait returns only once no
// seat is held and every queued Leave has been sent.
type seats struct {
	srv     *Server
	mu      sync.Mutex
	held    map[seatKey]*seat
	closed  bool    // after flush: a new seat leaves at once
	queue   []*seat // Leaves to send, oldest first
	senders int
	wg      sync.WaitGroup
}

// hold keeps a seat for grace. A seat already held for the same key (the
// player's other socket dropped too) gets its Leave now, so every join
// keeps exactly one Leave.
func (ss *seats) hold(key seatKey, b backends.Backend, call *backends.Call, presenceTag string, pinned *topicHub, grace time.Duration) {
	st := &seat{backend: b, call: call, presenceTag: presenceTag, pinned: pinned}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.held == nil {
		ss.held = map[seatKey]*seat{}
	}
	if old := ss.held[key]; old != nil && old.timer.Stop() {
		delete(ss.held, key)
		ss.queueLocked(old)
		ss.wg.Done() // old is no longer held
	}
	if ss.closed || len(ss.held) >= MaxSeats {
		ss.queueLocked(st)
		return
	}
	ss.held[key] = st
	ss.wg.Add(1)
	st.timer = time.AfterFunc(grace, func() { ss.expire(key, st) })
}

// take returns the seat held for key, no longer held (nil when none, or
// when its grace just ended and its Leave is on its way). The player is
// back: if their join is accepted the seat needs no Leave; if it is not,
// the caller sends the seat's Leave (leave).
func (ss *seats) take(key seatKey) *seat {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	st := ss.held[key]
	if st == nil || !st.timer.Stop() {
		return nil
	}
	delete(ss.held, key)
	ss.wg.Done()
	return st
}

func (ss *seats) expire(key seatKey, st *seat) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.held[key] == st {
		delete(ss.held, key)
	}
	ss.queueLocked(st)
	ss.wg.Done() // st is no longer held; its Leave is queued
}

// leaveNow queues a Leave that no seat holds (a join whose outcome is
// unknown): sent by the seat senders, off the channel's worker, and
// waited for by flush like the others.
func (ss *seats) leaveNow(b backends.Backend, call *backends.Call, reason backends.LeaveReason) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.queueLocked(&seat{backend: b, call: call, reason: reason})
}

// leave queues the Leave of a seat that is not held (a refused rejoin).
func (ss *seats) leave(st *seat) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.queueLocked(st)
}

// queueLocked queues st's Leave (st.reason; disconnected when unset) and starts a sender
// if fewer than maxSeatSenders run. Called with mu held.
func (ss *seats) queueLocked(st *seat) {
	ss.queue = append(ss.queue, st)
	if ss.senders < maxSeatSenders {
		ss.senders++
		ss.wg.Add(1)
		go ss.send()
	}
}

// send sends queued Leaves until the queue is empty.
func (ss *seats) send() {
	defer ss.wg.Done()
	srv := ss.srv
	for {
		ss.mu.Lock()
		if len(ss.queue) == 0 {
			ss.senders--
			ss.queue = nil
			ss.mu.Unlock()
			return
		}
		st := ss.queue[0]
		ss.queue[0] = nil
		ss.queue = ss.queue[1:]
		ss.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), srv.cfg.CallTimeout)
		if st.presenceTag != "" {
			srv.cfg.Presence.Untrack(ctx, st.call.Topic, st.presenceTag)
		}
		st.unpin(srv.hub)
		start := time.Now()
		reason := st.reason
		if reason == "" {
			reason = backends.LeaveDisconnected
		}
		_, err := invoke(ctx, st.backend, opLeave, st.call, reason)
		srv.m.callDurationLv.Observe(time.Since(start).Seconds())
		cancel()
		srv.m.backendCalls.WithLabelValues(opLeave, callResult(err)).Inc()
		if err == nil {
			srv.m.leaves.WithLabelValues(string(reason)).Inc()
		} else {
			srv.m.leavesLost.Inc()
		}
	}
}

// flush ends every seat now (shutdown: nobody will come back to this node),
// with reason drained, makes later seats leave at once, and waits for
// every Leave, or ctx.
func (ss *seats) flush(ctx context.Context) {
	ss.mu.Lock()
	ss.closed = true
	for k, st := range ss.held {
		if st.timer.Stop() {
			delete(ss.held, k)
			// Its grace did not run out: the node drains.
			st.reason = backends.LeaveDrained
			ss.queueLocked(st)
			ss.wg.Done()
		}
		// else its timer is firing: expire queues it and releases it.
	}
	ss.mu.Unlock()
	done := make(chan struct{})
	go func() { ss.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// count is the number of seats held.
func (ss *seats) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.held)
}
